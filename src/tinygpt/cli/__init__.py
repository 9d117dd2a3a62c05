"""`tinygpt <command>`: argument parsing and dispatch only.

Each command group lives in its own module under `tinygpt.cli` and exposes
`register(subparsers)`, which adds its subcommands and sets `func` on them. The function
receives the parsed `argparse.Namespace` and returns an exit status. The work itself is done
by importable functions in the stage modules (`tinygpt.data.prepare`, `tinygpt.train.train`, ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tinygpt import __version__
from tinygpt.errors import TinyGPTError

# Command-group modules, in the order `--help` lists them.
GROUPS = ["corpus", "tokenizer", "prepare", "model", "train", "evaluate"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in `--help` and keep description line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygpt",
        description="Build, train, evaluate and sample small GPT-style language models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f"tinygpt.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not written yet
            if exc.name != f"tinygpt.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Commands that take dotted config overrides (`--model.n_layer 6`) set
    # `allow_overrides`; for the others an unknown argument is a usage error.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "allow_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TinyGPTError as exc:
        print(f"tinygpt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
