"""`tinygpt finetune`, `tinygpt chat` and the chat API end to end on a tiny base: the run it
writes and what it records of its base, every later command on it, exact resumption, text
fine-tuning, a Hugging Face base, stopping at the end of the turn, and bad input (exit 2,
one line each)."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinygpt
from tinygpt.cli import main
from tinygpt.core.checkpoint import WEIGHTS
from tinygpt.core.config import RunConfig, TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.data.template import load_template
from tinygpt.data.tokenizer import CharTokenizer, file_hash
from tinygpt.infer.loader import save_model_run
from tinygpt.train.finetune import finetune

ALPHABET = string.ascii_letters + string.digits + " .,;:!?'\"-()\n"
FAST = ["--no-progress", "--train.log_interval", "1", "--train.sample_tokens", "8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A random tiny char-level model saved as a run folder, trained (on paper) with Muon."""
    folder = tmp_path_factory.mktemp("base") / "run"
    tok = CharTokenizer(sorted(set(ALPHABET)))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=32)
    save_model_run(folder, RunConfig(model=cfg, train=TrainConfig(optimizer="muon")), GPT(cfg), tok)
    return folder


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(16)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tuned(base, questions, tmp_path_factory):
    """A fine-tune of `base` on `questions`: 4 steps, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ft") / "run"
    argv = ["finetune", str(base), "--input", str(questions), "--out", str(out)]
    argv += ["--max-steps", "4", "--train.eval_interval", "2", "--train.batch_size", "4", *FAST]
    assert main(argv) == 0
    return out


def _losses(run: Path) -> list[float]:
    return RunDir(run).read_metrics()["train_loss"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tinygpt: error: "), err
    return err


# ---------------------------------------------------------------------- the run it writes


def test_a_fine_tune_is_a_normal_run_that_records_its_base(base, tuned, capsys):
    run = RunDir(tuned)
    record = run.finetune_record()
    ckpt = RunDir(base).resolve_checkpoint("best")
    assert record["base"] == str(base.resolve()) and record["base_kind"] == "run"
    assert record["checkpoint"] == ckpt.name
    assert record["weights_sha256"] == sha256_file(ckpt / WEIGHTS)
    assert record["tokenizer_hash"] == file_hash(base / "tokenizer.json")
    assert record["format"] == "alpaca" and record["template"] == "default"
    assert record["added_tokens"] == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert isinstance(record["val_loss_before"], float)
    assert run.dataset()["kind"] == "examples"
    config, base_config = run.read_config(), RunDir(base).read_config()
    assert config.preset == "finetune"
    assert config.train.optimizer == "adamw" and config.train.lr == 5e-4  # not the base's Muon
    assert config.model.vocab_size == base_config.model.vocab_size + 4
    grown = {**base_config.model.__dict__, "vocab_size": config.model.vocab_size}
    assert config.model.__dict__ == grown
    assert load_template(tuned).name == "default"
    assert [int(s) for s in run.read_metrics()["step"]] == [1, 2, 3, 4]

    # eval scores the assistant tokens of the held-out examples by default
    assert main(["eval", str(tuned), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["data"].startswith("assistant tokens of ")
    assert scored["val_loss"] == pytest.approx(run.read_summary()["val_loss"], rel=1e-5)
    # the other commands read it as any run
    assert main(["report", str(tuned), "--no-plots"]) == 0
    report = (tuned / "report.md").read_text(encoding="utf-8")
    assert "Fine-tuned from" in report and "examples," in report
    assert main(["sample", str(tuned), "--prompt", "Question 1?", "--max-new-tokens", "5"]) == 0
    assert main(["info", str(tuned)]) == 0


def test_a_fine_tune_from_a_named_checkpoint_and_both_runs_plotted(tuned, questions, tmp_path):
    """--checkpoint step-N starts from that checkpoint (a fine-tuned run is a base like any
    other), and `plot` draws a fine-tune beside its base."""
    out = tmp_path / "again"
    argv = ["finetune", str(tuned), "--checkpoint", "step-000002", "--input", str(questions)]
    assert main([*argv, "--out", str(out), "--max-steps", "1", *FAST]) == 0
    record = RunDir(out).finetune_record()
    ckpt = RunDir(tuned).resolve_checkpoint("step-000002")
    assert record["checkpoint"] == "step-000002"
    assert record["weights_sha256"] == sha256_file(ckpt / WEIGHTS)
    assert not record.get("added_tokens")  # the template's tokens are already there
    plot = tmp_path / "both.png"
    assert main(["plot", str(tuned), str(out), "--out", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_fine_tune_prints_losses_before_and_after(base, questions, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", str(base), "--input", str(questions), "--out", str(out)]
    assert main([*argv, "--max-steps", "2", *FAST]) == 0
    cap = capsys.readouterr()
    line = next(x for x in cap.out.splitlines() if x.startswith("held-out loss "))
    before = RunDir(out).finetune_record()["val_loss_before"]
    assert line.startswith(f"held-out loss {before:.4f} -> ") and "assistant tokens of" in line
    assert "added 4 special tokens" in cap.err and "chat with it: tinygpt chat" in cap.out
    # the examples are prepared once: a second fine-tune of the same input reuses them
    assert main(["finetune", str(base), "--input", str(questions), "--out", str(tmp_path / "b"),
                 "--max-steps", "1", "--train-on-prompt", *FAST]) == 0  # fmt: skip
    assert "note: reused " in capsys.readouterr().err
    assert RunDir(tmp_path / "b").dataset_dir() == RunDir(out).dataset_dir()
    assert RunDir(tmp_path / "b").finetune_record()["train_on_prompt"] is True


def test_examples_longer_than_the_context_are_dropped_and_counted(base, tmp_path, capsys):
    rows = [{"prompt": f"Q{i}", "response": "A" * (60 if i < 3 else 2)} for i in range(12)]
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    argv = ["finetune", str(base), "--input", str(data), "--out", str(out), "--max-steps", "1"]
    assert main([*argv, *FAST]) == 0
    record = RunDir(out).finetune_record()
    assert record["dropped_train"] + record["dropped_val"] == 3
    assert "longer than the context (48 tokens + 1)" in capsys.readouterr().err


def test_a_prepared_examples_folder_and_a_resumed_fine_tune(
    base, questions, tuned, tmp_path, capsys
):
    data = tmp_path / "examples"
    assert main(["prepare", "--input", str(questions), "--format", "auto", "--tokenizer",
                 str(base), "--out", str(data)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "training examples" in err and "alpaca with template default" in err
    # the same examples, prepared by hand, give the run the same data and losses
    out = tmp_path / "same"
    argv = ["finetune", str(base), "--data", str(data), "--out", str(out), "--max-steps", "4"]
    assert main([*argv, "--train.eval_interval", "2", "--train.batch_size", "4", *FAST]) == 0
    assert _losses(out) == _losses(tuned)
    # killed after step 2: resuming gives the same steps 3 and 4, bit for bit
    resumed = tmp_path / "resumed"
    shutil.copytree(tuned, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    assert main(["finetune", str(base), "--out", str(resumed), "--resume", *FAST]) == 0
    assert _losses(resumed) == _losses(tuned)
    assert RunDir(resumed).read_info()["resumed"][0]["resumed_from"] == "step-000002"


def test_text_continues_pre_training_with_the_bases_tokenizer(base, tmp_path):
    text = tmp_path / "more.txt"
    text.write_text("Question and answer, line by line.\n" * 80, encoding="utf-8")
    out = tmp_path / "text"
    argv = ["finetune", str(base), "--input", str(text), "--out", str(out), "--max-steps", "2"]
    argv += ["--model.dropout", "0.1", "--model.block_size", "32", "--train.batch_size", "2"]
    assert main([*argv, *FAST]) == 0
    run = RunDir(out)
    assert run.finetune_record()["format"] == "text" and load_template(out) is None
    assert file_hash(run.tokenizer_path) == file_hash(base / "tokenizer.json")
    model = run.read_config().model
    assert (model.dropout, model.block_size) == (0.1, 32)
    assert tinygpt.load(out).model.pos_emb.weight.shape == (32, 32)


def test_a_hugging_face_folder_is_imported_as_the_base(base, questions, tmp_path):
    pytest.importorskip("transformers")
    from tinygpt.export.hf_run import export_run

    hf = export_run(base, tmp_path / "hf")
    out = tmp_path / "from-hf"
    argv = ["finetune", str(hf), "--input", str(questions), "--out", str(out), "--max-steps", "1"]
    assert main([*argv, "--template", "inst", *FAST]) == 0
    record = RunDir(out).finetune_record()
    assert record["base_kind"] == "hf" and record["base"] == str(hf.resolve())
    assert record["template"] == "inst" and load_template(out).name == "inst"
    assert record["tokenizer_hash"] == file_hash(base / "tokenizer.json")
    assert record["base_run"] != str(hf.resolve())  # the cached run it was imported into
    # resumed from the command line: the same folder, its cached run, the same record
    assert main([*argv[:-1], "2", "--resume", *FAST]) == 0
    assert RunDir(out).finetune_record() == record

    # from Python, a Hugging Face folder is not imported behind the caller's back
    with pytest.raises(TinyGPTError, match="is a Hugging Face model folder") as err:
        finetune(hf, out_dir=tmp_path / "py", input=str(questions), budgets={"max_steps": 1})
    assert f"tinygpt import {hf} --out RUN" in str(err.value)
    assert "tinygpt finetune" in str(err.value)
    assert not (tmp_path / "py").exists() or not RunDir(tmp_path / "py").checkpoints()


# ------------------------------------------------------------------- chat and the API


def _stop_after(gen, calls: list[int], n: int, token: int):
    """Make the model's n-th forward pass choose `token` (greedy), and count the passes."""

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == n:
            output = output.clone()
            output[..., token] = 1e4
            return output
        return None

    return gen.model.lm_head.register_forward_hook(hook)


def test_generation_ends_at_the_end_of_turn_in_chat_and_in_sample(tuned):
    gen = tinygpt.load(tuned)
    end = gen.tokenizer.special_tokens["<|end|>"]
    assert gen.end_of_turn_id == end
    assert gen.stop_token_ids == (gen.tokenizer.eot_id, end)  # for Engine's SamplingParams
    messages = [{"role": "user", "content": "Question 3?"}]
    for call in (
        lambda: gen.chat(messages, temperature=0, max_new_tokens=20),
        lambda: gen.generate("Question 3?", temperature=0, max_new_tokens=20),
    ):
        calls: list[int] = []
        handle = _stop_after(gen, calls, 4, end)
        try:
            text = call()
        finally:
            handle.remove()
        assert len(calls) == 4 and "<|end|>" not in text  # three tokens, then the end
    sampled = gen.chat(messages, seed=3, max_new_tokens=12)
    assert sampled == "".join(gen.chat_stream(messages, seed=3, max_new_tokens=12))
    ids = gen.chat_ids(messages)
    assert gen.tokenizer.decode(ids) == "<|user|>\nQuestion 3?<|end|>\n<|assistant|>\n"


def test_the_engine_ends_a_chat_request_at_the_end_of_turn(tuned):
    """What a server does: prompt ids from chat_ids, stop ids from stop_token_ids."""
    from tinygpt.infer.engine import Engine

    gen = tinygpt.load(tuned)
    end = gen.end_of_turn_id
    engine = Engine(gen.model, gen.tokenizer, max_batch=1, start=False)
    calls: list[int] = []
    handle = _stop_after(gen, calls, 3, end)
    try:
        ids = gen.chat_ids([{"role": "user", "content": "Question 5?"}])
        req = engine.submit(ids, max_tokens=20, temperature=0.0, stop_token_ids=gen.stop_token_ids)
        while not req.done:
            engine.step()
    finally:
        handle.remove()
    done = req.result()
    assert done.token_ids[-1] == end and len(done.token_ids) == 3
    assert done.finish_reason == "stop" and "<|end|>" not in done.text


def test_the_history_keeps_to_the_context(tuned):
    gen = tinygpt.load(tuned)  # context 48
    turns = []
    for i in range(4):
        turns += [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]
    conversation = [{"role": "system", "content": "S"}, *turns, {"role": "user", "content": "Q?"}]
    kept, dropped = gen.fit_history(conversation, max_new_tokens=24)
    assert dropped > 0 and kept[0]["role"] == "system" and kept[-1]["content"] == "Q?"
    assert kept[1:-1] == turns[dropped:]
    assert len(gen.chat_ids(conversation, max_new_tokens=24)) <= 48 - 24
    with pytest.raises(tinygpt.TinyGPTError, match="the last message takes"):
        gen.chat([{"role": "user", "content": "x" * 60}])
    plain = tinygpt.load(tuned)
    plain.template = None
    with pytest.raises(tinygpt.TinyGPTError, match="no chat template"):
        plain.chat(conversation)


def test_chat_one_shot_prints_the_answer(tuned, capsys):
    assert (
        main(["chat", str(tuned), "-p", "Question 2?", "--seed", "1", "--max-new-tokens", "6"]) == 0
    )
    out = capsys.readouterr().out
    gen = tinygpt.load(tuned)
    answer = gen.chat([{"role": "user", "content": "Question 2?"}], seed=1, max_new_tokens=6)
    assert out == answer + "\n"


def test_chat_in_a_terminal_session_through_piped_input(tuned, tmp_path):
    lines = ["Question 1?", "Question 2?", "/reset", "/temp 0", "/nope", "Question 3?", "/quit",
             "never read"]  # fmt: skip
    env = {**os.environ, "TINYGPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt", "chat", str(tuned), "--seed", "0",
         "--max-new-tokens", "6", "--system", "Be brief."],
        input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(conversation forgotten)" in proc.stderr and "(temperature 0)" in proc.stderr
    assert "tinygpt: error: unknown command /nope; /help lists the commands" in proc.stderr
    # The answers, as the API gives them for the same conversation and seeds.
    gen = tinygpt.load(tuned)
    system = [{"role": "system", "content": "Be brief."}]
    q1 = [*system, {"role": "user", "content": "Question 1?"}]
    a1 = gen.chat(q1, seed=0, max_new_tokens=6)
    q2 = [*q1, {"role": "assistant", "content": a1}, {"role": "user", "content": "Question 2?"}]
    kept, _ = gen.fit_history(q2, 6)
    a2 = gen.chat(kept, seed=1, max_new_tokens=6)
    a3 = gen.chat([*system, {"role": "user", "content": "Question 3?"}], temperature=0,
                  max_new_tokens=6)  # fmt: skip
    assert proc.stdout == f"{a1}\n{a2}\n{a3}\n"


def test_chat_help_system_and_turns_that_no_longer_fit(tuned, tmp_path):
    """/help and /system in a session; once the conversation outgrows the context (48 tokens
    here), the oldest turns are left out with a note, and the session goes on."""
    lines = ["/help", "/system Be terse.", "Question 1?", "Question 2?", "Question 3?", "/system"]
    lines += ["Question 4?", "/quit"]
    env = {**os.environ, "TINYGPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt", "chat", str(tuned), "--seed", "0", "--max-new-tokens", "6"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/system TEXT" in proc.stderr and "/reset" in proc.stderr  # the help text
    assert "(system message: 'Be terse.')" in proc.stderr and "(no system message)" in proc.stderr
    assert re.search(r"\(the \d+ oldest messages no longer fit the model's context", proc.stderr)
    assert "error" not in proc.stderr


# ---------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(base, questions, tuned, tmp_path, capsys):
    def jsonl(name, rows):
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        return str(path)

    out = str(tmp_path / "out")
    start = ["finetune", str(base), "--out", out, "--max-steps", "1", "--no-progress"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    err = _one_line_error(capsys, ["finetune", str(tmp_path / "junk"), "--input",
                                   str(questions), "--out", out])  # fmt: skip
    assert "is neither a run folder (no config.toml) nor a Hugging Face model folder" in err

    shape = jsonl("shape.jsonl", [{"question": "a", "answer": "b"}])
    err = _one_line_error(capsys, [*start, "--input", shape])
    assert "data shape not recognised: keys found: question, answer; accepted: alpaca" in err

    turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    roles = jsonl("roles.jsonl", [{"messages": turns}] * 2)
    err = _one_line_error(capsys, [*start, "--input", roles])
    assert "no usable example" in err and "from the user where the assistant was expected" in err

    alone = jsonl("alone.jsonl", [{"messages": turns[:1]}] * 2)
    err = _one_line_error(capsys, [*start, "--input", alone])
    assert "no usable example" in err and "has no assistant message" in err

    err = _one_line_error(capsys, [*start, "--input", str(questions), "--template", "chatlm"])
    assert "unknown chat template 'chatlm'; did you mean 'chatml'?" in err

    err = _one_line_error(capsys, ["chat", str(base), "-p", "hi"])
    assert "has no chat template: it was only pre-trained. Fine-tune it" in err

    err = _one_line_error(capsys, ["finetune", str(base), "--out", out, "--resume"])
    assert "--resume:" in err and "no checkpoint of a fine-tune to continue" in err

    err = _one_line_error(capsys, [*start, "--input", str(questions), "--model.n_layer", "2"])
    assert "model.n_layer comes from the base model and cannot change when fine-tuning" in err

    err = _one_line_error(capsys, [*start, "--input", str(questions), "--model.block_size", "64"])
    assert "longer than the base's context (48)" in err

    err = _one_line_error(capsys, ["prepare", "--input", str(questions), "--format", "alpaca",
                                   "--tokenizer", "char", "--out", out])  # fmt: skip
    assert "encoded with the base model's tokenizer: give --tokenizer RUN" in err

    assert not Path(out).exists()  # nothing written by a refused command
