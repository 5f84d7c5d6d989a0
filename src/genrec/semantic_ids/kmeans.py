"""Batched k-means in torch: k-means++ (or random) initialisation from a seed, Lloyd iterations over blocks of
points, empty clusters re-seeded with the points farthest from their centroid. The same seed and input give
the same centroids on every run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrec.errors import DataError

BLOCK = 8192  # points per distance block: bounds memory at BLOCK * k floats


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [k, d]
    labels: torch.Tensor  # [n] int64
    inertia: float  # sum of squared distances of points to their centroid
    iterations: int


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid [n] and the squared distance to it [n], computed in blocks."""
    c_sq = (centroids * centroids).sum(1)
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), BLOCK):
        xb = x[start:start + BLOCK]
        d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ centroids.T + c_sq[None]
        best, idx = d.min(1)
        labels[start:start + BLOCK] = idx
        dist[start:start + BLOCK] = best.clamp_min(0)
    return labels, dist


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x_sq - 2 * (x @ c) + c @ c).clamp_min(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling). When fewer than ``k`` distinct points exist, the remaining centroids
    repeat sampled points (they stay empty and show up as unused codes)."""
    n = len(x)
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = _sq_dist_to(x, x_sq, x[first])
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every point already coincides with a centroid
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=gen))
        centroids.append(x[idx])
        closest = torch.minimum(closest, _sq_dist_to(x, x_sq, x[idx]))
    return torch.stack(centroids)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, seed: int = 0, init: Literal["kmeans++", "random"] = "kmeans++",
           tol: float = 1e-6) -> KMeansResult:
    """Cluster the rows of ``x`` [n, d] into ``k`` clusters.

    Stops after ``iters`` Lloyd steps or when the inertia improves by less than ``tol`` (relative). A cluster
    that loses all its points takes the point farthest from its current centroid (deterministic).
    """
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"k-means needs a non-empty [n, d] matrix, got shape {tuple(x.shape)}")
    if k < 1:
        raise DataError(f"k-means needs k >= 1, got {k}")
    if not torch.isfinite(x).all():
        raise DataError("k-means input holds NaN or infinite values")
    x = x.detach().to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    if init == "kmeans++":
        centroids = kmeans_plus_plus(x, k, gen)
    elif init == "random":
        centroids = x[torch.randperm(len(x), generator=gen)[:k]] if len(x) >= k else \
            x[torch.randint(len(x), (k,), generator=gen)]
    else:
        raise DataError(f"unknown k-means init {init!r}; expected 'kmeans++' or 'random'")
    centroids = centroids.clone()
    prev, it = float("inf"), 0
    labels, dist = nearest(x, centroids)
    for it in range(1, iters + 1):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        empty = torch.nonzero(~nonempty).flatten()
        if len(empty) and len(x) > k:
            # re-seed each empty cluster with one of the currently worst-served points
            far = torch.argsort(dist, descending=True, stable=True)[:len(empty)]
            centroids[empty] = x[far]
        labels, dist = nearest(x, centroids)
        inertia = float(dist.sum())
        if it > 1 and prev - inertia <= tol * max(prev, 1e-12) and not len(empty):
            prev = inertia
            break
        prev = inertia
    return KMeansResult(centroids=centroids, labels=labels, inertia=float(dist.sum()), iterations=it)
