"""tinygpt: small GPT-style language models, from first principles, in PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "TinyGPTError"]

from tinygpt.errors import TinyGPTError
