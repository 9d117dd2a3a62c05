"""GPT-2's own vocabulary, offline: where its merge ranks come from, and their conversion.

Owns: finding GPT-2's `gpt2.tiktoken` rank file (a path the user names, the cache, or the
package index), reading rank files, recovering BPE merges from ranks, and the cached
`tokenizer.json` made from them. Knows nothing about datasets or corpora; from
`tinygpt.data.cache` it takes only the cache folder and pip's download.

Where the ranks come from (the first that exists wins):

1. `$TINYGPT_GPT2_TIKTOKEN`, the path of a `gpt2.tiktoken` file;
2. the cached copy, `cache_dir()/tokenizers/gpt2.tiktoken` (copy the file there by hand to
   work without the package index);
3. the `openai-whisper==20250625` source distribution on the package index: downloaded by pip
   without dependencies and never installed, checked against its pinned SHA-256, and the
   one member `whisper/assets/gpt2.tiktoken` read out of the tar archive (nothing else is
   extracted, nothing of it imported), then cached as in 2.

Whatever the source, the file must have the pinned SHA-256 of GPT-2's ranks.

The format: one line per token, `base64(token bytes) rank`, ranks 0..50255. Ranks 0-255 are
the 256 single bytes, in GPT-2's printable-first order rather than byte order (rank 0 is
`!`); the rest are merged tokens in the order they were learned. `<|endoftext|>` is not in
the file; GPT-2 gives it id 50256.

Merges from ranks. A rank file lists tokens, not merges, but BPE leaves the merges implied:
the token of rank r was made by joining two tokens of smaller rank. Which two: encode r's
bytes by BPE using only tokens of rank below r (repeatedly join the adjacent pair whose join
has the lowest rank); this ends in exactly two parts, and joining them is merge r. (The same
recovery turns tiktoken's files into `merges` lists elsewhere.) The merges in rank order,
ids equal to ranks, GPT-2's pre-split pattern and `<|endoftext|>` = 50256 make a
`BPETokenizer` that encodes "Hello world" as [15496, 995], as GPT-2 does. The result is
cached as `cache_dir()/tokenizers/gpt2-<sha>-c<version>.json`, so the conversion runs once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import as_umask_allows, sha256_file
from tinygpt.data.cache import cache_dir, pip_download
from tinygpt.data.tokenizer.base import EOT
from tinygpt.data.tokenizer.bpe import PATTERNS, BPETokenizer
from tinygpt.data.tokenizer.io import load_tokenizer

PACKAGE = "openai-whisper"
VERSION = "20250625"
SDIST_SHA256 = "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"
MEMBER = "whisper/assets/gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENV = "TINYGPT_GPT2_TIKTOKEN"
VOCAB_SIZE = 50257  # 50,256 ranked tokens and <|endoftext|>

# Bump when the conversion changes, so that cached tokenizer.json files are rebuilt.
CONVERTER_VERSION = 1

# A rank file larger than this is not GPT-2's (which is 0.8 MB); refuse before reading it.
_MAX_RANK_FILE = 64 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_ranks_path() -> Path:
    """Where the verified `gpt2.tiktoken` is cached (whether or not it is there)."""
    return cache_dir() / "tokenizers" / "gpt2.tiktoken"


def _offline_hint() -> str:
    return (
        f"put GPT-2's gpt2.tiktoken ({MEMBER} in {PACKAGE}=={VERSION}) at "
        f"{cached_ranks_path()} or name its path in {ENV}"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        as_umask_allows(tmp)  # mkstemp makes it its owner's only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _checked(data: bytes, where: str) -> bytes:
    digest = _sha256(data)
    if digest != RANKS_SHA256:
        raise TinyGPTError(
            f"{where} is not GPT-2's gpt2.tiktoken (sha256 {digest}, expected {RANKS_SHA256}); "
            f"use {MEMBER} from {PACKAGE}=={VERSION}"
        )
    return data


def _read_limited(path: Path, where: str) -> bytes:
    if path.stat().st_size > _MAX_RANK_FILE:
        raise TinyGPTError(f"{where} is {path.stat().st_size:,} bytes; not a gpt2.tiktoken file")
    return path.read_bytes()


def extract_ranks(sdist: Path) -> bytes:
    """The bytes of `whisper/assets/gpt2.tiktoken` inside the source distribution `sdist`.

    Only that member is read, through `tarfile.extractfile`: no path from the archive is
    written to disk.
    """
    try:
        with tarfile.open(sdist, "r:*") as tf:
            for member in tf:
                top, _, rest = member.name.partition("/")
                if rest == MEMBER and top and member.isfile():
                    if member.size > _MAX_RANK_FILE:
                        break
                    f = tf.extractfile(member)
                    if f is not None:
                        return f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TinyGPTError(f"{sdist} is not a readable source distribution ({exc})") from None
    raise TinyGPTError(f"{sdist.name} holds no {MEMBER}; it is not the expected {PACKAGE}")


def _fetch_ranks() -> bytes:
    """Download the pinned sdist, verify it, and return the rank file inside it."""
    with tempfile.TemporaryDirectory(prefix="tinygpt-gpt2-") as tmp:
        sdist = pip_download(PACKAGE, VERSION, Path(tmp), sdist=True, fallback=_offline_hint())
        digest = sha256_file(sdist)
        if digest != SDIST_SHA256:
            raise TinyGPTError(
                f"{sdist.name} has sha256 {digest}, expected {SDIST_SHA256}: the index served "
                f"a different file; retry, check your package index, or {_offline_hint()}"
            )
        return _checked(extract_ranks(sdist), f"{MEMBER} in {sdist.name}")


def ranks_file() -> Path:
    """The verified `gpt2.tiktoken`: named by $TINYGPT_GPT2_TIKTOKEN, cached, or fetched."""
    named = os.environ.get(ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise TinyGPTError(
                f"{ENV}={named} does not exist; point it at a gpt2.tiktoken file, or unset it "
                "to fetch GPT-2's vocabulary from the package index"
            )
        _checked(_read_limited(path, f"{ENV}={named}"), f"{ENV}={named}")
        return path
    cached = cached_ranks_path()
    if cached.is_file():
        _checked(_read_limited(cached, str(cached)), f"the cached {cached}")
        return cached
    _write_atomic(cached, _fetch_ranks())
    return cached


# --- rank files and merges (pure functions, tested on small inputs) ------------------------


def read_ranks(data: bytes, *, where: str = "rank file") -> dict[bytes, int]:
    """Parse a tiktoken rank file: token bytes -> rank, ranks 0..n-1 each used once.

    >>> read_ranks(b"YQ== 0\\nYg== 1\\nYWI= 2\\n")
    {b'a': 0, b'b': 1, b'ab': 2}
    """
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected 'base64 rank'")
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except (binascii.Error, ValueError) as exc:
            raise TinyGPTError(f"{where}:{lineno}: not a 'base64 rank' line ({exc})") from None
        if not token or token in ranks:
            raise TinyGPTError(f"{where}:{lineno}: token {token!r} is empty or listed twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TinyGPTError(f"{where}: the ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """`token`'s bytes merged by BPE with only the tokens of rank < `below`.

    At each step the adjacent pair whose join has the lowest rank is joined (the leftmost
    when the same join occurs twice), as tiktoken encodes.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = below, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def merges_from_ranks(
    ranks: dict[bytes, int], *, where: str = "rank file"
) -> list[tuple[bytes, bytes]]:
    """The merge that made each token of more than one byte, in rank order.

    >>> ranks = {b"a": 0, b"b": 1, b"ab": 2, b"bb": 3, b"abb": 4}
    >>> merges_from_ranks(ranks)
    [(b'a', b'b'), (b'b', b'b'), (b'ab', b'b')]
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise TinyGPTError(
                f"{where}: token {token!r} (rank {rank}) is not the join of two tokens of "
                "lower rank; this is not a byte-pair-encoding rank file"
            )
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_from_ranks(ranks: dict[bytes, int], *, where: str = "rank file") -> BPETokenizer:
    """A byte-level BPE with GPT-2's pre-split pattern whose ids are the ranks, and
    `<|endoftext|>` right after them."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TinyGPTError(
            f"{where}: lacks the single byte {bytes([missing[0]])!r}; a byte-level BPE needs "
            "all 256"
        )
    n = len(ranks)
    vocab: list[bytes | None] = [None] * (n + 1)
    for token, rank in ranks.items():
        vocab[rank] = token
    merges = [(ranks[a], ranks[b]) for a, b in merges_from_ranks(ranks, where=where)]
    return BPETokenizer(
        vocab=vocab,
        merges=merges,
        special_tokens={EOT: n},
        pattern=PATTERNS["gpt2"],
        pattern_name="gpt2",
    )


def gpt2_tokenizer_file() -> Path:
    """The path of GPT-2's tokenizer.json, converted once and cached (fetching the ranks
    if needed)."""
    target = cache_dir() / "tokenizers" / f"gpt2-{RANKS_SHA256[:16]}-c{CONVERTER_VERSION}.json"
    if target.is_file():
        return target
    source = ranks_file()
    tok = tokenizer_from_ranks(
        read_ranks(source.read_bytes(), where=str(source)), where=str(source)
    )
    return tok.save(target)


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's byte-level BPE tokenizer (50,257 ids; `<|endoftext|>` is 50256)."""
    tok = load_tokenizer(gpt2_tokenizer_file())
    assert isinstance(tok, BPETokenizer)
    return tok
