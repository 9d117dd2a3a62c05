"""Tokenizers: text to integer ids and back, behind one interface.

Owns: choosing and training a tokenizer (`train_tokenizer`), reading one back
(`load_tokenizer`, or `gpt2_tokenizer` for GPT-2's own vocabulary) and fingerprinting its
file (`file_hash`). Two kinds:

- `char`: one id per character, nanoGPT's convention (`char.py`);
- `bpe`: byte-level byte-pair encoding written from scratch (`bpe.py`), or trained by
  Hugging Face `tokenizers` with `backend="hf"` into the same file format; GPT-2's
  vocabulary is one of these, converted from its published merge ranks (`gpt2.py`).

Either can carry a normalizer (lowercasing, whitespace; `normalize.py`). Both save a Hugging
Face-compatible `tokenizer.json` that `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast` load and encode to the same ids. This package knows
nothing about corpora, datasets or models; `gpt2.py` asks `tinygpt.data.cache` only for its
cache folder and its package download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer.base import EOT, UNK, Tokenizer
from tinygpt.data.tokenizer.bpe import DEFAULT_VOCAB_SIZE, PATTERNS, BPETokenizer, train_hf
from tinygpt.data.tokenizer.char import CharTokenizer
from tinygpt.data.tokenizer.gpt2 import gpt2_tokenizer
from tinygpt.data.tokenizer.io import file_hash, load_tokenizer, tokenizer_from_json_dict
from tinygpt.data.tokenizer.normalize import LOWERCASE, Normalizer

__all__ = [
    "EOT",
    "UNK",
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "LOWERCASE",
    "Normalizer",
    "Tokenizer",
    "file_hash",
    "gpt2_tokenizer",
    "load_tokenizer",
    "tokenizer_from_json_dict",
    "train_tokenizer",
]

KINDS = ("char", "bpe")
BACKENDS = ("native", "hf")


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    backend: str = "native",
    pattern: str = "gpt4",
    unk: bool = False,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 1,
    normalizer: Normalizer | None = None,
    progress: Callable[[str], None] | None = None,
) -> Tokenizer:
    """Learn a tokenizer from `texts` (each one a document).

    kind "char": the vocabulary is the sorted set of characters in `texts` plus
    `<|endoftext|>`; `unk=True` adds `<unk>` for characters not seen. `vocab_size`,
    `backend` and `pattern` do not apply and are ignored, since the text fixes the size.

    kind "bpe": byte-level BPE with `vocab_size` ids in all (default 4096), counting the 256
    byte tokens and the special tokens (`<|endoftext|>` plus `special_tokens`); pre-split
    with `pattern` ("gpt2" or "gpt4"); trained by our code (`backend="native"`) or by
    Hugging Face `tokenizers` (`backend="hf"`); a pair is merged only if it occurs at least
    `min_frequency` times. When it stops short of `vocab_size`, the result's `shortfall`
    says why.

    Both kinds learn from the texts as `normalizer` leaves them, and keep it.
    """
    if kind == "char":
        if special_tokens:
            raise TinyGPTError("extra special tokens are supported by the bpe tokenizer only")
        if min_frequency != 1:
            raise TinyGPTError("--min-frequency applies to the bpe tokenizer only")
        return CharTokenizer.train(texts, unk=unk, normalizer=normalizer)
    if kind != "bpe":
        raise TinyGPTError(f"unknown tokenizer kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if unk:
        raise TinyGPTError("unk applies to the char tokenizer; byte-level BPE has no unknowns")
    size = DEFAULT_VOCAB_SIZE if vocab_size is None else int(vocab_size)
    if backend == "native":
        return BPETokenizer.train(
            texts,
            vocab_size=size,
            pattern=pattern,
            special_tokens=special_tokens,
            min_frequency=min_frequency,
            normalizer=normalizer,
            progress=progress,
        )
    if backend == "hf":
        return train_hf(
            texts,
            vocab_size=size,
            pattern=pattern,
            special_tokens=special_tokens,
            min_frequency=min_frequency,
            normalizer=normalizer,
        )
    raise TinyGPTError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
