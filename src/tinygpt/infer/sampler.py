"""The decoding rules every generation path shares: how the next token is chosen, and where
a row's window of tokens starts once it outgrows the model's context.

Owns: `sample_token` (repetition penalty, temperature, top-k, top-p and one random-number
rule), the random generators of a request's rows (`row_generators`) and the end-of-context
rule (`window_start`). The PyTorch loop (`tinygpt.infer.generate`), the continuous-batching
engine (`tinygpt.infer.engine`) and the ONNX loop (`tinygpt.infer.onnx_runtime`) all call
these, so the same seed gives the same text from `tinygpt sample RUN`, `tinygpt serve RUN`
and `tinygpt sample ONNX_DIR`.

It knows nothing about models, tensors or text: one row's logits come in as a NumPy array
(the torch paths convert theirs with `.float().cpu().numpy()`), a token id goes out. It
imports NumPy and the standard library only, so an ONNX deployment never loads torch.

The random-number rule. Each row of a request has its own `numpy.random.Generator`: row r
gets child r of `numpy.random.SeedSequence(seed)` (fresh entropy when seed is None), so row
0 of a batch draws what the same prompt draws alone, and no row's tokens depend on its
neighbours. A sampled token costs exactly one uniform draw u in [0, 1): the probabilities
(float64, after the max logit is subtracted) of the tokens that survive the filters are
summed in vocabulary order, and the token is the first whose running sum passes u times
their total (inverse CDF). Greedy decoding (temperature 0) draws nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "apply_repetition_penalty",
    "row_generators",
    "sample_rows",
    "sample_token",
    "token_weights",
    "window_start",
]


def row_generators(seed: int | None, rows: int) -> list[np.random.Generator]:
    """One random generator per row of a request: row r gets child r of SeedSequence(seed).

    Child r does not depend on how many rows there are, so the first row of a batch draws
    what a request of one row draws:

    >>> a, b = row_generators(7, 2)
    >>> float(a.random()) == float(row_generators(7, 1)[0].random()) != float(b.random())
    True
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(rows)]


def apply_repetition_penalty(
    logits: np.ndarray, seen: Sequence[int] | np.ndarray, penalty: float
) -> np.ndarray:
    """Discourage the tokens in `seen` (each counted once): positive logits are divided by
    `penalty`, negative ones multiplied (Keskar et al. 2019, CTRL; the rule transformers
    uses). logits (V,), in its own dtype: a penalty never changes which dtype argmax sees.

    >>> apply_repetition_penalty(np.array([2.0, -1.0, 3.0]), [0, 1, 1], 2.0).tolist()
    [1.0, -2.0, 3.0]
    """
    if penalty == 1.0 or len(seen) == 0:
        return logits
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    out = logits.copy()
    scores = out[ids]
    out[ids] = np.where(scores > 0, scores / penalty, scores * penalty)
    return out


def token_weights(
    logits: np.ndarray,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """Unnormalised float64 probabilities (V,) of the tokens that may be sampled, 0 for the
    others: softmax(logits / temperature) computed after subtracting the max logit (so a
    tiny temperature stays finite: the best token weighs 1, the rest underflow to 0).

    top_k keeps the tokens whose logit is at least the k-th largest (ties at the k-th all
    stay); top_p then keeps the nucleus of what is left: the most likely tokens, in order
    (equal probabilities: lower id first), until the ones before a token already reach
    top_p (Holtzman et al. 2019). The most likely token always stays.

    Probabilities 0.5, 0.3, 0.15, 0.05 with top_p 0.6: the second token stays (the mass
    before it, 0.5, is short of 0.6), the third does not (0.8); the best weighs 1:

    >>> w = token_weights(np.log([0.5, 0.3, 0.15, 0.05]), temperature=1.0, top_p=0.6)
    >>> w.round(3).tolist()
    [1.0, 0.6, 0.0, 0.0]
    """
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):  # a tiny temperature sends the others to -inf: weight 0
        weights = np.exp((x - x.max()) / temperature)  # (V,), the best token weighs exactly 1
    V = x.shape[0]
    if top_k is not None and top_k < V:
        kth = np.partition(x, V - top_k)[V - top_k]
        weights[x < kth] = 0.0
    if top_p is not None and top_p < 1.0:
        alive = np.flatnonzero(weights)
        order = alive[np.argsort(-weights[alive], kind="stable")]  # most likely first
        probs = weights[order] / weights[order].sum()
        before = np.cumsum(probs) - probs  # mass of the more likely tokens; 0 for the first
        weights[order[before >= top_p]] = 0.0
    return weights


def sample_token(
    logits: np.ndarray,
    seen: Sequence[int] | np.ndarray = (),
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    rng: np.random.Generator | None = None,
) -> int:
    """The next token of one row: logits (V,) of its last position, `seen` its tokens so far
    (prompt and output, for the repetition penalty), `rng` its generator (None: fresh
    entropy). Settings as in `tinygpt.infer.textgen.check_sampling`, which checks them.

    Temperature 0 is greedy: the argmax of the penalised logits (the first on a tie), no draw.
    Otherwise one draw u from `rng`, and inverse CDF over `token_weights`. Probabilities
    0.5, 0.3, 0.15, 0.05 split [0, 1) into their four intervals, in vocabulary order:

    >>> logits = np.log([0.5, 0.3, 0.15, 0.05])
    >>> sample_token(logits, temperature=0)
    0
    >>> class Draw:  # a stand-in generator whose draw is known
    ...     def __init__(self, u): self.u = u
    ...     def random(self): return self.u
    >>> [sample_token(logits, rng=Draw(u)) for u in (0.1, 0.6, 0.85, 0.97)]
    [0, 1, 2, 3]
    >>> sample_token(logits, top_k=2, rng=Draw(0.97))  # 0.97 of 0.8: the second token
    1
    """
    scores = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return int(np.argmax(scores))
    return _draw(token_weights(scores, temperature=temperature, top_k=top_k, top_p=top_p), rng)


def sample_rows(
    logits: np.ndarray,
    seen: Sequence[Sequence[int] | np.ndarray],
    rngs: Sequence[np.random.Generator | None],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> list[int]:
    """The next token of every row of a batch with one set of settings: what `sample_token`
    gives row b with logits[b] (of (B, V)), its tokens seen[b] and its generator rngs[b],
    computed for the whole batch at once. The operations are the same, element by element
    and along each row (a row's running sum is a cumulative sum along that row), so the
    tokens are the same too; a top-p nucleus differs from row to row and is cut row by row.

    >>> sample_rows(np.log([[0.5, 0.5], [0.9, 0.1]]), [[], []], [None, None], temperature=0)
    [0, 0]
    """
    scores = np.asarray(logits)
    if repetition_penalty != 1.0:
        scores = np.stack(
            [
                apply_repetition_penalty(scores[b], seen[b], repetition_penalty)
                for b in range(len(rngs))
            ]
        )
    if temperature == 0:
        return [int(i) for i in np.argmax(scores, axis=1)]
    if top_p is not None and top_p < 1.0:
        return [
            _draw(token_weights(scores[b], temperature=temperature, top_k=top_k, top_p=top_p), rng)
            for b, rng in enumerate(rngs)
        ]
    x = scores.astype(np.float64)  # (B, V)
    with np.errstate(over="ignore"):  # as in token_weights
        weights = np.exp((x - x.max(axis=1, keepdims=True)) / temperature)  # (B, V)
    V = x.shape[1]
    if top_k is not None and top_k < V:
        kth = np.partition(x, V - top_k, axis=1)[:, V - top_k]  # (B,)
        weights[x < kth[:, None]] = 0.0
    cdf = np.cumsum(weights, axis=1)  # (B, V)
    draws = np.array([_uniform(rng) for rng in rngs])  # (B,), one per row, in row order
    picks = (cdf <= (draws * cdf[:, -1])[:, None]).sum(axis=1)  # searchsorted, side="right"
    return [int(i) for i in np.minimum(picks, V - 1)]


def _uniform(rng: np.random.Generator | None) -> float:
    return float((rng if rng is not None else np.random.default_rng()).random())


def _draw(weights: np.ndarray, rng: np.random.Generator | None) -> int:
    """Inverse CDF: the first token whose running sum of `weights` passes one uniform draw
    times their total (a token of weight 0 never does)."""
    cdf = np.cumsum(weights)
    pick = int(np.searchsorted(cdf, _uniform(rng) * cdf[-1], side="right"))
    return min(pick, len(cdf) - 1)


def window_start(start: int, length: int, block_size: int) -> int:
    """Where a row's window of tokens starts before its next forward pass: the model sees
    the row's tokens [start, length) and is fed until it has seen them all. While they fit
    the context the window stays; once they would pass it, the window slides to the last
    `block_size` tokens, whose keys and values are computed anew (the cache is emptied and
    refilled at positions 0..block_size-1). So every step sees exactly the tokens a pass
    without a cache sees, on every path.

    >>> window_start(0, 16, 16), window_start(0, 17, 16), window_start(1, 17, 16)
    (0, 1, 1)
    """
    return length - block_size if length - start > block_size else start
