"""Batch sources: what the training loop draws its inputs and targets from.

A batch source has one job: `next()` returns `(x, y)`, two (B, T) tensors of token ids on the
training device — inputs, and the next-token targets with -1 wherever no loss is wanted
(padding, a prompt that is not scored). The loop (`tinygpt.train.fit`) knows nothing else
about the data, so pre-training and fine-tuning differ only in the source they hand it.

Besides `next()`, a source reports how far it has gone, so that budgets and resumption work
the same for every kind:

- `epochs`: passes over the training data so far (a float), which `train.max_epochs` uses;
- `state()` → `(json_part, tensor_part)` and `restore(json_part, tensor_part)`: its position,
  saved in every checkpoint, so a resumed run draws exactly the batches it would have drawn.

`RandomWindows` is the pre-training source. It knows nothing about tokenizers or files.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tinygpt.runtime import Dist


class BatchSource(Protocol):
    """The interface the training loop needs (module docstring)."""

    def next(self) -> tuple[Tensor, Tensor]: ...

    @property
    def epochs(self) -> float: ...

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None: ...


def to_device(x: Tensor, y: Tensor, device: str) -> tuple[Tensor, Tensor]:
    """Move a batch to `device` (pinned and asynchronous on CUDA)."""
    if device.startswith("cuda"):
        return (
            x.pin_memory().to(device, non_blocking=True),
            y.pin_memory().to(device, non_blocking=True),
        )
    return x.to(device), y.to(device)


class RandomWindows:
    """Windows of `block_size + 1` tokens at uniformly random offsets of a token array.

    Every rank draws the same `global_batch` offsets from the same seeded generator and
    keeps rows rank::world_size, so N processes see exactly what one process with the same
    global batch sees. One epoch is the array's tokens once: `global_batch * block_size`
    tokens per draw. A window may cross a document boundary (an end-of-text token): the
    model then learns that an unrelated document follows (the GPT-2 convention).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        global_batch: int,
        seed: int,
        dist: Dist,
        device: str,
    ) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.global_batch = global_batch
        self.dist = dist
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def next(self) -> tuple[Tensor, Tensor]:
        T = self.block_size
        starts = torch.randint(len(self.tokens) - T, (self.global_batch,), generator=self.generator)
        self.draws += 1
        mine = starts[self.dist.rank :: self.dist.world_size].tolist()
        rows = np.stack([self.tokens[s : s + T + 1] for s in mine]).astype(np.int64)
        xy = torch.from_numpy(rows)  # (B, T+1)
        return to_device(xy[:, :-1], xy[:, 1:], self.device)

    @property
    def epochs(self) -> float:
        return self.draws * self.global_batch * self.block_size / len(self.tokens)

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"draws": self.draws}, {"data_generator": self.generator.get_state()}

    def restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self.generator.set_state(tensors["data_generator"])
        self.draws = int(state.get("draws", 0))
