"""Shared pieces of the benchmark scripts: machine facts, timing, the results files.

Every benchmark prints the machine, date and commit with its figures and writes a markdown
section to `benchmarks/results/<name>.md`; `benchmarks/make_results.py` joins the sections
into `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The instruction sets that decide CPU kernel speed and precision choices (DESIGN.md §7).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def machine() -> dict[str, str]:
    """Platform, CPU model, usable cores, Python and torch versions, date, git commit."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in CPU_FLAGS if f in flags]
    try:
        cores = str(len(os.sched_getaffinity(0)))
    except AttributeError:
        cores = str(os.cpu_count())
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "-"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "torch": torch_version,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "flags": " ".join(shown) or "none of " + " ".join(CPU_FLAGS),
    }


def machine_line(info: dict[str, str] | None = None) -> str:
    m = info or machine()
    return (
        f"{m['date']} · commit {m['commit']} · {m['cpu']} ({m['cores']} cores;"
        f" {m.get('flags', '?')}) · "
        f"{m['platform']} · Python {m['python']} · torch {m['torch']}"
    )


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def write_section(name: str, markdown: str) -> Path:
    """Write `benchmarks/results/<name>.md` and print where it went."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")
    return path
