"""Run the Dockerfile's install and start steps without a container engine, and say how far.

Usage: python scripts/check_docker_steps.py [--model RUN] [--torch-spec SPEC] [--keep DIR]

What it does, in order:

1. Reads the Dockerfile (continuation lines joined, comments dropped) and .dockerignore.
2. Lays out the build context the image would get: each COPY source must exist and be let
   through by .dockerignore; it is copied into a folder standing for the image's WORKDIR.
3. Makes a fresh virtual environment (no system packages) standing for the image's Python,
   and runs each `pip` RUN step in it with the Dockerfile's ARG and ENV values as the
   environment. TORCH_SPEC is replaced by --torch-spec (default `torch==2.13.0`): the
   default's PyTorch wheel index cannot be reached from machines that see only PyPI.
   Other RUN steps (creating the user) are not run; they are listed.
4. Starts ENTRYPOINT + CMD from the environment, with CMD's model folder (/model) replaced
   by a read-only copy of --model (default: a tiny run made here), the port by a free one
   and the host by 127.0.0.1; as root it runs the server as the image's USER id with
   setpriv. It runs the HEALTHCHECK command until it passes, fetches the chat page, /info and
   one completion, then stops the server with SIGTERM.
5. Starts it again with a model folder that does not exist: one line, exit status 2.

It prints each step and, at the end, what was checked and what was not. Exit status 0 when
every step passed. Nothing is pulled or built: there is no base image here, so the Python
version and system libraries are this machine's, not python:3.12-slim's.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Dockerfile:
    base: str = ""
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    user: str = "root"
    expose: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped, continuations joined."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue  # comments, also inside a continued instruction, as Docker reads them
        if not line and not current:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def exec_form(text: str) -> list[str]:
    """A JSON array (exec form), or the shell form as `/bin/sh -c TEXT`."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return ["/bin/sh", "-c", text]


def parse(text: str) -> Dockerfile:
    d = Dockerfile()
    for word, rest in instructions(text):
        if word == "FROM":
            d.base = rest
        elif word == "ARG":
            name, _, value = rest.partition("=")
            d.args[name.strip()] = " ".join(shlex.split(value)) if value else ""
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                d.env[key] = value
        elif word == "WORKDIR":
            d.workdir = rest
        elif word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            d.copies.append((parts[:-1], parts[-1]))
        elif word == "RUN":
            d.runs.append(rest)
        elif word == "USER":
            d.user = rest
        elif word == "EXPOSE":
            d.expose += rest.split()
        elif word == "HEALTHCHECK":
            _, _, command = rest.partition("CMD ")
            d.healthcheck = exec_form(command)
        elif word == "ENTRYPOINT":
            d.entrypoint = exec_form(rest)
        elif word == "CMD":
            d.cmd = exec_form(rest)
    return d


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (relative, /-separated) out of the context: the
    last pattern that matches the path or a folder above it decides; `!` lets it in."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(
            fnmatch.fnmatch(c, pat) or (pat.startswith("**/") and fnmatch.fnmatch(c, pat[3:]))
            for c in candidates
        ):
            out = not negate
    return out


def dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = [x.strip() for x in path.read_text().splitlines()]
    return [x for x in lines if x and not x.startswith("#")]


def say(line: str) -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(python: Path, out: Path) -> None:
    """A tiny run folder (random weights, a char tokenizer), made with the venv's tinygpt."""
    code = f"""
import torch
from tinygpt.core.config import DataConfig, RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.infer.loader import save_model_run
from tinygpt.data.tokenizer import train_tokenizer
tok = train_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz ROMEO:\\n"])
config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
torch.manual_seed(0)
save_model_run({str(out)!r}, RunConfig(model=config, data=DataConfig(tokenizer="char")),
               GPT(config), tok)
"""
    subprocess.run([str(python), "-c", code], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a run folder to serve")
    p.add_argument("--torch-spec", default="torch==2.13.0", help="replaces ARG TORCH_SPEC")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = p.parse_args(argv)
    started = time.monotonic()
    dockerfile = (ROOT / "Dockerfile").read_text()
    d = parse(dockerfile)
    patterns = dockerignore(ROOT)
    notes: list[str] = []
    say(f"Dockerfile: FROM {d.base}; USER {d.user}; EXPOSE {' '.join(d.expose)}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="tinygpt-docker-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the server runs as another user: it must reach the venv
    try:
        # 2. the build context
        workdir = work / d.workdir.lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        for sources, dest in d.copies:
            for src in sources:
                if ignored(src, patterns):
                    raise SystemExit(f"COPY {src}: .dockerignore keeps it out of the context")
                origin = ROOT / src
                if not origin.exists():
                    raise SystemExit(f"COPY {src}: no such file in the repository")
                # Docker's rules: a folder's contents go into dest; a file goes into dest
                # when dest ends with "/" (or several sources are given), else becomes dest.
                into = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
                target = workdir / dest
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
                    )
                else:
                    target = target / origin.name if into else target
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
                say(f"COPY {src} -> {d.workdir}/{target.relative_to(workdir)}")
        for name in (".venv", "runs", ".git", "tests", "data"):
            assert ignored(name, patterns), f".dockerignore lets {name} into the context"

        # 3. a fresh environment, then the RUN steps
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        env.update(d.args)
        env["TORCH_SPEC"] = args.torch_spec
        env.update(d.env)
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(venv)
        if d.args.get("TORCH_SPEC") != args.torch_spec:
            notes.append(
                f"ARG TORCH_SPEC: ran with {args.torch_spec!r} instead of the default "
                f"{d.args.get('TORCH_SPEC')!r} (that index is not reachable from here)"
            )
        for command in d.runs:
            first = shlex.split(command)[0]
            if first not in ("pip", "python", "python3"):
                notes.append(f"RUN {command}: not run (changes this machine's system)")
                say(f"skip RUN {command}")
                continue
            say(f"RUN {command}")
            t = time.monotonic()
            subprocess.run(["bash", "-c", command], cwd=workdir, env=env, check=True)
            say(f"  done in {time.monotonic() - t:.1f} s")
        version = subprocess.run(
            [
                str(python),
                "-c",
                "import sys, torch, tinygpt; print(sys.version.split()[0], "
                "torch.__version__, tinygpt.__file__)",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        say(f"installed: Python {version[0]}, torch {version[1]}, tinygpt from {version[2]}")
        if not version[2].startswith(str(venv)):
            raise SystemExit("tinygpt was not installed into the fresh environment")

        # 4. the model, read-only as a :ro mount, and the server as the image starts it
        model = work / "model"
        if model.exists():
            shutil.rmtree(model)
        if args.model is not None:
            shutil.copytree(args.model, model)
        else:
            make_run(python, model)
        for path in [model, *model.rglob("*")]:  # read-only, as a :ro mount, and no more:
            os.chmod(path, path.stat().st_mode & ~0o222)  # the modes tinygpt wrote stay
        port = free_port()
        argv_ = [*d.entrypoint, *d.cmd]
        argv_ = [str(model) if a == "/model" else a for a in argv_]
        exposed = d.expose[0].split("/")[0]
        argv_ = [str(port) if a == exposed else "127.0.0.1" if a == "0.0.0.0" else a for a in argv_]
        run_as: list[str] = []
        uid = d.user.split(":")[0]
        if os.geteuid() == 0 and uid.isdigit() and shutil.which("setpriv"):
            home = work / "home"
            home.mkdir(exist_ok=True)
            os.chown(home, int(uid), int(uid))
            env["HOME"] = str(home)
            run_as = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
            say(f"the server runs as uid {uid} (the image's USER), with setpriv")
        else:
            notes.append(f"USER {d.user}: the server ran as this user, uid {os.geteuid()}")
        say(f"start: {' '.join(argv_)}")
        server = subprocess.Popen(
            [*run_as, *argv_], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        health = [
            str(python) if a == "python" else a.replace(f":{exposed}/", f":{port}/")
            for a in d.healthcheck
        ]
        try:
            t = time.monotonic()
            while subprocess.run(health, env=env, capture_output=True).returncode != 0:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited: {server.communicate()[1].strip()}")
                if time.monotonic() - t > 60:
                    raise SystemExit("HEALTHCHECK did not pass within the 60 s start period")
                time.sleep(0.5)
            say(f"HEALTHCHECK passed {time.monotonic() - t:.1f} s after the start")
            base = f"http://127.0.0.1:{port}"
            page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
            assert "/static/chat.js" in page, "the chat page is not served"
            info = json.loads(urllib.request.urlopen(base + "/info", timeout=10).read())
            body = json.dumps({"model": info["model"], "prompt": "ROMEO:", "max_tokens": 8})
            request = urllib.request.Request(
                base + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
            )
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            assert answer["usage"]["completion_tokens"] >= 1
            say(
                f"GET / (chat page), GET /info ({info['model']}, {info['parameters']} "
                f"parameters), POST /v1/completions ({answer['usage']['completion_tokens']} "
                "tokens): ok"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                _, err = server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                raise SystemExit("the server did not stop within 20 s of SIGTERM") from None
        say(f"SIGTERM: the server stopped (exit status {server.returncode})")
        if "serving" not in err:
            raise SystemExit(f"the server did not say what it serves: {err}")

        # 5. a model folder that does not exist
        missing = [str(work / "no-such-model") if a == str(model) else a for a in argv_]
        out = subprocess.run([*run_as, *missing], env=env, capture_output=True, text=True)
        lines = out.stderr.strip().splitlines()
        if out.returncode != 2 or len(lines) != 1:
            raise SystemExit(f"a missing model gave exit {out.returncode}: {out.stderr}")
        say(f"a missing model folder: exit status 2, one line: {lines[0]}")
    finally:
        if args.keep is None:
            for path in work.rglob("*"):
                if path.is_dir() and not path.is_symlink():
                    os.chmod(path, 0o755)
            shutil.rmtree(work, ignore_errors=True)

    say("")
    say(
        f"checked in {time.monotonic() - started:.0f} s: the build context (COPY and "
        ".dockerignore), the pip RUN steps in a fresh virtual environment, ENTRYPOINT + CMD "
        "serving a read-only model folder, HEALTHCHECK, the chat page, /info, a completion, "
        "SIGTERM, and a missing model folder"
    )
    say(
        f"not checked: the base image {d.base} (no container engine here: Python "
        f"{sys.version.split()[0]} and this machine's libraries instead)"
    )
    for note in notes:
        say(f"not checked: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
