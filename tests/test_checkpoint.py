"""Checkpoints: tied weights stored once, atomic folders; in a run folder: pointers,
rotation, disk errors."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from tinygpt.core import checkpoint as ckpt
from tinygpt.core import weights
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.core.weights import save_checkpoint


def _model(tie=True):
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=tie)
    )


@pytest.mark.parametrize("tie", [True, False])
def test_weights_round_trip_and_tying(tmp_path, tie):
    model = _model(tie)
    weights.save_weights(model, tmp_path / "m.safetensors")
    other = GPT(model.config)
    weights.load_weights(other, tmp_path / "m.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert (other.lm_head.weight is other.tok_emb.weight) == tie


def test_compiled_and_ddp_prefixes_are_stripped():
    state = {"_orig_mod.a.weight": 1, "module.b": 2, "module._orig_mod.c": 3}
    assert weights.clean_state_dict(state) == {"a.weight": 1, "b": 2, "c": 3}


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    weights.save_weights(_model(), tmp_path / "m.safetensors")
    bigger = GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=8))
    with pytest.raises(TinyGPTError, match="do not fit the model"):
        weights.load_weights(bigger, tmp_path / "m.safetensors")


def test_weights_of_another_shape_are_a_clear_error(tmp_path):
    weights.save_weights(_model(), tmp_path / "m.safetensors")
    wider = GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(TinyGPTError, match="do not fit the model.*config.toml"):
        weights.load_weights(wider, tmp_path / "m.safetensors")


def test_save_pointers_and_rotation(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    for step in (10, 20, 30, 40):
        save_checkpoint(
            RunDir(tmp_path),
            step,
            model,
            optimizer=opt,
            state={"tokens": step},
            tensors={"torch_cpu": torch.get_rng_state()},
            is_best=step == 20,
            keep_last=2,
        )
    names = [p.name for p in RunDir(tmp_path).checkpoints()]
    assert names == ["step-000020", "step-000030", "step-000040"]  # best survives rotation
    (tmp_path / "config.toml").write_text("")
    assert RunDir(tmp_path).resolve_checkpoint("best").name == "step-000020"
    assert RunDir(tmp_path).resolve_checkpoint("latest").name == "step-000040"
    assert RunDir(tmp_path).resolve_checkpoint("step-30").name == "step-000030"
    with pytest.raises(TinyGPTError, match="use best, latest or one of: step-000020"):
        RunDir(tmp_path).resolve_checkpoint("step-10")
    state = ckpt.read_state(tmp_path / "checkpoints" / "step-000040")
    assert state["tokens"] == 40 and state["format_version"] == ckpt.FORMAT_VERSION
    assert weights.load_optimizer_state(tmp_path / "checkpoints" / "step-000040")["param_groups"]
    assert "torch_cpu" in weights.read_tensors(tmp_path / "checkpoints" / "step-000040")


def test_a_partial_checkpoint_is_never_seen(tmp_path):
    model = _model()
    save_checkpoint(RunDir(tmp_path), 1, model)
    # A crash mid-save leaves only a hidden temp folder, which is ignored.
    partial = tmp_path / "checkpoints" / ".step-000002.tmp-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    # A folder without state.json (written last) is not a checkpoint either.
    (tmp_path / "checkpoints" / "step-000003").mkdir()
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["step-000001"]
    (tmp_path / "config.toml").write_text("")
    assert RunDir(tmp_path).resolve_checkpoint("latest").name == "step-000001"


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    model = _model()
    save_checkpoint(RunDir(tmp_path), 1, model)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "save_file", full)
    with pytest.raises(TinyGPTError, match="disk is full.*previous checkpoint is intact"):
        save_checkpoint(RunDir(tmp_path), 2, model)
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["step-000001"]
    assert not any(
        p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()
    )
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000001"


def test_not_a_run_folder(tmp_path):
    with pytest.raises(TinyGPTError, match="is not a run folder"):
        RunDir(tmp_path).resolve_checkpoint()
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(TinyGPTError, match="no complete checkpoint"):
        RunDir(tmp_path).resolve_checkpoint()


def test_state_is_json(tmp_path):
    save_checkpoint(RunDir(tmp_path), 5, _model(), state={"numpy_rng": [1, 2]})
    body = json.loads((tmp_path / "checkpoints" / "step-000005" / "state.json").read_text())
    assert body["step"] == 5 and body["numpy_rng"] == [1, 2]
