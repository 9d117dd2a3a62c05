"""`tinygpt export --format onnx` and generation with onnxruntime alone: the graph has the
usual KV-cache inputs and outputs with symbolic axes, gives PyTorch's logits (prefill and
decoding, one row and a left-padded batch) and greedy tokens, int8 keeps the loss within 2 %
with every weight matrix and embedding really quantized, `sample` and `tinygpt.load` run a
folder without importing torch, and bad input gets one line and exit status 2.

Exports take seconds each, so the folders are module fixtures: a GPT-2-style model (learned
positions, LayerNorm, biases, tied head) and a short trained run of the default preset made
Llama/Qwen3-style with grouped-query heads (RoPE, RMSNorm, SwiGLU, QK-norm), in fp32 and int8.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinygpt.cli import main
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.prepare import open_dataset, prepare
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.infer.generate import TextGenerator
from tinygpt.infer.loader import load_run
from tinygpt.infer.scoring import evaluate

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tinygpt.export.onnx import quantize_int8, quantized_ops, save_onnx_folder  # noqa: E402
from tinygpt.infer import onnx_runtime as ort_gen  # noqa: E402

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
ATOL = 1e-4


def _text(seed: int = 0, lines: int = 400) -> str:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(lines)]
    return "\n".join(out) + "\n"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A GPT-2-style model with a short context (16) and its fp32 ONNX folder."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train([_text()])
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=32
    )
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than the init: logits that differ visibly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("gpt2") / "onnx"
    save_onnx_folder(model, out, tokenizer=tokenizer)
    return model, tokenizer, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """40 steps of the default preset, shrunk and with 2 key/value heads for 4 query heads;
    exported through the command line in fp32 and int8."""
    root = tmp_path_factory.mktemp("trained")
    (root / "text.txt").write_text(_text(1, 1500), encoding="utf-8")
    data = prepare(str(root / "text.txt"), root / "data", tokenizer="char", progress=False)
    run = root / "run"
    argv = ["train", "--preset", "shakespeare-char", "--data", data, "--out", run]
    argv += ["--max-steps", 40, "--threads", 1, "--no-progress", "--train.batch_size", 8]
    argv += ["--train.eval_interval", 40, "--train.sample_tokens", 4, "--train.warmup_steps", 5]
    argv += ["--model.n_layer", 2, "--model.n_embd", 64, "--model.n_kv_head", 2]
    argv += ["--model.block_size", 32]
    assert main([str(a) for a in argv]) == 0
    fp32, int8 = root / "onnx-fp32", root / "onnx-int8"
    assert main(["export", str(run), "--format", "onnx", "--out", str(fp32)]) == 0
    argv = ["export", str(run), "--format", "onnx", "--quantize", "int8", "--out", str(int8)]
    assert main(argv) == 0
    loaded = load_run(run)
    return loaded.model, loaded.tokenizer, fp32, int8, run, data


@pytest.fixture(params=["gpt2", "trained"])
def variant(request):
    model, tokenizer, folder, *_ = request.getfixturevalue(request.param)
    return model, tokenizer, folder


# ------------------------------------------------------------------------------- the graph


def test_folder_files_marker_and_configs(trained):
    model, tokenizer, fp32, int8, *_ = trained
    for folder in (fp32, int8):
        assert {p.name for p in folder.iterdir()} == {
            "model.onnx",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "tinygpt_onnx.json",
        }
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    marker = json.loads((fp32 / "tinygpt_onnx.json").read_text())
    assert marker["format"] == "tinygpt-onnx" and marker["version"] == ort_gen.FORMAT_VERSION
    assert marker["opset"] == 18 and marker["external_data"] is None
    assert marker["quantization"] is None and marker["source"]["checkpoint"].startswith("step-")
    assert marker["runtime"] == dict(
        n_layer=2, n_kv_head=2, head_dim=16, block_size=32, vocab_size=model.config.vocab_size
    )
    q = json.loads((int8 / "tinygpt_onnx.json").read_text())["quantization"]
    assert q["type"] == "int8" and q["reduce_range"] is True
    config = json.loads((fp32 / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_key_value_heads"] == 2
    gen = json.loads((fp32 / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eot_id and gen["max_length"] == 32
    assert (fp32 / "tokenizer.json").read_bytes() == (
        Path(trained[4]) / "tokenizer.json"
    ).read_bytes()


def test_graph_inputs_outputs_and_symbolic_axes(variant):
    model, _, folder = variant
    c = model.config
    graph = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in graph.opset_import}["ai.onnx"] == 18

    def dims(values) -> dict[str, list]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    inputs, outputs = dims(graph.graph.input), dims(graph.graph.output)
    K, D = c.kv_heads, c.head_dim
    expected = {
        "input_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", "total_sequence_length"],
        "position_ids": ["batch_size", "sequence_length"],
    }
    for i in range(c.n_layer):
        for kv in ("key", "value"):
            expected[f"past_key_values.{i}.{kv}"] = ["batch_size", K, "past_sequence_length", D]
    assert inputs == expected
    assert list(outputs) == ["logits", *ort_gen.present_names(c.n_layer)]
    assert outputs["logits"] == ["batch_size", "sequence_length", c.vocab_size]
    present = outputs["present.0.key"]
    assert present[0] == "batch_size" and present[1:] == [K, present[2], D]
    assert isinstance(present[2], str)  # past + sequence, symbolic


def _onnx_logits(lm, rows: list[list[int]], steps: list[list[int]]) -> tuple[list, list]:
    """Prefill the left-padded rows, then decode steps[s] (one token per row) through the
    graph's cache; returns (prefill logits (B, T, V), [decode logits (B, V)])."""
    B, T = len(rows), max(len(r) for r in rows)
    ids = np.array([[0] * (T - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    logits, past = lm(ids, mask, positions, lm.empty_past(B))
    decoded = []
    pos = mask.sum(1)
    for step in steps:
        mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        out, past = lm(np.array(step)[:, None], mask, pos[:, None], past)
        decoded.append(out[:, -1])
        pos = pos + 1
    return logits, decoded


@pytest.mark.parametrize("lengths", [[7], [5, 9, 2]], ids=["batch1", "padded3"])
def test_logits_equal_pytorch_in_prefill_and_decoding(variant, lengths):
    model, _, folder = variant
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]
    steps = [torch.randint(0, V, (len(rows),), generator=g).tolist() for _ in range(5)]
    lm = ort_gen.OnnxLM(folder, threads=1)
    prefill, decoded = _onnx_logits(lm, rows, steps)
    T = prefill.shape[1]
    for b, row in enumerate(rows):
        whole = row + [s[b] for s in steps]
        with torch.no_grad():
            full = model(torch.tensor([whole]))[0][0].numpy()  # (L, V): one pass, no cache
        n = len(row)
        np.testing.assert_allclose(prefill[b, T - n :], full[:n], atol=ATOL, rtol=0)
        for s, out in enumerate(decoded):
            np.testing.assert_allclose(out[b], full[n + s], atol=ATOL, rtol=0)
        # Decoding through the graph's cache equals one pass of the graph over everything
        # (a causal mask aligned top-left would break this for queries shorter than keys).
        whole_pass, _ = _onnx_logits(lm, [whole], [])
        np.testing.assert_allclose(
            np.stack([out[b] for out in decoded]), whole_pass[0, n:], atol=ATOL, rtol=0
        )


def test_greedy_tokens_equal_pytorch_past_the_context(variant):
    """Greedy text of one prompt and of a batch of three, 40 tokens: past the context of the
    GPT-2 model (16), so its window slides and the cache is refilled and compacted."""
    model, tokenizer, folder = variant
    ours, theirs = ort_gen.load_onnx(folder, threads=1), TextGenerator(model, tokenizer)
    for prompt in ["to be", ["the question", "or", "whether tis nobler"]]:
        kw = dict(temperature=0, max_new_tokens=40)
        assert ours.generate(prompt, **kw) == theirs.generate(prompt, **kw)


# ---------------------------------------------------------------------------------- int8


class _GraphAsModel(torch.nn.Module):
    """An ONNX graph behind the (logits, loss) interface `tinygpt.infer.evaluate` calls."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor):
        B, T = x.shape
        ids = x.numpy().astype(np.int64)
        positions = np.broadcast_to(np.arange(T), (B, T)).copy()
        mask = np.ones((B, T), dtype=np.int64)
        logits, _ = self.lm(ids, mask, positions, self.lm.empty_past(B))
        return torch.from_numpy(logits), None


def test_int8_quantizes_every_matrix_and_keeps_the_loss(trained, tmp_path):
    model, _, fp32, int8, _, data = trained
    c = model.config
    graph = onnx.load(str(int8 / "model.onnx"))
    # 4 matrices per block (qkv, attention out, MLP in, MLP out) and the head: all int8;
    # the token table (read by the Gather) 8-bit; nothing left in float.
    assert quantized_ops(graph) == {
        "matmul_int8": 4 * c.n_layer + 1,
        "matmul_float": 0,
        "gather_8bit": 1,
        "gather_float": 0,
    }
    inits = {t.name: t for t in graph.graph.initializer}
    head = [
        n
        for n in graph.graph.node
        if n.op_type == "MatMulInteger" and inits[n.input[1]].dims[1] == c.vocab_size
    ]
    assert len(head) == 1 and inits[head[0].input[1]].data_type == onnx.TensorProto.INT8
    full_range = tmp_path / "full-range"
    shutil.copytree(fp32, full_range)
    quantize_int8(fp32 / "model.onnx", full_range / "model.onnx", reduce_range=False)

    val = np.asarray(open_dataset(data).val)
    bs = c.block_size
    torch_loss = evaluate(model, val, bs).loss
    losses = {
        name: evaluate(_GraphAsModel(ort_gen.OnnxLM(folder, threads=1)), val, bs).loss
        for name, folder in [("fp32", fp32), ("int8", int8), ("int8 full range", full_range)]
    }
    sizes = {name: _size(f) for name, f in [("fp32", fp32), ("int8", int8)]}
    print(
        f"\nval loss: torch {torch_loss:.4f}, "
        + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
    )
    print(
        f"model.onnx bytes: fp32 {sizes['fp32']:,}, int8 {sizes['int8']:,} ({sizes['fp32'] / sizes['int8']:.2f}x smaller)"
    )
    assert losses["fp32"] == pytest.approx(torch_loss, rel=1e-5)
    assert torch_loss < 2.5  # it learned something (a uniform guess is ln(vocab) = 3.0)
    for name in ("int8", "int8 full range"):
        assert abs(losses[name] - losses["fp32"]) <= 0.02 * losses["fp32"], name
    assert sizes["int8"] * 1.5 < sizes["fp32"]  # 3.9x for a 6 x 384 model (benchmarks)


# ---------------------------------------------------------------------- generation, no torch


def test_sample_and_load_run_an_onnx_folder_without_torch(trained):
    _, _, fp32, int8, *_ = trained
    code = f"""
import sys
import tinygpt
from tinygpt.cli import main
gen = tinygpt.load({str(int8)!r})
text = gen.generate("to be", max_new_tokens=12, seed=1)
assert isinstance(text, str), text
pieces = list(gen.stream("to be", max_new_tokens=12, seed=1))
assert "".join(pieces) == text, (pieces, text)
assert main(["sample", {str(fp32)!r}, "--prompt", "to be", "--max-new-tokens", "15",
             "--seed", "1", "--num-samples", "2"]) == 0
assert main(["sample", {str(fp32)!r}, "--prompt", "not", "--stream", "--seed", "2"]) == 0
heavy = sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules)
assert not heavy, heavy
print("no torch")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("to be") and "-" * 40 in out.stdout
    assert out.stdout.rstrip().endswith("no torch")


def test_sampling_options_stop_strings_and_streaming(trained):
    _, _, fp32, *_ = trained
    gen = ort_gen.load_onnx(fp32, threads=1)
    kw = dict(max_new_tokens=30, temperature=1.2, top_k=5, top_p=0.9, repetition_penalty=1.3)
    a = gen.generate("the", seed=7, **kw)
    assert a == gen.generate("the", seed=7, **kw)  # a seed makes a sample reproducible
    assert "".join(gen.stream("the", seed=7, **kw)) == a
    assert len(gen.generate("the", num_samples=3, seed=1, **kw)) == 3
    long = gen.generate("the", seed=3, max_new_tokens=60, temperature=0)
    stop = long[10:13]
    cut = gen.generate("the", seed=3, max_new_tokens=60, temperature=0, stop=stop)
    assert cut == long[: long.index(stop)]
    assert gen.generate("the", max_new_tokens=0) == ""


def test_sampled_text_equals_pytorch_past_the_context(variant):
    """One sampler for both (`tinygpt.infer.sampler`): the same seed gives the same text,
    one prompt and a batch, past the context of the GPT-2 model (16)."""
    model, tokenizer, folder = variant
    ours, theirs = ort_gen.load_onnx(folder, threads=1), TextGenerator(model, tokenizer)
    kw = dict(max_new_tokens=40, temperature=1.1, top_k=8, top_p=0.95, repetition_penalty=1.2)
    for prompt in ["to be", ["the question", "or"]]:
        for seed in (1, 2):
            assert ours.generate(prompt, seed=seed, **kw) == theirs.generate(
                prompt, seed=seed, **kw
            )


def test_external_data_folder_runs(tmp_path):
    """A graph may keep its weights in model.onnx.data (the layout of graphs over 2 GB)."""
    torch.manual_seed(1)
    tokenizer = CharTokenizer.train(["abc def\n"])
    model = GPT(
        GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    out = tmp_path / "onnx"
    save_onnx_folder(model, out, tokenizer=tokenizer, external_data=True)
    # Every tensor of 1 KB or more is in the data file (smaller ones stay inline).
    assert (out / "model.onnx.data").stat().st_size > 0.8 * 4 * model.num_params()
    assert json.loads((out / "tinygpt_onnx.json").read_text())["external_data"] == "model.onnx.data"
    kw = dict(temperature=0, max_new_tokens=12)
    assert ort_gen.load_onnx(out).generate("abc", **kw) == TextGenerator(model, tokenizer).generate(
        "abc", **kw
    )


# ------------------------------------------------------------------------------ bad input


def test_quantize_for_a_format_without_it(capsys, trained):
    run = trained[4]
    code, _, err = _cli(
        capsys, "export", run, "--format", "hf", "--quantize", "int8", "--out", run.parent / "x"
    )
    _one_line_error(code, err, "--quantize int8 is not available for --format hf")
    code, _, err = _cli(
        capsys, "export", run, "--format", "gguf", "--quantize", "int8", "--out", run.parent / "x"
    )
    _one_line_error(code, err, "not available for --format gguf", "--type q8_0")
    code, _, err = _cli(
        capsys, "export", run, "--format", "onnx", "--quantize", "int4", "--out", run.parent / "x"
    )
    _one_line_error(code, err, "--quantize int4", "choose int8")
    code, _, err = _cli(
        capsys, "export", run, "--format", "onnx", "--no-reduce-range", "--out", run.parent / "x"
    )
    _one_line_error(code, err, "--no-reduce-range applies to --quantize int8")
    assert not (run.parent / "x").exists()


def test_sample_on_a_folder_that_is_neither_a_run_nor_an_export(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = _cli(capsys, "sample", tmp_path)
    _one_line_error(code, err, "neither a run folder", "nor an ONNX export")
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    code, _, err = _cli(capsys, "sample", tmp_path)
    _one_line_error(code, err, "holds model.onnx but no tinygpt_onnx.json")


def test_onnx_folder_of_another_format_version(capsys, trained, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(trained[2], folder)
    marker = json.loads((folder / "tinygpt_onnx.json").read_text())
    (folder / "tinygpt_onnx.json").write_text(json.dumps({**marker, "version": 99}))
    code, _, err = _cli(capsys, "sample", folder)
    _one_line_error(code, err, "format version 99", "reads version 1", "export the run again")
    code, _, err = _cli(capsys, "sample", trained[2], "--checkpoint", "latest")
    _one_line_error(code, err, "holds one model")
