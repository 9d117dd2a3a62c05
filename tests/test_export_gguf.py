"""`tinygpt export --format gguf`: the file, read back with the `gguf` package's own reader,
holds every key, tensor name and shape llama.cpp expects, and tensors equal to ours (after
the rotary row order of `llama`) in f32, within tolerance in f16 and q8_0 (dequantized by
gguf itself); bad input gets one line and exit status 2.

Whether llama.cpp itself computes what we compute is checked by
`tests/test_gguf_llama_cpp.py` (slow marker) and `benchmarks/bench_gguf.py`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tinygpt.cli import main
from tinygpt.core.config import RunConfig, load_config
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.data.template import get_template, save_template
from tinygpt.data.tokenizer import EOT, BPETokenizer, Normalizer, train_tokenizer
from tinygpt.data.tokenizer.bpe import bytes_to_unicode
from tinygpt.export.gguf import char_merges, pairs_layout
from tinygpt.infer.loader import save_model_run

gguf = pytest.importorskip("gguf")

TEXT = [
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "İstanbul'da ışık; Şişli şeker ağaç Iğdır — naïve café €5 😀\n"
]
Q = gguf.GGMLQuantizationType


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


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere, so that a bias, gain or row in the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _run(root: Path, config: GPTConfig, tokenizer, seed: int = 0) -> tuple[Path, GPT]:
    model = GPT(config).eval()
    _perturb(model, seed)
    save_model_run(root, RunConfig(model=config), model, tokenizer)
    return root, model


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _tensors(reader) -> dict[str, tuple[np.ndarray, object]]:
    """name -> (fp32 array in (out, in) order, ggml type), dequantized by gguf itself."""
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml's {in, out} -> (out, in)
        out[t.name] = (np.asarray(data, dtype=np.float32).reshape(shape), t.tensor_type)
    return out


def _export(capsys, run: Path, out: Path, *extra) -> gguf.GGUFReader:
    code, stdout, err = _cli(capsys, "export", run, "--format", "gguf", "--out", out, *extra)
    assert code == 0, err
    assert stdout.strip() == f"exported {run} to {out}"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    return gguf.GGUFReader(out)


def _expected(model: GPT, arch: str) -> dict[str, np.ndarray]:
    """Our tensors under llama.cpp's names, spelled out here rather than taken from the
    exporter (tensor layouts: src/models/{llama,qwen3,gpt2}.cpp in llama.cpp)."""
    c = model.config
    s = {k: v.detach().float() for k, v in model.state_dict().items()}
    H, K, D = c.n_head, c.kv_heads, c.head_dim
    zeros = torch.zeros
    out = {"token_embd.weight": s["tok_emb.weight"], "output_norm.weight": s["norm_f.weight"]}
    if not c.tie_weights:
        out["output.weight"] = s["lm_head.weight"]
    if arch == "gpt2":
        out["position_embd.weight"] = s["pos_emb.weight"]
        out["output_norm.bias"] = s.get("norm_f.bias", zeros(c.n_embd))
    for i in range(c.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out[g + "attn_norm.weight"] = s[b + "norm1.weight"]
        out[g + "ffn_norm.weight"] = s[b + "norm2.weight"]
        out[g + "attn_output.weight"] = s[b + "attn.proj.weight"]
        out[g + "ffn_down.weight"] = s[b + "mlp.proj.weight"]
        if arch == "gpt2":
            out[g + "attn_qkv.weight"] = s[b + "attn.qkv.weight"]
            out[g + "ffn_up.weight"] = s[b + "mlp.fc.weight"]
            for ours, theirs, n in [
                ("norm1", "attn_norm", c.n_embd),
                ("norm2", "ffn_norm", c.n_embd),
                ("attn.qkv", "attn_qkv", 3 * c.n_embd),
                ("attn.proj", "attn_output", c.n_embd),
                ("mlp.fc", "ffn_up", c.hidden),
                ("mlp.proj", "ffn_down", c.n_embd),
            ]:
                out[f"{g}{theirs}.bias"] = s.get(f"{b}{ours}.bias", zeros(n))
            continue
        q, k, v = s[b + "attn.qkv.weight"].split([H * D, K * D, K * D])
        gate, up = s[b + "mlp.fc.weight"].chunk(2)
        if arch == "llama":
            q, k = pairs_layout(q, H), pairs_layout(k, K)
        out.update({g + "attn_q.weight": q, g + "attn_k.weight": k, g + "attn_v.weight": v})
        out.update({g + "ffn_gate.weight": gate, g + "ffn_up.weight": up})
        if arch == "qwen3":
            out[g + "attn_q_norm.weight"] = s[b + "attn.q_norm.weight"]
            out[g + "attn_k_norm.weight"] = s[b + "attn.k_norm.weight"]
        if c.bias:
            qb, kb, vb = s[b + "attn.qkv.bias"].split([H * D, K * D, K * D])
            gb, ub = s[b + "mlp.fc.bias"].chunk(2)
            out[g + "attn_q.bias"] = pairs_layout(qb, H) if arch == "llama" else qb
            out[g + "attn_k.bias"] = pairs_layout(kb, K) if arch == "llama" else kb
            out[g + "attn_v.bias"] = vb
            out[g + "attn_output.bias"] = s[b + "attn.proj.bias"]
            out.update({g + "ffn_gate.bias": gb, g + "ffn_up.bias": ub})
            out[g + "ffn_down.bias"] = s[b + "mlp.proj.bias"]
    return {k: v.numpy() for k, v in out.items()}


def _check_tensors(reader, model: GPT, arch: str) -> None:
    got = _tensors(reader)
    want = _expected(model, arch)
    assert set(got) == set(want)
    kind = {n: k for k, n in gguf.MODEL_ARCH_NAMES.items()}[arch]
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[kind]}
    for name, (data, qtype) in got.items():
        assert re.sub(r"^blk\.\d+\.", "blk.{bid}.", name.rsplit(".", 1)[0]) in known, name
        assert qtype == Q.F32, name
        np.testing.assert_array_equal(data, want[name], err_msg=name)


def _check_common_keys(fields: dict, arch: str, config: GPTConfig, tokenizer) -> None:
    assert fields["general.architecture"] == arch
    assert fields["general.type"] == "model"
    assert fields[f"{arch}.context_length"] == config.block_size
    assert fields[f"{arch}.embedding_length"] == config.n_embd
    assert fields[f"{arch}.block_count"] == config.n_layer
    assert fields[f"{arch}.feed_forward_length"] == config.hidden
    assert fields[f"{arch}.attention.head_count"] == config.n_head
    assert fields[f"{arch}.attention.head_count_kv"] == config.kv_heads
    assert fields[f"{arch}.vocab_size"] == config.vocab_size
    if arch == "gpt2":
        assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(config.norm_eps)
    else:
        assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config.norm_eps)
        assert fields[f"{arch}.rope.freq_base"] == pytest.approx(config.rope_theta)
        assert fields[f"{arch}.rope.dimension_count"] == config.head_dim
    assert fields["tokenizer.ggml.model"] == "gpt2"
    eot = tokenizer.eot_id
    assert fields["tokenizer.ggml.bos_token_id"] == eot
    assert fields["tokenizer.ggml.eos_token_id"] == eot
    assert fields["tokenizer.ggml.padding_token_id"] == eot
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.add_eos_token"] is False
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config.vocab_size
    b2u = bytes_to_unicode()
    for i in range(config.vocab_size):
        if i >= tokenizer.vocab_size:
            assert types[i] == gguf.TokenType.UNUSED and tokens[i] == f"[PAD{i}]"
        elif tokenizer.is_special(i):
            assert types[i] == gguf.TokenType.CONTROL
            assert tokenizer.special_tokens[tokens[i]] == i
        else:
            assert types[i] == gguf.TokenType.NORMAL
            assert tokens[i] == "".join(b2u[b] for b in tokenizer.token_bytes(i))


# --------------------------------------------------------------------------- architectures


@pytest.fixture(scope="module")
def bpe4():
    return train_tokenizer("bpe", TEXT * 4, vocab_size=300, pattern="gpt4")


def test_default_preset_is_qwen3_with_a_character_vocabulary(tmp_path, capsys):
    config = load_config("shakespeare-char").model
    tokenizer = train_tokenizer("char", TEXT)
    run, model = _run(tmp_path / "run", config, tokenizer)
    reader = _export(capsys, run, tmp_path / "model.gguf")
    fields = _fields(reader)
    _check_common_keys(fields, "qwen3", config, tokenizer)
    assert fields["general.name"] == "run" and fields["general.file_type"] == 0
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.merges"] == char_merges(tokenizer.chars)
    # 'İ' is C4 B0, '😀' is F0 9F 98 80: one merge per byte after the first
    assert "Ä °" in fields["tokenizer.ggml.merges"]
    assert sum(m.startswith("ð") for m in fields["tokenizer.ggml.merges"]) == 3
    assert tokenizer.vocab_size < config.vocab_size  # the 128 rows are padded
    assert "tokenizer.chat_template" not in fields
    _check_tensors(reader, model, "qwen3")


def test_character_merges_rebuild_every_character_in_a_bpe_twin(tmp_path, capsys):
    """Hugging Face's byte-level BPE, given the file's tokens and merges, encodes text to
    our character ids: the merges join each character's bytes and nothing else. (Hugging
    Face wants every side of a merge in the vocabulary, llama.cpp does not: the byte
    prefixes get ids past the file's, which would show if one were ever an output.)"""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = train_tokenizer("char", TEXT)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8,
        norm="rmsnorm", mlp="swiglu", pos="rope", bias=False,
    )  # fmt: skip
    run, _ = _run(tmp_path / "run", config, tokenizer)
    fields = _fields(_export(capsys, run, tmp_path / "m.gguf"))
    vocab = {t: i for i, t in enumerate(fields["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    for piece in [p for m in merges for p in m]:
        vocab.setdefault(piece, len(vocab))
    twin = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    twin.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in [TEXT[0], "ışık 😀😀 €€ naïve\n\nİİ", ""]:
        assert twin.encode(text).ids == tokenizer.encode(text)


def test_llama_with_gqa_biases_and_untied_head_has_pair_rotary_rows(tmp_path, capsys, bpe4):
    config = GPTConfig(
        vocab_size=bpe4.vocab_size + 5,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        bias=True,
        norm="rmsnorm",
        mlp="swiglu",
        pos="rope",
        rope_theta=500.0,
        tie_weights=False,
    )
    run, model = _run(tmp_path / "run", config, bpe4)
    reader = _export(capsys, run, tmp_path / "llama.gguf")
    fields = _fields(reader)
    _check_common_keys(fields, "llama", config, bpe4)
    assert fields["tokenizer.ggml.pre"] == "dbrx"  # GPT-4's pattern, merges applied as ranked
    # merges in rank order, exactly as our tokenizer.json lists them
    assert fields["tokenizer.ggml.merges"] == bpe4.to_json_dict()["model"]["merges"]
    _check_tensors(reader, model, "llama")


def test_pairs_layout_keeps_attention_scores():
    """Reordering q and k rows alike changes no dot product, and turns our rotate-half RoPE
    into llama.cpp's rotation of consecutive pairs."""
    from tinygpt.core.model import apply_rope, rope_tables

    c = GPTConfig(block_size=8, n_head=2, n_embd=16, norm="rmsnorm", mlp="swiglu", pos="rope")
    cos, sin = rope_tables(c)
    q = torch.randn(1, 1, 8, c.head_dim)
    ours = apply_rope(q, cos, sin)  # (1, 1, T, D)
    x = pairs_layout(q[0, 0].t(), 1).t()  # (T, D) in pair order
    angle = cos[:, : c.head_dim // 2], sin[:, : c.head_dim // 2]
    even, odd = x[:, 0::2], x[:, 1::2]
    pairs = torch.stack(
        [even * angle[0] - odd * angle[1], even * angle[1] + odd * angle[0]], dim=-1
    ).reshape(8, c.head_dim)
    assert torch.allclose(pairs, pairs_layout(ours[0, 0].t(), 1).t(), atol=1e-6)


def test_gpt2_without_biases_gets_zero_biases(tmp_path, capsys):
    bpe2 = train_tokenizer("bpe", TEXT * 4, vocab_size=290, pattern="gpt2")
    config = GPTConfig(
        vocab_size=bpe2.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False
    )
    run, model = _run(tmp_path / "run", config, bpe2)
    reader = _export(capsys, run, tmp_path / "gpt2.gguf")
    fields = _fields(reader)
    _check_common_keys(fields, "gpt2", config, bpe2)
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    _check_tensors(reader, model, "gpt2")
    assert not _tensors(reader)["blk.1.ffn_up.bias"][0].any()


def test_f16_and_q8_0_within_tolerance_norms_and_biases_stay_f32(tmp_path, capsys, bpe4):
    # mlp_hidden 48: ffn_down's rows (48 values) are no multiple of q8_0's 32-value blocks
    config = GPTConfig(
        vocab_size=bpe4.vocab_size,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=64,
        mlp_hidden=48,
        bias=True,
        norm="rmsnorm",
        mlp="swiglu",
        pos="rope",
    )
    run, model = _run(tmp_path / "run", config, bpe4)
    want = _expected(model, "llama")
    for kind, ftype in [("f16", 1), ("q8_0", 7)]:
        reader = _export(capsys, run, tmp_path / f"{kind}.gguf", "--type", kind)
        fields = _fields(reader)
        assert fields["general.file_type"] == ftype
        assert (fields.get("general.quantization_version") == 2) == (kind == "q8_0")
        for name, (data, qtype) in _tensors(reader).items():
            w = want[name]
            if w.ndim == 1:
                assert qtype == Q.F32, name
                np.testing.assert_array_equal(data, w)
            elif kind == "f16" or name == "blk.0.ffn_down.weight":
                assert qtype == Q.F16, name
                np.testing.assert_allclose(data, w, rtol=1e-3, atol=1e-6, err_msg=name)
            else:
                assert qtype == Q.Q8_0, name
                # one scale d = max|block| / 127 per 32 values, stored in fp16: the error is
                # half a step plus up to 127 times the scale's rounding (2^-11 d), < 0.57 d
                blocks = np.abs(w).reshape(-1, 32).max(axis=1, keepdims=True)
                step = np.broadcast_to(blocks / 127, (blocks.shape[0], 32)).reshape(w.shape)
                assert (np.abs(data - w) <= 0.57 * step + 1e-7).all(), name
                assert np.abs(data - w).max() > 0  # really quantized


def test_a_chat_run_carries_its_template_and_end_of_turn(tmp_path, capsys, bpe4):
    template = get_template("chatml")
    tokenizer = bpe4.with_special_tokens(template.special_tokens)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
        norm="rmsnorm", mlp="swiglu", pos="rope", qk_norm=True, bias=False,
    )  # fmt: skip
    run, _ = _run(tmp_path / "run", config, tokenizer)
    save_template(run, template)
    fields = _fields(_export(capsys, run, tmp_path / "chat.gguf"))
    assert fields["tokenizer.chat_template"] == template.jinja()
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer.special_tokens[template.end_of_turn]
    _check_common_keys(fields, "qwen3", config, tokenizer)


def test_force_replaces_only_a_gguf_file(tmp_path, capsys, bpe4):
    config = GPTConfig(vocab_size=bpe4.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    run, _ = _run(tmp_path / "run", config, bpe4)
    out = tmp_path / "m.gguf"
    _export(capsys, run, out)
    code, _, err = _cli(capsys, "export", run, "--format", "gguf", "--out", out)
    _one_line_error(code, err, "exists; pass --force")
    _export(capsys, run, out, "--force", "--type", "f16")
    assert _fields(gguf.GGUFReader(out))["general.file_type"] == 1
    # never a file that is not GGUF (a run's own files), never a folder
    config_file = RunDir(run).config_path
    before = config_file.read_bytes()
    for target, needle in [(config_file, "is not a GGUF file"), (tmp_path, "is a folder")]:
        code, _, err = _cli(capsys, "export", run, "--format", "gguf", "--out", target, "--force")
        _one_line_error(code, err, needle)
    assert config_file.read_bytes() == before


# ------------------------------------------------------------------------------ bad input


def test_configurations_llama_cpp_cannot_run_are_refused(tmp_path, capsys):
    tokenizer = train_tokenizer("char", TEXT)
    V = tokenizer.vocab_size
    cases = [
        (dict(pos="rope"), "model.norm = 'layernorm' (needs 'rmsnorm')"),
        (dict(mlp="gelu"), "model.mlp = 'gelu' (needs 'gelu_tanh'"),
        (dict(norm="rmsnorm", mlp="swiglu", pos="rope", qk_norm=True), "model.bias = True"),
    ]
    for i, (fields, needle) in enumerate(cases):
        config = GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=8, **fields)
        run, _ = _run(tmp_path / f"run{i}", config, tokenizer)
        code, _, err = _cli(capsys, "export", run, "--format", "gguf", "--out", tmp_path / "x")
        _one_line_error(code, err, "llama.cpp cannot run this configuration", needle)
    assert not (tmp_path / "x").exists()


def test_tokenizers_llama_cpp_cannot_take_are_refused(tmp_path, capsys):
    lower = train_tokenizer("char", TEXT, normalizer=Normalizer.build(lowercase="default"))
    bpe = train_tokenizer("bpe", TEXT, vocab_size=270)
    small = bpe.vocab_size - 5
    custom = BPETokenizer(
        vocab=[bytes([b]) for b in range(256)] + [None],
        merges=[],
        special_tokens={EOT: 256},
        pattern=r"\w+|\W",
    )
    cases = [
        (lower, "changes text before encoding it"),
        (custom, "splits text with a pattern of its own"),
        (
            bpe,
            f"tokenizer.json has {bpe.vocab_size} ids but the run's model has a vocabulary of {small}",
        ),
    ]
    for i, (tokenizer, needle) in enumerate(cases):
        size = small if tokenizer is bpe else tokenizer.vocab_size
        config = GPTConfig(vocab_size=size, block_size=8, n_layer=1, n_head=2, n_embd=8)
        run, _ = _run(tmp_path / f"run{i}", config, tokenizer)
        code, _, err = _cli(capsys, "export", run, "--format", "gguf", "--out", tmp_path / "x")
        _one_line_error(code, err, needle)
    assert not (tmp_path / "x").exists()


def test_unknown_type_and_type_without_gguf(tmp_path, capsys, bpe4):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path), "--format", "gguf", "--out", "x", "--type", "q4_0"])
    assert exc.value.code == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'q4_0'" in err
    config = GPTConfig(vocab_size=bpe4.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    run, _ = _run(tmp_path / "run", config, bpe4)
    code, _, err = _cli(capsys, "export", run, "--out", tmp_path / "hf", "--type", "f16")
    _one_line_error(code, err, "--type applies to --format gguf")
    code, _, err = _cli(capsys, "export", tmp_path / "nowhere", "--format", "gguf", "--out", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1
