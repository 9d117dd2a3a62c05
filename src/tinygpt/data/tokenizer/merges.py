"""Learning byte-pair merges: counting pre-split chunks and merging the most frequent pair.

Owns: GPT-2's map from bytes to printable stand-ins (`bytes_to_unicode`, also the order in
which Hugging Face's trainer breaks ties), counting the chunks of a text
(`count_chunks`), the incremental merge loop (`learn_merges`) and merging one pair in a
sequence of ids (`merge_pair`). Knows nothing about encoding text, special tokens or the
`tokenizer.json` layout (`bpe.py`).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise

import regex


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, as `tokenizer.json` stores them.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0,
    0xAD) get the code points 256, 257, ... in byte order.

    >>> m = bytes_to_unicode()
    >>> m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@dataclass
class MergeStats:
    """What training did, for tests and benchmarks: how many chunk types each merge touched,
    and why it stopped: "size" (the vocabulary is full), "no_pairs" (every chunk is one
    token) or "min_frequency" (the most frequent pair is rarer than `min_frequency`)."""

    chunk_types: int = 0
    words_touched: list[int] = field(default_factory=list)
    stop: str = ""


def count_chunks(texts: Iterable[str], pattern: str) -> Counter[str]:
    """How often each pre-split chunk occurs in `texts` (chunks never span two texts)."""
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return counts


Pair = tuple[int, int]


def learn_merges(
    chunk_counts: dict[bytes, int],
    num_tokens: int,
    *,
    min_frequency: int = 1,
    stats: MergeStats | None = None,
) -> tuple[list[tuple[int, int, int]], list[bytes]]:
    """Learn merges on top of the 256 byte tokens until there are `num_tokens` tokens.

    Returns `(merges, vocab)`: `merges[r] = (left, right, new)` is the merge of rank r, and
    `vocab[i]` the bytes of token i. Stops early if no adjacent pair is left, or if the most
    frequent one occurs fewer than `min_frequency` times (Hugging Face's `min_frequency`).

    The cost is incremental. Pair counts live in a dict and a max-heap; a pair -> chunk index
    says which chunk types hold a pair. A merge rewrites only the chunks holding its pair
    and applies the difference of their pair counts (old pairs out, new pairs in, times the
    chunk's frequency). The heap is lazy: a pair whose count fell is fixed when it surfaces,
    a pair whose count rose is pushed again. Index entries for pairs that vanished from a
    chunk are left behind and skipped when met.

    >>> merges, vocab = learn_merges({b"aaab": 1, b"ab": 2}, 258)
    >>> merges, vocab[256:]
    ([(97, 98, 256), (97, 97, 257)], [b'ab', b'aa'])
    """
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    token_of: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
    words: list[list[int]] = [list(chunk) for chunk in chunk_counts]
    freqs: list[int] = list(chunk_counts.values())

    pair_count: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for w, (word, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(word):
            pair_count[pair] += f
            where[pair].add(w)
    # Entries are (-count, key(left), key(right), left, right): the heap's minimum is the
    # most frequent pair, and among equals the smallest pair of keys (see `_tie_keys`).
    key = _tie_keys()
    heap = [(-c, key[a], key[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    if stats is not None:
        stats.chunk_types = len(words)

    merges: list[tuple[int, int, int]] = []
    stop = "no_pairs"
    while heap:
        if len(vocab) >= num_tokens:
            stop = "size"
            break
        neg, ka, kb, a, b = heapq.heappop(heap)
        current = pair_count.get((a, b), 0)
        if current != -neg:
            # Stale entry. A lower current count is re-queued at its true place; a higher
            # one was pushed when it rose and is still in the heap.
            if 0 < current < -neg:
                heapq.heappush(heap, (-current, ka, kb, a, b))
            continue
        if current < min_frequency:
            stop = "min_frequency"  # the heap's top is the most frequent pair left
            break

        joined = vocab[a] + vocab[b]
        new = token_of.get(joined)
        if new is None:
            new = len(vocab)
            vocab.append(joined)
            token_of[joined] = new
            key.append(new)
        merges.append((a, b, new))

        delta, touched = _rewrite_chunks(words, freqs, where, (a, b), new)
        if stats is not None:
            stats.words_touched.append(touched)
        _apply_delta(pair_count, heap, key, delta)
    if stats is not None:
        stats.stop = "size" if len(vocab) >= num_tokens else stop
    return merges, vocab


def _rewrite_chunks(
    words: list[list[int]],
    freqs: list[int],
    where: dict[Pair, set[int]],
    pair: Pair,
    new: int,
) -> tuple[dict[Pair, int], int]:
    """Merge `pair` into `new` in every chunk type that holds it; return the change of each
    pair's count (times the chunks' frequencies) and how many chunk types changed."""
    a, b = pair
    delta: dict[Pair, int] = defaultdict(int)
    touched = 0
    for w in where.pop(pair):
        word = words[w]
        merged = merge_pair(word, a, b, new)
        if len(merged) == len(word):
            continue  # a stale index entry: this chunk no longer holds the pair
        touched += 1
        f = freqs[w]
        for old in pairwise(word):
            delta[old] -= f
        for fresh in pairwise(merged):
            delta[fresh] += f
            if new in fresh:
                where[fresh].add(w)
        words[w] = merged
    return delta, touched


def _apply_delta(
    pair_count: dict[Pair, int],
    heap: list[tuple[int, int, int, int, int]],
    key: list[int],
    delta: dict[Pair, int],
) -> None:
    """Apply the count changes of a merge: a count that rose is pushed again (the heap is
    lazy about counts that fell), a count that reached zero is dropped."""
    for pair, d in delta.items():
        if d == 0:
            continue
        count = pair_count[pair] + d
        if count > 0:
            pair_count[pair] = count
            if d > 0:
                x, y = pair
                heapq.heappush(heap, (-count, key[x], key[y], x, y))
        else:
            del pair_count[pair]


def _tie_keys() -> list[int]:
    """The order in which equally frequent pairs are merged: by (key(left), key(right)).

    A merged token's key is its id. A byte's key is the place of its printable stand-in
    (`bytes_to_unicode`) in code-point order, which is the id Hugging Face's trainer gives
    the byte, so that ties are broken as there and both trainers learn the same merges:
    '!' (0x21) is 0, 'A' is 32, and the space, written 'Ġ' (U+0120), comes after all
    printable Latin-1 bytes.

    >>> keys = _tie_keys()
    >>> keys[ord("!")], keys[ord("A")], keys[ord("a")] < keys[ord(" ")]
    (0, 32, True)
    """
    order = sorted(range(256), key=lambda b: bytes_to_unicode()[b])
    keys = [0] * 256
    for place, b in enumerate(order):
        keys[b] = place
    return keys


def merge_pair(word: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace each non-overlapping (a, b) in `word`, left to right, by `new`.

    >>> merge_pair([1, 1, 1, 2], 1, 1, 9)
    [9, 1, 2]
    """
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
