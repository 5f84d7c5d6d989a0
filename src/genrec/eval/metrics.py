"""Ranking metrics from the 0-based rank of each case's target (rank >= catalog size means "not ranked")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (5, 10, 20, 50, 200)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-case HR@K (= Recall@K with one target), NDCG@K for every K, and MRR (not truncated).

    A rank >= K is a miss at K. A target that could not be ranked at all (excluded as already seen) is given
    rank ``n_items`` by :func:`genrec.eval.retrieval.rank_cases`, which also sets all its metrics, MRR included,
    to 0.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if np.any(ranks < 0):
        raise ValueError("ranks must be >= 0")
    out: dict[str, np.ndarray] = {}
    gain = 1.0 / np.log2(ranks + 2.0)
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, gain, 0.0)
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """Each item's popularity as a percentile in [0, 1] (0 = least, 1 = most popular, ties averaged).

    ``counts[0]`` belongs to the padding id and is ignored (its percentile is 0).
    """
    from scipy.stats import rankdata

    counts = np.asarray(counts, dtype=np.float64)
    pct = np.zeros_like(counts)
    n = len(counts) - 1
    if n > 1:
        pct[1:] = (rankdata(counts[1:], method="average") - 1) / (n - 1)
    return pct
