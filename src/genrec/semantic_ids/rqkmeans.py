"""Residual k-means (RQ-KMeans): level 1 clusters the vectors, level 2 clusters what level 1 left over, and so
on. An item's code is the list of its nearest centroid at every level; its reconstruction is the sum of those
centroids. Snap's GRID handbook found it at least as good as RQ-VAE for semantic IDs, with nothing to train
but k-means."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genrec.semantic_ids.kmeans import kmeans, nearest


def residual_encode(z: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantisation of ``z`` [n, d] with ``codebooks`` [L, K, d]: codes [n, L] and the
    residual left after each level [L, n, d]."""
    codes = torch.empty(len(z), len(codebooks), dtype=torch.int64)
    residuals = []
    r = z
    for level, book in enumerate(codebooks):
        idx, _ = nearest(r, book)
        codes[:, level] = idx
        r = r - book[idx]
        residuals.append(r)
    return codes, torch.stack(residuals) if residuals else z.new_zeros(0, *z.shape)


def residual_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of each level's chosen centroid [n, d]."""
    out = codebooks.new_zeros(len(codes), codebooks.shape[-1])
    for level, book in enumerate(codebooks):
        out = out + book[codes[:, level]]
    return out


class ResidualKMeans:
    """``fit`` learns ``codebooks`` [levels, codebook_size, dim]; ``encode`` needs no training."""

    method = "rqkmeans"

    def __init__(self, levels: int = 3, codebook_size: int = 256, iters: int = 50, init: str = "kmeans++",
                 seed: int = 0):
        self.levels, self.codebook_size, self.iters, self.init, self.seed = levels, codebook_size, iters, init, seed
        self.codebooks: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, progress: Callable[[int, str], None] | None = None) -> ResidualKMeans:
        r = x.to(torch.float32)
        books = []
        for level in range(self.levels):
            res = kmeans(r, self.codebook_size, iters=self.iters, seed=self.seed + level, init=self.init)
            books.append(res.centroids)
            r = r - res.centroids[res.labels]
            if progress is not None:
                progress(1, f"rq-kmeans level {level + 1}/{self.levels}")
        self.codebooks = torch.stack(books)
        return self

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return residual_encode(self.latent(x), self.codebooks)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return residual_decode(codes, self.codebooks)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"codebooks": self.codebooks}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> ResidualKMeans:
        self.codebooks = tensors["codebooks"].to(torch.float32)
        return self
