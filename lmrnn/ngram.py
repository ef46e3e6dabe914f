"""Interpolated modified Kneser-Ney n-gram model (Chen & Goodman 1998), counted with numpy.

Sentences: in a token stream `eos s1 eos s2 eos ...` every eos ends a sentence and also serves
as the next one's start symbol <s>, so an n-gram never reaches back across an eos: at a
sentence's first word the history is just <s> (SRILM's and KenLM's convention, which published
PTB figures use).

Tables, one per order k = 1..n. A k-gram is keyed `prefix * V + word`, where `prefix` is the
index of its first k-1 tokens in the sorted table of order k-1 (0 for unigrams), so the k-grams
sharing a history are one contiguous slice. Counts: raw for the highest order and for k-grams
starting with <s> (which have no left extension); otherwise the continuation count N1+(. g), the
number of distinct words seen before g. Then, with c = count(h w) and D1, D2, D3+ the discounts
for counts 1, 2, >= 3,

    p_k(w | h) = [max(c - D(c), 0) + (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) p_{k-1}(w | h')] / count(h .)

h' being h without its first word, p_0 = 1 / V, and p_k = p_{k-1} when h was never seen. The
discounts come in closed form from each order's count-of-counts n1..n4 (Chen & Goodman, eq. 26):
Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


@dataclass
class Level:
    """The k-grams of one order, sorted by key, and the statistics of their histories."""
    keys: np.ndarray  # (G,) int64: prefix index * V + word, sorted
    counts: np.ndarray  # (G,) int64: raw or continuation counts (see the module docstring)
    totals: np.ndarray  # (H,) per history (index in the previous order's table): sum of counts
    backoff: np.ndarray  # (H,) per history: D1 N1 + D2 N2 + D3+ N3+ (the mass left to the lower order)
    discounts: np.ndarray  # (4,) D0 = 0, D1, D2, D3+


def sentence_starts(ids: np.ndarray, eos: int) -> np.ndarray:
    """For each position i, the position of the last eos before it (0 for position 0):
    the earliest token its history may use."""
    positions = np.arange(len(ids))
    marks = np.where(ids == eos, positions, 0)
    starts = np.maximum.accumulate(marks)  # last eos at or before i
    return np.concatenate([[0], starts[:-1]])


def discounts(counts: np.ndarray) -> np.ndarray:
    """Chen & Goodman's closed-form D1, D2, D3+ from the count-of-counts n1..n4; where the
    corpus is too small for them, one absolute discount Y (or 0.5) for all."""
    n = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(np.float64)  # n1..n4
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] > 0 else 0.5
    if np.all(n > 0):
        d = np.array([1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
    else:
        d = np.full(3, y)
    return np.concatenate([[0.0], np.clip(d, 0.0, [1.0, 2.0, 3.0])])


class KneserNey:
    def __init__(self, levels: list[Level], vocab_size: int, eos: int):
        self.levels, self.vocab_size, self.eos = levels, vocab_size, eos

    @property
    def order(self) -> int:
        return len(self.levels)

    @classmethod
    def fit(cls, ids: np.ndarray, order: int, vocab_size: int, eos: int) -> "KneserNey":
        """Count a token stream (starting with eos) into an order-`order` model."""
        ids = np.asarray(ids, dtype=np.int64)
        V, starts = vocab_size, sentence_starts(ids, eos)
        positions = np.arange(1, len(ids))  # predicted positions
        words = ids[positions]
        prefix = np.zeros(len(positions), dtype=np.int64)  # index of the (k-1)-gram before each position
        valid = np.ones(len(positions), dtype=bool)
        raw_levels = []
        for k in range(1, order + 1):
            # the k-gram ending at position p is the (k-1)-gram ending at p-1 plus ids[p]
            if k > 1:
                valid &= positions - (k - 1) >= starts[positions]
            keys = prefix[valid] * V + words[valid]
            unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            index = np.full(len(positions), -1, dtype=np.int64)
            index[valid] = inverse
            first = ids[positions[valid] - (k - 1)]  # the k-gram's first token
            first_of = np.zeros(len(unique), dtype=np.int64)
            first_of[inverse] = first
            raw_levels.append((unique, counts, first_of))
            # the prefix for order k+1 at position p: this order's index at p-1; position 0 (the
            # first <s>) is no predicted position, but as a unigram it is the eos seen elsewhere
            at_zero = _lookup(unique, np.array([ids[0]]))[1][0] if k == 1 else 0
            prefix = np.maximum(np.concatenate([[at_zero], index[:-1]]), 0)
        levels = []
        for k, (unique, counts, first_of) in enumerate(raw_levels, start=1):
            if k < order:  # continuation counts, except for k-grams that start at <s>
                higher_unique = raw_levels[k][0]
                suffix = _suffix_index(higher_unique, raw_levels, k + 1, V)
                continuation = np.bincount(suffix, minlength=len(unique))
                starts_sentence = (first_of == eos) & (k > 1)
                counts = np.where(starts_sentence, counts, continuation)
            levels.append(_level(unique, counts, V, len(raw_levels[k - 2][0]) if k > 1 else 1))
        return cls(levels, vocab_size, eos)

    def score(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probability of every token after the first of a stream (float64, (N-1,))."""
        ids = np.asarray(ids, dtype=np.int64)
        V, starts = self.vocab_size, sentence_starts(ids, self.eos)
        positions = np.arange(1, len(ids))
        words = ids[positions]
        probs = np.full(len(positions), 1.0 / V)
        prefix = np.zeros(len(positions), dtype=np.int64)
        prefix_found = np.ones(len(positions), dtype=bool)
        for k, level in enumerate(self.levels, start=1):
            usable = prefix_found.copy()
            if k > 1:
                usable &= positions - (k - 1) >= starts[positions]
            found, index = _lookup(level.keys, prefix * V + words)
            found &= usable
            count = np.where(found, level.counts[np.where(found, index, 0)], 0)
            history = np.where(usable, prefix, 0)
            total = np.where(usable, level.totals[history], 0)
            seen = total > 0
            discounted = np.maximum(count - level.discounts[np.minimum(count, 3)], 0.0)
            probs = np.where(seen, (discounted + level.backoff[history] * probs) / np.maximum(total, 1), probs)
            # the history of order k+1 at position p is this order's k-gram ending at p-1
            # (at position 0, for k = 1, the unigram of the stream's first token, its <s>)
            at_zero = _lookup(level.keys, ids[:1]) if k == 1 else (np.array([False]), np.array([0]))
            prefix = np.concatenate([at_zero[1], np.where(found, index, 0)[:-1]])
            prefix_found = np.concatenate([at_zero[0], found[:-1]])
        return np.log(probs)

    def distribution(self, history: list[int]) -> np.ndarray:
        """p(. | history) over the whole vocabulary (V,), float64; the history is cut at its
        last eos (which acts as <s>) and to the last order-1 tokens."""
        if self.eos in history:
            history = history[len(history) - history[::-1].index(self.eos) - 1:]
        history = history[max(0, len(history) - self.order + 1):]
        V = self.vocab_size
        probs = np.full(V, 1.0 / V)
        # indices of the histories of each order: () for unigrams, then the suffixes of `history`
        for k, level in enumerate(self.levels, start=1):
            if k > 1:
                context = history[len(history) - (k - 1):] if k - 1 <= len(history) else None
                prefix = self._index(context) if context is not None else -1
                if prefix < 0:
                    break  # no longer history was seen: the lower orders are the answer
            else:
                prefix = 0
            if level.totals[prefix] == 0:
                continue
            lo, hi = np.searchsorted(level.keys, [prefix * V, prefix * V + V])
            counts = np.zeros(V)
            counts[level.keys[lo:hi] - prefix * V] = level.counts[lo:hi]
            discounted = np.maximum(counts - level.discounts[np.minimum(counts, 3).astype(np.int64)], 0.0)
            probs = (discounted + level.backoff[prefix] * probs) / level.totals[prefix]
        return probs

    def _index(self, gram: list[int]) -> int:
        """Index of a k-gram in the order-k table, or -1."""
        prefix = 0
        for k, word in enumerate(gram, start=1):
            found, index = _lookup(self.levels[k - 1].keys, np.array([prefix * self.vocab_size + word]))
            if not found[0]:
                return -1
            prefix = int(index[0])
        return prefix

    def save(self, path: Path) -> None:
        tensors = {"meta": np.array([self.vocab_size, self.eos], dtype=np.int64)}
        for k, level in enumerate(self.levels, start=1):
            for name in ("keys", "counts", "totals", "backoff", "discounts"):
                tensors[f"{k}.{name}"] = np.ascontiguousarray(getattr(level, name))
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> "KneserNey":
        tensors = load_file(str(path))
        vocab_size, eos = (int(x) for x in tensors["meta"])
        order = max(int(key.split(".")[0]) for key in tensors if key != "meta")
        levels = [Level(*(tensors[f"{k}.{name}"] for name in ("keys", "counts", "totals", "backoff", "discounts")))
                  for k in range(1, order + 1)]
        return cls(levels, vocab_size, eos)


def _lookup(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, index) of each query in the sorted `keys`."""
    index = np.searchsorted(keys, queries)
    inside = index < len(keys)
    found = inside & (keys[np.minimum(index, len(keys) - 1)] == queries)
    return found, index


def _suffix_index(higher_keys: np.ndarray, raw_levels: list, k: int, V: int) -> np.ndarray:
    """For each k-gram (keys of order k), the index in order k-1 of the (k-1)-gram it ends with
    (its first word dropped): walk the prefix chain, replacing the first word's level."""
    # decompose each k-gram into its k words by following prefixes down to the unigrams
    words = []
    keys = higher_keys
    for level in range(k - 1, -1, -1):
        words.append(keys % V)
        if level == 0:
            break
        keys = raw_levels[level - 1][0][keys // V]
    words = words[::-1]  # words[0] is the first word, words[k-1] the last
    prefix = np.zeros(len(higher_keys), dtype=np.int64)
    for j in range(1, k):  # rebuild the suffix words[1:] level by level
        found, index = _lookup(raw_levels[j - 1][0], prefix * V + words[j])
        assert found.all()  # every suffix of a seen k-gram was seen
        prefix = index
    return prefix


def _level(keys: np.ndarray, counts: np.ndarray, V: int, histories: int) -> Level:
    counts = counts.astype(np.int64)
    d = discounts(counts)
    history = keys // V
    totals = np.bincount(history, weights=counts, minlength=histories)
    backoff = np.bincount(history, weights=d[np.minimum(counts, 3)], minlength=histories)
    return Level(keys, counts, totals, backoff, d)
