"""Small file helpers every stage shares: atomic writes, hashes, JSON Lines.

An atomic write goes to a hidden temporary file beside the destination (same folder, so the
same file system), is flushed and fsync'ed, then renamed over the destination; the folder is
fsync'ed so the rename itself survives a crash. A reader — or a process killed at any
instant — sees either the old file or the new one, never half of one. Temporary files are
created with the default permissions (the umask applies), so every file a command writes has
the same mode whether or not it was written atomically.

This module knows nothing about what the files contain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinygpt.errors import TinyGPTError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` for work in progress: `.NAME.tag-PID`."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename (module docstring)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 1) -> Path:
    """`obj` as UTF-8 JSON (non-ASCII kept as is), written atomically; folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy the file `src` to `dst` so that `dst` is never seen half-copied."""
    dst = Path(dst)
    tmp = temp_sibling(dst)
    try:
        shutil.copyfile(src, tmp)
        fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    return dst


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_error(
    path: str | os.PathLike[str], offset: int, exc: UnicodeDecodeError
) -> TinyGPTError:
    """The one message for bytes that are not UTF-8, with their offset in the file."""
    return TinyGPTError(
        f"{path} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
        f"{offset}); convert it to UTF-8, or pass --errors replace to substitute U+FFFD"
    )


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: str = "strict",
    skip: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, parsed value)` for every non-blank line of a JSON Lines file.

    A line that is not JSON, or bytes that are not UTF-8 (with errors="strict"), raise a
    TinyGPTError naming the file and line; `errors="replace"` turns bad bytes into U+FFFD.
    With `skip`, a line that is not JSON is instead handed to `skip(line number, reason)`
    and passed over (a reader that counts and reports malformed lines).
    """
    path = Path(path)
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as exc:
                raise decode_error(path, start + exc.start, exc) from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                if skip is None:
                    raise TinyGPTError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                skip(lineno, f"not valid JSON ({exc.msg})")
