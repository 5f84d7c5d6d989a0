"""Statistics from order statistics, exactly as numpy computes them: an engine can return the k-th smallest value
of a column without sorting it (see :meth:`genrec.data.sql.Pipeline.order_statistic`), and these functions turn such
values into numpy's own quantiles and the dataset's sequence-length statistics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


def linear_quantile(n: int, q: float, value_at: Callable[[int], Any], dtype: type = np.float64) -> float:
    """``np.quantile(x, q)`` (method 'linear') of ``n`` values, reading only order statistics ``value_at(k)``
    (the k-th smallest, 0-based), with numpy's own arithmetic so the result is bit-identical."""
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(np.asarray(value_at(n - 1), dtype=dtype))
    if virtual < 0:
        return float(np.asarray(value_at(0), dtype=dtype))
    prev = math.floor(virtual)
    a, b = np.asarray(value_at(prev), dtype=dtype), np.asarray(value_at(prev + 1), dtype=dtype)
    t = np.float64(virtual - prev)
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def length_stats(histogram: list[tuple[int, int]]) -> dict[str, float | int]:
    """``SequenceDataset.stats()['sequence_length']`` from a histogram of (length, users)."""
    hist = sorted((int(length), int(count)) for length, count in histogram)
    lengths = np.array([h[0] for h in hist], dtype=np.int64)
    cum = np.cumsum([h[1] for h in hist])
    n = int(cum[-1])

    def at(k: int) -> int:
        return int(lengths[np.searchsorted(cum, k, side="right")])

    median = float(at((n - 1) // 2)) if n % 2 else (float(at(n // 2 - 1)) + float(at(n // 2))) / 2
    total = int(sum(length * count for length, count in hist))
    return {"min": int(lengths[0]), "mean": total / n, "median": median,
            "p90": linear_quantile(n, 90 / 100, at, np.int64), "p99": linear_quantile(n, 99 / 100, at, np.int64),
            "max": int(lengths[-1])}
