"""Byte-level byte-pair encoding (BPE), trainer and encoder, written from scratch.

Owns: the pre-split patterns, training a tokenizer from text, encoding and decoding with it,
and the translation to and from the Hugging Face `tokenizer.json` layout of a byte-level BPE
model. Learning the merges themselves is `merges.py`'s. Knows nothing about corpora (it is
handed texts) nor about files on disk (see `io.py`).

How it works (the GPT-2 recipe, Radford et al. 2019, section 2.2):

1. Pre-split. A regex cuts text into chunks (words with their leading space, runs of digits,
   punctuation, whitespace); merges never cross a chunk boundary, so " dog" and " dog." share
   the token " dog". Two patterns: `gpt2` (GPT-2's) and `gpt4` (the cl100k style also used by
   Llama 3: case-insensitive contractions, digits in groups of at most three, newlines kept
   apart from other whitespace).
2. Bytes. Each chunk is UTF-8 encoded. The base vocabulary is all 256 byte values (id i is
   the byte i), so any text can be encoded and nothing is ever unknown.
3. Merges. Training repeatedly finds the most frequent adjacent pair of tokens, summed over
   all chunks, and replaces it by a new token. Ties between equally frequent pairs go to the
   smaller pair in the order Hugging Face's trainer uses (`merges._tie_keys`), so training is
   deterministic and both trainers learn the same merges. Training stops when the
   vocabulary is full, when no pair is left (every chunk is one token), or when the most
   frequent pair occurs fewer than `min_frequency` times. If the two
   pieces join into bytes that already have a token (possible when 'a'+'bc' follows 'ab'+'c'),
   the merge reuses that token instead of creating a second token for the same bytes; Hugging
   Face's trainer does the same.
4. Special tokens (`<|endoftext|>`, later chat markers) get ids after the merges. They have
   no bytes and no merge leads to them, so ordinary text never produces one.

Encoding applies the learned merges to each chunk in the order they were learned (lowest
rank first), which is what GPT-2 and Hugging Face `tokenizers` do, and caches the result per
chunk: natural text repeats its words, so most chunks are looked up, not merged.

In `tokenizer.json` bytes are written with GPT-2's printable stand-ins (`bytes_to_unicode`):
byte 0x20 (space) is 'Ġ', 0x0A is 'Ċ'. The pre-tokenizer is `Split(pattern, Isolated)`
followed by `ByteLevel(add_prefix_space=False, use_regex=False)`, so Hugging Face splits the
text exactly as we do and adds no space in front of it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Any

import regex

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer.base import EOT, Tokenizer, added_token_entry
from tinygpt.data.tokenizer.merges import (
    MergeStats,
    bytes_to_unicode,
    count_chunks,
    learn_merges,
    merge_pair,
    unicode_to_bytes,
)
from tinygpt.data.tokenizer.normalize import Normalizer

PATTERNS: dict[str, str] = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
        r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ),
}

DEFAULT_VOCAB_SIZE = 4096

# Past this many distinct chunks the encoder's cache starts afresh, bounding its memory on
# endless streams of text (numbers, hashes) that never repeat.
_CACHE_LIMIT = 1 << 20


def resolve_pattern(pattern: str) -> str:
    """The regex for a pattern name ("gpt2", "gpt4")."""
    try:
        return PATTERNS[pattern]
    except KeyError:
        raise TinyGPTError(
            f"unknown pre-split pattern {pattern!r}; choose one of: {', '.join(PATTERNS)}"
        ) from None


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer: pre-split regex, 256 byte tokens, ranked merges, specials.

    Ids need not follow our own layout (bytes 0..255, merges, specials): a tokenizer trained
    by Hugging Face orders its alphabet differently, so every id is looked up in tables.
    """

    kind = "bpe"

    def __init__(
        self,
        *,
        vocab: Sequence[bytes | None],
        merges: Sequence[tuple[int, int]],
        special_tokens: dict[str, int],
        pattern: str,
        pattern_name: str | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        """`vocab[i]` is the bytes of token i, None for a special token's id; `merges` are
        (left, right) id pairs in rank order; `pattern` is the pre-split regex; `normalizer`
        what `encode` does to text first."""
        super().__init__(special_tokens, normalizer)
        n = len(vocab)
        self._vocab: list[bytes] = [b"" if t is None else t for t in vocab]
        token_of: dict[bytes, int] = {}
        for i, t in enumerate(vocab):
            if t is None:
                continue
            if t in token_of:
                raise TinyGPTError(
                    f"tokens {token_of[t]} and {i} both stand for {t!r}; the vocabulary is broken"
                )
            token_of[t] = i
        try:
            self._byte_ids = [token_of[bytes([b])] for b in range(256)]
        except KeyError as exc:
            raise TinyGPTError(
                f"the vocabulary lacks the single byte {exc.args[0]!r}; a byte-level BPE "
                "needs all 256"
            ) from None
        for s, i in special_tokens.items():
            if not 0 <= i < n or vocab[i] is not None:
                raise TinyGPTError(f"special token {s!r} has id {i}, which is an ordinary token")
        for i, t in enumerate(vocab):
            if t is None and i not in self._special_by_id:
                raise TinyGPTError(f"token id {i} has neither bytes nor a special token")
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(merges):
            joined = self._vocab[a] + self._vocab[b]
            new = token_of.get(joined)
            if new is None:
                raise TinyGPTError(
                    f"merge {rank} ({a}, {b}) makes {joined!r}, not in the vocabulary"
                )
            # A pair listed twice keeps its first rank, as in Hugging Face.
            self._ranks.setdefault((a, b), (rank, new))
        self.merges: list[tuple[int, int]] = [(a, b) for a, b in merges]
        self.pattern = pattern
        self.pattern_name = pattern_name or next(
            (k for k, v in PATTERNS.items() if v == pattern), "custom"
        )
        self._split = regex.compile(pattern)
        # The built-in patterns match every character (their last alternatives are \s+ and
        # "not a letter, digit or space"); a custom one might not, and Hugging Face keeps
        # unmatched text as chunks of its own, so then we must too.
        self._covers_all = pattern in PATTERNS.values()
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        min_frequency: int = 1,
        normalizer: Normalizer | None = None,
        stats: MergeStats | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> BPETokenizer:
        """Learn a BPE of `vocab_size` ids from `texts` (normalised by `normalizer`, which
        the tokenizer keeps); merge only pairs that occur at least `min_frequency` times.
        When the vocabulary stops short, `shortfall` on the result says why."""
        regex_text = resolve_pattern(pattern)
        specials = _special_list(special_tokens)
        check_vocab_size(vocab_size, len(specials))
        check_min_frequency(min_frequency)
        if normalizer is not None:
            texts = map(normalizer, texts)
        counts = count_chunks(texts, regex_text)
        if not counts:
            raise TinyGPTError(
                "the training text is empty; give a corpus or file that holds some text"
            )
        if progress:
            progress(f"{sum(counts.values()):,} chunks, {len(counts):,} distinct; merging")
        chunk_counts: dict[bytes, int] = Counter()
        for chunk, c in counts.items():
            chunk_counts[chunk.encode("utf-8")] += c
        stats = stats if stats is not None else MergeStats()
        merges, vocab = learn_merges(
            chunk_counts, vocab_size - len(specials), min_frequency=min_frequency, stats=stats
        )
        n = len(vocab)
        tok = cls(
            vocab=[*vocab, *([None] * len(specials))],
            merges=[(a, b) for a, b, _ in merges],
            special_tokens={s: n + k for k, s in enumerate(specials)},
            pattern=regex_text,
            pattern_name=pattern,
            normalizer=normalizer,
        )
        if stats.stop != "size":
            tok.shortfall = shortfall_message(
                tok.vocab_size, vocab_size, min_frequency, no_pairs=stats.stop == "no_pairs"
            )
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def token_bytes(self, id: int) -> bytes:
        id = int(id)
        if 0 <= id < len(self._vocab):
            return self._vocab[id]
        self.check_id(id)
        return b""

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for chunk in self._chunks(text):
            piece = cache.get(chunk)
            if piece is None:
                piece = cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            ids.extend(piece)
        return ids

    def _chunks(self, text: str) -> list[str]:
        if self._covers_all:
            return self._split.findall(text)
        out: list[str] = []
        start = 0
        for m in self._split.finditer(text):
            if m.start() > start:
                out.append(text[start : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            start = m.end()
        if start < len(text):
            out.append(text[start:])
        return out

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Apply merges to one chunk, lowest rank first, until none applies."""
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in data]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            for pair in pairwise(ids):
                r = ranks.get(pair)
                if r is not None and (best is None or r < best):
                    best = r
            if best is None:
                break
            rank, new = best
            a, b = self.merges[rank]
            ids = merge_pair(ids, a, b, new)
        return ids

    def _append_special(self, tokens: list[str]) -> BPETokenizer:
        n = self.vocab_size
        vocab = [None if self.is_special(i) else self._vocab[i] for i in range(n)]
        return BPETokenizer(
            vocab=[*vocab, *([None] * len(tokens))],
            merges=self.merges,
            special_tokens={**self.special_tokens, **{t: n + k for k, t in enumerate(tokens)}},
            pattern=self.pattern,
            pattern_name=self.pattern_name,
            normalizer=self.normalizer,
        )

    def to_json_dict(self) -> dict[str, Any]:
        b2u = bytes_to_unicode()

        def sym(i: int) -> str:
            return "".join(b2u[b] for b in self._vocab[i])

        vocab: dict[str, int] = {}
        for i in range(self.vocab_size):
            special = self._special_by_id.get(i)
            vocab[special if special is not None else sym(i)] = i
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [added_token_entry(s, i) for s, i in self.special_tokens.items()],
            "normalizer": self._normalizer_json(),
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": self.pattern},
                        "behavior": "Isolated",
                        "invert": False,
                    },
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": False,
                        "trim_offsets": True,
                        "use_regex": False,
                    },
                ],
            },
            "post_processor": None,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                # "left right": byte-level symbols never hold a space (it is written 'Ġ'),
                # and every version of `tokenizers` reads this form.
                "merges": [f"{sym(a)} {sym(b)}" for a, b in self.merges],
            },
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], *, where: str = "tokenizer.json") -> BPETokenizer:
        """Read a byte-level BPE `tokenizer.json` (ours, or one Hugging Face trained)."""
        model = data["model"]
        normalizer = Normalizer.from_json(data.get("normalizer"), where=where)
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise TinyGPTError(f"{where}: BPE with {key} is not supported")
        pattern = _pattern_from_pre_tokenizer(data.get("pre_tokenizer"), where)
        special = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
        vocab_map: dict[str, int] = model.get("vocab") or {}
        size = max([*vocab_map.values(), *special.values()], default=-1) + 1
        vocab: list[bytes | None] = [None] * size
        u2b = unicode_to_bytes()
        for s, i in vocab_map.items():
            if s in special:
                continue
            try:
                vocab[i] = bytes(u2b[c] for c in s)
            except KeyError:
                raise TinyGPTError(
                    f"{where}: token {s!r} is not written in byte-level form; "
                    "only byte-level BPE tokenizers are supported"
                ) from None
        merges: list[tuple[int, int]] = []
        for m in model.get("merges") or []:
            left, right = m.split(" ") if isinstance(m, str) else m
            try:
                merges.append((vocab_map[left], vocab_map[right]))
            except KeyError:
                raise TinyGPTError(
                    f"{where}: merge {m!r} names a token not in the vocabulary"
                ) from None
        if EOT not in special:
            raise TinyGPTError(
                f"{where}: has no {EOT!r} special token; tinygpt separates documents with it"
            )
        return cls(
            vocab=vocab,
            merges=merges,
            special_tokens=special,
            pattern=pattern,
            normalizer=normalizer,
        )


def _pattern_from_pre_tokenizer(pre: Any, where: str) -> str:
    """The pre-split regex of a byte-level pre-tokenizer we can reproduce exactly."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") if s else None for s in steps]
    if types == ["Split", "ByteLevel"]:
        split, byte_level = steps
        if (
            split.get("behavior") == "Isolated"
            and not split.get("invert")
            and "Regex" in split.get("pattern", {})
            and not byte_level.get("add_prefix_space")
            and not byte_level.get("use_regex")
        ):
            return split["pattern"]["Regex"]
    elif (
        types == ["ByteLevel"]
        and not steps[0].get("add_prefix_space")
        and steps[0].get("use_regex", True)
    ):
        return PATTERNS["gpt2"]  # ByteLevel's built-in split is GPT-2's pattern
    raise TinyGPTError(
        f"{where}: unsupported pre-tokenizer {types}; tinygpt reads byte-level BPE with "
        "Split(regex, Isolated) + ByteLevel(add_prefix_space=false), or ByteLevel alone"
    )


def _special_list(extra: Sequence[str]) -> list[str]:
    out = [EOT]
    for s in extra:
        if not s or s in out:
            raise TinyGPTError(f"special token {s!r} is empty or listed twice")
        out.append(s)
    return out


def check_min_frequency(min_frequency: int) -> None:
    if min_frequency < 1:
        raise TinyGPTError(
            f"--min-frequency must be at least 1, got {min_frequency} "
            "(1 merges any pair that occurs)"
        )


def shortfall_message(got: int, asked: int, min_frequency: int, *, no_pairs: bool) -> str:
    """Why a trained BPE vocabulary holds `got` ids instead of the `asked` ones, and what to do.

    `no_pairs`: every chunk of the training text had become a single token, so nothing was
    left to merge; otherwise the most frequent pair left occurred fewer than `min_frequency`
    times.
    """
    head = f"the BPE vocabulary stopped at {got:,} of the {asked:,} ids asked"
    tail = f"ask for --vocab-size {got} or less to silence this"
    if no_pairs:
        return (
            f"{head}: every word (pre-split chunk) of the training text is already a single "
            f"token, so no pair is left to merge; give more text, or {tail}"
        )
    return (
        f"{head}: no pair of adjacent tokens occurs {min_frequency} times or more "
        f"(--min-frequency {min_frequency}); give more text, lower --min-frequency, or {tail}"
    )


def check_vocab_size(vocab_size: int, n_special: int) -> None:
    """A byte-level vocabulary holds at least the 256 bytes and the special tokens."""
    if vocab_size < 256 + n_special:
        raise TinyGPTError(
            f"BPE vocabulary size {vocab_size} is too small: it must hold the 256 byte tokens "
            f"and {n_special} special token(s), so use --vocab-size {256 + n_special} or more"
        )


def train_hf(
    texts: Iterable[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (),
    min_frequency: int = 1,
    normalizer: Normalizer | None = None,
) -> BPETokenizer:
    """Train with Hugging Face `tokenizers` (fast, native code) into the same format.

    Same pre-tokenizer, alphabet, tie-break and `min_frequency` rule as ours, so it learns
    the same merges (as byte strings; its ids order the 256 bytes by their printable
    stand-ins, ours by value). The specials are added after training so that they take the
    last ids, as ours do. The texts are normalised here, by our `normalizer`, as for ours.
    """
    regex_text = resolve_pattern(pattern)
    specials = _special_list(special_tokens)
    check_vocab_size(vocab_size, len(specials))
    check_min_frequency(min_frequency)
    try:
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise TinyGPTError(
            "backend 'hf' needs Hugging Face tokenizers: pip install tokenizers "
            "(or use --backend native)"
        ) from None
    seen = 0

    def counted() -> Iterable[str]:
        nonlocal seen
        for t in texts:
            seen += len(t)
            yield normalizer(t) if normalizer is not None else t

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex_text), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        min_frequency=min_frequency,
        show_progress=False,
    )
    tok.train_from_iterator(counted(), trainer=trainer)
    if not seen:
        raise TinyGPTError("the training text is empty; give a corpus or file that holds some text")
    tok.add_special_tokens(specials)
    out = BPETokenizer.from_json_dict(json.loads(tok.to_str()), where="the trained tokenizer")
    out.pattern_name = pattern
    out.normalizer = normalizer
    if out.vocab_size < vocab_size:
        # Its trainer stops for the same two reasons as ours. With min_frequency 1 only
        # running out of pairs can stop it; above 1, "no pair occurs that often" is true in
        # both cases.
        out.shortfall = shortfall_message(
            out.vocab_size, vocab_size, min_frequency, no_pairs=min_frequency <= 1
        )
    return out
