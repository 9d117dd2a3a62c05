"""`tinygpt eval`, `plot`, `attention`, `report` on a run trained for a few steps, and the
one-line errors of every bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tinygpt.cli import main

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-layer char model trained for 6 steps on a small text."""
    root = tmp_path_factory.mktemp("evalrun")
    txt = root / "text.txt"
    txt.write_text(TEXT, encoding="utf-8")
    data, run = root / "data", root / "run"
    assert main(["prepare", "--input", str(txt), "--tokenizer", "char", "--out", str(data)]) == 0
    args = ["train", "--data", str(data), "--out", str(run), "--max-steps", "6"]
    args += ["--preset", "one-layer", "--no-progress", "--train.eval_interval", "3"]
    args += ["--train.batch_size", "4", "--model.block_size", "32", "--train.sample_tokens", "8"]
    assert main(args) == 0
    return run


def _json_line(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_eval_json_gives_finite_numbers(run, capsys):
    assert main(["eval", str(run), "--json"]) == 0
    out = _json_line(capsys)
    for key in ("val_loss", "val_ppl", "val_bpb"):
        assert math.isfinite(out[key])
    assert out["tokens"] > 0 and out["bytes"] > 0 and out["checkpoint"].startswith("step-")
    summary = json.loads((run / "summary.json").read_text())
    # The default evaluation is the one training ran at the end (same split, same windows).
    assert out["tokens"] == summary["val_tokens"]
    assert out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]))
    # Char-level ASCII text: one byte per token, except end-of-text targets.
    assert out["bytes"] <= out["tokens"]
    assert out["val_bpb"] == pytest.approx(out["nll"] / math.log(2) / out["bytes"])
    saved = json.loads((run / "eval" / "results.json").read_text())
    assert saved["val_loss"] == out["val_loss"]


def test_eval_input_stride_and_max_tokens(run, tmp_path, capsys):
    txt = tmp_path / "other.txt"
    txt.write_text("All:\nSpeak, speak.\n" * 10, encoding="utf-8")
    assert main(["eval", str(run), "--input", str(txt), "--json", "--max-tokens", "50"]) == 0
    out = _json_line(capsys)
    assert out["tokens"] == 50 and out["data"] == f"input {txt}"
    assert main(["eval", str(run), "--json", "--stride", "8", "--checkpoint", "latest"]) == 0
    assert math.isfinite(_json_line(capsys)["val_bpb"])
    assert main(["eval", str(run)]) == 0
    assert "bits/byte" in capsys.readouterr().out


def test_eval_input_jsonl_field_and_bad_bytes(run, tmp_path, capsys):
    jsonl = tmp_path / "recs.jsonl"
    lines = [json.dumps({"body": "All:\nSpeak, speak.\n", "text": ""}) for _ in range(5)]
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["eval", str(run), "--input", str(jsonl), "--json"]
    assert main([*args, "--text-field", "body"]) == 0
    assert _json_line(capsys)["tokens"] > 50  # read from "body", not the empty "text"
    raw = tmp_path / "latin1.txt"
    raw.write_bytes(b"All:\nSpeak, speak.\n" * 5 + b"caf\xe9\n")
    err = _error(capsys, ["eval", str(run), "--input", str(raw)])
    assert "UTF-8" in err and "--errors replace" in err
    # Replaced, the bad byte becomes U+FFFD, which this character vocabulary has never seen.
    err = _error(capsys, ["eval", str(run), "--input", str(raw), "--errors", "replace"])
    assert "U+FFFD" in err and "not in this character vocabulary" in err


def test_eval_prompts_and_samples(run, capsys):
    args = ["eval", str(run), "--no-loss", "--make-prompts", "8,8", "--num-prompts", "3"]
    assert main([*args, "--samples", "2", "--json"]) == 0
    out = _json_line(capsys)
    assert 0 <= out["bleu"] <= 100 and 0 <= out["chrf"] <= 100 and out["prompts"] == 3
    gens = (run / "eval" / "generations.jsonl").read_text().splitlines()
    assert len(gens) == 3 and all("generation" in json.loads(g) for g in gens)
    assert len(out["samples"]) == 2 and (run / "samples" / "eval-01.txt").is_file()
    prompts = run / "eval" / "prompts.jsonl"
    assert main(["eval", str(run), "--no-loss", "--prompts", str(prompts), "--json"]) == 0
    assert _json_line(capsys)["bleu"] == out["bleu"]  # greedy: same continuations


def test_plot_and_attention(run, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["plot", str(run), str(run), "--out", str(out), "--log"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    att = tmp_path / "att.png"
    assert main(["attention", str(run), "--prompt", "All:\nSpeak", "--out", str(att)]) == 0
    assert att.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "loss.png").is_file() and (run / "stats.png").is_file()  # drawn by train


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinygpt: error: ") and "\n" not in err
    return err


def test_bad_inputs(run, tmp_path, capsys):
    assert "does not exist" in _error(capsys, ["eval", str(tmp_path / "nope")])
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    assert "not a run folder" in _error(capsys, ["eval", str(empty_run)])
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(run / "config.toml", untrained / "config.toml")
    assert "no complete checkpoint" in _error(capsys, ["eval", str(untrained)])
    assert "nothing to do" in _error(capsys, ["eval", str(run), "--no-loss"])
    assert "no checkpoint 'step-999'" in _error(
        capsys, ["eval", str(run), "--checkpoint", "step-999"]
    )
    blank = tmp_path / "blank.txt"
    blank.write_text("", encoding="utf-8")
    assert "empty" in _error(capsys, ["eval", str(run), "--input", str(blank)])
    assert "does not exist" in _error(capsys, ["eval", str(run), "--data", str(tmp_path / "x")])
    assert "--stride" in _error(capsys, ["eval", str(run), "--stride", "0"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n[1, 2]\n', encoding="utf-8")
    assert "bad.jsonl:2:" in _error(capsys, ["eval", str(run), "--no-loss", "--prompts", str(bad)])
    assert "K,M" in _error(capsys, ["eval", str(run), "--no-loss", "--make-prompts", "8"])
    assert "--layer 5" in _error(capsys, ["attention", str(run), "--prompt", "Al", "--layer", "5"])
    assert "empty" in _error(capsys, ["attention", str(run), "--prompt", ""])
    long = "Speak " * 20
    assert "longer than the model's context" in _error(
        capsys, ["attention", str(run), "--prompt", long]
    )
    assert ".png" in _error(capsys, ["plot", str(run), "--out", str(tmp_path / "x.jpg")])
    assert "metrics.csv" in _error(capsys, ["plot", str(empty_run)])


def test_dataset_gone_or_other_tokenizer(run, tmp_path, capsys):
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    info = json.loads((moved / "run.json").read_text())
    info["dataset"]["path"] = str(tmp_path / "deleted")
    (moved / "run.json").write_text(json.dumps(info))
    err = _error(capsys, ["eval", str(moved)])
    assert "--data" in err and "--input" in err
    other = tmp_path / "other.txt"
    other.write_text("xyz " * 200, encoding="utf-8")
    data = tmp_path / "otherdata"
    assert main(["prepare", "--input", str(other), "--tokenizer", "char", "--out", str(data)]) == 0
    capsys.readouterr()
    assert "another tokenizer" in _error(capsys, ["eval", str(run), "--data", str(data)])
