"""Draw tinygpt's package import graph from the code itself (grimp, as lint-imports sees it).

    python scripts/import_graph.py            # rewrite the diagram in docs/design.md and
                                              # docs/images/imports.png
    python scripts/import_graph.py --check    # exit 1 if docs/design.md's diagram is stale

The diagram has one box per stage package, bottom (core) to top (cli), with the modules each
holds, and one arrow per pair of packages that import one another, labelled with how many
module-to-module imports it stands for (function-local ones included). Every arrow points
down a layer: an upward one would break the import contract.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
PNG = ROOT / "docs" / "images" / "imports.png"
LAYERS = ["cli", "serve", "export", "train", "infer", "data", "core"]  # top to bottom
BLOCK = re.compile(r"(<!-- gen:imports -->\n)(.*?)(<!-- /gen -->)", re.S)


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def read_graph() -> tuple[Counter[tuple[str, str]], dict[str, list[str]]]:
    """(imports between packages, counted by module pair; the modules of each package)."""
    graph = grimp.build_graph("tinygpt", include_external_packages=False)
    edges: Counter[tuple[str, str]] = Counter()
    modules: dict[str, list[str]] = {p: [] for p in LAYERS}
    for module in sorted(graph.modules):
        source = package_of(module)
        if source is None:
            continue
        if module.count(".") == 2:  # tinygpt.<package>.<module>
            modules[source].append(module.rsplit(".", 1)[1])
        elif module.count(".") == 3 and module.split(".")[2] == "tokenizer":
            continue
        for target in graph.find_modules_directly_imported_by(module):
            dest = package_of(target)
            if dest is not None and dest != source:
                edges[(source, dest)] += 1
    if "tokenizer" not in modules["data"]:
        modules["data"].append("tokenizer/")
    return edges, modules


def mermaid(edges: Counter[tuple[str, str]], modules: dict[str, list[str]]) -> str:
    lines = ["```mermaid", "flowchart TD"]
    for package in LAYERS:
        names = ", ".join(m for m in modules[package] if m != "__init__")
        lines.append(f'  {package}["<b>{package}/</b><br/>{names}"]')
    for (source, dest), count in sorted(
        edges.items(), key=lambda e: (LAYERS.index(e[0][0]), LAYERS.index(e[0][1]))
    ):
        lines.append(f"  {source} -->|{count}| {dest}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def draw(edges: Counter[tuple[str, str]], modules: dict[str, list[str]], out: Path) -> None:
    """One box per package, top to bottom; each importing package has a rail on the right,
    from which an arrow enters every package it imports, labelled with the import count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 9), dpi=100)
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.6, len(LAYERS) - 0.4)
    ax.axis("off")
    y = {p: len(LAYERS) - 1 - i for i, p in enumerate(LAYERS)}
    right = 6.3  # the boxes' right edge
    for package in LAYERS:
        names = [m for m in modules[package] if m != "__init__"]
        wrapped, line = [], ""
        for name in names:
            if len(line) + len(name) > 56:
                wrapped.append(line.rstrip(", "))
                line = ""
            line += name + ", "
        wrapped.append(line.rstrip(", "))
        ax.add_patch(
            plt.Rectangle((0.2, y[package] - 0.32), right - 0.2, 0.64, fc="#eef3fb", ec="#335")
        )
        ax.text(0.35, y[package] + 0.2, f"{package}/", fontsize=10, weight="bold", va="center")
        ax.text(0.35, y[package] - 0.05, "\n".join(wrapped), fontsize=7.5, va="center")
    sources = [p for p in LAYERS if any(s == p for s, _ in edges)]
    for i, source in enumerate(sources):
        rail = right + 0.55 + 0.6 * i
        color = plt.get_cmap("tab10")(i)
        dests = sorted((d for s, d in edges if s == source), key=lambda d: y[d])
        shift = 0.2 - 0.07 * i  # each rail meets a box at its own height
        ax.plot([right, rail], [y[source] - 0.05, y[source] - 0.05], color=color, lw=1.2)
        ax.plot([rail, rail], [y[dests[0]] + shift, y[source] - 0.05], color=color, lw=1.2)
        for dest in dests:
            ax.annotate(
                "",
                xy=(right, y[dest] + shift),
                xytext=(rail, y[dest] + shift),
                arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0},
            )
            ax.text(
                rail + 0.05,
                y[dest] + shift,
                str(edges[(source, dest)]),
                fontsize=7,
                color=color,
                va="center",
            )
    ax.set_title("tinygpt's stage packages and the imports between them (module pairs)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the diagram is stale")
    args = parser.parse_args(argv)
    edges, modules = read_graph()
    upward = [(s, d) for s, d in edges if LAYERS.index(d) < LAYERS.index(s)]
    if upward:
        print(f"upward imports between packages: {upward}", file=sys.stderr)
    text = DESIGN.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        print(f"{DESIGN} has no <!-- gen:imports --> block", file=sys.stderr)
        return 1
    fresh = BLOCK.sub(lambda m: m.group(1) + mermaid(edges, modules) + m.group(3), text)
    if args.check:
        if fresh != text:
            print(f"{DESIGN}: the import diagram is stale; run python scripts/import_graph.py")
            return 1
        return 0
    DESIGN.write_text(fresh, encoding="utf-8")
    draw(edges, modules, PNG)
    print(f"wrote {DESIGN} and {PNG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
