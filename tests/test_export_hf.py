"""`tinygpt export --format hf` and `tinygpt import`: a run becomes a transformers folder that
AutoModelForCausalLM, AutoTokenizer and pipeline load offline, with the same logits, ids and
greedy text as ours, and comes back bit for bit; every built-in preset exports; bad input
gets one line and exit status 2."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tinygpt.cli import main
from tinygpt.core.config import (
    SAMPLE_TEMPERATURE,
    SAMPLE_TOP_K,
    RunConfig,
    list_presets,
    load_config,
)
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.prepare import prepare
from tinygpt.data.tokenizer import EOT, train_tokenizer
from tinygpt.export.card import language_of
from tinygpt.export.folder import save_hf_folder
from tinygpt.export.report import fmt
from tinygpt.infer.loader import load_run, save_model_run

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "in", "mind"]
TURKISH = ["İstanbul'da", "ışık", "Şişli", "şeker", "Ğ", "dağ", "ağaç", "Iğdır", "ÇÖÜçöü"]
EMOJI = ["😀", "👍🏽", "🇹🇷", "❤️"]
# Varied text for tokenizer parity, all within the training text's characters.
VARIED = [
    "",
    "to be or not",
    "İstanbul'da ışık; Şişli şeker Ğ dağ ağaç Iğdır",
    "emoji 😀 👍🏽 flag 🇹🇷 ❤️",
    "line one\nline two\n\n\n",
    "windows\r\nline\r\n",
    f"doc one{EOT}doc two",
]


def _text(seed: int = 0, lines: int = 500) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = [rng.choice(WORDS + TURKISH + EMOJI) for _ in range(rng.randint(3, 9))]
        out.append(" ".join(words) + (";" if i % 5 == 0 else "") + ("\r\n" if i % 7 == 0 else "\n"))
    return "one two windows line flag emoji doc\n" + "".join(out)


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


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A few steps of the default preset (Qwen3 twin) on a tiny text, evaluated once."""
    root = tmp_path_factory.mktemp("default")
    (root / "text.txt").write_text(_text(), encoding="utf-8", newline="")
    data = prepare(str(root / "text.txt"), root / "data", tokenizer="char", progress=False)
    run = root / "run"
    argv = ["train", "--preset", "shakespeare-char", "--data", str(data), "--out", str(run)]
    argv += ["--max-steps", "6", "--threads", "1", "--no-progress", "--train.batch_size", "4"]
    argv += ["--train.eval_interval", "3", "--train.sample_tokens", "8"]
    assert main(argv) == 0
    assert main(["eval", str(run), "--input", str(root / "text.txt")]) == 0
    return run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out), "--language", "en"]) == 0
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported)


# ----------------------------------------------------------------------- the default preset


def test_folder_files_and_generation_defaults(run, exported):
    names = {p.name for p in exported.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
    }
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["head_dim"] == 32 and config["use_sliding_window"] is False
    eot = load_run(run).tokenizer.eot_id
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["bos_token_id"] == gen["eos_token_id"] == gen["pad_token_id"] == eot
    assert gen["temperature"] == SAMPLE_TEMPERATURE and gen["top_k"] == SAMPLE_TOP_K
    assert gen["do_sample"] is True and gen["max_length"] == 128
    special = json.loads((exported / "special_tokens_map.json").read_text())
    assert special == {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}


def test_model_card_holds_front_matter_and_the_runs_facts(run, exported):
    text = (exported / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit" and meta["language"] == ["en"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"tinygpt", "qwen3", "char-level"} <= set(meta["tags"])
    loaded = load_run(run)
    summary = json.loads((run / "summary.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())
    for fact in [
        "`Qwen3ForCausalLM`",
        f"| parameters | {loaded.model.num_params():,} |",
        "| layers × heads × width | 3 × 4 × 128 |",
        f"| tokenizer | char, {loaded.tokenizer.vocab_size} ids |",
        "| data | text.txt |",
        f"| steps | {summary['step']} |",
        f"| tokens seen | {summary['tokens']:,} |",
        f"| training time | {fmt(summary['train_time_s'], 1)} s |",
        f"| device, precision | {summary['device']}, {summary['precision']} |",
        f"| final validation loss (full split) | {summary['val_loss']:.4f} |",
        f"| loss (nats/token) | {results['val_loss']:.4f} |",
        f"| bits per byte | {results['val_bpb']:.4f} |",
        "## Intended use",
        "## Limitations",
    ]:
        assert fact in text, fact
    assert str(run.parent) not in text  # no local paths in a card meant for the Hub


def test_language_of_builtin_corpora():
    assert language_of("shakespeare") == "en" and language_of("ataturk") == "tr"
    assert language_of("/data/mine.txt") is None


def test_logits_equal_in_fp32(run, hf_model):
    ours = load_run(run).model
    idx = torch.randint(0, ours.config.vocab_size, (2, ours.config.block_size))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_auto_tokenizer_gives_our_ids(run, hf_tokenizer):
    ours = load_run(run).tokenizer
    for text in VARIED:
        ids = ours.encode(text, allowed_special=True)
        assert hf_tokenizer(text)["input_ids"] == ids, text
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == ours.eot_id == hf_tokenizer.pad_token_id


def test_greedy_generate_equals_sample_command(run, exported, hf_model, hf_tokenizer, capsys):
    prompt, n = "to be ağaç", 60  # 10 + 60 tokens fit the context of 128
    code, out, _ = _cli(
        capsys, "sample", run, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", n
    )
    assert code == 0
    ids = hf_tokenizer(prompt, return_tensors="pt")
    new = hf_model.generate(**ids, do_sample=False, max_new_tokens=n)[0, ids.input_ids.size(1) :]
    new = new.tolist()
    eot = hf_tokenizer.eos_token_id
    new = new[: new.index(eot)] if eot in new else new
    assert out == prompt + hf_tokenizer.decode(new) + "\n"


def test_pipeline_produces_text(exported):
    generate = transformers.pipeline("text-generation", model=str(exported), device="cpu")
    out = generate("to be", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("to be") and len(out) > len("to be")
    sampled = generate("to be", max_new_tokens=8)[0]["generated_text"]  # the card's defaults
    assert sampled.startswith("to be")


def test_import_round_trip_is_bit_identical(run, exported, tmp_path, capsys):
    back = tmp_path / "imported"
    code, out, _ = _cli(capsys, "import", exported, "--out", back)
    assert code == 0 and str(back) in out
    a, b = load_run(run), load_run(back)
    assert b.config.model == a.config.model
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert (back / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    argv = ["--prompt", "to be", "--temperature", "0", "--max-new-tokens", "40"]
    assert _cli(capsys, "sample", run, *argv)[1] == _cli(capsys, "sample", back, *argv)[1]
    code, out, _ = _cli(capsys, "info", back)
    assert code == 0 and "rope positions, rmsnorm" in out
    code, out, _ = _cli(capsys, "eval", back, "--input", run.parent / "text.txt", "--json")
    assert code == 0 and json.loads(out)["tokens"] > 0


def test_force_replaces_and_checkpoint_choice(run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    code, _, err = _cli(capsys, "export", run, "--out", out)
    _one_line_error(code, err, "exists and is not empty", "--force")
    assert (out / "stale.txt").is_file()
    code, _, _ = _cli(capsys, "export", run, "--out", out, "--force", "--checkpoint", "step-3")
    assert code == 0 and not (out / "stale.txt").exists()
    assert "step-000003 (step 3)" in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_no_complete_looking_folder(run, tmp_path, monkeypatch):
    from tinygpt.export import folder, hf_run

    def boom(*args, **kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(folder, "_write_json", boom)  # after the weights are written
    with pytest.raises(RuntimeError):
        hf_run.export_run(run, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        hf_run.export_run(run, old, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in old.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------- presets and families


def _small(config: GPTConfig) -> GPTConfig:
    """The preset's architecture at a size a test can afford."""
    return GPTConfig(
        **{
            **config.__dict__,
            "vocab_size": 64,
            "block_size": 16,
            "n_layer": 1,
            "n_embd": 8 * config.n_head,
            "mlp_hidden": None,
        }
    )


@pytest.mark.parametrize("preset", list_presets())
def test_every_builtin_preset_exports(preset, tmp_path):
    from tinygpt.export.hf import hf_config_for

    full = load_config(preset).model
    family = hf_config_for(full).model_type  # the full-size config has a twin too
    torch.manual_seed(0)
    model = GPT(_small(full)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokenizer = train_tokenizer("char", ["abcdefghij \n"])
    save_hf_folder(model, tmp_path / "hf", tokenizer=tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert hf.config.model_type == family
    known = {"shakespeare-char": "qwen3", "modern-small": "llama", "gpt2-124m": "gpt2"}
    assert family == known.get(preset, family)
    idx = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("abc j\n")["input_ids"] == tokenizer.encode("abc j\n")


def test_a_normalizing_tokenizer_exports_with_its_normalizer(tmp_path):
    """Turkish lowercasing and whitespace folding happen inside HF's tokenizer too."""
    from tinygpt.data.tokenizer.normalize import Normalizer

    normalizer = Normalizer.build(lowercase="tr", whitespace=True)
    texts = [_text(seed=s, lines=60) for s in range(2)]
    tokenizer = train_tokenizer("bpe", texts, vocab_size=300, normalizer=normalizer)
    config = GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)
    out = save_hf_folder(GPT(config), tmp_path / "hf", tokenizer=tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in [*VARIED, "İSTANBUL  IĞDIR\t\tŞİŞLİ\u00a0dağ"]:
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text, allowed_special=True), text


# ------------------------------------------------------------------------- chat templates

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [
    {"role": "user", "content": "Merhaba, nasılsın?"},
    {"role": "assistant", "content": "İyiyim 😀 ve sen?"},
    {"role": "user", "content": "Şimdi ne\nyapalım?"},
]
RENDERED = (  # what the template gives, written out by hand
    "<|user|>Merhaba, nasılsın?<|end|><|assistant|>İyiyim 😀 ve sen?<|end|>"
    "<|user|>Şimdi ne\nyapalım?<|end|><|assistant|>"
)


def test_chat_template_is_exported_twice_and_ends_turns(tmp_path):
    texts = [_text(seed=s, lines=60) for s in range(3)]
    tokenizer = train_tokenizer(
        "bpe", texts, vocab_size=320, special_tokens=["<|user|>", "<|assistant|>", "<|end|>"]
    )
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=64,
        n_layer=1,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_weights=False,
    )
    model = GPT(config).eval()
    out = save_hf_folder(
        model, tmp_path / "chat", tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        end_of_turn="<|end|>",
    )  # fmt: skip
    tok_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    jinja = (out / "chat_template.jinja").read_text(encoding="utf-8")
    assert tok_config["chat_template"] == jinja == CHAT_TEMPLATE
    gen = json.loads((out / "generation_config.json").read_text())
    end = tokenizer.special_tokens["<|end|>"]
    assert gen["eos_token_id"] == [tokenizer.eot_id, end]

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == (
        RENDERED
    )
    ids = hf_tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids == tokenizer.encode(RENDERED, allowed_special=True)
    assert ids.count(end) == 3
    for text in VARIED:  # byte-level BPE: any text, same ids
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text, allowed_special=True)

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert list(hf.generation_config.eos_token_id) == [tokenizer.eot_id, end]


@pytest.mark.parametrize("name", ["default", "inst"])
def test_a_chat_runs_template_is_exported_and_imported(run, name, tmp_path, capsys):
    """A run with RUN/chat_template.json: its Jinja goes into the export, transformers gives
    the ids our template gives, and import brings the template back."""
    from tinygpt.data.template import get_template, load_template, save_template

    template = get_template(name)
    base = load_run(run)
    tokenizer = base.tokenizer.with_special_tokens(template.special_tokens)
    config = GPTConfig(**{**base.config.model.__dict__, "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    chat_run = tmp_path / "chat"
    save_model_run(chat_run, RunConfig(model=config), GPT(config), tokenizer)
    save_template(chat_run, template)
    code, _, err = _cli(capsys, "export", chat_run, "--out", tmp_path / "hf")
    assert code == 0, err
    out = tmp_path / "hf"
    jinja = (out / "chat_template.jinja").read_text(encoding="utf-8")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == jinja
    assert jinja == template.jinja()
    end = tokenizer.special_tokens[template.end_of_turn]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokenizer.eot_id, end]
    assert "chat template | yes" in (out / "README.md").read_text(encoding="utf-8")

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    conversation = [
        {"role": "system", "content": "to be"},
        {"role": "user", "content": "ağaç 😀"},
        {"role": "assistant", "content": "Şişli\nşeker"},
        {"role": "user", "content": "or not"},
    ]
    ids = hf_tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids == template.encode(tokenizer, conversation, add_generation_prompt=True)[0]
    assert end in ids

    code, _, err = _cli(capsys, "import", out, "--out", tmp_path / "back")
    assert code == 0, err
    assert load_template(tmp_path / "back") is template


def test_end_of_turn_must_be_a_special_token(tmp_path):
    tokenizer = train_tokenizer("char", ["abc"])
    model = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(TinyGPTError, match=re.escape("token '<|end|>' is not a special token")):
        save_hf_folder(
            model, tmp_path / "x", tokenizer=tokenizer, chat_template="{{ 1 }}",
            end_of_turn="<|end|>",
        )  # fmt: skip
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ bad input


def test_run_without_checkpoint(run, tmp_path, capsys):
    empty = tmp_path / "fresh"
    empty.mkdir()
    shutil.copy(run / "config.toml", empty / "config.toml")
    code, _, err = _cli(capsys, "export", empty, "--out", tmp_path / "hf")
    _one_line_error(code, err, "has no complete checkpoint yet")
    code, _, err = _cli(capsys, "export", tmp_path / "nowhere", "--out", tmp_path / "hf")
    _one_line_error(code, err, "does not exist")
    assert not (tmp_path / "hf").exists()


def test_out_inside_or_equal_to_the_run_is_refused(run, capsys):
    code, _, err = _cli(capsys, "export", run, "--out", run, "--force")
    _one_line_error(code, err, "would hold the run folder")
    code, _, err = _cli(capsys, "export", run, "--out", run.parent, "--force")
    _one_line_error(code, err, "would hold the run folder")
    assert (run / "checkpoints").is_dir()


def test_unsupported_config_is_refused_naming_the_option(tmp_path, capsys):
    mixed = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8, pos="rope")
    tokenizer = train_tokenizer("char", ["abcdefghijklmn"])
    save_model_run(tmp_path / "run", RunConfig(model=mixed), GPT(mixed), tokenizer)
    code, _, err = _cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "hf")
    _one_line_error(code, err, "no transformers twin", "model.norm = 'layernorm'")
    assert not (tmp_path / "hf").exists()


def test_import_refuses_sentencepiece_and_bad_folders(exported, tmp_path, capsys):
    meta = tmp_path / "metaspace"
    shutil.copytree(exported, meta)
    data = json.loads((meta / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "split": True}
    (meta / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    code, _, err = _cli(capsys, "import", meta, "--out", tmp_path / "r1")
    _one_line_error(code, err, "SentencePiece-based tokenizer")

    sp = tmp_path / "sp"
    shutil.copytree(exported, sp)
    (sp / "tokenizer.json").unlink()
    (sp / "tokenizer.model").write_bytes(b"\x0a\x00")
    code, _, err = _cli(capsys, "import", sp, "--out", tmp_path / "r2")
    _one_line_error(code, err, "SentencePiece-based tokenizer (tokenizer.model)")

    code, _, err = _cli(capsys, "import", tmp_path / "nothing", "--out", tmp_path / "r3")
    _one_line_error(code, err, "not a transformers model folder")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    code, _, err = _cli(capsys, "import", exported, "--out", busy)
    _one_line_error(code, err, "already exists and is not empty")
    assert not any((tmp_path / n).exists() for n in ("r1", "r2", "r3"))


def test_import_reads_a_gpt2_folder_with_vocab_and_merges_only(tmp_path, capsys):
    """GPT-2's classic tokenizer files (no tokenizer.json) are converted by transformers."""
    texts = [_text(seed=s, lines=80) for s in range(2)]
    tokenizer = train_tokenizer("bpe", texts, vocab_size=300, pattern="gpt2")
    config = GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():  # non-zero biases, so that bias stays true
            p.add_(torch.randn_like(p) * 0.05)
    folder = save_hf_folder(model, tmp_path / "gpt2", tokenizer=tokenizer)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "vocab.json").write_text(json.dumps(data["model"]["vocab"]), encoding="utf-8")
    merges = "\n".join(data["model"]["merges"])
    (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()
    code, _, err = _cli(capsys, "import", folder, "--out", tmp_path / "run")
    assert code == 0, err
    back = load_run(tmp_path / "run")
    assert back.config.model == config and back.config.data.tokenizer == "bpe"
    for text in VARIED:
        assert back.tokenizer.encode(text) == tokenizer.encode(text)


def _hf_tokenizer_folder(folder: Path, vocab_size: int) -> int:
    """A byte-level BPE trained by Hugging Face `tokenizers` and saved by transformers, the way
    a model on the Hub carries it; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_text(seed=s, lines=80) for s in range(3)], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


FOREIGN = {  # family: (config class, model class, settings)
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_positions=16, n_embd=32, n_layer=2, n_head=4)),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=16),
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", list(FOREIGN))
def test_import_of_a_folder_transformers_made(family, tmp_path, capsys):
    """A model and tokenizer that transformers and tokenizers made (not our export) import
    as a run whose logits equal transformers' within 1e-4 and whose ids equal AutoTokenizer's."""
    folder = tmp_path / "hf"
    vocab = _hf_tokenizer_folder(folder, 300)
    config_name, model_name, kw = FOREIGN[family]
    torch.manual_seed(0)
    hf_config = getattr(transformers, config_name)(vocab_size=vocab, **kw)
    hf = getattr(transformers, model_name)(hf_config)
    with torch.no_grad():  # away from the initialisation: non-zero biases and norm gains
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(folder)
    code, out, err = _cli(capsys, "import", folder, "--out", tmp_path / "run")
    assert code == 0, err
    run = load_run(tmp_path / "run")
    assert run.config.model.vocab_size == vocab and run.config.model.block_size == 16
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for text in VARIED[1:]:  # transformers parses special strings in text; ours when asked
        assert run.tokenizer.encode(text, allowed_special=True) == hf_tok(text)["input_ids"], text
    idx = torch.tensor([run.tokenizer.encode(VARIED[2])[:16], list(range(16))])
    with torch.no_grad():
        expected = hf.eval()(idx).logits
        got, _ = run.model.eval()(idx)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
