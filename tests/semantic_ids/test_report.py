"""Quality report numbers on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.semantic_ids.report import code_report, format_report, grouping_report, reconstruction_report


def test_code_report_by_hand():
    codes = np.array([[0, 1], [0, 1], [0, 2], [3, 1], [0, 1]])
    r = code_report(codes, codebook_size=4)
    assert r["items"] == 5
    assert r["utilisation"] == [0.5, 0.5]  # level 1 uses {0, 3}, level 2 uses {1, 2}
    p = np.array([4, 1]) / 5
    assert r["perplexity"][0] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert r["distinct_prefixes"] == [2, 3]
    assert r["collision_rate"] == pytest.approx(1 - 3 / 5)  # prefixes (0,1) x3, (0,2), (3,1)
    assert r["items_in_collision"] == pytest.approx(3 / 5)
    assert r["max_collisions"] == 3


def test_reconstruction_report_by_hand():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    r = reconstruction_report(x, x)
    assert r["mse"] == 0 and r["unexplained_variance"] == 0
    r = reconstruction_report(x, torch.zeros_like(x))  # the mean vector explains nothing
    assert r["mse"] == pytest.approx(0.5) and r["unexplained_variance"] == pytest.approx(1.0)
    residuals = torch.stack([x * 0.5, x * 0.0])
    r = reconstruction_report(x, x, residuals, latent=x)
    assert r["latent_unexplained_variance_by_level"] == pytest.approx([0.25, 0.0])


def test_grouping_report_by_hand():
    # items 0,1 point one way, 2,3 another (orthogonal); a code that groups them well and one that mixes them
    v = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    good = grouping_report(v, np.array([[0], [0], [1], [1]]))
    bad = grouping_report(v, np.array([[0], [1], [0], [1]]))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = u @ u.T
    assert good["random_pair_cosine"] == pytest.approx(sims[~np.eye(4, dtype=bool)].mean())
    assert good["same_prefix_cosine"][0] == pytest.approx((sims[0, 1] + sims[2, 3]) / 2)
    assert bad["same_prefix_cosine"][0] == pytest.approx((sims[0, 2] + sims[1, 3]) / 2)
    assert good["nn_shares_prefix"] == [1.0] and bad["nn_shares_prefix"] == [0.0]
    assert good["chance_shares_prefix"] == [pytest.approx(4 / 12)]


def test_format_report_lines():
    rep = {"method": "rqkmeans", "levels": 1, "codebook_size": 4, "sizes": [4, 3], "unique": True,
           "codes": code_report(np.array([[0], [0], [1]]), 4),
           "reconstruction": reconstruction_report(torch.eye(3), torch.eye(3)),
           "grouping": grouping_report(np.eye(3), np.array([[0], [0], [1]])), "missing_items": 2}
    text = "\n".join(format_report(rep))
    assert "collisions" in text and "2 items without content" in text and "unique IDs: True" in text
