"""The two-stage score rule (genrec.models.two_stage) that serving and evaluation share."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.errors import ConfigError
from genrec.models.two_stage import blend_score, final_order, fuse, resolve_blend


def test_fuse_z_scores_and_unknown_candidates_keep_their_retrieval_standing():
    r = np.array([[3.0, 2.0, 1.0, -np.inf]])
    k = np.array([[0.0, np.nan, 5.0, np.nan]])
    z_only = fuse(r, k, None)
    # the unknown candidate (column 1) keeps its retrieval z-score; the empty slot is -inf
    z_r = (r[0, :3] - r[0, :3].mean()) / r[0, :3].std()
    assert z_only[0, 1] == pytest.approx(z_r[1]) and z_only[0, 3] == -np.inf
    assert z_only[0, 2] > z_only[0, 0]
    assert np.allclose(fuse(r, k, 0.0)[0, :3], z_r)
    both = fuse(r, k, 2.0)[0, :3]
    z_k = np.array([(0.0 - 2.5) / 2.5, z_r[1], (5.0 - 2.5) / 2.5])
    assert np.allclose(both, z_r + 2.0 * z_k)


def test_blend_and_default_engagement_task():
    assert resolve_blend(["like", "rate"], None) == {"rate": 1.0}
    assert resolve_blend(["click", "like"], None) == {"click": 1.0}
    assert resolve_blend(["click", "like"], {"like": 0.5}) == {"like": 0.5}
    with pytest.raises(ConfigError, match="engagement"):
        resolve_blend(["like"], None)
    with pytest.raises(ConfigError, match="nope"):
        resolve_blend(["click"], {"nope": 1.0})
    out = {"click": np.array([1.0, 2.0]), "like": np.array([4.0, -4.0])}
    assert blend_score(out, {"click": 1.0, "like": 0.5}).tolist() == [3.0, 0.0]


def test_final_order_is_best_first_and_ties_keep_the_retrieval_order():
    assert final_order(np.array([1.0, 3.0, 3.0, -np.inf, 2.0])).tolist() == [1, 2, 4, 0, 3]
