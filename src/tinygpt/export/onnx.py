"""Our GPT -> an ONNX graph with a KV cache, optionally int8, in a folder that needs no run.

Owns: presenting our model with the graph's inputs and outputs (`GraphModule`, over `PastKV`,
a cache that offers the model's `prepare`/`update` calls on the concatenated past tensors of
the graph), the export itself and its checks (`export_graph`), int8 quantization
(`quantize_int8`) and the writing of a complete folder (`save_onnx_folder`,
`export_run_onnx`: `tinygpt export --format onnx`). The names of the folder's files, its
marker and the graph's input/output names belong to `tinygpt.infer.onnx_runtime`, which runs such
folders without torch; config.json, generation_config.json and the tokenizer files are
written by the same code as a transformers folder's (`tinygpt.export.folder`).

Choices, and why:

- Exporter: torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, built on
  `torch.export`; it needs the `onnxscript` package), ONNX opset 18, which onnxruntime
  reads since 1.14.
- Weights: inside model.onnx, one self-contained file, while the graph stays below
  protobuf's 2 GB limit; beyond it, in model.onnx.data beside it (ONNX external data).
- Axes: batch, sequence and past are symbolic. The example inputs have batch 2, sequence 3
  and past 5 (different sizes of 2 or more): `torch.export` specialises an axis whose
  example size is 0 or 1, and may tie axes whose example sizes are equal. `export_graph`
  checks that every input has symbolic axes where it should.
- Attention: the mask is built from the graph's attention_mask (past and new tokens) by
  `tinygpt.core.model.padding_mask`, aligned bottom-right, so a query shorter than the keys is
  right (SDPA's `is_causal=True` would align it top-left); positions come from
  position_ids, and RoPE uses real cos/sin tables (complex numbers do not export).
- int8: onnxruntime's dynamic quantization (`quantize_dynamic`): the weights of every
  MatMul with a constant weight (all projections and the LM head) become int8, those of the
  Gathers (token and position embeddings) 8-bit, with one scale per tensor; activations are
  quantized on the fly per call. `reduce_range` (the default) keeps weights to 7 bits: on
  CPUs without AVX-512 VNNI onnxruntime multiplies u8 x s8 with an instruction whose 16-bit
  sums can saturate with full-range weights; on VNNI CPUs `reduce_range=False` is safe and
  a little more accurate.

This module knows nothing about sampling or text.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tinygpt.core import __version__
from tinygpt.core.checkpoint import read_state
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import temp_sibling
from tinygpt.core.model import GPT, padding_mask
from tinygpt.core.run import RunDir
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.export.folder import (
    check_destination,
    generation_config_for,
    replace_folder,
    tokenizer_files,
    write_tokenizer_files,
)
from tinygpt.export.hf import HF_CLASSES, hf_config_for, twin_family
from tinygpt.export.hf_run import check_out_of_run
from tinygpt.infer.loader import load_run
from tinygpt.infer.onnx_runtime import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    GENERATION_CONFIG,
    INPUTS,
    MODEL,
    MODEL_DATA,
    OPSET,
    OnnxDir,
    past_names,
    present_names,
)

QUANTIZE = ("int8",)
# Symbolic axis names, as Hugging Face's ONNX exports (optimum) name them.
BATCH, SEQUENCE, PAST, TOTAL = (
    "batch_size",
    "sequence_length",
    "past_sequence_length",
    "total_sequence_length",
)
# Protobuf cannot hold a message of 2 GB; leave room for the graph itself.
EXTERNAL_DATA_BYTES = 1_800_000_000


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TinyGPTError(
            f"exporting to ONNX needs the `{module.split('.')[0]}` package; install it with: "
            "pip install 'tinygpt[onnx]'"
        ) from exc


# ---------------------------------------------------------------------------------- module


class PastKV:
    """The graph's cache: past keys/values as inputs, the past with the new ones as outputs.

    Offers the two calls the model makes on a cache (see `tinygpt.core.model.KVCache`):
    `prepare` returns the attention mask of the new tokens over past and new slots, built
    from the graph's attention_mask (B, P + T); `update` appends a layer's new keys/values
    to its past and keeps the result as that layer's `present`.
    """

    def __init__(self, past: Sequence[Tensor], attention_mask: Tensor) -> None:
        self.past = past  # 2 * n_layer tensors (B, K, P, D): key, value of each layer
        self.attention_mask = attention_mask  # (B, P + T)
        self.present: list[Tensor] = []

    def prepare(self, T: int, real: Tensor | None) -> tuple[int, Tensor]:
        # The positions come from the graph's position_ids (the model is given them), so
        # the first value is never used. Query i sits in slot P + i and sees the real slots
        # up to its own (and itself, so that a padding query's softmax stays finite).
        return 0, padding_mask(self.attention_mask.bool(), T)  # (B, 1, T, P + T)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.cat([self.past[2 * layer], k], dim=2)  # (B, K, P, D) + (B, K, T, D)
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)  # (B, K, P + T, D)
        self.present += [k, v]
        return k, v


class GraphModule(nn.Module):
    """Our GPT with the graph's signature: (input_ids, attention_mask, position_ids, past)
    -> (logits, present.0.key, present.0.value, ...)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        past: tuple[Tensor, ...],
    ) -> tuple[Tensor, ...]:
        cache = PastKV(past, attention_mask)
        logits, _ = self.model(input_ids, cache=cache, positions=position_ids)  # (B, T, V)
        return (logits, *cache.present)


# ---------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings or log lines from the exporter and the quantizer: a command prints one
    line when it is done."""
    names = ["torch.onnx", "torch.export", "torch._export", "onnxscript", "root"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def example_inputs(model: GPT) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Inputs with batch 2, sequence 3, past 5 (see the module docstring), one padding slot."""
    c = model.config
    B, T, P = 2, 3, 5
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, 0] = 0  # row 1 starts with a padding slot
    positions = (torch.arange(P, P + T) % c.block_size).expand(B, T).contiguous()
    past = tuple(
        torch.randn(B, c.kv_heads, P, c.head_dim, generator=g) for _ in range(2 * c.n_layer)
    )
    return ids, mask, positions, past


def export_graph(model: GPT, path: str | Path, *, external_data: bool | None = None) -> Path:
    """Write the fp32 graph of `model` to `path` (module docstring); returns `path`.

    external_data None: weights go to `model.onnx.data` only when the graph would pass 2 GB.
    The graph is checked with onnx.checker, and its inputs for symbolic axes.
    """
    onnx = _need("onnx")
    _need("onnxscript")
    path = Path(path)
    module = GraphModule(copy.deepcopy(model)).eval()  # the caller's model keeps its mode
    c = model.config
    if external_data is None:
        external_data = (
            2 * c.vocab_size * c.n_embd * 4 + 4 * model.num_params() > EXTERNAL_DATA_BYTES
        )
    inputs = example_inputs(model)
    batch, seq, past = (torch.export.Dim(n) for n in (BATCH, SEQUENCE, PAST))
    kv = {0: batch, 2: past}
    # The attention_mask's axis is past + sequence; torch.export cannot take a sum of two
    # named axes as an input's axis, so it is left for the exporter to name (renamed below).
    dynamic = (
        {0: batch, 1: seq},
        {0: batch, 1: torch.export.Dim.AUTO},
        {0: batch, 1: seq},
        tuple(kv for _ in range(2 * c.n_layer)),
    )
    names = [*INPUTS, *past_names(c.n_layer)]
    outputs = ["logits", *present_names(c.n_layer)]
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                inputs,
                input_names=names,
                output_names=outputs,
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=dynamic,
                external_data=external_data,
                verbose=False,
            )
        except Exception as exc:  # the exporter's own error types, with long reports
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TinyGPTError(f"torch could not export this model to ONNX: {first}") from exc
        assert program is not None  # the dynamo exporter returns its program
        program.save(str(path), external_data=external_data)
    graph = onnx.load(str(path))
    _name_total_axis(graph)
    fold_weight_transposes(graph)
    _strip_trace_metadata(graph)
    if external_data:
        onnx.save(graph, str(path), save_as_external_data=True, location=MODEL_DATA)
    else:
        onnx.save(graph, str(path))
    check_symbolic_inputs(graph, c.n_layer)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _name_total_axis(graph: Any) -> None:
    """Rename the attention_mask's second axis (named by the exporter) to total_sequence_length
    wherever the graph mentions it."""
    mask = next(i for i in graph.graph.input if i.name == "attention_mask")
    old = mask.type.tensor_type.shape.dim[1].dim_param
    if not old:
        return
    for value in [*graph.graph.input, *graph.graph.output, *graph.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = TOTAL


def _strip_trace_metadata(graph: Any) -> None:
    """Drop what the exporter notes on every node and value (the Python stack trace, module
    path and FX node it came from): two thirds of a small graph's bytes, and paths of the
    machine that exported it."""
    for node in graph.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*graph.graph.input, *graph.graph.output, *graph.graph.value_info]:
        del value.metadata_props[:]
    for tensor in graph.graph.initializer:
        del tensor.metadata_props[:]


def fold_weight_transposes(graph: Any) -> int:
    """Replace every Transpose of a weight by the transposed weight; returns how many.

    A tied head reads the token table transposed, and the exporter's constant folding
    leaves large tensors alone, so the graph would transpose the table at every call, and
    the quantizer, which quantizes only a MatMul whose weight is stored in the graph, would
    leave the head in fp32. Folding stores the head's (C, V) matrix beside the (V, C) table.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.graph.initializer}
    renamed: dict[str, str] = {}
    for node in list(graph.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        name = f"{node.input[0]}.T"
        folded = np.ascontiguousarray(weight.transpose(perm))
        graph.graph.initializer.append(numpy_helper.from_array(folded, name))
        renamed[node.output[0]] = name
        graph.graph.node.remove(node)
    for node in graph.graph.node:
        for i, x in enumerate(node.input):
            if x in renamed:
                node.input[i] = renamed[x]
    used = {x for node in graph.graph.node for x in node.input}
    used |= {o.name for o in graph.graph.output}
    for t in [t for t in graph.graph.initializer if t.name not in used]:
        graph.graph.initializer.remove(t)
    return len(renamed)


def check_symbolic_inputs(graph: Any, n_layer: int) -> None:
    """Raise when an axis that must stay dynamic (batch, sequence, past) got a fixed size."""
    wanted = {
        "input_ids": (0, 1),
        "attention_mask": (0, 1),
        "position_ids": (0, 1),
        **{name: (0, 2) for name in past_names(n_layer)},
    }
    inputs = {i.name: i for i in graph.graph.input}
    for name, axes in wanted.items():
        if name not in inputs:
            raise TinyGPTError(f"the exported graph has no input {name!r}")
        dims = inputs[name].type.tensor_type.shape.dim
        for axis in axes:
            if not dims[axis].dim_param:
                raise TinyGPTError(
                    f"the exporter fixed axis {axis} of {name} to {dims[axis].dim_value}; "
                    "the graph would run at that size only"
                )


def quantize_int8(
    src: str | Path, dst: str | Path, *, reduce_range: bool = True, external_data: bool = False
) -> Path:
    """Dynamic int8 quantization of the graph at `src` into `dst` (module docstring)."""
    _need("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul", "Gather"],
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=reduce_range,
            use_external_data_format=external_data,
        )
    return Path(dst)


def quantized_ops(graph: Any) -> dict[str, int]:
    """How many MatMul and Gather nodes read float weights and how many 8-bit ones."""
    eight_bit = {2, 3}  # onnx.TensorProto.UINT8, INT8
    inits = {t.name: t.data_type for t in graph.graph.initializer}
    counts = {"matmul_int8": 0, "matmul_float": 0, "gather_8bit": 0, "gather_float": 0}
    for node in graph.graph.node:
        if node.op_type == "MatMulInteger" and inits.get(node.input[1]) in eight_bit:
            counts["matmul_int8"] += 1
        elif node.op_type == "MatMul" and node.input[1] in inits:
            counts["matmul_float"] += 1
        elif node.op_type == "Gather" and node.input[0] in inits:
            key = "gather_8bit" if inits[node.input[0]] in eight_bit else "gather_float"
            counts[key] += 1
    return counts


# ---------------------------------------------------------------------------------- folder


def _config_json(model: GPT, eot_id: int | None) -> Any:
    """transformers' config of the model's twin (so tools that read config.json know the
    family), or for a mixed configuration our own fields with model_type "tinygpt"."""
    try:
        family = twin_family(model.config)
    except TinyGPTError:
        return {"model_type": "tinygpt", **dataclasses.asdict(model.config)}
    hf = hf_config_for(model.config, eot_id=eot_id)
    hf.architectures = [HF_CLASSES[family]]
    return hf


def save_onnx_folder(
    model: GPT,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer,
    quantize: str | None = None,
    reduce_range: bool = True,
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    source: dict[str, Any] | None = None,
    external_data: bool | None = None,
    force: bool = False,
) -> Path:
    """Write a complete ONNX export folder for `model` and `tokenizer` at `out_dir`.

    Files: model.onnx (+ model.onnx.data for graphs over 2 GB), config.json,
    generation_config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json
    (+ chat_template.jinja with a chat template) and the marker tinygpt_onnx.json (format
    version, model sizes, quantization, opset, source). Written into a temporary sibling and
    renamed into place; a non-empty `out_dir` is replaced only with `force`.
    """
    out_dir = Path(out_dir)
    if quantize is not None and quantize not in QUANTIZE:
        raise TinyGPTError(
            f"--quantize {quantize} is not available for ONNX; choose {', '.join(QUANTIZE)}"
        )
    check_destination(out_dir, force)
    c = model.config
    gen = generation_config_for(tokenizer, block_size=c.block_size, end_of_turn=end_of_turn)
    files = tokenizer_files(tokenizer, model_max_length=c.block_size, chat_template=chat_template)
    config_json = _config_json(model, tokenizer.eot_id)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()  # the graph is fp32 (int8 is made from it)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    folder = OnnxDir(tmp)
    try:
        external = _write_graph(model, tmp, quantize, reduce_range, external_data)
        if isinstance(config_json, dict):
            (tmp / CONFIG).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        else:
            config_json.save_pretrained(tmp)
        (tmp / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        write_tokenizer_files(tmp, tokenizer, files, chat_template)
        marker = _marker(model, quantize, reduce_range, external, source)
        folder.marker_path.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_graph(
    model: GPT, tmp: Path, quantize: str | None, reduce_range: bool, external_data: bool | None
) -> bool:
    """The graph into the folder `tmp` (exported in fp32, then quantized when asked: the
    fp32 graph is a working file that does not stay); returns whether its weights are in
    an external data file."""
    folder = OnnxDir(tmp)
    if quantize is None:
        export_graph(model, folder.model_path, external_data=external_data)
        return folder.model_data_path.exists()
    work = tmp / ".fp32"
    work.mkdir()
    export_graph(model, work / MODEL, external_data=external_data)
    external = (work / MODEL_DATA).exists()
    quantize_int8(
        work / MODEL, folder.model_path, reduce_range=reduce_range, external_data=external
    )
    shutil.rmtree(work)
    return external


def _marker(
    model: GPT,
    quantize: str | None,
    reduce_range: bool,
    external: bool,
    source: dict[str, Any] | None,
) -> dict[str, Any]:
    """The folder's marker (tinygpt_onnx.json): format version, what the runtime needs to
    know of the model, how it was quantized and where it came from."""
    c = model.config
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tinygpt": __version__,
        "opset": OPSET,
        "external_data": MODEL_DATA if external else None,
        "quantization": None
        if quantize is None
        else {
            "type": "int8",
            "method": "onnxruntime dynamic (quantize_dynamic), per tensor",
            "ops": ["MatMul", "Gather"],
            "reduce_range": reduce_range,
        },
        "runtime": {
            "n_layer": c.n_layer,
            "n_kv_head": c.kv_heads,
            "head_dim": c.head_dim,
            "block_size": c.block_size,
            "vocab_size": c.vocab_size,
        },
        "model": dataclasses.asdict(c),
        "parameters": model.num_params(),
        "inputs": [*INPUTS, "past_key_values.{i}.key", "past_key_values.{i}.value"],
        "outputs": ["logits", "present.{i}.key", "present.{i}.value"],
        "source": source or {},
    }


def export_run_onnx(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    quantize: str | None = None,
    reduce_range: bool = True,
    force: bool = False,
) -> Path:
    """`tinygpt export RUN --format onnx`: one checkpoint of a run as an ONNX export folder.
    A fine-tuned chat run's template goes into tokenizer_config.json, as for transformers."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt = RunDir(run_dir).resolve_checkpoint(checkpoint)
    check_out_of_run(run_dir, out_dir, RunDir(run_dir).onnx_export_dir)
    if quantize is not None and quantize not in QUANTIZE:
        raise TinyGPTError(
            f"--quantize {quantize} is not available for ONNX; choose {', '.join(QUANTIZE)}"
        )
    run = load_run(run_dir, checkpoint=ckpt.name, device="cpu")
    template = run.template
    source = {
        "run": run_dir.resolve().name,
        "checkpoint": ckpt.name,
        "step": int(read_state(ckpt).get("step", 0)),
    }
    return save_onnx_folder(
        run.model,
        out_dir,
        tokenizer=run.tokenizer,
        quantize=quantize,
        reduce_range=reduce_range,
        chat_template=None if template is None else template.jinja(),
        end_of_turn=None if template is None else template.end_of_turn,
        source=source,
        force=force,
    )
