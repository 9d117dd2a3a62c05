"""Run one benchmark for this code and for another checkout, interleaved, and compare.

    python benchmarks/compare.py --other ../old-checkout --rounds 3 --section engine \
        -- bench_engine.py --repeats 3

Each round runs `benchmarks/<script> ARGS` twice in fresh processes: in this tree (with this
`src/` first on the path) and in the other checkout (its own copy of the script and its own
`src/`), alternating which goes first, so that both meet the same machine load. After each run
the section the script wrote (`benchmarks/results/<section>.md` of that tree) is read back and
every numeric cell of its tables is collected; the medians over the rounds are compared cell
by cell and written to `benchmarks/results/compare_<section>.md` (this tree). The script's own
section in this tree is left as the last round of this code wrote it.

Only the cells named by `--columns` (header substrings; default: anything per second, any
milliseconds, any seconds) are compared. The ratio is this / other: above 1 means more of the
column's unit for this code (good for tokens/s, bad for ms).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from common import ROOT, machine, machine_line, write_section

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?x?$")


def parse_tables(markdown: str) -> dict[tuple[str, str, str], float]:
    """{(heading, row label, column): value} for every numeric cell of every table."""
    cells: dict[tuple[str, str, str], float] = {}
    heading, header = "", None
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if header is None:
            header = parts
            continue
        if all(set(p) <= set("-: ") for p in parts):
            continue
        label = parts[0]
        for name, text in zip(header[1:], parts[1:]):
            plain = text.replace("*", "")
            if NUMBER.match(plain):
                cells[(heading, label, name)] = float(plain.rstrip("x").replace(",", ""))
    return cells


def run_once(tree: Path, script: str, args: list[str], section: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    proc = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / script), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed in {tree}:\n{proc.stderr[-3000:]}")
    return parse_tables((tree / "benchmarks" / "results" / f"{section}.md").read_text())


def commit_of(tree: Path) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--section", required=True, help="the results section the script writes")
    parser.add_argument(
        "--columns",
        default="/s,ms,(s)",
        help="comma-separated header substrings of the columns to compare",
    )
    parser.add_argument("script", help="benchmarks/<script>, then its arguments after --")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    args = [a for a in ns.args if a != "--"]
    other = ns.other.resolve()
    wanted = [c for c in ns.columns.split(",") if c]
    info = machine()
    print(machine_line(info))
    print(f"other code: {other} (commit {commit_of(other)})")
    runs: dict[str, list[dict]] = defaultdict(list)
    for i in range(ns.rounds):
        order = [("this", ROOT), ("other", other)]
        for label, tree in order if i % 2 == 0 else order[::-1]:
            print(f"round {i + 1}: {label} ...", flush=True)
            runs[label].append(run_once(tree, ns.script, args, ns.section))
    keys = [k for k in runs["this"][0] if any(w in k[2] for w in wanted)]
    lines = [
        f"## This code against commit {commit_of(other)}: `{ns.script} {' '.join(args)}`",
        "",
        machine_line(info),
        "",
        f"`benchmarks/compare.py`: {ns.rounds} rounds, each running the script once per code"
        " tree in a fresh process (alternating which goes first); medians of the rounds."
        " ratio = this / other.",
        "",
        "| table | row | column | this | other | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key in keys:
        this = [r[key] for r in runs["this"] if key in r]
        them = [r[key] for r in runs["other"] if key in r]
        if not this or not them:
            continue
        a, b = statistics.median(this), statistics.median(them)
        ratio = f"{a / b:.3f}" if b else "n/a"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {a:g} | {b:g} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    write_section(f"compare_{ns.section}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
