"""Batch sources: what the training loop draws its inputs and targets from.

A batch source has one job: `next()` returns `(x, y)`, two (B, T) tensors of token ids on the
training device — inputs, and the next-token targets with -1 wherever no loss is wanted
(padding, a prompt that is not scored). The loop (`tinygpt.train.loop.fit`) knows nothing else
about the data, so pre-training and fine-tuning differ only in the source they hand it.

Besides `next()`, a source reports how far it has gone, so that budgets and resumption work
the same for every kind:

- `epochs`: passes over the training data so far (a float), which `train.max_epochs` uses;
- `state()` → `(json_part, tensor_part)` and `restore(json_part, tensor_part)`: its position,
  saved in every checkpoint, so a resumed run draws exactly the batches it would have drawn.

`RandomWindows` is the pre-training source; `ExampleBatches` the fine-tuning one (whole
conversations, padded, with their loss masks). Neither knows about tokenizers or files.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tinygpt.core.runtime import Dist


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


class ExampleBatches:
    """Batches of whole examples (conversations), for fine-tuning.

    Example i is `ids[offsets[i]:offsets[i + 1]]` with its loss mask (1 = scored); only the
    examples listed in `keep` are drawn (those that fit the context). Every epoch visits each
    of them exactly once, in an order shuffled without replacement from (seed, epoch); a
    batch that runs past the end of an epoch takes its remaining rows from the start of the
    next one, so every batch has `global_batch` rows and `epochs` counts examples drawn over
    examples kept. A batch is padded on the right to its longest example: inputs with
    `pad_id`, targets with -1, so padding is never scored (and, the attention being causal,
    never seen by a real token). Targets are the next tokens where the mask of the target is
    set, -1 elsewhere (`tinygpt.train.finetune.masked_targets`); `train_on_prompt` scores every
    real token. DDP: every rank draws the same global batch and keeps rows rank::world_size.
    The position (epoch, place in it, rows drawn) is plain JSON: the order is recomputed.
    """

    def __init__(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        offsets: np.ndarray,
        keep: np.ndarray,
        global_batch: int,
        seed: int,
        dist: Dist,
        device: str,
        *,
        pad_id: int = 0,
        train_on_prompt: bool = False,
        block_size: int = 0,
    ) -> None:
        if len(keep) == 0:
            raise ValueError("no examples to draw from")
        self.ids, self.mask, self.offsets = ids, mask, offsets
        self.keep = np.asarray(keep, dtype=np.int64)
        self.global_batch = global_batch
        self.seed = seed
        self.dist = dist
        self.device = device
        self.pad_id = pad_id
        self.train_on_prompt = train_on_prompt
        self.block_size = block_size  # for the out-of-memory message
        self.epoch, self.pos, self.drawn = 0, 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> np.ndarray:
        """The examples of `epoch`, shuffled: the same (seed, epoch) gives the same order."""
        return self.keep[np.random.default_rng([self.seed, epoch]).permutation(len(self.keep))]

    def _draw(self) -> list[int]:
        rows: list[int] = []
        while len(rows) < self.global_batch:
            if self.pos == len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order(self.epoch)
            take = self.order[self.pos : self.pos + self.global_batch - len(rows)]
            rows += take.tolist()
            self.pos += len(take)
        self.drawn += self.global_batch
        return rows

    def next(self) -> tuple[Tensor, Tensor]:
        mine = self._draw()[self.dist.rank :: self.dist.world_size]
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in mine]
        T = max(b - a for a, b in spans) - 1  # inputs of the longest example
        x = np.full((len(spans), T), self.pad_id, dtype=np.int64)  # (B, T)
        y = np.full((len(spans), T), -1, dtype=np.int64)  # (B, T)
        for r, (a, b) in enumerate(spans):
            seq = np.asarray(self.ids[a:b], dtype=np.int64)
            n = b - a - 1
            x[r, :n] = seq[:-1]
            scored = np.ones(n, bool) if self.train_on_prompt else self.mask[a + 1 : b] > 0
            y[r, :n] = np.where(scored, seq[1:], -1)
        return to_device(torch.from_numpy(x), torch.from_numpy(y), self.device)

    @property
    def epochs(self) -> float:
        return self.drawn / len(self.keep)

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"epoch": self.epoch, "pos": self.pos, "drawn": self.drawn}, {}

    def restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.pos = int(state.get("pos", 0))
        self.drawn = int(state.get("drawn", 0))
        self.order = self._order(self.epoch)
