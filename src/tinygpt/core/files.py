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

import codecs
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError


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


def file_creation_mask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and set it back
    os.umask(mask)
    return mask


def as_umask_allows(path: str | os.PathLike[str]) -> Path:
    """Give `path` the mode a plain `open` or `mkdir` gives (0o666 or 0o777, less the umask).
    safetensors and `tempfile` create their files and folders readable by their owner only;
    what tinygpt writes must be readable like any other file (by a server running as another
    user, say)."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~file_creation_mask())
    return path


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` for work in progress: `.NAME.tag-PID` (`remove_leftovers`
    clears those of processes that died). What is written there replaces `path` whole, by a
    rename: the folder a command runs in cannot be replaced that way, so it is refused.
    """
    path = Path(path)
    if path.name in ("", ".", "..") or path.resolve() == Path.cwd().resolve():
        full = Path(os.path.abspath(path))
        if full == Path.cwd() or full.name == "":
            raise TinyGPTError(
                f"{path} is the folder this command runs in, which cannot be replaced as a"
                " whole; give a new folder inside or beside it (for example --out export)"
            )
        path = full
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-.*)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is only starting: nothing of its own is half-written
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove what killed writes left in `folder`: hidden `.NAME.tmp-PID...` and
    `.NAME.old-PID...` files and folders (see `temp_sibling`) whose process is gone. With
    `name`, only those of that name. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        m = _LEFTOVER.match(path.name)
        if m is None or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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


def kind_of(path: str | os.PathLike[str]) -> str:
    """What is at `path`, in words: "missing", "a file", "a folder", "a FIFO", ...

    >>> kind_of("/dev/null")
    'a character device'
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    for test, words in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def require_file(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """`path` if it is a regular file, else one clear error naming what is there instead."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "a file":
        return path
    hint = f"; {hint}" if hint else ""
    if kind == "missing":
        raise TinyGPTError(f"{what} {path} does not exist{hint}")
    raise TinyGPTError(f"{what} {path} is {kind}, not a file{hint}")


def require_folder(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """`path` if it is a folder, else one clear error naming what is there instead."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "a folder":
        return path
    hint = f"; {hint}" if hint else ""
    if kind == "missing":
        raise TinyGPTError(f"{what} {path} does not exist{hint}")
    raise TinyGPTError(f"{what} {path} is {kind}, not a folder{hint}")


def read_text(path: str | os.PathLike[str], what: str = "file", hint: str = "") -> str:
    """A text file a user handed in, read as UTF-8 (a byte-order mark dropped), with one
    clear error when it is missing, not a regular file, or not UTF-8."""
    path = require_file(path, what, hint)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TinyGPTError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset"
            f" {exc.start}); save it as UTF-8"
        ) from None


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
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # a byte-order mark, not data
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as exc:
                raise decode_error(path, start + exc.start, exc) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                reason = _json_problem(exc)
                if skip is None:
                    raise TinyGPTError(f"{path}:{lineno}: not valid JSON ({reason})") from None
                skip(lineno, f"not valid JSON ({reason})")
                continue
            yield lineno, value


def _json_problem(exc: BaseException) -> str:
    """Why a line is no JSON we read: a syntax error, nesting deeper than Python's stack, or
    an integer longer than Python converts (4,300 digits)."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0]
