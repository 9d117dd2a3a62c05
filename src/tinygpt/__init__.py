"""tinygpt: small GPT-style language models, from first principles, in PyTorch.

`tinygpt.load(PATH)` opens a trained run folder (PyTorch; `tinygpt.infer.generate.TextGenerator`)
or an ONNX export folder (onnxruntime and NumPy, without importing torch;
`tinygpt.infer.onnx_runtime.OnnxGenerator`) for generation. Both answer `generate` and `stream`
alike. Everything heavy is imported on use, so that `import tinygpt` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError

__all__ = ["__version__", "TinyGPTError", "load"]


def load(
    path: str | Path, checkpoint: str = "best", device: str = "cpu", threads: int | None = None
) -> Any:
    """A text generator for a run folder or an ONNX export folder.

    `checkpoint` (best, latest, step-N) picks a run's checkpoint; an ONNX folder holds one
    model. `device`: auto, cpu, cuda or mps for a run; auto, cpu or cuda (onnxruntime's CUDA
    provider) for an ONNX folder. `threads` sets onnxruntime's threads (ONNX folders only;
    a run uses torch's setting).
    """
    from tinygpt.core.run import CONFIG, RunDir
    from tinygpt.infer.onnx_runtime import MARKER, OnnxDir, load_onnx

    onnx_dir = OnnxDir(path)
    if onnx_dir.is_export() or (onnx_dir.model_path.is_file() and not RunDir(path).is_run()):
        if checkpoint != "best":
            raise TinyGPTError(
                f"{path} is an ONNX export, which holds one model; --checkpoint picks a "
                "checkpoint of a run folder only (leave it out)"
            )
        providers = {"auto": None, "cpu": None, "cuda": ["CUDAExecutionProvider"]}
        if device not in providers:
            raise TinyGPTError(
                f"an ONNX export runs on auto, cpu or cuda, not {device!r}; pass --device cpu"
            )
        chosen = providers[device]
        if chosen is not None:
            chosen = [*chosen, "CPUExecutionProvider"]
        return load_onnx(path, threads=threads, providers=chosen)
    if Path(path).is_dir() and not RunDir(path).is_run():
        raise TinyGPTError(
            f"{path} is neither a run folder (no {CONFIG}) nor an ONNX export (no {MARKER}); "
            "give a folder that `tinygpt train` or `tinygpt export --format onnx` wrote"
        )
    from tinygpt.infer.generate import load as load_run_generator

    return load_run_generator(path, checkpoint=checkpoint, device=device)
