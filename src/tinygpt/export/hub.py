"""Pushing an exported model to the Hugging Face Hub: `tinygpt push` and `push_to_hub`.

Owns: finding the access token, exporting a run folder first (into `RUN/export/hf`, replaced
on every push), checking that the Hub answers, and the one call that uploads
(`upload_folder`), kept apart so that tests replace it and no test contacts the Hub.

The token is looked up in this order, first found wins:

1. the `HF_TOKEN` environment variable;
2. a `.env` file in the working directory, line `HF_TOKEN=...` (`export` and quotes allowed);
3. the token a prior `hf auth login` stored (`huggingface_hub.get_token()`).

It is never printed, logged or written anywhere: it goes to the upload call only, and an
error message from the Hub is scrubbed of it before it is shown. Before uploading, the Hub's
endpoint gets one request with a short timeout (`PROBE_TIMEOUT_S`, through huggingface_hub's
own HTTP session, so proxies apply): an offline machine fails at once with one line that
says where the export is on disk and how to push it later. The upload itself has no overall
limit, since a large model takes as long as it takes.

This module knows nothing about how the folder is written (`tinygpt.export.hf_run`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import read_text
from tinygpt.core.run import RunDir
from tinygpt.export.hf_run import export_run

PROBE_TIMEOUT_S = 10.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _hub() -> Any:
    try:
        # The submodules are imported by name: the package exposes them lazily, if at all.
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.utils
    except ImportError as exc:
        raise TinyGPTError(
            "pushing needs the `huggingface_hub` package; install it with:"
            " pip install 'tinygpt[hub]'"
        ) from exc
    return huggingface_hub


# ------------------------------------------------------------------------------ token


def token_from_dotenv(path: str | Path) -> str | None:
    """The value of `HF_TOKEN` in a `.env` file, or None (no file, no such line)."""
    if not Path(path).is_file():
        return None
    return dotenv_token(read_text(path, "the .env file"))


def dotenv_token(text: str) -> str | None:
    """The value of the first non-empty `HF_TOKEN=` line of a `.env` text.

    >>> dotenv_token("# secrets\\nOTHER=1\\nexport HF_TOKEN='hf_abc'\\n")
    'hf_abc'
    >>> dotenv_token("HF_TOKEN=hf_x  # a comment"), dotenv_token("HF_TOKENS=hf_y")
    ('hf_x', None)
    """
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "HF_TOKEN":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        if value:
            return value
    return None


def find_token(cwd: str | Path | None = None) -> tuple[str, str] | None:
    """(token, where it came from) by the order in the module docstring, or None."""
    token: str | None = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token, "the HF_TOKEN environment variable"
    dotenv = Path(cwd or Path.cwd()) / ".env"
    token = token_from_dotenv(dotenv)
    if token:
        return token, f"{dotenv}"
    try:
        token = _hub().get_token()
    except TinyGPTError:
        token = None
    if token:
        return token, "the stored login (hf auth login)"
    return None


def _scrub(text: str, token: str) -> str:
    return " ".join(text.replace(token, "***").split()) if token else " ".join(text.split())


# ------------------------------------------------------------------------------ upload


def upload_folder(
    folder: Path, *, repo_id: str, token: str, private: bool, revision: str | None
) -> str:
    """The one call that talks to the Hub: create the repository (and branch) if needed,
    upload every file of `folder`; returns the URL of the commit or repository."""
    hub = _hub()
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message="Upload a model exported by tinygpt",
    )
    return str(getattr(info, "commit_url", "") or f"{hub.constants.ENDPOINT}/{repo_id}")


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> None:
    """Refuse a repository name that is not USER/NAME (before any work is done)."""
    if not _REPO_ID.match(repo_id or ""):
        raise TinyGPTError(f"{flag} {repo_id!r} is not of the form USER/NAME")


def check_push_ready(repo_id: str, flag: str = "--repo-id") -> None:
    """What can be checked before hours of training: the name's form and the package.
    The token and the network are looked at when the push happens."""
    check_repo_id(repo_id, flag)
    _hub()


def check_reachable(later: str) -> None:
    """One request to the Hub's endpoint with a short timeout; `later` says how to retry."""
    hub = _hub()
    endpoint = hub.constants.ENDPOINT
    if hub.constants.HF_HUB_OFFLINE:
        raise TinyGPTError(f"HF_HUB_OFFLINE is set, so nothing is uploaded; {later}")
    try:
        hub.utils.get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # httpx/requests errors: no network, DNS, proxy, timeout
        raise TinyGPTError(f"cannot reach {endpoint} ({type(exc).__name__}); {later}") from None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    cwd: str | Path | None = None,
) -> str:
    """Upload a transformers folder to `repo_id`; returns the URL `upload_folder` gives."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file():
        raise TinyGPTError(
            f"{folder} is not a transformers model folder (no config.json); give a run folder"
            " or a folder written by `tinygpt export --format hf`"
        )
    later = (
        f"the export is on disk at {folder}; push it later with: tinygpt push {folder}"
        f" --repo-id {repo_id}"
    )
    found = find_token(cwd)
    if found is None:
        raise TinyGPTError(
            "no Hugging Face token: set HF_TOKEN, put a line HF_TOKEN=... in a .env file in"
            f" this folder, or run `hf auth login`; {later}"
        )
    token, _ = found
    check_reachable(later)
    try:
        return upload_folder(
            folder, repo_id=repo_id, token=token, private=private, revision=revision
        )
    except TinyGPTError:
        raise
    except Exception as exc:  # the Hub's HTTP errors, network errors mid-upload
        raise TinyGPTError(
            f"the upload to {repo_id} failed ({type(exc).__name__}: {_scrub(str(exc), token)});"
            f" {later}"
        ) from None


def push_to_hub(
    run_or_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    checkpoint: str = "best",
    license: str = "mit",
    language: str | None = None,
    cwd: str | Path | None = None,
) -> str:
    """Push a run folder (exported first to RUN/export/hf) or a transformers folder to the
    Hub as `repo_id` (USER/NAME); returns the URL of the upload. Raises TinyGPTError with
    one line (saying where the export is) when there is no token or no network."""
    path = Path(run_or_dir)
    check_repo_id(repo_id)
    if RunDir(path).is_run():
        folder = export_run(
            path,
            RunDir(path).hf_export_dir,
            checkpoint=checkpoint,
            force=True,
            repo_id=repo_id,
            license=license,
            language=language,
        )
    elif (path / "config.json").is_file():
        folder = path
    else:
        raise TinyGPTError(
            f"{path} is neither a run folder (config.toml) nor a transformers folder"
            " (config.json); give one of them"
        )
    return push_folder(folder, repo_id, private=private, revision=revision, cwd=cwd)
