"""LoRA: adapters applied from outside the model, what trains and what stays bit-identical,
merging (logits within 1e-5, identical greedy samples), the optimiser's view, and LoRA runs
end to end — fine-tune, every reader, `tinygpt merge`, resumption, stacking — with bad input
refused in one line (exit 2)."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import tinygpt
from tinygpt.cli import main
from tinygpt.core.checkpoint import WEIGHTS
from tinygpt.core.config import RunConfig, TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.lora import (
    LoraSettings,
    apply_lora,
    count_parameters,
    merge_lora,
    parse_targets,
    valid_targets,
)
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.core.weights import load_weights
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.infer.loader import build_adapted, load_run, load_tokenizer, save_model_run
from tinygpt.train.optim import build_optimizer

ALPHABET = string.ascii_letters + string.digits + " .,;:!?'\"-()\n"
FAST = ["--no-progress", "--train.log_interval", "1", "--train.sample_tokens", "8"]
GPT2 = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
LLAMA = dict(
    GPT2, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_head=1, tie_weights=False
)


def _model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**kw))


def _train(model: GPT, steps: int = 4, *, optimizer: str = "adamw", decay: float = 0.1) -> None:
    """A few optimiser steps on random tokens (weight decay on, to show it spares the base)."""
    tc = TrainConfig(optimizer=optimizer, lr=1e-2, weight_decay=decay)
    opt = build_optimizer(model, tc, "cpu")
    gen = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    for _ in range(steps):
        x = torch.randint(0, V, (4, 12), generator=gen)
        _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------- the adapters


@pytest.mark.parametrize("family", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_only_adapters_and_new_rows_train_and_the_base_stays_bit_identical(family):
    model = _model(**family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 40, (2, 10))
    base_logits = model(x)[0]
    adapted = apply_lora(model, LoraSettings(rank=2, dropout=0.0), rows_from=36, seed=3)
    # B = 0: training starts at the base (up to float rounding: the head is two matmuls)
    torch.testing.assert_close(model(x)[0], base_logits, atol=1e-6, rtol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.endswith(".rows") for n in trainable)
    _train(model)
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p, before[name][: p.size(0)]), name  # frozen: bit for bit, decay or not
    assert all(bool(b.abs().sum()) for b in adapted_bs(model))  # B moved away from zero
    rows = model.tok_emb.rows
    assert not torch.equal(rows, before["tok_emb.weight"][36:])  # the new tokens' rows train
    tied = family.get("tie_weights", True)
    assert (model.lm_head.rows is rows) == tied
    assert adapted.rows_from == 36


def adapted_bs(model: GPT) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if ".lora_B." in n]


@pytest.mark.parametrize("family", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_merged_logits_equal_the_adapters_and_greedy_samples_agree(family):
    from tinygpt.infer.generate import TextGenerator

    model = _model(**family)
    apply_lora(model, LoraSettings(rank=4, dropout=0.0), rows_from=38)
    _train(model, steps=6)
    model.eval()
    x = torch.randint(0, 40, (3, 16))
    with torch.no_grad():
        unmerged = model(x)[0]
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz0123456789 .,"))
    prompt = "abc"
    greedy = TextGenerator(model, tok).generate(prompt, max_new_tokens=12, temperature=0)
    merge_lora(model)
    assert not hasattr(model, "lora") and all(p.requires_grad for p in model.parameters())
    assert type(model.tok_emb) is torch.nn.Embedding and type(model.blocks[0].attn.qkv) is (
        torch.nn.Linear
    )
    with torch.no_grad():
        merged = model(x)[0]
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert TextGenerator(model, tok).generate(prompt, max_new_tokens=12, temperature=0) == greedy
    # a plain GPT again: its state loads into a fresh model of the same config
    fresh = GPT(model.config)
    fresh.load_state_dict(model.state_dict())


def test_a_slice_of_a_fused_projection_is_adapted_alone():
    """--lora-targets q,v adapts the query and value columns of qkv, never the keys."""
    model = _model(**GPT2)
    qkv_before = model.blocks[0].attn.qkv.weight.detach().clone()
    apply_lora(model, LoraSettings(rank=2, dropout=0.0, targets=("q", "v")))
    layer = model.blocks[0].attn.qkv
    assert sorted(layer.lora_A) == ["q", "v"] and type(model.blocks[0].mlp.fc).__name__ == "Linear"
    _train(model)
    merge_lora(model)
    delta = model.blocks[0].attn.qkv.weight.detach() - qkv_before  # (3C, C): q, k, v rows
    q, k, v = delta.split(16)
    assert q.abs().sum() > 0 and v.abs().sum() > 0 and torch.equal(k, torch.zeros_like(k))


def test_swiglu_gate_and_up_are_separate_targets():
    model = _model(**LLAMA)
    apply_lora(model, LoraSettings(rank=2, targets=("gate",)))
    assert list(model.blocks[1].mlp.fc.lora_A) == ["gate"]
    assert model.lora.settings.targets == ("gate",)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_optimiser_sees_only_what_trains(optimizer):
    model = _model(**LLAMA)
    apply_lora(model, LoraSettings(rank=2), rows_from=36)
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer), "cpu")
    seen = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert seen == trainable
    C, r, K = 16, 2, 8  # width, rank, key/value width (one KV head of 8)
    hidden = model.config.hidden
    per_layer = r * (C + C) + 2 * r * (C + K) + r * (C + C) + 2 * r * (C + hidden)
    per_layer += r * (hidden + C)  # down
    rows = 2 * 4 * C  # untied: embedding and head rows 36..39
    assert count_parameters(model)[0] == 2 * per_layer + rows


def test_a_checkpoint_of_an_adapted_model_holds_only_what_trains(tmp_path):
    model = _model(**GPT2)
    apply_lora(model, LoraSettings(rank=2, targets=("q", "o")), rows_from=38)
    _train(model)
    state = model.state_dict()
    assert sorted(state) == sorted(
        [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("qkv.lora_A.q", "qkv.lora_B.q")]
        + [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("proj.lora_A.o", "proj.lora_B.o")]
        + ["tok_emb.rows", "lm_head.rows"]
    )
    from tinygpt.core.weights import save_weights

    save_weights(model, tmp_path / WEIGHTS)
    other = _model(**GPT2)  # the same base, new adapters: loading sets them
    apply_lora(other, LoraSettings(rank=2, targets=("q", "o")), rows_from=38, seed=9)
    load_weights(other, tmp_path / WEIGHTS)
    x = torch.randint(0, 40, (2, 8))
    assert torch.equal(other.eval()(x)[0], model.eval()(x)[0])


def test_targets_and_ranks_are_checked_against_the_model():
    gpt2, llama = GPTConfig(**GPT2), GPTConfig(**LLAMA)
    assert valid_targets(gpt2) == ("q", "k", "v", "o", "up", "down")
    assert valid_targets(llama) == ("q", "k", "v", "o", "gate", "up", "down")
    assert parse_targets("all") == () and parse_targets("v, q,v") == ("v", "q")
    with pytest.raises(TinyGPTError, match=r"valid targets: q,k,v,o,up,down \(or all\)"):
        LoraSettings(targets=("gate",)).resolved(gpt2)
    # one key/value head of 8: a rank above 8 cannot adapt k
    with pytest.raises(TinyGPTError, match="larger than the k projection allows"):
        LoraSettings(rank=9, targets=("k",)).resolved(llama)
    assert LoraSettings(rank=9, targets=("q",)).resolved(llama).alpha == 18.0
    for bad in (dict(rank=0), dict(rank=-1), dict(alpha=0.0), dict(dropout=1.0)):
        with pytest.raises(TinyGPTError):
            LoraSettings(**bad)


# ------------------------------------------------------------------------- LoRA runs


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lora-base") / "runs" / "base"
    tok = CharTokenizer(sorted(set(ALPHABET)))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=32)
    save_model_run(folder, RunConfig(model=cfg, train=TrainConfig()), GPT(cfg), tok)
    return folder


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora-data") / "qa.jsonl"
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(16)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


LORA = ["--lora", "--lora-rank", "4", "--lora-dropout", "0"]


def _finetune(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["finetune", str(base), "--input", str(data), "--out", str(out), "--max-steps", "4"]
    return [*argv, "--train.eval_interval", "2", "--train.batch_size", "4", *FAST, *extra]


@pytest.fixture(scope="module")
def lora_run(base, questions, tmp_path_factory):
    """A LoRA fine-tune of `base` beside it in runs/: 4 steps, checkpoints at 2 and 4; the
    closing report as printed."""
    out = base.parent / "lora"
    capture = tmp_path_factory.mktemp("lora-out") / "stdout.txt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(_finetune(base, questions, out, *LORA)) == 0
    capture.write_text(buffer.getvalue(), encoding="utf-8")
    return out, buffer.getvalue()


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tinygpt: error: "), err
    return err


def test_a_lora_run_stores_its_adapter_and_a_pointer_to_its_base(base, lora_run):
    out, printed = lora_run
    run = RunDir(out)
    adapter = json.loads(run.adapter_path.read_text(encoding="utf-8"))
    ckpt = RunDir(base).resolve_checkpoint("best")
    assert adapter["base"]["run"] == str(base.resolve()) and adapter["base"]["relative"] == (
        "../base"
    )
    assert adapter["base"]["checkpoint"] == ckpt.name
    from tinygpt.core.files import sha256_file

    assert adapter["base"]["weights_sha256"] == sha256_file(ckpt / WEIGHTS)
    assert adapter["rank"] == 4 and adapter["alpha"] == 8.0 and adapter["rows_from"] == 76
    # the counts: q, k, v, o, up, down adapters of rank 4 in one 32-wide layer (MLP 128),
    # and 4 new rows (the default template's tokens) of the tied embedding
    r, C, hidden = 4, 32, 128
    trainable = 4 * r * (C + C) + r * (C + hidden) + r * (hidden + C) + 4 * C
    plain = GPT(run.read_config().model).num_params()
    total = plain + trainable - 4 * C  # the new rows are counted once
    assert adapter["trainable_parameters"] == trainable and adapter["total_parameters"] == total
    line = next(x for x in printed.splitlines() if x.startswith("trainable parameters"))
    assert line.startswith(f"trainable parameters {trainable:,} of {total:,} (")
    assert "LoRA); " in line and line.endswith(" ms per step")
    assert f"tinygpt merge {out} --out" in printed
    assert run.finetune_record()["lora"]["rank"] == 4
    for step in run.checkpoints():  # every checkpoint is the adapter alone
        with safe_open(str(step / WEIGHTS), "pt") as f:
            keys = list(f.keys())
        assert all(".lora_" in k or k.endswith(".rows") for k in keys), keys


def test_every_reader_loads_base_plus_adapter(base, lora_run, capsys):
    out, _ = lora_run
    loaded = load_run(out)
    assert type(loaded.model.tok_emb) is torch.nn.Embedding  # merged as it loads
    base_model = load_run(base).model
    merged, original = loaded.model.state_dict(), base_model.state_dict()
    for name in ("pos_emb.weight", "norm_f.weight", "blocks.0.norm1.weight"):
        assert torch.equal(merged[name], original[name])  # untouched by LoRA
    assert torch.equal(merged["tok_emb.weight"][:76], original["tok_emb.weight"])
    assert main(["eval", str(out), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["val_loss"] == pytest.approx(RunDir(out).read_summary()["val_loss"], rel=1e-5)
    assert main(["report", str(out), "--no-plots"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## LoRA" in report and "every reader adds the base" in report
    bot = tinygpt.load(out)
    assert isinstance(bot.chat([{"role": "user", "content": "Question 1?"}], max_new_tokens=4,
                               temperature=0), str)  # fmt: skip
    from tinygpt.serve import open_model

    served = open_model(out)
    try:
        assert served.stop_ids[-1] == loaded.tokenizer.special_tokens["<|end|>"]
    finally:
        served.backend.close()


def test_merge_writes_a_plain_run_with_the_same_logits_and_samples(lora_run, tmp_path, capsys):
    out, _ = lora_run
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(out), "--out", str(merged_dir)]) == 0
    assert f"merged {out} (step-" in capsys.readouterr().out
    merged_run = RunDir(merged_dir)
    assert not merged_run.is_lora() and merged_run.read_info()["merged"]["from"] == str(
        out.resolve()
    )
    # the adapted model, unmerged, against the merged run's plain weights
    run = RunDir(out)
    ckpt = run.resolve_checkpoint("best")
    adapted = build_adapted(run, run.read_config().model)
    load_weights(adapted, ckpt / WEIGHTS)
    assert any(bool(b.abs().sum()) for b in adapted_bs(adapted))  # trained: B != 0
    plain = load_run(merged_dir).model
    adapted.eval()
    x = torch.randint(0, 80, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], adapted(x)[0], atol=1e-5, rtol=0)
    sample = ["--prompt", "Question 3?", "--max-new-tokens", "20", "--temperature", "0"]
    assert main(["sample", str(out), *sample]) == 0
    from_lora = capsys.readouterr().out
    assert main(["sample", str(merged_dir), *sample]) == 0
    assert capsys.readouterr().out == from_lora
    # the merged run is a normal run folder: report, eval; merging it again is refused
    assert main(["report", str(merged_dir), "--no-plots"]) == 0
    err = _one_line_error(capsys, ["merge", str(merged_dir), "--out", str(tmp_path / "again")])
    assert "already merged" in err
    err = _one_line_error(capsys, ["merge", str(out), "--out", str(merged_dir)])
    assert "already exists" in err


def test_exports_merge_on_the_fly_and_say_so(lora_run, tmp_path, capsys):
    out, _ = lora_run
    assert main(["export", str(out), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    err = capsys.readouterr().err
    assert "is a LoRA run: its adapter is merged into its base's weights on the fly" in err


def test_a_lora_fine_tune_resumes_bit_for_bit(base, lora_run, tmp_path):
    """Killed after step 2: resuming rebuilds base + adapter and gives steps 3 and 4 again."""
    straight, _ = lora_run
    out = tmp_path / "resumed"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints" / "step-000004")
    assert main(["finetune", str(base), "--out", str(out), "--resume", "--lora", *FAST]) == 0
    assert RunDir(out).read_metrics()["train_loss"] == RunDir(straight).read_metrics()["train_loss"]
    assert RunDir(out).is_lora() and RunDir(out).read_info()["resumed"][0]["resumed_from"] == (
        "step-000002"
    )


def test_lora_on_a_lora_run_and_a_full_fine_tune_in_its_folder(lora_run, questions, tmp_path):
    out, _ = lora_run
    stacked = tmp_path / "stacked"
    assert main(_finetune(out, questions, stacked, *LORA, "--lora-targets", "q,v")) == 0
    assert RunDir(stacked).is_lora() and load_run(stacked).model is not None
    # a LoRA fine-tune killed before its first checkpoint, then a full one in its folder:
    # the adapter record of the first goes
    shutil.rmtree(stacked / "checkpoints")
    assert main(_finetune(out, questions, stacked)) == 0
    assert not RunDir(stacked).is_lora()
    load_run(stacked)


def test_a_base_that_moved_or_changed_is_refused(base, questions, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(base, runs / "base")
    assert main(_finetune(runs / "base", questions, runs / "lora", *LORA)) == 0
    # the whole runs folder moves: the relative pointer finds the base (its hash matches)
    shutil.move(runs, tmp_path / "moved")
    moved = tmp_path / "moved"
    assert main(["sample", str(moved / "lora"), "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    shutil.move(moved / "base", tmp_path / "elsewhere")
    err = _one_line_error(capsys, ["sample", str(moved / "lora"), "--max-new-tokens", "2"])
    assert "the base of LoRA run" in err and "is gone" in err
    err = _one_line_error(capsys, ["merge", str(moved / "lora"), "--out", str(tmp_path / "m")])
    assert "is gone" in err
    # the base retrained in place: the same checkpoint name, other weights
    shutil.move(tmp_path / "elsewhere", moved / "base")
    config = RunDir(moved / "base").read_config()
    tok = load_tokenizer(RunDir(moved / "base"))
    torch.manual_seed(7)
    save_model_run(moved / "base", config, GPT(config.model), tok)
    for argv in (["sample", str(moved / "lora")], ["report", str(moved / "lora")],
                 ["chat", str(moved / "lora"), "-p", "hi"]):  # fmt: skip
        err = _one_line_error(capsys, argv)
        assert "changed" in err and "an adapter fits only its own base" in err


def test_bad_lora_input_is_one_line(base, questions, lora_run, tmp_path, capsys):
    out = str(tmp_path / "x")
    argv = _finetune(base, questions, Path(out))
    cases = [
        (["--lora-rank", "4"], "--lora-rank applies to LoRA only; add --lora"),
        (["--lora-alpha", "2", "--lora-targets", "q"], "--lora-alpha, --lora-targets apply"),
        (["--lora", "--lora-rank", "0"], "--lora-rank = 0 must be at least 1"),
        (["--lora", "--lora-rank", "33"], "larger than the q projection allows"),
        (["--lora", "--lora-targets", "q,gate"], "valid targets: q,k,v,o,up,down (or all)"),
        (["--lora", "--lora-dropout", "1"], "--lora-dropout"),
    ]
    for extra, expected in cases:
        assert expected in _one_line_error(capsys, [*argv, *extra])
    assert not Path(out).exists()  # refused before anything was written
    err = _one_line_error(capsys, ["merge", str(base), "--out", out])
    assert "is not a LoRA run" in err
    lora, _ = lora_run
    err = _one_line_error(
        capsys, ["finetune", str(base), "--out", str(lora), "--resume", "--lora-rank", "8"]
    )
    assert "applies to LoRA only" in err
    err = _one_line_error(
        capsys,
        ["finetune", str(base), "--out", str(lora), "--resume", "--lora", "--lora-rank", "8"],
    )
    assert "keeps its settings" in err


def test_a_full_fine_tune_prints_that_everything_trains(base, questions, tmp_path, capsys):
    assert main(_finetune(base, questions, tmp_path / "full")) == 0
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("trainable parameters")
    )
    total = GPT(RunDir(tmp_path / "full").read_config().model).num_params()
    assert line.startswith(f"trainable parameters {total:,} of {total:,} (100.00 %, full")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"base": {}}, "its base must name run, checkpoint, weights_sha256"),
        ({"base": "elsewhere"}, "its base must name"),
        ({"alpha": "x"}, "the adapter's settings are damaged (ValueError"),
        ({"rank": None}, "the adapter's settings are damaged (TypeError"),
        ({"rows_from": []}, "the adapter's settings are damaged (TypeError"),
    ],
)
def test_a_damaged_adapter_record_is_one_line(lora_run, tmp_path, capsys, change, expected):
    import shutil

    run = tmp_path / "lora"
    shutil.copytree(lora_run[0], run)
    path = RunDir(run).adapter_path
    record = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**record, **change}), encoding="utf-8")
    for argv in (["sample", str(run), "--max-new-tokens", "2"], ["report", str(run)]):
        assert expected in _one_line_error(capsys, argv)
