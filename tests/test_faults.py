"""Faults and bad input: nothing lost, nothing corrupt, never a traceback.

Bad input ends in exit status 2 and one line, and leaves the folders as they were. Faults
are injected for real: signals sent to a training process, SIGKILL at random instants and in
the middle of a save, writes that fail inside torch's and safetensors' own save code (a
file-size limit, which the kernel enforces), bytes flipped in a checkpoint, a gradient that
turns to nan.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinygpt.cli import main
from tinygpt.core.checkpoint import verify
from tinygpt.core.run import RunDir
from tinygpt.data.prepare import prepare

WORDS = [
    "to",
    "be",
    "or",
    "not",
    "that",
    "is",
    "the",
    "question",
    "whether",
    "tis",
    "nobler",
    "in",
    "the",
    "mind",
    "to",
    "suffer",
]
TINY = [
    "--preset", "one-layer", "--model.block_size", "16", "--model.n_embd", "16",
    "--model.n_head", "2", "--train.batch_size", "4", "--train.log_interval", "1",
    "--train.threads", "1", "--train.warmup_steps", "2", "--train.sample_tokens", "8",
    "--train.tensorboard", "false", "--no-progress",
]  # fmt: skip


def _text(lines: int = 400) -> str:
    rng = random.Random(0)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(lines)) + "\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "text.txt").write_text(_text(), encoding="utf-8")
    os.environ.setdefault("TINYGPT_CACHE", str(root / "cache"))
    return prepare(str(root / "text.txt"), root / "data", tokenizer="char", progress=False)


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    argv = _train_argv(dataset, run, "--max-steps", "4", "--train.eval_interval", "2")
    assert main(argv) == 0
    return run


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime) by relative path."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("tinygpt: error: ") and "\n" not in err, captured.err
    assert "Traceback" not in captured.err
    return err


# ---------------------------------------------------------------------------- bad input


NUMBERS = [
    (["sample", "RUN", "--temperature", "nan"], "--temperature = nan must be a finite number"),
    (["sample", "RUN", "--repetition-penalty", "nan"], "--repetition-penalty = nan"),
    (["sample", "RUN", "--seed", "99999999999999999999999"], "--seed = 99999999999999999999999 is too large"),
    (["sample", "RUN", "--max-new-tokens", "99999999999999999999"], "--max-new-tokens = 99999999999999999999 is too large"),
    (["sample", "RUN", "--num-samples", "1000000000"], "--num-samples = 1000000000 must be at most 1,024"),
    (["sample", "RUN", "--top-p", "inf"], "--top-p = inf must be a finite number"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size = 0 must be at least 1"),
    (["info", "--preset", "one-layer", "--context", "-3"], "--context = -3 must be at least 1"),
    (["prepare", "--corpus", "shakespeare", "--out", "OUT", "--tokenizer-sample-mb", "nan"], "--tokenizer-sample-mb = nan"),
    (["prepare", "--corpus", "shakespeare", "--out", "OUT", "--workers", "0"], "--workers = 0 must be at least 1"),
    (["train", "--out", "OUT", "--max-time", "inf"], "--max-time = inf must be a finite number"),
    (["train", "--out", "OUT", "--max-time", "nan"], "--max-time = nan must be a finite number"),
    (["train", "--out", "OUT", "--max-time", "1e12"], "must be at most 320,000,000 \\(10 years"),
    (["train", "--out", "OUT", "--train.grad_clip", "nan"], "train.grad_clip = nan must be a finite number"),
    (["train", "--out", "OUT", "--train.weight_decay", "nan"], "train.weight_decay = nan must be a finite"),
    (["train", "--out", "OUT", "--model.rope_theta", "inf"], "model.rope_theta = inf must be a finite"),
    (["train", "--out", "OUT", "--model.n_embd", "100000"], "model.n_embd = 100000 must be at most 65,536"),
    (["train", "--out", "OUT", "--model.n_layer", "1e30"], "model.n_layer expects int, got '1e30'"),
    (["train", "--out", "OUT", "--train.seed", "-1"], "train.seed = -1 must be at least 0"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_bad_numbers_are_one_line_and_write_nothing(trained, tmp_path, capsys, argv, message):
    import re

    out = tmp_path / "out"
    argv = [str(trained) if a == "RUN" else str(out) if a == "OUT" else a for a in argv]
    before = _tree(trained)
    err = _one_line(capsys, argv)
    assert re.search(message, err), err
    assert not out.exists() and _tree(trained) == before


def test_a_model_larger_than_memory_is_refused_before_allocating(dataset, tmp_path, capsys):
    argv = _train_argv(dataset, tmp_path / "r", "--max-steps", "1", "--model.n_embd", "65536")
    err = _one_line(capsys, [*argv, "--model.n_layer", "64", "--model.n_head", "64"])
    assert "parameters: training it needs about" in err and "GiB of memory" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_files_that_are_not_utf8_or_not_files(trained, dataset, tmp_path, capsys):
    latin = tmp_path / "latin1.toml"
    latin.write_bytes("[train]\nsample_prompt = 'café'\n".encode("latin-1"))
    for argv in (["train", "--config", str(latin), "--out", str(tmp_path / "x")],
                 ["info", "--config", str(latin)]):  # fmt: skip
        assert "is not UTF-8 text (byte 0xe9" in _one_line(capsys, argv)
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"prompt": "caf\xe9", "reference": "x"}\n')
    err = _one_line(capsys, ["eval", str(trained), "--no-loss", "--prompts", str(prompts)])
    assert "is not valid UTF-8" in err and "offset" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is a FIFO, not a file or folder" in _one_line(
        capsys, ["prepare", "--input", str(fifo), "--out", str(tmp_path / "d")]
    )
    assert "config file /dev/null is a character device, not a file" in _one_line(
        capsys, ["info", "--config", "/dev/null"]
    )
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is not a run folder: it is a file" in _one_line(capsys, ["sample", str(a_file)])
    assert "dataset folder" in _one_line(capsys, ["eval", str(trained), "--data", str(a_file)])
    assert not (tmp_path / "x").exists() and not (tmp_path / "d").exists()


def test_train_refuses_a_folder_that_is_not_a_run(dataset, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml.bak").write_text("my notes")
    (mine / "summary.json").write_text("{}")
    before = _tree(mine)
    err = _one_line(capsys, _train_argv(dataset, mine, "--max-steps", "1"))
    assert "is not a tinygpt run" in err and "--force" in err
    assert _tree(mine) == before
    assert main([*_train_argv(dataset, mine, "--max-steps", "1"), "--force"]) == 0
    assert (mine / "config.toml.bak").read_text() == "my notes"


def _damaged_dataset(dataset: Path, tmp_path: Path, change) -> Path:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(dataset, copy)
    change(copy)
    return copy


def test_data_that_does_not_fit_the_model_is_refused_before_training(
    dataset, trained, tmp_path, capsys
):
    import numpy as np

    def big_id(d: Path) -> None:
        ids = np.fromfile(d / "train.bin", dtype=np.uint16)
        ids[100] = 60000
        ids.tofile(d / "train.bin")

    def empty_train(d: Path) -> None:
        (d / "train.bin").write_bytes(b"")
        meta = json.loads((d / "meta.json").read_text())
        meta["splits"]["train"]["tokens"] = 0
        (d / "meta.json").write_text(json.dumps(meta))

    def wrong_dtype(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        meta["dtype"] = "uint32"
        (d / "meta.json").write_text(json.dumps(meta))

    cases = [
        (big_id, "train.bin holds token id 60,000, but the model's vocabulary has"),
        (empty_train, "the training split has 0 tokens"),
        (wrong_dtype, "holds .* bytes but meta.json says"),
    ]
    import re

    for i, (change, message) in enumerate(cases):
        data = _damaged_dataset(dataset, tmp_path / str(i), change)
        out = tmp_path / f"run{i}"
        err = _one_line(capsys, _train_argv(data, out, "--max-steps", "1"))
        assert re.search(message, err), err
        assert not (out / "checkpoints").exists()
    # eval of a run on a dataset whose ids the model cannot embed
    data = _damaged_dataset(dataset, tmp_path / "e", big_id)
    (data / "val.bin").write_bytes((data / "train.bin").read_bytes()[: 2 * 200])
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["val"]["tokens"] = 200
    (data / "meta.json").write_text(json.dumps(meta))
    err = _one_line(capsys, ["eval", str(trained), "--data", str(data)])
    assert "beyond the model's vocabulary" in err


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(trained, tmp_path, capsys):
    import shutil

    from tinygpt.data.tokenizer import load_tokenizer

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    vocab = RunDir(run).read_config().model.vocab_size
    bigger = load_tokenizer(run / "tokenizer.json").with_special_tokens(["<a>", "<b>"])
    bigger.save(run / "tokenizer.json")
    err = _one_line(capsys, ["sample", str(run), "--max-new-tokens", "2"])
    assert f"has {vocab + 2} ids but the run's model has a vocabulary of {vocab}" in err


def test_report_on_a_garbled_metrics_file_and_attention_to_a_text_file(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "metrics.csv").write_text("step,tokens,train_loss\n1,64,3.1\nxx,yy\n\x00garbage\n")
    err = _one_line(capsys, ["report", str(run)])
    assert "metrics.csv" in err and "line 3" in err
    for step in ("nan", "", "2.5"):  # a step that is no step number: one line, not a traceback
        (run / "metrics.csv").write_text(f"step,tokens,train_loss\n1,64,3.1\n{step},96,3.0\n")
        err = _one_line(capsys, ["report", str(run)])
        assert "metrics.csv" in err and "line 3" in err and "not a step number" in err
    err = _one_line(capsys, ["attention", str(trained), "--prompt", "to be", "--out", "a.txt"])
    assert "a.txt should end in .png" in err


# ------------------------------------------------------------------------------ checkpoints


def test_every_checkpoint_records_and_verifies_its_files(trained):
    for ckpt in RunDir(trained).checkpoints():
        state = verify(ckpt)
        assert set(state["files"]) == {"model.safetensors", "optimizer.pt", "rng.pt"}
        for name, record in state["files"].items():
            assert (ckpt / name).stat().st_size == record["size"]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_last_good_one(
    trained, tmp_path, capsys, name
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    target = run / "checkpoints" / "step-000004" / name
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\xff" * 8  # bytes flipped, size unchanged
    target.write_bytes(bytes(data))
    argv = ["train", "--out", str(run), "--resume", "--max-steps", "6", "--no-progress"]
    err = _one_line(capsys, argv)
    assert f"checkpoint step-000004 is damaged: {name}" in err
    assert "previous good checkpoint is step-000002" in err
    sample = ["sample", str(run), "--max-new-tokens", "2", "--checkpoint"]
    if name in ("model.safetensors", "state.json"):  # what loading the weights reads
        err = _one_line(capsys, [*sample, "latest"])
        assert f"step-000004 is damaged: {name}" in err and "--checkpoint step-000002" in err
        assert main([*sample, "step-2"]) == 0
    else:  # sampling does not read the optimiser or random states
        assert main([*sample, "latest"]) == 0


def test_pointer_files_stay_inside_the_run(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    elsewhere = tmp_path / "elsewhere" / "step-000099"
    shutil.copytree(run / "checkpoints" / "step-000004", elsewhere)
    (run / "checkpoints" / "latest").write_text("../../elsewhere/step-000099\n")
    assert RunDir(run).resolve_checkpoint("latest").name == "step-000004"


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(dataset, trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    dead = 2**22 + 12345  # above the kernel's default pid_max: no such process
    (run / "checkpoints" / f".step-000006.tmp-{dead}").mkdir()
    (run / "checkpoints" / f".step-000006.tmp-{dead}" / "model.safetensors").write_bytes(b"x")
    (run / "checkpoints" / f".step-000002.old-{dead}").mkdir()
    (run / f".summary.json.tmp-{dead}").write_text("{")
    alive = run / "checkpoints" / f".step-000008.tmp-{os.getppid()}"  # a live process's
    alive.mkdir()
    argv = ["train", "--out", str(run), "--resume", "--max-steps", "6", "--no-progress"]
    assert main(argv) == 0
    hidden = sorted(p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()])
    assert [h for h in hidden if h.startswith(".")] == [alive.name]
    # a preparation killed mid-way leaves `.NAME.tmp-PID-*`, removed by the next one
    stale = dataset.parent / f".again.tmp-{dead}-abc"
    stale.mkdir()
    prepare(str(dataset.parent / "text.txt"), dataset.parent / "again", progress=False)
    assert not stale.exists()


# -------------------------------------------------------------------------------- signals

SIGNAL_SCRIPT = """
import sys
from tinygpt.launch import entry
sys.argv = ["tinygpt", *sys.argv[1:]]
entry()
"""


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(run: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.csv").is_file():
            lines = (run / "metrics.csv").read_text().count("\n")
            if lines > rows:
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not log in time")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_training_saves_and_exits_with_its_code(dataset, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = _start(_train_argv(dataset, run, "--max-steps", "100000"))
    _wait_for_rows(run, 3, proc)
    proc.send_signal(sig)
    if sig == signal.SIGINT:
        proc.send_signal(sig)  # pressed twice: the second waits for the save
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "checkpoint saved" in err and "--resume" in err
    saved = RunDir(run).checkpoints()
    assert saved and verify(saved[-1])["step"] >= 3
    # and it resumes from there
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "12", "--no-progress"]) == 0


def test_a_signal_during_the_final_evaluation_saves(dataset, tmp_path):
    """A final evaluation that takes a minute (it sleeps first): SIGINT stops it at
    once, and the step it had reached is saved."""
    run = tmp_path / "run"
    script = SIGNAL_SCRIPT.replace(
        "from tinygpt.launch import entry",
        "import time\nfrom tinygpt.infer import scoring\nfrom tinygpt.launch import entry\n"
        "real, flag = scoring.SplitEvaluator.final, sys.argv[-1]\n"
        "def slow(self, model):\n    open(flag, 'w').close()\n    time.sleep(60)\n"
        "    return real(self, model)\n"
        "scoring.SplitEvaluator.final = slow\n",
    ).replace('sys.argv = ["tinygpt", *sys.argv[1:]]', 'sys.argv = ["tinygpt", *sys.argv[1:-1]]')
    flag = tmp_path / "in-final-eval"
    argv = [
        *_train_argv(dataset, run, "--max-steps", "5", "--train.eval_interval", "100"),
        str(flag),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )  # fmt: skip
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    started = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.time() - started < 30  # did not wait for the evaluation
    assert RunDir(run).resolve_checkpoint("latest").name == "step-000005"


def test_ctrl_c_before_the_first_step_is_one_line(dataset, tmp_path):
    proc = _start(_train_argv(dataset, tmp_path / "r", "--max-steps", "100000"))
    time.sleep(0.4)  # still importing torch and setting up: before any step
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "tinygpt: interrupted" and "Traceback" not in err


# ---------------------------------------------------------------- kills and failed writes

KILL_SCRIPT = """
import os, random, signal, sys
from tinygpt.core import weights
from tinygpt.cli import main
mode, when = sys.argv[1], int(sys.argv[2])
if mode == "mid-save":  # die inside the n-th checkpoint write, after its first file
    real = weights.fsync_file
    calls = []
    def dying(path):
        calls.append(path)
        if len(calls) == when:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path)
    weights.fsync_file = dying
sys.exit(main(sys.argv[3:]))
"""


def _check_run_after_a_kill(run: Path) -> None:
    for ckpt in RunDir(run).checkpoints():  # every checkpoint that looks complete is
        verify(ckpt)
    argv = ["train", "--out", str(run), "--resume", "auto", "--max-steps", "12", "--no-progress"]
    assert main(argv) == 0
    assert verify(RunDir(run).resolve_checkpoint("latest"))["step"] == 12


def test_sigkill_at_random_instants_and_mid_save_leaves_verifiable_checkpoints(dataset, tmp_path):
    rng = random.Random(7)
    base = _train_argv(
        dataset, Path("RUN"), "--max-steps", "12", "--train.checkpoint_interval", "1"
    )
    for i in range(3):  # killed from outside at a random instant
        run = tmp_path / f"kill{i}"
        argv = [str(run) if a == "RUN" else a for a in base]
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, "none", "0", *argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _wait_for_rows(run, 1, proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait(timeout=60)
        _check_run_after_a_kill(run)
    for when in (2, 5, 7):  # killed inside a checkpoint write: files 2/3 of a save, etc.
        run = tmp_path / f"mid{when}"
        argv = [str(run) if a == "RUN" else a for a in base]
        proc = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, "mid-save", str(when), *argv],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == -signal.SIGKILL
        assert any(p.name.startswith(".step-") for p in (run / "checkpoints").iterdir())
        _check_run_after_a_kill(run)
        assert not any(
            p.name.startswith(".") for p in (run / "checkpoints").iterdir() if p.is_dir()
        )


WRITE_LIMIT_SCRIPT = """
import resource, signal, sys
from tinygpt.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("limit", "failing"), [(6_000, "model.safetensors"), (30_000, "optimizer.pt")]
)
def test_a_write_failing_inside_torch_or_safetensors_is_one_line(trained, tmp_path, limit, failing):
    """A file-size limit makes the kernel refuse writes past it: at 6 kB safetensors' own
    writer fails on the weights (about 17 kB), at 30 kB torch's on the optimiser state
    (about 45 kB)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    sizes = {p.name: p.stat().st_size for p in (run / "checkpoints" / "step-000004").iterdir()}
    assert (
        sizes["model.safetensors"] > 6_000
        and sizes["optimizer.pt"] > 30_000 > sizes["model.safetensors"]
    )
    before = _tree(run / "checkpoints")
    argv = ["train", "--out", str(run), "--resume", "--max-steps", "6", "--no-progress"]
    out = subprocess.run(
        [sys.executable, "-c", WRITE_LIMIT_SCRIPT, str(limit), *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot write {run / 'checkpoints' / 'step-000006' / failing}" in err[0]
    assert "MiB free on that disk" in err[0] and "the previous checkpoint is intact" in err[0]
    assert _tree(run / "checkpoints") == before  # no temporary folder, nothing replaced
    assert verify(RunDir(run).resolve_checkpoint("latest"))["step"] == 4


# ----------------------------------------------------------------------------- non-finite

NAN_SCRIPT = """
import sys, torch
from tinygpt.train import loop as train
from tinygpt.cli import main
real, calls = train.train_step, []
def poisoned(model, *args, **kwargs):
    calls.append(1)
    if len(calls) >= int(sys.argv[1]):  # a finite loss but a nan gradient from here on
        for p in model.parameters():
            p.register_hook(lambda g: g * float("nan"))
    return real(model, *args, **kwargs)
train.train_step = poisoned
sys.exit(main(sys.argv[2:]))
"""


def test_a_nan_gradient_is_never_applied_nor_saved(dataset, tmp_path):
    from tinygpt.infer.loader import load_run

    run = tmp_path / "run"
    argv = _train_argv(dataset, run, "--max-steps", "10", "--train.checkpoint_interval", "1")
    out = subprocess.run(
        [sys.executable, "-c", NAN_SCRIPT, "4", *argv], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert "the gradient norm became nan at step 4, so the step was not applied" in out.stderr
    assert "last good checkpoint:" in out.stderr and "step-000003" in out.stderr
    last = load_run(run, "latest")
    assert last.step == 3
    assert all(bool(torch.isfinite(p).all()) for p in last.model.parameters())
    # skipping: every checkpoint stays finite, and the run stops after the limit in a row
    run = tmp_path / "skip"
    argv = _train_argv(dataset, run, "--max-steps", "30", "--train.checkpoint_interval", "1")
    argv += ["--train.skip_nonfinite", "true", "--train.skip_nonfinite_limit", "5"]
    out = subprocess.run(
        [sys.executable, "-c", NAN_SCRIPT, "4", *argv], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert "5 steps in a row had a non-finite loss or gradient" in out.stderr
    for ckpt in RunDir(run).checkpoints():
        model = load_run(run, ckpt.name).model
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()), ckpt.name


def test_a_one_worker_preparation_leaves_ctrl_c_working(tmp_path):
    """With one worker the encoding runs in this process, which must stay interruptible
    (pool workers, by contrast, ignore Ctrl-C and leave it to the main process)."""
    (tmp_path / "t.txt").write_text(_text(50), encoding="utf-8")
    before = signal.getsignal(signal.SIGINT)
    prepare(str(tmp_path / "t.txt"), tmp_path / "d", workers=1, progress=False)
    assert signal.getsignal(signal.SIGINT) is before


def test_out_dot_is_one_line_and_a_folder_beside_it_works(trained, tmp_path, monkeypatch, capsys):
    """`--out .` names the folder the command runs in, which an export (written aside, then
    renamed into place) cannot replace: one line saying so, not "PosixPath('.') has an empty
    name". `..` and a path to the current folder are the same; a new folder works."""
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path)):
        err = _one_line(capsys, ["export", str(trained), "--format", "hf", "--out", out])
        assert "is the folder this command runs in" in err
    (tmp_path / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "deep")
    assert main(["export", str(trained), "--format", "hf", "--out", "../hf"]) == 0
    err = _one_line(capsys, ["import", "../hf", "--out", "."])
    assert "is the folder this command runs in" in err
    assert main(["import", "../hf", "--out", "back"]) == 0
    assert RunDir(tmp_path / "deep" / "back").is_run()


def test_a_jsonl_file_that_starts_with_a_byte_order_mark_keeps_its_first_record(tmp_path):
    from tinygpt.core.files import read_jsonl

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    assert [r for _, r in read_jsonl(path)] == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c"},
    ]


def test_what_tinygpt_writes_is_readable_by_another_user(dataset):
    """Runs, datasets and exports honour the umask like any other file: under 022 another user
    (a server's uid in a container with the run mounted read-only) can read every file.
    safetensors and tempfile would otherwise make weights and dataset folders owner-only."""
    import shutil
    import tempfile

    pytest.importorskip("transformers")
    old = os.umask(0o022)
    shared = Path(tempfile.mkdtemp(dir="/tmp", prefix="tinygpt-shared-"))
    try:
        os.chmod(shared, 0o755)  # reachable by the other user; pytest's own tmp is not
        run = shared / "run"
        argv = _train_argv(dataset, run, "--max-steps", "2", "--train.eval_interval", "2")
        assert main(argv) == 0
        assert main(["export", str(run), "--format", "hf", "--out", str(shared / "hf")]) == 0
        text = dataset.parent / "text.txt"
        argv = [
            "prepare",
            "--input",
            str(text),
            "--out",
            str(shared / "data"),
            "--tokenizer",
            "char",
        ]
        assert main(argv) == 0
        files = sorted(p for p in shared.rglob("*") if p.is_file())
        assert any(p.name == "model.safetensors" for p in files)
        modes = {str(p.relative_to(shared)): oct(p.stat().st_mode & 0o777) for p in files}
        assert all(m == "0o644" for m in modes.values()), modes
        folders = [p for p in shared.rglob("*") if p.is_dir()]
        assert all(p.stat().st_mode & 0o755 == 0o755 for p in folders), folders
        if os.geteuid() == 0 and shutil.which("setpriv"):  # read them as nobody (uid 65534)
            script = 'for f; do cat "$f" > /dev/null || exit 1; done'
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
            out = subprocess.run([*argv, script, "sh", *map(str, files)], capture_output=True)
            assert out.returncode == 0, out.stderr
    finally:
        os.umask(old)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"n": ' + "7" * 5001 + "}", "Exceeds the limit"),
        ('{"prompt": ', "Expecting value"),
    ],
)
def test_a_jsonl_line_python_cannot_read_is_a_line_number(tmp_path, line, reason):
    """Nesting deeper than the stack or an integer of 5,001 digits is "not valid JSON" with
    its line number (or skipped and counted by a reader that skips), never a traceback."""
    from tinygpt.core.errors import TinyGPTError
    from tinygpt.core.files import read_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TinyGPTError, match=f"bad.jsonl:2: not valid JSON .*{reason}"):
        list(read_jsonl(path))
    skipped = []
    kept = list(read_jsonl(path, skip=lambda n, why: skipped.append((n, why))))
    assert kept == [(1, {"prompt": "ok"})] and skipped[0][0] == 2
