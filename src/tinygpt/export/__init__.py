"""Exporters: our models in other ecosystems' formats, and back.

- `tinygpt.export.hf`: our GPT <-> Hugging Face `transformers` (GPT-2, Llama and Qwen3
  families);
- `tinygpt.export.folder`: the writing of a complete transformers folder;
- `tinygpt.export.hf_run`: a run folder <-> a transformers folder (`tinygpt export`,
  `tinygpt import`);
- `tinygpt.export.card`: the model card of an exported run;
- `tinygpt.export.hub`: pushing to the Hugging Face Hub (`tinygpt push`);
- `tinygpt.export.gguf`: one GGUF file for llama.cpp (`tinygpt export --format gguf`);
- `tinygpt.export.onnx`: a run or a model -> an ONNX folder with a KV cache, optionally
  int8 (`tinygpt export --format onnx`); `tinygpt.infer.onnx_runtime` runs such folders.

This package knows nothing about training; it reads run folders through
`tinygpt.core.checkpoint` and `tinygpt.export.report`.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "load_hf": "hf",
    "to_hf": "folder",
    "hf_config_for": "hf",
    "save_hf_folder": "folder",
    "export_run": "hf_run",
    "import_hf": "hf_run",
    "push_to_hub": "hub",
    "write_gguf": "gguf",
    "export_run_gguf": "gguf",
    "export_run_onnx": "onnx",
    "save_onnx_folder": "onnx",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import tinygpt.export` stays cheap until an exporter is used.
    if name in _WHERE:
        return getattr(importlib.import_module(f"tinygpt.export.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tinygpt.export' has no attribute {name!r}")
