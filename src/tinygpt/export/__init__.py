"""Exporters: our models in other ecosystems' formats, and back.

`tinygpt.export.hf` maps our GPT to and from Hugging Face `transformers` (GPT-2 and Llama
families). This package knows nothing about training or run folders beyond the model and
tokenizer objects it is handed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_hf", "to_hf", "hf_config_for"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import tinygpt.export` stays cheap until an exporter is used.
    if name in __all__:
        from tinygpt.export import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'tinygpt.export' has no attribute {name!r}")
