"""Statistics over per-user metric values: bootstrap confidence intervals and paired tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from scipy import stats as sps


def _bootstrap_indices(n: int, n_boot: int, seed: int, chunk: int = 100) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _resample_means(mat: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Means [metrics, resamples] of ``mat`` [metrics, users] over each row of ``idx`` [resamples, users]: how often
    each user was drawn, times the values (one matrix product, not a gather of every draw)."""
    n = idx.shape[1]
    weights = np.stack([np.bincount(draw, minlength=n) for draw in idx]).astype(np.float64)
    return (weights @ mat.T).T / n


def bootstrap_ci(
    values: Mapping[str, np.ndarray], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Mean and percentile-bootstrap interval of every metric, resampling users (the same resamples for all)."""
    names = list(values)
    mat = np.stack([np.asarray(values[k], dtype=np.float64) for k in names])  # [metrics, users]
    n = mat.shape[1]
    if n == 0:
        return {k: {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")} for k in names}
    means = np.concatenate([_resample_means(mat, idx) for idx in _bootstrap_indices(n, n_boot, seed)], axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=1)
    return {k: {"mean": float(mat[i].mean()), "ci_low": float(lo[i]), "ci_high": float(hi[i])}
            for i, k in enumerate(names)}


def paired_test(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """B minus A on the same users: mean difference, bootstrap interval, paired t-test and Wilcoxon p-values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    d = b - a
    ci = bootstrap_ci({"d": d}, n_boot=n_boot, alpha=alpha, seed=seed)["d"]
    if np.allclose(d, 0):
        p_t = p_w = 1.0
    else:
        p_t = float(sps.ttest_rel(b, a).pvalue)
        p_w = float(sps.wilcoxon(d, zero_method="zsplit").pvalue)
    return {"n": int(len(d)), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(d.mean()),
            "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "p_value": p_t, "p_wilcoxon": p_w}
