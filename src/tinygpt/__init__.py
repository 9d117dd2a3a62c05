"""tinygpt: small GPT-style language models, from first principles, in PyTorch.

`tinygpt.load(RUN)` loads a trained run folder for generation (see
`tinygpt.generate.TextGenerator`); it is imported lazily so that `import tinygpt` stays light.
"""

from __future__ import annotations

from typing import Any

from tinygpt.errors import TinyGPTError

__version__ = "0.1.0"

__all__ = ["__version__", "TinyGPTError", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from tinygpt.generate import load

        return load
    raise AttributeError(f"module 'tinygpt' has no attribute {name!r}")
