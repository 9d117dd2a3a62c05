"""Config resolution: presets, files, dotted overrides, validation messages."""

from __future__ import annotations

import pytest

from tinygpt.cli import main
from tinygpt.core.config import RunConfig, TrainConfig, list_presets, load_config, parse_overrides
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.resolution import resolve_config

PRESETS = [
    "gpt2-124m",
    "gpt2-mini",
    "modern-small",
    "one-layer",
    "shakespeare-char",
    "tiny-bpe",
    "tr-bpe",
]


def test_all_named_presets_exist_and_validate():
    assert set(PRESETS) <= set(list_presets())
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.preset == name
        assert cfg.train.has_budget, f"{name} has no training budget"


def test_preset_sizes_match_their_sources():
    gpt2 = load_config("gpt2-124m").model
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.block_size, gpt2.vocab_size) == (
        12,
        12,
        768,
        1024,
        50257,
    )
    modern = load_config("modern-small").model
    assert (modern.pos, modern.norm, modern.mlp, modern.bias) == (
        "rope",
        "rmsnorm",
        "swiglu",
        False,
    )
    assert modern.n_kv_head < modern.n_head
    one = load_config("one-layer").model
    assert (one.n_layer, one.n_head, one.n_embd, one.block_size) == (1, 4, 64, 64)
    assert load_config("tr-bpe").data.source == "ataturk"


def test_layers_override_in_order(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('preset = "one-layer"\n[model]\nn_layer = 3\n[train]\nlr = 0.5\n')
    cfg = load_config(config_file=file, overrides=["--train.lr", "0.25", "--model.dropout=0.1"])
    assert cfg.preset == "one-layer"
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 64  # file over preset
    assert cfg.train.lr == 0.25 and cfg.model.dropout == 0.1  # overrides over file


def test_toml_round_trip(tmp_path):
    cfg = load_config("modern-small", overrides=["--train.sample_prompt", 'a "quoted"\nline'])
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert RunConfig.from_toml(path) == cfg


def test_parse_overrides_forms():
    assert parse_overrides(["--model.n_layer", "6", "--train.lr=1e-3"]) == {
        "model": {"n_layer": "6"},
        "train": {"lr": "1e-3"},
    }


def test_overrides_from_python_in_three_spellings():
    cli = load_config("one-layer", overrides=["--train.max_steps", "30", "--train.lr", "1e-3"])
    strings = load_config("one-layer", overrides=["train.max_steps=30", "train.lr=1e-3"])
    mapping = load_config("one-layer", overrides={"train.max_steps": 30, "train.lr": 1e-3})
    assert cli == strings == mapping and mapping.train.max_steps == 30
    with pytest.raises(TinyGPTError, match="train.max_steps expects int"):
        load_config(overrides={"train.max_steps": "many"})
    with pytest.raises(TinyGPTError, match="train.max_steps expects int, got 2.5"):
        load_config(overrides={"train.max_steps": 2.5})
    with pytest.raises(TinyGPTError, match="section.key=VALUE from Python"):
        load_config(overrides=["train.max_steps"])


def test_resolve_config_budgets_replace_the_presets_and_resume_keeps_the_runs(tmp_path):
    preset = load_config("shakespeare-char").train
    assert preset.max_time and not preset.max_steps
    cfg = resolve_config("shakespeare-char", budgets={"max_steps": 7, "max_time": None})
    assert (cfg.train.max_steps, cfg.train.max_time, cfg.train.max_epochs) == (7, 0.0, 0.0)
    typed = resolve_config(settings={"train.seed": 5, "train.compile": True, "train.device": None})
    assert typed.train.seed == 5 and typed.train.compile is True
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(
        load_config("one-layer", overrides={"train.lr": 0.5}).to_toml()
    )
    assert resolve_config(resume_run=run).train.lr == 0.5  # the run's own settings
    assert resolve_config("one-layer", resume_run=run).train.lr != 0.5  # unless a preset is named
    assert resolve_config(resume_run=tmp_path / "new").preset == "shakespeare-char"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--model.n_layr", "2"], "did you mean 'model.n_layer'"),
        (["--trian.lr", "2"], "unknown section \\[trian\\].*did you mean 'train'"),
        (["--train.lr", "fast"], "train.lr expects float"),
        (["--train.compile", "maybe"], "train.compile expects bool"),
        (["--model.n_layer"], "needs a value"),
        (["stray"], "overrides look like --section.key VALUE"),
        (["--train.lr", "-1"], "train.lr = -1.0 must be a positive number"),
        (["--train.schedule", "cosin"], "did you mean 'cosine'"),
        (["--train.precision", "fp8"], "is not one of auto, fp32, bf16, fp16"),
        (["--train.batch_size", "0"], "train.batch_size = 0 must be at least 1"),
        (["--train.max_time", "-5"], "train.max_time = -5.0 must not be negative"),
        (["--train.min_lr_ratio", "2"], "min_lr_ratio = 2.0 must be in \\[0, 1\\]"),
        (["--train.beta2", "1"], "train.beta2 = 1.0 must be in \\[0, 1\\)"),
        (["--data.val_fraction", "0"], "data.val_fraction = 0.0 must be between 0 and 1"),
        (["--data.backend", "fast"], "data.backend = 'fast' is not one of native, hf"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(TinyGPTError, match=message):
        load_config(overrides=overrides)


def test_bad_files(tmp_path):
    with pytest.raises(TinyGPTError, match="does not exist"):
        load_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(TinyGPTError, match="is not valid TOML"):
        load_config(config_file=bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[model]\nn_heads = 3\n")
    with pytest.raises(TinyGPTError, match="did you mean 'model.n_head'"):
        load_config(config_file=wrong)
    with pytest.raises(TinyGPTError, match="unknown preset 'gpt2-124'.*did you mean 'gpt2-124m'"):
        load_config("gpt2-124")


def test_cli_reports_config_errors_with_exit_2(capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path), "--model.n_layr", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error:") and "did you mean 'model.n_layer'" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_argument_on_a_command_without_overrides_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "list", "--model.n_layer", "2"])
    assert exc.value.code == 2


def test_train_config_budget():
    assert not TrainConfig().has_budget
    assert TrainConfig(max_time=1).has_budget


def test_warmup_as_a_fraction_replaces_warmup_steps(tmp_path):
    preset = load_config("one-layer").train
    assert preset.warmup_steps and not preset.warmup_frac
    frac = load_config("one-layer", overrides={"train.warmup_frac": 0.05}).train
    assert (frac.warmup_frac, frac.warmup_steps) == (0.05, 0)  # the preset's steps replaced
    with pytest.raises(TinyGPTError, match="warmup_frac = 0.05 and train.warmup_steps = 7 both"):
        load_config("one-layer", overrides=["train.warmup_frac=0.05", "train.warmup_steps=7"])
    path = tmp_path / "c.toml"
    path.write_text("[train]\nwarmup_frac = 0.1\n")
    assert load_config(config_file=path, overrides={"train.warmup_steps": 5}).train.warmup_frac == 0
    for bad, message in [(1.0, r"warmup_frac = 1.0 must be in \[0, 1\)"), (-0.1, "in \\[0, 1\\)")]:
        with pytest.raises(TinyGPTError, match=message):
            load_config(overrides={"train.warmup_frac": bad})
