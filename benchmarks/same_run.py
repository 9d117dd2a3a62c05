"""Does this code train exactly as another checkout does? A seeded run, compared bit for bit.

    python benchmarks/same_run.py --other ../old-checkout --input tinyshakespeare.txt \
        --preset shakespeare-char --preset one-layer --steps 50

For each preset, `tinygpt train --seed 1 --threads 1 --train.log_interval 1` runs for
`--steps` steps in a fresh process per code tree (each with its own `src/`), on the same
text. Then the two runs' metrics.csv (every column but the wall-clock ones: time_s,
tokens_per_s) and the final checkpoints' tensors are compared exactly, and one line per
preset says whether they are identical. Exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from common import ROOT, machine_line

CLOCK = {"time_s", "tokens_per_s"}


def train(tree: Path, preset: str, text: Path, steps: int, out: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    argv = [
        sys.executable, "-m", "tinygpt", "train", "--preset", preset, "--input", str(text),
        "--max-steps", str(steps), "--seed", "1", "--threads", "1",
        "--train.log_interval", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed in {tree}:\n{proc.stderr[-3000:]}")
    return out


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in CLOCK} for row in csv.DictReader(f)]


def weights(run: Path) -> dict:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--input", type=Path, required=True, help="a text file to train on")
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    other = args.other.resolve()
    print(machine_line())
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset or ["shakespeare-char", "one-layer"]:
            a = train(ROOT, preset, args.input.resolve(), args.steps, Path(tmp) / f"this-{preset}")
            b = train(
                other, preset, args.input.resolve(), args.steps, Path(tmp) / f"other-{preset}"
            )
            ma, mb = metrics(a), metrics(b)
            wa, wb = weights(a), weights(b)
            equal = [n for n in wa if n in wb and wa[n].dtype == wb[n].dtype and wa[n].equal(wb[n])]
            rows_same = ma == mb
            names_same = sorted(wa) == sorted(wb)
            print(
                f"{preset}: {len(ma)} metrics rows, every column but time_s/tokens_per_s"
                f" identical: {rows_same}; final weights: {len(equal)} of {len(wa)} tensors"
                f" bit-identical (same names: {names_same})"
            )
            same = same and rows_same and names_same and len(equal) == len(wa)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
