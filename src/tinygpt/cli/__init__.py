"""`tinygpt <command>`: argument parsing and dispatch only.

Each command group lives in its own module under `tinygpt.cli` and exposes
`register(subparsers)`, which adds its subcommands and sets `func` on them. The function
receives the parsed `argparse.Namespace` and returns an exit status. The work itself is done
by importable functions in the stage modules (`tinygpt.data.prepare.prepare`, `tinygpt.train.pretrain.train`, ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError

# Command-group modules, in the order `--help` lists them.
GROUPS = [
    "corpus",
    "tokenizer",
    "prepare",
    "model",
    "train",
    "finetune",
    "chat",
    "evaluate",
    "export",
    "serve",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep description line breaks and show each flag's default when it has a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tinygpt",
        description="Build, train, evaluate and sample small GPT-style language models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"tinygpt.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # a Ctrl-C while the parser is built is one line too
        # Commands that take dotted config overrides (`--model.n_layer 6`) set
        # `allow_overrides`; for the others an unknown argument is a usage error. A number
        # outside its range (tinygpt.core.numbers) raises TinyGPTError while parsing.
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "allow_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except TinyGPTError as exc:
        print(f"tinygpt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # unwritable folder, full disk, missing file outside our checks
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"tinygpt: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("tinygpt: terminated", file=sys.stderr)
        return 143


class Terminated(BaseException):
    """SIGTERM, turned into an exception by `entry` so that a command stopped by a scheduler
    or `docker stop` unwinds (closing files, removing temporary ones) and exits 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def entry() -> NoReturn:
    """The `tinygpt` console script and `python -m tinygpt`: `main()`, then a quick exit.

    Once torch is imported, the interpreter's own teardown (finalising torch's modules and
    unloading its libraries) takes about 0.9 s on a 2-core CPU: a second of every
    command's wall time, spent after its work is done. By the time `main()` returns,
    everything a command writes is closed (files through context managers and atomic
    renames, worker pools through `with`, W&B and TensorBoard explicitly); logging and the
    standard streams are flushed here, and the process ends with `os._exit`.
    """
    import contextlib
    import logging
    import os
    import signal

    signal.signal(signal.SIGTERM, _terminate)  # training installs a gentler one of its own
    try:
        code = main()
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe (`tinygpt ... | head`) has nothing left to keep
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def reference_markdown() -> str:
    """docs/cli.md: every command's `--help`, generated from the parser itself.

    `python -m tinygpt.cli --write-reference docs/cli.md` rewrites it; a test fails when the
    file and the parser disagree, so the reference cannot drift from the code.
    """
    import os

    parser = build_parser()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width
    try:
        lines = [
            "# Command-line reference",
            "",
            "Generated from the argument parser (`python -m tinygpt.cli --write-reference"
            " docs/cli.md`);",
            "a test checks that it is current. Settings of `train` resolve as defaults <"
            " `--preset` <",
            "`--config FILE` < dotted overrides (`--model.n_layer 6`, `--train.lr=3e-4`); the",
            "settings and their defaults are in `tinygpt.core.config` and `tinygpt.core.model.GPTConfig`.",
            "Errors in use exit with status 2 and one line on standard error.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, command in sub.choices.items():
            lines += [
                "",
                f"## tinygpt {name}",
                "",
                "```text",
                command.format_help().rstrip(),
                "```",
            ]
            nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
            for action in nested:
                for child_name, child in action.choices.items():
                    lines += [
                        "",
                        f"### tinygpt {name} {child_name}",
                        "",
                        "```text",
                        child.format_help().rstrip(),
                        "```",
                    ]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines) + "\n"
