from __future__ import annotations

import numpy as np
import pytest


def _clustered(n: int = 600, dim: int = 16, clusters: int = 8, spread: float = 0.05, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters: vectors [n, dim] and the true cluster of each."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)) * 3
    labels = rng.integers(0, clusters, n)
    return (centers[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.fixture
def clustered():
    """``clustered(n, dim, clusters, spread, seed) -> (vectors, labels)``."""
    return _clustered
