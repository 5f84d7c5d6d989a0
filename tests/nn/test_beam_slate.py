"""Slate decoding: every item valid, no two sharing an ID prefix, best first; exhaustive settings give the
exact answer (the best item of each prefix, the best prefixes first); the generator's option and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.nn.test_beam_equivalence import assert_valid, random_histories, random_model

from genrec.errors import ConfigError
from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.beam import beam_search, slate_search


def prefixes(model: TIGER, items: torch.Tensor, p: int) -> list[tuple[int, ...]]:
    return [tuple(r) for r in model.codes[items, :p].tolist()]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), fill=st.floats(0.1, 1.0),
       seed=st.integers(0, 10_000), n=st.integers(1, 8), extra=st.integers(0, 6), group_beams=st.integers(1, 3),
       data=st.data())
def test_slates_hold_valid_items_with_distinct_prefixes(sizes, fill, seed, n, extra, group_beams, data):
    n_items = max(1, int(round(fill * int(np.prod(sizes)))))
    model = random_model(sizes, n_items, seed)
    p = data.draw(st.integers(1, len(sizes) - 1))
    items, scores = slate_search(model, random_histories(n_items, 3, seed), model.trie(), n=n, prefix=p,
                                 beam=n + extra, group_beams=group_beams)
    assert items.shape == scores.shape == (3, n)
    assert_valid(model, items, scores)
    n_prefixes = len({tuple(r) for r in model.codes[1:, :p].tolist()})
    for row, val in zip(items, scores, strict=True):
        real = torch.isfinite(val)
        assert len(set(prefixes(model, row[real], p))) == int(real.sum())  # no two share a prefix
        assert int(real.sum()) == min(n, n_prefixes)  # as many as there are prefixes, up to n
        assert val.tolist() == sorted(val.tolist(), reverse=True)


@pytest.mark.parametrize("p", [1, 2])
def test_exhaustive_slate_is_the_best_item_of_each_prefix(p):
    sizes = [3, 3, 4]
    model = random_model(sizes, 30, seed=5)
    hist = random_histories(30, 3, seed=6)
    everything, exact = beam_search(model, hist, model.trie(), beam=30)  # every item, exact log-probabilities
    items, scores = slate_search(model, hist, model.trie(), n=5, prefix=p, beam=30, group_beams=30)
    for u in range(len(hist)):
        best: dict[tuple[int, ...], tuple[float, int]] = {}
        for item, s in zip(everything[u].tolist(), exact[u].tolist(), strict=True):
            key = tuple(model.codes[item, :p].tolist())
            best[key] = max(best.get(key, (-np.inf, 0)), (s, item))
        expected = (sorted(best.values(), reverse=True) + [(-np.inf, 0)] * 5)[:5]  # p = 1: only 3 prefixes
        assert items[u].tolist() == [i for _, i in expected]
        assert np.allclose(scores[u].numpy(), [s for s, _ in expected], atol=1e-5)


def test_a_narrow_slate_search_still_differs_from_the_plain_top_k():
    model = random_model([4, 4, 4], 50, seed=7)
    hist = random_histories(50, 4, seed=8)
    plain, _ = beam_search(model, hist, model.trie(), beam=8)
    slate, _ = slate_search(model, hist, model.trie(), n=8, prefix=1)
    assert all(len(set(prefixes(model, r[:4], 1))) == 4 for r in slate)  # 4 first codes: 4 items, then none
    assert (slate[:, :4] > 0).all() and (slate[:, 4:] == 0).all()
    assert any(len(set(prefixes(model, r, 1))) < 4 for r in plain)  # plain beams repeat first codes


def test_generator_option_and_errors():
    model = random_model([4, 4, 4], 50, seed=9)
    hist = random_histories(50, 2, seed=10)
    a = model.recommend(hist, k=3, slate=2)
    b = model.recommend_slate(hist, n=3, prefix=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    cfg = TigerConfig.model_validate({**model.config.model_dump(), "slate": {"prefix": 2}})
    with_slate = TIGER(cfg, model.codes.numpy(), model.sizes).eval()
    with_slate.load_state_dict(model.state_dict())
    assert torch.equal(with_slate.recommend(hist, k=3)[0], a[0])  # the config turns it on
    assert torch.equal(with_slate.recommend(hist, k=3, slate=0)[0], model.recommend(hist, k=3)[0])
    with pytest.raises(ConfigError, match="slate prefix must be 1..2"):
        TIGER(TigerConfig.model_validate({**cfg.model_dump(), "slate": {"prefix": 3}}), model.codes.numpy(),
              model.sizes)
    with pytest.raises(ConfigError, match="cannot both be on"):
        TIGER(TigerConfig.model_validate({**cfg.model_dump(), "cold_mixing": {"epsilon": 0.1}}),
              model.codes.numpy(), model.sizes)
    with pytest.raises(ValueError, match="cannot exceed"):
        slate_search(model, hist, model.trie(), n=5, prefix=1, beam=4)
    with pytest.raises(ValueError, match="prefix must be 1..2"):
        slate_search(model, hist, model.trie(), n=2, prefix=3)
