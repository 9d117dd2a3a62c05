"""plots: curve PNGs for one run and for several, labels of tokens, the attention grid."""

from __future__ import annotations

import csv

import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.train.plots import (
    attention_figure,
    plot_run,
    plot_runs,
    token_label,
)

PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = [
    "step",
    "tokens",
    "time_s",
    "train_loss",
    "val_loss_est",
    "lr",
    "grad_norm",
    "tokens_per_s",
]


def _fake_run(folder, scale=1.0):
    folder.mkdir()
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for step in range(1, 21):
            w.writerow(
                {
                    "step": step,
                    "tokens": step * 512,
                    "time_s": step * 0.1,
                    "train_loss": scale * 4 / step**0.3,
                    "val_loss_est": scale * 4.2 / step**0.3 if step % 5 == 0 else "",
                    "lr": 1e-3 * min(1, step / 5),
                    "grad_norm": 1 / step,
                    "tokens_per_s": 5000 + step,
                }
            )
    return folder


def test_read_metrics_keeps_gaps(tmp_path):
    cols = RunDir(_fake_run(tmp_path / "r")).read_metrics()
    assert len(cols["step"]) == 20
    assert sum(v == v for v in cols["val_loss_est"]) == 4  # nan elsewhere


def test_plot_run_writes_pngs(tmp_path):
    paths = plot_run(_fake_run(tmp_path / "r"), log=True)
    assert [p.name for p in paths] == ["loss.png", "stats.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000


def test_plot_runs_overlays(tmp_path):
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b", scale=0.8)
    out = plot_runs([a, b], tmp_path / "cmp.png")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(TinyGPTError, match="does not exist"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")


def test_token_labels_escape():
    tok = CharTokenizer(["\n", " ", "\t", "a"])
    assert [token_label(tok, i) for i in range(5)] == ["\\n", "␣", "\\t", "a", "<|endoftext|>"]


def test_attention_grid_has_layer_by_head_panels():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=6, block_size=8, n_layer=2, n_head=3, n_embd=12)).eval()
    tok = CharTokenizer(["\n", " ", "a", "b", "c"])
    fig = attention_figure(model, tok, "ab c\na")
    panels = [ax for ax in fig.axes if ax.get_title().startswith("layer")]
    assert len(panels) == 6
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["a", "b", "␣", "c", "\\n", "a"]
    # Each row of a panel is a probability distribution over the earlier tokens.
    data = panels[4].get_images()[0].get_array()
    assert data.shape == (6, 6)
    assert abs(float(data.sum()) - 6.0) < 1e-4 and float(data[0, 1:].sum()) == 0.0
    one = attention_figure(model, tok, "abc", layer=1)
    assert len([ax for ax in one.axes if ax.get_title().startswith("layer 1")]) == 3
    with pytest.raises(TinyGPTError, match="--layer 2 is out of range"):
        attention_figure(model, tok, "abc", layer=2)
    with pytest.raises(TinyGPTError, match="longer than the model's context"):
        attention_figure(model, tok, "abcabcabc")
