"""Reading `tokenizer.json` files and fingerprinting them.

Owns: turning a file on disk into the right `Tokenizer` (character or byte-level BPE,
including one trained by Hugging Face `tokenizers`), with clear errors for files that are
not tokenizers, and the content hash recorded in a dataset's `meta.json`. Knows nothing
about how tokenizers are trained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.data.tokenizer.base import EOT, UNK, Tokenizer
from tinygpt.data.tokenizer.bpe import BPETokenizer
from tinygpt.data.tokenizer.char import CHAR_SPLIT_PATTERN, CharTokenizer
from tinygpt.data.tokenizer.normalize import Normalizer


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise TinyGPTError(
            f"tokenizer file {str(p)!r} does not exist; train one with `tinygpt tokenizer train`"
        )
    return p


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a `tokenizer.json` (or a folder holding one): character-level or byte-level BPE."""
    p = _resolve(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyGPTError(f"{p} is not a tokenizer.json (not valid JSON: {exc})") from None
    return tokenizer_from_json_dict(data, where=str(p))


def tokenizer_from_json_dict(data: Any, *, where: str = "tokenizer.json") -> Tokenizer:
    """Build a tokenizer from the parsed content of a `tokenizer.json`."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TinyGPTError(
            f"{where} is not a tokenizer.json (no 'model' section); "
            "give a file written by `tinygpt tokenizer train` or Hugging Face tokenizers"
        )
    kind = data["model"].get("type")
    try:
        if kind == "BPE":
            return BPETokenizer.from_json_dict(data, where=where)
        if kind == "WordLevel":
            return _char_from_json_dict(data, where)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TinyGPTError(
            f"{where} is a malformed tokenizer.json ({type(exc).__name__}: {exc})"
        ) from None
    raise TinyGPTError(
        f"{where}: tokenizer model {kind!r} is not supported; tinygpt reads character-level "
        "(WordLevel) and byte-level BPE tokenizers"
    )


def _char_from_json_dict(data: dict[str, Any], where: str) -> CharTokenizer:
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "Split" or pre.get("pattern", {}).get("Regex") != CHAR_SPLIT_PATTERN:
        raise TinyGPTError(
            f"{where}: a WordLevel tokenizer is read only as a character tokenizer, whose "
            f"pre-tokenizer splits on {CHAR_SPLIT_PATTERN!r}"
        )
    vocab: dict[str, int] = data["model"]["vocab"]
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    chars = sorted((i, s) for s, i in vocab.items() if s not in specials)
    if [i for i, _ in chars] != list(range(len(chars))):
        raise TinyGPTError(f"{where}: character ids must be 0..n-1 without gaps")
    extra = [s for s, _ in sorted(specials.items(), key=lambda kv: kv[1]) if s not in (EOT, UNK)]
    normalizer = Normalizer.from_json(data.get("normalizer"), where=where)
    try:
        tok = CharTokenizer(
            [s for _, s in chars], unk=UNK in specials, special=extra, normalizer=normalizer
        )
    except TinyGPTError as exc:
        raise TinyGPTError(f"{where}: {exc}") from None
    if tok.special_tokens != specials:
        raise TinyGPTError(
            f"{where}: special tokens {specials} do not follow the character layout "
            f"({EOT} right after the characters, then {UNK} if present, then the others)"
        )
    return tok


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a `tokenizer.json`'s bytes: the same file gives the same tokens."""
    return sha256_file(_resolve(path))
