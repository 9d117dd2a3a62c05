"""`tinygpt push` and `push_to_hub`: the token's lookup order, the folder and arguments handed
to the upload (replaced here: no test contacts the Hub), and one-line failures that say
where the export is on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.core.config import RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.export import hub
from tinygpt.infer.loader import save_model_run

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers").logging.set_verbosity_error()

TOKEN = "hf_secretTOKENvalue1234567890"


@pytest.fixture(autouse=True)
def _no_real_token(tmp_path_factory, monkeypatch):
    """No token from this machine's environment or login; the working directory is empty."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("hfhome")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def uploads(monkeypatch) -> list[dict]:
    """Replace the upload (and the reachability probe) with a recorder."""
    calls: list[dict] = []

    def fake_upload(folder, *, repo_id, token, private, revision):
        files = sorted(p.name for p in Path(folder).iterdir())
        calls.append(
            dict(folder=Path(folder), files=files, repo_id=repo_id, token=token,
                 private=private, revision=revision)
        )  # fmt: skip
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(hub, "upload_folder", fake_upload)
    monkeypatch.setattr(hub, "check_reachable", lambda later: None)
    return calls


@pytest.fixture
def run(tmp_path) -> Path:
    config = GPTConfig(
        vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16, pos="rope",
        norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True,
    )  # fmt: skip
    tokenizer = train_tokenizer("char", ["to be or not, that is"])
    assert tokenizer.vocab_size <= 16
    save_model_run(tmp_path / "run", RunConfig(model=config), GPT(config), tokenizer)
    return tmp_path / "run"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_token_anywhere(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------- token


def test_token_lookup_order(monkeypatch, tmp_path):
    assert hub.find_token(tmp_path) is None
    Path(huggingface_hub.constants.HF_TOKEN_PATH).write_text("hf_stored\n")
    assert hub.find_token(tmp_path) == ("hf_stored", "the stored login (hf auth login)")
    (tmp_path / ".env").write_text('# local secrets\nOTHER=1\nHF_TOKEN="hf_dotenv"\n')
    assert hub.find_token(tmp_path)[0] == "hf_dotenv"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert hub.find_token(tmp_path) == ("hf_env", "the HF_TOKEN environment variable")


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("HF_TOKEN=hf_a\n", "hf_a"),
        ("export HF_TOKEN = 'hf_b'  \n", "hf_b"),
        ("HF_TOKEN=hf_c # a comment\n", "hf_c"),
        ("# HF_TOKEN=hf_x\nHF_TOKENS=hf_y\nHF_TOKEN=\n", None),
    ],
)
def test_token_from_dotenv(tmp_path, text, token):
    (tmp_path / ".env").write_text(text)
    assert hub.token_from_dotenv(tmp_path / ".env") == token


# --------------------------------------------------------------------------------- upload


def test_push_run_exports_then_uploads_with_the_arguments(run, uploads, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = _cli(
        capsys, "push", run, "--repo-id", "me/tiny", "--private", "--revision", "dev"
    )
    assert code == 0, err
    assert "https://huggingface.co/me/tiny/commit/abc" in out
    (call,) = uploads
    assert call["folder"] == run / "export" / "hf"
    assert call["files"] == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (call["repo_id"], call["private"], call["revision"]) == ("me/tiny", True, "dev")
    assert call["token"] == TOKEN
    card = (call["folder"] / "README.md").read_text(encoding="utf-8")
    assert 'model="me/tiny"' in card and "# me/tiny" in card
    assert json.loads((call["folder"] / "config.json").read_text())["model_type"] == "qwen3"
    assert TOKEN not in out + err
    _no_token_anywhere(run)


def test_push_an_exported_folder_as_it_is(run, uploads, tmp_path, capsys):
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    url = hub.push_to_hub(tmp_path / "hf", "me/folder", cwd=tmp_path)
    assert url.endswith("me/folder/commit/abc")
    (call,) = uploads
    assert call["folder"] == tmp_path / "hf" and call["files"] == before
    assert (call["private"], call["revision"], call["token"]) == (False, None, TOKEN)
    assert not (run / "export").exists()


def test_push_to_hub_from_python_uses_the_stored_login(run, uploads):
    Path(huggingface_hub.constants.HF_TOKEN_PATH).write_text("hf_stored_login\n")
    hub.push_to_hub(run, "me/again")
    hub.push_to_hub(run, "me/again")  # the export under the run is replaced each time
    assert [c["token"] for c in uploads] == ["hf_stored_login"] * 2
    assert uploads[0]["folder"] == run / "export" / "hf"


# ------------------------------------------------------------------------------ failures


def test_push_without_a_token(run, uploads, capsys):
    code, _, err = _cli(capsys, "push", run, "--repo-id", "me/tiny")
    folder = run / "export" / "hf"
    _one_line_error(
        code, err, "no Hugging Face token", "HF_TOKEN", ".env", "hf auth login",
        f"the export is on disk at {folder}", f"tinygpt push {folder} --repo-id me/tiny",
    )  # fmt: skip
    assert (folder / "model.safetensors").is_file() and uploads == []


def test_push_offline_fails_fast_with_the_path(run, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the upload must not start when the Hub is unreachable")

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "upload_folder", never)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 2.0)
    # a closed local port: refused at once, and nothing leaves the machine
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    code, _, err = _cli(capsys, "push", run, "--repo-id", "me/tiny")
    folder = run / "export" / "hf"
    line = _one_line_error(
        code, err, "cannot reach http://127.0.0.1:9", f"the export is on disk at {folder}",
        "push it later with: tinygpt push",
    )  # fmt: skip
    assert TOKEN not in line
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, err = _cli(capsys, "push", folder, "--repo-id", "me/tiny")
    _one_line_error(code, err, "HF_HUB_OFFLINE is set", f"on disk at {folder}")


def test_upload_errors_are_one_line_without_the_token(run, monkeypatch, capsys):
    def rejected(folder, **kwargs):
        raise RuntimeError(f"401 Unauthorized\nAuthorization: Bearer {kwargs['token']}")

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "upload_folder", rejected)
    monkeypatch.setattr(hub, "check_reachable", lambda later: None)
    code, out, err = _cli(capsys, "push", run, "--repo-id", "me/tiny")
    line = _one_line_error(code, err, "the upload to me/tiny failed", "401 Unauthorized", "***")
    assert TOKEN not in line + out


def test_bad_repo_id_and_bad_folder(run, tmp_path, uploads, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, _, err = _cli(capsys, "push", run, "--repo-id", "no-slash")
    _one_line_error(code, err, "not of the form USER/NAME")
    code, _, err = _cli(capsys, "push", tmp_path, "--repo-id", "me/x")
    _one_line_error(code, err, "neither a run folder")
    assert uploads == [] and not (run / "export").exists()


def test_push_offline_in_a_fresh_process(run, tmp_path):
    """`python -m tinygpt push` as a user runs it: nothing imported beforehand."""
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_TOKEN=TOKEN, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-m", "tinygpt", "push", str(tmp_path / "hf"), "--repo-id", "me/x"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    _one_line_error(
        done.returncode, done.stderr, "cannot reach http://127.0.0.1:9",
        f"the export is on disk at {tmp_path / 'hf'}",
    )  # fmt: skip
    assert TOKEN not in done.stdout + done.stderr


# ---------------------------------------------------------------------- train --push-to-hub


def _train_argv(tmp_path: Path, *extra: str) -> list[str]:
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    return [
        "train", "--input", str(text), "--out", str(tmp_path / "run"), "--preset", "one-layer",
        "--model.n_embd", "16", "--model.n_head", "2", "--model.block_size", "16",
        "--max-steps", "2", "--no-progress", "--train.tensorboard", "false", *extra,
    ]  # fmt: skip


def test_train_push_to_hub_uploads_the_finished_run(tmp_path, uploads, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = _cli(capsys, *_train_argv(tmp_path, "--push-to-hub", "me/tiny"))
    assert code == 0, err
    assert "steps 2" in out and "pushed: https://huggingface.co/me/tiny/commit/abc" in out
    (call,) = uploads
    assert call["folder"] == tmp_path / "run" / "export" / "hf"
    assert call["repo_id"] == "me/tiny" and call["token"] == TOKEN
    assert "model.safetensors" in call["files"]


def test_train_push_to_hub_offline_keeps_the_run_and_the_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = _cli(capsys, *_train_argv(tmp_path, "--push-to-hub", "me/tiny"))
    folder = tmp_path / "run" / "export" / "hf"
    _one_line_error(code, err, "HF_HUB_OFFLINE is set", f"the export is on disk at {folder}")
    assert "steps 2" in out  # the training itself finished and was reported
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_train_push_to_hub_bad_name_is_refused_before_training(tmp_path, uploads, capsys):
    code, _, err = _cli(capsys, *_train_argv(tmp_path, "--push-to-hub", "no-slash"))
    _one_line_error(code, err, "--push-to-hub 'no-slash' is not of the form USER/NAME")
    assert not (tmp_path / "run").exists() and uploads == []


# ------------------------------------------------------------------- finetune --push-to-hub


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_finetune_push_to_hub_uploads_a_plain_model(tmp_path, uploads, monkeypatch, capsys, lora):
    """A fine-tuned run goes up like a trained one; a LoRA run goes up merged, as plain
    weights that transformers loads without the base."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, _, err = _cli(capsys, *_train_argv(tmp_path))
    assert code == 0, err
    text = tmp_path / "more.txt"
    text.write_text("that is the question, to be or not.\n" * 40, encoding="utf-8")
    argv = ["finetune", tmp_path / "run", "--input", text, "--out", tmp_path / "ft",
            "--max-steps", "2", "--no-progress", "--push-to-hub", "me/tiny-ft"]  # fmt: skip
    code, out, err = _cli(capsys, *argv, *(["--lora"] if lora else []))
    assert code == 0, err
    assert "steps 2" in out and "pushed: https://huggingface.co/me/tiny-ft/commit/abc" in out
    (call,) = uploads
    folder = tmp_path / "ft" / "export" / "hf"
    assert call["folder"] == folder and call["repo_id"] == "me/tiny-ft"
    assert "model.safetensors" in call["files"] and "adapter" not in " ".join(call["files"])
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.num_parameters() > 0


def test_finetune_push_to_hub_bad_name_is_refused_before_fine_tuning(tmp_path, uploads, capsys):
    code, _, err = _cli(capsys, *_train_argv(tmp_path))
    assert code == 0, err
    argv = ["finetune", tmp_path / "run", "--input", tmp_path / "text.txt", "--out",
            tmp_path / "ft", "--max-steps", "2", "--push-to-hub", "x/y/z"]  # fmt: skip
    code, _, err = _cli(capsys, *argv)
    _one_line_error(code, err, "--push-to-hub 'x/y/z' is not of the form USER/NAME")
    assert not (tmp_path / "ft").exists() and uploads == []
