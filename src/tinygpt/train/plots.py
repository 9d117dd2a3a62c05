"""Pictures of runs: loss curves, training statistics, attention maps (matplotlib, PNG).

Owns the curve figures of one run (`plot_run`, called by training at the end of every run)
and of several runs overlaid (`plot_runs`), and the layer × head grid of attention
probabilities (`attention_figure`). Run folders are read through `tinygpt.core.run`.
Everything draws with the Agg backend into files, so it works without a display.

matplotlib is an optional extra: without it these functions raise ImportError (training
catches that and carries on); the command line turns it into a one-line error.
It knows nothing about how metrics are produced or how models are trained.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import atomic_write_bytes
from tinygpt.core.model import GPT
from tinygpt.core.run import ATTENTION_PNG, LOSS_PNG, STATS_PNG, RunDir
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.infer.loader import load_run

DPI = 100


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (raises ImportError when matplotlib is missing)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> Path:
    """Write a figure to a PNG atomically (a reader never sees half an image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _points(cols: dict[str, list[float]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) pairs where y is known (validation rows are sparse)."""
    pairs = [(a, b) for a, b in zip(cols[x], cols[y]) if not math.isnan(b)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _log_y(ax: Any) -> None:
    """Log scale with plain numbers on the ticks (losses span less than a decade)."""
    from matplotlib.ticker import ScalarFormatter

    ax.set_yscale("log")
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(ScalarFormatter())


def _loss_panel(ax: Any, runs: Sequence[tuple[str, dict]], x: str, log: bool) -> None:
    single = len(runs) == 1
    for i, (name, cols) in enumerate(runs):
        colour = f"C{i}"
        xs, ys = _points(cols, x, "train_loss")
        ax.plot(xs, ys, color=colour, lw=1.2, label="train" if single else f"{name} train")
        xs, ys = _points(cols, x, "val_loss_est")
        if xs:
            ax.plot(
                xs,
                ys,
                color="C1" if single else colour,
                ls="--",
                marker="o",
                ms=3,
                label="validation (estimate)" if single else f"{name} val",
            )
    ax.set_xlabel("step" if x == "step" else "wall time (s)" if x == "time_s" else x)
    ax.set_ylabel("loss (nats/token)")
    if log:
        _log_y(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _stat_panel(
    ax: Any, runs: Sequence[tuple[str, dict]], key: str, label: str, log: bool = False
) -> None:
    for i, (name, cols) in enumerate(runs):
        xs, ys = _points(cols, "step", key)
        ax.plot(xs, ys, color=f"C{i}", lw=1.2, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    if log:
        _log_y(ax)
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)


def plot_run(run_dir: str | Path, *, log: bool = False) -> list[Path]:
    """Write RUN/loss.png (train and validation loss vs step and vs wall time) and
    RUN/stats.png (learning rate, tokens/s, gradient norm). Returns the paths."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    runs = [(run_dir.name, RunDir(run_dir).read_metrics())]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=DPI)
    _loss_panel(axes[0], runs, "step", log)
    _loss_panel(axes[1], runs, "time_s", log)
    fig.suptitle(f"{run_dir.name}: loss")
    # Fixed margins: tight_layout draws the figure an extra time, half a second at the end
    # of every training run.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.22)
    loss = run_dir / LOSS_PNG
    save_png(fig, loss)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=DPI)
    _stat_panel(axes[0], runs, "lr", "learning rate")
    _stat_panel(axes[1], runs, "tokens_per_s", "tokens / s")
    _stat_panel(axes[2], runs, "grad_norm", "gradient norm (before clipping)", log=log)
    fig.suptitle(f"{run_dir.name}: training statistics")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.15, top=0.85, wspace=0.28)
    stats = run_dir / STATS_PNG
    save_png(fig, stats)
    plt.close(fig)
    return [loss, stats]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, log: bool = False) -> Path:
    """One PNG comparing runs: loss vs step, loss vs time, learning rate, tokens/s, gradient
    norm (a legend names each run by its folder)."""
    plt = _pyplot()
    if not run_dirs:
        raise TinyGPTError("give at least one run folder to plot")
    runs = []
    names: dict[str, int] = {}
    for d in run_dirs:
        d = Path(d)
        name = d.name or str(d)
        names[name] = names.get(name, 0) + 1
        label = name if names[name] == 1 else f"{name} ({names[name]})"
        runs.append((label, RunDir(d).read_metrics()))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), dpi=DPI)
    _loss_panel(axes[0][0], runs, "step", log)
    _loss_panel(axes[0][1], runs, "time_s", log)
    _loss_panel(axes[0][2], runs, "tokens", log)
    axes[0][2].set_xlabel("tokens seen")
    _stat_panel(axes[1][0], runs, "lr", "learning rate")
    _stat_panel(axes[1][1], runs, "tokens_per_s", "tokens / s")
    _stat_panel(axes[1][2], runs, "grad_norm", "gradient norm (before clipping)", log=log)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, out)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- attention


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """A short axis label for one token: its text with newlines, tabs and a leading or
    trailing space made visible.

    >>> from tinygpt.data.tokenizer import CharTokenizer
    >>> tok = CharTokenizer(["\\n", " ", "a"])
    >>> [token_label(tok, i) for i in range(4)]
    ['\\\\n', '␣', 'a', '<|endoftext|>']
    """
    if tokenizer.is_special(token_id):
        return tokenizer.decode([token_id])
    text = tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if text.strip(" ") != text or not text:
        text = text.replace(" ", "␣")
    return text


def attention_maps(model: GPT, tokenizer: Tokenizer, prompt: str) -> tuple[list[int], list[Any]]:
    """(ids, per-layer probabilities (H, T, T)) of `prompt` through the manual attention path."""
    if not prompt:
        raise TinyGPTError("--prompt is empty; give some text to look at")
    ids = tokenizer.encode(prompt)  # the prompt is text, as in `tinygpt sample`
    block = model.config.block_size
    if len(ids) > block:
        raise TinyGPTError(
            f"the prompt is {len(ids)} tokens, longer than the model's context ({block});"
            " give a shorter prompt"
        )
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    maps = model.attention_maps(idx)  # per layer (1, H, T, T)
    return ids, [m[0].float().cpu() for m in maps]


def attention_figure(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    title: str = "",
) -> Any:
    """A matplotlib Figure: one heatmap per (layer, head); row = layer, column = head.

    Each panel is the (T, T) matrix of probabilities: row i is the query at token i,
    column j how much it attends to token j (zero above the diagonal: the causal mask).
    """
    plt = _pyplot()
    ids, maps = attention_maps(model, tokenizer, prompt)
    n_layer = len(maps)
    if layer is not None and not 0 <= layer < n_layer:
        raise TinyGPTError(
            f"--layer {layer} is out of range; the model has layers 0..{n_layer - 1}"
        )
    layers = [layer] if layer is not None else list(range(n_layer))
    n_head = maps[0].shape[0]
    heads = list(heads) if heads is not None else list(range(n_head))
    labels = [token_label(tokenizer, i) for i in ids]
    T = len(ids)
    cell = max(1.6, min(4.0, 0.22 * T + 0.8))
    fig, axes = plt.subplots(
        len(layers),
        len(heads),
        figsize=(cell * len(heads) + 0.8, cell * len(layers) + 0.6),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    font = max(4, min(9, int(240 / max(T, 1))))
    image = None
    for r, li in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(maps[li][h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {li} head {h}", fontsize=9)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels, rotation=90, fontsize=font)
            ax.set_yticklabels(labels if c == 0 else [], fontsize=font)
            ax.tick_params(length=0)
    if title:
        fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, fraction=0.03, label="attention probability")
    return fig


def plot_attention(
    run_dir: str | Path,
    prompt: str,
    *,
    out: str | Path | None = None,
    layer: int | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
) -> Path:
    """Save the attention grid of a run for `prompt` (default RUN/attention.png)."""
    plt = _pyplot()
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    fig = attention_figure(
        run.model,
        run.tokenizer,
        prompt,
        layer=layer,
        title=f"{Path(run_dir).name} ({run.checkpoint_dir.name})",
    )
    path = Path(out) if out else Path(run_dir) / ATTENTION_PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    plt.close(fig)
    return path
