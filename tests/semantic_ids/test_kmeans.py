"""k-means: the same seed gives the same result, separable clusters are recovered, empty clusters and
degenerate inputs are handled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import DataError
from genrec.semantic_ids import kmeans
from genrec.semantic_ids.kmeans import nearest


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_deterministic(init, clustered):
    x = torch.from_numpy(clustered(seed=1)[0])
    a, b = kmeans(x, 8, seed=5, init=init), kmeans(x, 8, seed=5, init=init)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)


def test_recovers_separable_clusters(clustered):
    x, truth = clustered(n=800, clusters=6, seed=2)
    res = kmeans(torch.from_numpy(x), 6, seed=0)
    # a perfect clustering: each found cluster is exactly one true cluster
    pairs = set(zip(res.labels.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 6 and len({p[0] for p in pairs}) == 6
    spread = ((x - x.mean(0)) ** 2).sum()
    assert res.inertia < 0.01 * spread


def test_labels_are_nearest_centroids():
    x = torch.randn(300, 5)
    res = kmeans(x, 10, seed=0)
    d = torch.cdist(x, res.centroids)
    assert torch.equal(res.labels, d.argmin(1))
    idx, dist = nearest(x, res.centroids)
    torch.testing.assert_close(dist, d.min(1).values ** 2, atol=1e-4, rtol=1e-4)


def test_no_empty_clusters_when_points_allow():
    # one far outlier group and a dense blob: random init puts many centroids in the blob
    x = torch.cat([torch.randn(500, 4) * 0.01, torch.randn(5, 4) + 20])
    res = kmeans(x, 16, seed=0, init="random")
    assert len(torch.unique(res.labels)) == 16


def test_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(20, 1)
    res = kmeans(x, 8, seed=0)
    assert torch.isfinite(res.centroids).all() and res.inertia == pytest.approx(0.0, abs=1e-6)
    assert len(torch.unique(res.labels)) == 2


def test_bad_input():
    with pytest.raises(DataError):
        kmeans(torch.zeros(0, 3), 2)
    with pytest.raises(DataError, match="NaN"):
        kmeans(torch.tensor([[np.nan, 0.0], [1.0, 1.0]]), 1)
