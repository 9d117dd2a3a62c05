"""Our GPT -> one GGUF file that llama.cpp (and the apps built on it) runs:
`tinygpt export RUN --format gguf`.

Owns: which llama.cpp architecture a configuration becomes, the GGUF metadata
(hyperparameters, tokenizer, chat template), the layout changes llama.cpp needs (the order
of rotary rows, zero biases, unused vocabulary rows), the weight types (f32, f16, q8_0) and
the atomic writing of the file. The weights arrive through
`tinygpt.export.hf.to_hf_state_dict`, the one mapping of our tensors onto the GPT-2, Llama
and Qwen3 families, and are renamed by the `gguf` package's own table of transformers names
(`gguf.get_tensor_name_map`), as llama.cpp's converter renames a transformers checkpoint.
It knows nothing about training; `gguf` (published by the llama.cpp project) is imported
only when a function here runs (`pip install 'tinygpt[gguf]'`).

Facts taken from llama.cpp's source (the version llama-cpp-python 0.3.36 carries), and
checked by loading the files in llama.cpp itself (`benchmarks/bench_gguf.py`):

- Architectures. `llama` (src/models/llama.cpp): RMSNorm, SwiGLU, grouped-query heads,
  optional biases on q/k/v/o and on the MLP. `qwen3`: the same plus `attn_q_norm` and
  `attn_k_norm`, RMSNorms over each head before RoPE (our QK-norm), and no biases. `gpt2`:
  learned positions, LayerNorm, one fused qkv matrix, tanh GELU, and every bias *required*:
  a model trained with bias = false gets zero biases, which compute the same function; its
  position table has block_size rows, so llama.cpp's context must stay within it. All
  three read `token_embd` as the output matrix when `output` is absent (a tied head).
- RoPE layout (`llama_model_rope_type`, src/llama-model.cpp). `llama` is
  LLAMA_ROPE_TYPE_NORM: it rotates consecutive pairs (x0, x1), (x2, x3), ...; we, transformers
  and llama.cpp's `qwen3` (LLAMA_ROPE_TYPE_NEOX) rotate (x_i, x_{i+D/2}). So for `llama` the
  rows of every query and key head, weights and biases, are reordered to
  [0, D/2, 1, D/2+1, ...] (llama.cpp's converter does the same to Llama checkpoints), which
  moves each rotated pair next to each other; `qwen3` takes them as they are. Reordering the
  rows of q and k alike inside a head changes no dot product q.k, so attention is unchanged.
- GELU. llama.cpp's gpt2 computes the tanh approximation, so a model trained with exact
  GELU (model.mlp = "gelu") is refused. On a CPU ggml evaluates it through a table indexed
  by the input rounded to fp16 (ggml-cpu/vec.h, GGML_GELU_FP16): a small difference the
  benchmark measures.
- Tokenizer (src/llama-vocab.cpp). `tokenizer.ggml.model = "gpt2"` is llama.cpp's
  byte-level BPE: tokens in GPT-2's byte-to-character form (as in tokenizer.json), merges
  "left right" in rank order (the key must exist), and a *named* pre-tokenizer, since
  llama.cpp takes no regex from the file. "gpt-2" is GPT-2's pattern (our `gpt2`); "dbrx"
  is exactly our `gpt4` (cl100k) pattern. "llama-bpe" has that regex too but also turns on
  `ignore_merges` (a chunk that is itself a token is taken whole), which our BPE does not
  do. Special tokens are CONTROL tokens: matched in a prompt only when the caller parses
  specials, as our `allowed_special`. llama.cpp's defaults for a BPE vocabulary (bos = eos =
  id 11) are wrong for us, so the ids are written: end-of-text is bos, eos and padding, and
  nothing is added to a prompt. No normalizer can be expressed, so a tokenizer that
  lowercases or folds whitespace is refused. Token pieces (what generation streams) are our
  bytes exactly; llama.cpp's whole-sequence `llama_detokenize` also tidies spaces before
  punctuation for these pre-tokenizers (" ." -> "."), as transformers'
  `clean_up_tokenization_spaces` would, and no pre-tokenizer name with our patterns turns
  that off.
- Character vocabularies map faithfully onto that BPE. Each character is one token, written
  as the byte-level form of its UTF-8 bytes; a multi-byte character gets merges that join
  its bytes left to right (a prefix needs no token of its own: llama.cpp looks merges up by
  text). The left side of such a merge starts with a UTF-8 lead byte and its right side is a
  continuation byte, so no merge joins two characters and any pre-tokenizer split falls
  between characters: llama.cpp gives our ids for every text made of the vocabulary's
  characters (a character outside it is an error or `<unk>` for us; llama.cpp drops it).
  `gguf` cannot write an empty array, so a vocabulary without merges (ASCII characters
  only) gets one that never applies: its left side is two symbols no merge joins.
- Vocabulary size. A model may have more embedding rows than its tokenizer has ids (the
  default preset has 128); llama.cpp wants one token per row, so the rest are unused tokens
  "[PAD<id>]", the name llama.cpp's converter gives them.
- Weight types. f32; f16 for matrices, with norms and biases in f32 (llama.cpp's 1-D
  operations expect f32); q8_0 for matrices whose rows are a multiple of its 32-value block,
  f16 for other matrices, and the position table in f32 (as llama.cpp's converter keeps it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinygpt.core.config import GPTConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import fsync_dir, fsync_file, temp_sibling
from tinygpt.core.model import GPT
from tinygpt.core.run import RunDir
from tinygpt.data.tokenizer import UNK, Tokenizer
from tinygpt.data.tokenizer.bpe import bytes_to_unicode
from tinygpt.export.hf import _gpt2_pairs, to_hf_state_dict, twin_problems
from tinygpt.infer.loader import load_run

TYPES = ("f32", "f16", "q8_0")
DEFAULT_TYPE = "f32"
# Our family (tinygpt.export.hf) -> llama.cpp's architecture name.
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3"}
# Our BPE pre-split patterns (tinygpt.data.tokenizer.bpe.PATTERNS) -> llama.cpp's pre-tokenizer.
PRE_TOKENIZERS = {"gpt2": "gpt-2", "gpt4": "dbrx"}
# A character vocabulary's merges never cross a character, so any pre-tokenizer would do.
CHAR_PRE_TOKENIZER = "gpt-2"
MAGIC = b"GGUF"


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise TinyGPTError(
            "writing GGUF needs the `gguf` package; install it with: pip install 'tinygpt[gguf]'"
        ) from exc
    return gguf


# ----------------------------------------------------------------------------- the model


def gguf_architecture(config: GPTConfig) -> str:
    """llama.cpp's architecture for our config ('gpt2', 'llama' or 'qwen3'); raises
    TinyGPTError naming every setting llama.cpp cannot run."""
    family, name, broken = twin_problems(config)
    if family == "gpt2" and config.mlp == "gelu":
        broken.append(
            "model.mlp = 'gelu' (needs 'gelu_tanh': llama.cpp's gpt2 computes the tanh"
            " approximation of GELU)"
        )
    if broken:
        raise TinyGPTError(
            f"llama.cpp cannot run this configuration; for its {name} architecture change: "
            + "; ".join(broken)
            + ", and train again"
        )
    return ARCHITECTURES[family]


def pairs_layout(t: Tensor, heads: int) -> Tensor:
    """Reorder the rows of each of `heads` heads from our rotate-half layout, where row i
    turns with row i + D/2, to llama.cpp's `llama` layout, where row 2i turns with 2i + 1.

    >>> pairs_layout(torch.arange(8), 2).tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    D = t.shape[0] // heads
    # (heads*D, ...) -> (heads, 2 halves, D/2, ...) -> (heads, D/2, 2, ...) -> (heads*D, ...)
    return t.reshape(heads, 2, D // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def gguf_tensors(model: GPT) -> list[tuple[str, Tensor]]:
    """(GGUF name, fp32 tensor in llama.cpp's layout) for every tensor the file holds.

    Tensors are (out, in) like `nn.Linear.weight`; ggml calls the same memory {in, out}.
    """
    gguf = _gguf()
    config = model.config
    arch = gguf_architecture(config)
    kind = {name: kind for kind, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(kind, config.n_layer)
    # transformers stores GPT-2's projections as Conv1D (in, out): back to (out, in).
    conv1d = {b for _, b, transposed, _ in _gpt2_pairs(config) if transposed}
    out: list[tuple[str, Tensor]] = []
    with torch.no_grad():
        state = to_hf_state_dict(model)
    for hf_name, t in state.items():
        t = t.detach().float().cpu()
        if hf_name in conv1d:
            t = t.t()
        if arch == "llama" and ".self_attn.q_proj." in hf_name:
            t = pairs_layout(t, config.n_head)
        elif arch == "llama" and ".self_attn.k_proj." in hf_name:
            t = pairs_layout(t, config.kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TinyGPTError(f"gguf has no {arch} tensor for {hf_name!r}; a mapping bug")
        out.append((name, t.contiguous()))
    return out


def encode_tensor(name: str, t: Tensor, type: str) -> tuple[np.ndarray, Any]:
    """(data, ggml type) of one tensor for the file's weight `type` (see the module notes)."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    data = t.numpy().astype(np.float32, copy=False)
    position = name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".")
    if type == "f32" or data.ndim < 2 or name.endswith("_norm.weight") or position:
        return data, Q.F32
    if type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


# ------------------------------------------------------------------------------ tokenizer


@dataclass
class GGUFVocab:
    """The tokenizer as llama.cpp's byte-level BPE reads it."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    eot_id: int
    unk_id: int | None


def char_merges(chars: Iterable[str]) -> list[str]:
    """Merges that join the UTF-8 bytes of each multi-byte character, left to right, in
    byte-level form; single-byte characters need none.

    >>> char_merges(["a", "é", "ü", "€"])
    ['Ã ©', 'Ã ¼', 'â Ĥ', 'âĤ ¬']
    """
    b2u = bytes_to_unicode()
    out: dict[str, None] = {}  # ordered and without repeats (two characters share a prefix)
    for c in chars:
        raw = c.encode("utf-8")
        for k in range(1, len(raw)):
            left = "".join(b2u[b] for b in raw[:k])
            out[f"{left} {b2u[raw[k]]}"] = None
    return list(out)


def gguf_vocab(tokenizer: Any, n_vocab: int) -> GGUFVocab:  # a BPE or char tokenizer, by kind
    """Tokens, types and merges for a model with `n_vocab` embedding rows."""
    gguf = _gguf()
    if tokenizer.normalizer is not None:
        raise TinyGPTError(
            "this tokenizer changes text before encoding it (lowercasing or whitespace"
            " folding), which llama.cpp's tokenizer cannot do; a model for llama.cpp needs"
            " data prepared without --lowercase and --normalize-whitespace"
        )
    if tokenizer.vocab_size > n_vocab:
        raise TinyGPTError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {n_vocab}"
            " embeddings; the run's tokenizer does not belong to its model"
        )
    if tokenizer.kind == "bpe":
        pre = PRE_TOKENIZERS.get(tokenizer.pattern_name)
        if pre is None:
            raise TinyGPTError(
                "this BPE tokenizer splits text with a pattern of its own; llama.cpp knows"
                " only named pre-tokenizers, of which 'gpt-2' and 'dbrx' are our gpt2 and"
                " gpt4 patterns: train the tokenizer with one of those"
            )
    elif tokenizer.kind == "char":
        pre = CHAR_PRE_TOKENIZER
    else:
        raise TinyGPTError(f"a {tokenizer.kind!r} tokenizer has no GGUF form; use char or bpe")
    b2u = bytes_to_unicode()
    special = {i: s for s, i in tokenizer.special_tokens.items()}
    T = gguf.TokenType
    tokens: list[str] = []
    types: list[int] = []
    for i in range(tokenizer.vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(int(T.CONTROL))
        else:
            tokens.append("".join(b2u[b] for b in tokenizer.token_bytes(i)))
            types.append(int(T.NORMAL))
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in seen:
            raise TinyGPTError(
                f"tokens {seen[token]} and {i} are both written {token!r}; llama.cpp finds"
                " tokens by their text, so a special token must not also be an ordinary one"
            )
        seen[token] = i
    if tokenizer.kind == "bpe":
        merges = [f"{tokens[a]} {tokens[b]}" for a, b in tokenizer.merges]
    else:
        merges = char_merges(tokenizer.chars)
    if not merges:
        # Two spaces are never one symbol (no merge joins them), so this never applies.
        merges = [f"{b2u[32] * 2} {b2u[32]}"]
    for i in range(len(tokens), n_vocab):
        name = f"[PAD{i}]"
        while name in seen:
            name = f"[{name}]"
        seen[name] = i
        tokens.append(name)
        types.append(int(T.UNUSED))
    return GGUFVocab(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre,
        eot_id=tokenizer.eot_id,
        unk_id=tokenizer.special_tokens.get(UNK),
    )


# ---------------------------------------------------------------------------------- file


def check_destination_file(out: Path, force: bool) -> None:
    """Refuse a folder, anything that is not a GGUF file, and a GGUF file without `force`."""
    if out.is_dir():
        raise TinyGPTError(f"{out} is a folder; give a file path for --out, such as {out}.gguf")
    if out.exists():
        with open(out, "rb") as f:
            is_gguf = f.read(len(MAGIC)) == MAGIC
        if not is_gguf:
            raise TinyGPTError(
                f"{out} exists and is not a GGUF file, which an export never replaces;"
                " give another --out"
            )
        if not force:
            raise TinyGPTError(f"{out} exists; pass --force to replace it, or give another --out")


def write_gguf(
    model: GPT,
    tokenizer: Tokenizer,
    out: str | os.PathLike[str],
    *,
    type: str = DEFAULT_TYPE,
    name: str = "tinygpt",
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    license: str | None = None,
    force: bool = False,
) -> Path:
    """Write `model` and `tokenizer` as a GGUF file at `out` (weights as `type`); returns
    the path. `chat_template` (Jinja) goes into `tokenizer.chat_template`, and the id of
    `end_of_turn` (one of the tokenizer's special tokens) into `tokenizer.ggml.eot_token_id`,
    which llama.cpp also treats as an end of generation. Everything is checked and
    converted before a byte is written; the file is written beside `out` and renamed."""
    gguf = _gguf()
    out = Path(out)
    if type not in TYPES:
        raise TinyGPTError(f"unknown GGUF type {type!r}; choose one of: {', '.join(TYPES)}")
    check_destination_file(out, force)
    config = model.config
    arch = gguf_architecture(config)
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    eot_turn = None
    if end_of_turn is not None:
        if end_of_turn not in tokenizer.special_tokens:
            raise TinyGPTError(
                f"the end-of-turn token {end_of_turn!r} is not a special token of this tokenizer"
            )
        eot_turn = tokenizer.special_tokens[end_of_turn]
    tensors = [(n, *encode_tensor(n, t, type)) for n, t in gguf_tensors(model)]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _add_metadata(writer, gguf, config, vocab, type=type, name=name, license=license)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        if eot_turn is not None:
            writer.add_eot_token_id(eot_turn)
        for tensor_name, data, qtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        fsync_file(tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add_metadata(
    w: Any,
    gguf: Any,
    config: GPTConfig,
    vocab: GGUFVocab,
    *,
    type: str,
    name: str,
    license: str | None,
) -> None:
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    if license:
        w.add_license(license)
    w.add_file_type(file_types[type])
    if type == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(config.vocab_size)
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.hidden)
    w.add_head_count(config.n_head)
    w.add_head_count_kv(config.kv_heads)
    if config.pos == "learned":
        w.add_layer_norm_eps(config.norm_eps)
    else:
        w.add_layer_norm_rms_eps(config.norm_eps)
        w.add_rope_freq_base(config.rope_theta)
        w.add_rope_dimension_count(config.head_dim)
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.eot_id)
    w.add_eos_token_id(vocab.eot_id)
    w.add_pad_token_id(vocab.eot_id)
    if vocab.unk_id is not None:
        w.add_unk_token_id(vocab.unk_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


# -------------------------------------------------------------------------------- a run


def export_run_gguf(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    checkpoint: str = "best",
    type: str = DEFAULT_TYPE,
    license: str | None = "mit",
    force: bool = False,
) -> Path:
    """Write one checkpoint of a run as a GGUF file; a chat run's template and end-of-turn
    token go with it. Returns the file's path."""
    run_folder = RunDir(Path(run_dir))
    ckpt = run_folder.resolve_checkpoint(checkpoint)  # not a run / no checkpoint: clear error
    if type not in TYPES:
        raise TinyGPTError(f"unknown GGUF type {type!r}; choose one of: {', '.join(TYPES)}")
    config = run_folder.read_config()
    gguf_architecture(config.model)  # before loading any weights
    check_destination_file(Path(out), force)
    run = load_run(run_folder.path, checkpoint=ckpt.name, device="cpu")
    template = run.template
    return write_gguf(
        run.model,
        run.tokenizer,
        out,
        type=type,
        name=run_folder.name,
        chat_template=template.jinja() if template is not None else None,
        end_of_turn=template.end_of_turn if template is not None else None,
        license=license,
        force=force,
    )
