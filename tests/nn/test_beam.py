"""Prefix trie and constrained beam search: the trie holds exactly the items, decoding never leaves it, never
repeats an item, handles beams wider than the catalog, and equals the plain reference search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.nn.test_beam_equivalence import reference_beam_search

from genrec.errors import DataError
from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.beam import PrefixTrie, beam_search

SIZES = [4, 3, 3]


def random_codes(n_items: int, sizes=SIZES, seed: int = 0) -> np.ndarray:
    """Unique random IDs, one row per item (no padding row)."""
    space = int(np.prod(sizes))
    flat = np.random.default_rng(seed).choice(space, n_items, replace=False)
    return np.stack(np.unravel_index(flat, sizes), axis=1).astype(np.int64)


def tiny_model(n_items: int = 30, seed: int = 0) -> TIGER:
    torch.manual_seed(seed)
    codes = np.concatenate([np.full((1, len(SIZES)), -1), random_codes(n_items, seed=seed)])
    cfg = TigerConfig(dim=16, heads=2, head_dim=8, ffn_dim=32, encoder_layers=1, decoder_layers=2, max_len=6,
                      dropout=0.0)
    return TIGER(cfg, codes, SIZES).eval()


def histories(n_items: int, seed: int = 1) -> torch.Tensor:
    """Left-padded histories of different lengths (one of a single item)."""
    rng = np.random.default_rng(seed)
    h = torch.from_numpy(rng.integers(1, n_items + 1, (5, 6)))
    for row, length in enumerate([6, 1, 3, 5, 2]):
        h[row, : 6 - length] = 0
    return h


def test_trie_holds_exactly_the_items():
    codes = random_codes(25)
    trie = PrefixTrie(codes, SIZES)
    paths, items = trie.paths()
    order = torch.argsort(items)
    assert items[order].tolist() == list(range(1, 26))
    assert torch.equal(paths[order], torch.from_numpy(codes))
    assert torch.equal(trie.lookup(torch.from_numpy(codes)), torch.arange(1, 26))
    everything = torch.from_numpy(np.stack(np.unravel_index(np.arange(36), SIZES), axis=1))
    found = trie.lookup(everything)
    is_item = {tuple(r) for r in codes.tolist()}
    assert [bool(f) for f in found] == [tuple(r) in is_item for r in everything.tolist()]
    assert set(torch.nonzero(trie.allowed(0, torch.tensor([0]))[0])[:, 0].tolist()) == set(codes[:, 0].tolist())
    assert not trie.allowed(1, torch.tensor([-1])).any()  # a dead beam may continue nowhere


def test_trie_rejects_bad_ids():
    codes = random_codes(5)
    with pytest.raises(DataError, match="not unique"):
        PrefixTrie(np.concatenate([codes, codes[:1]]), SIZES)
    codes[0, 1] = 3
    with pytest.raises(DataError, match="outside its codebook"):
        PrefixTrie(codes, SIZES)


@pytest.mark.parametrize("beam", [1, 4, 17, 30, 50])
def test_beam_search_returns_distinct_valid_items(beam):
    model = tiny_model()
    items, scores = beam_search(model, histories(30), model.trie(), beam=beam)
    assert items.shape == scores.shape == (5, beam)
    for row, val in zip(items.tolist(), scores.tolist(), strict=True):
        real = [i for i, s in zip(row, val, strict=True) if s > -np.inf]
        assert len(real) == min(beam, 30)  # a beam wider than the catalog finds every item, once
        assert len(set(real)) == len(real) and all(1 <= i <= 30 for i in real)
        assert all(i == 0 for i, s in zip(row, val, strict=True) if s == -np.inf)
        assert val == sorted(val, reverse=True)


def test_exhaustive_beam_equals_exact_item_probabilities():
    """With as many beams as items, beam search must return every item with its exact log-probability."""
    model = tiny_model()
    hist = histories(30)[:2]
    items, scores = beam_search(model, hist, model.trie(), beam=30)
    trie, codes = model.trie(), model.codes
    for u in range(2):
        exact = torch.zeros(30)
        for item in range(1, 31):
            logits = model(hist[u:u + 1], torch.tensor([item]))
            node = torch.zeros(1, dtype=torch.int64)
            for t, lg in enumerate(logits):
                allowed = trie.allowed(t, node)
                logp = torch.log_softmax(lg.masked_fill(~allowed, -torch.inf), -1)
                exact[item - 1] += logp[0, codes[item, t]]
                node = trie.child(t, node, codes[item, t:t + 1])
        assert torch.allclose(scores[u], exact[items[u] - 1], atol=1e-5)
        assert torch.allclose(scores[u], exact.sort(descending=True).values, atol=1e-5)


def test_k_and_beam_limits():
    model = tiny_model(n_items=8)
    items, scores = beam_search(model, histories(8), model.trie(), beam=20, k=12)
    assert items.shape == (5, 12)
    assert ((items[:, :8] > 0) & torch.isfinite(scores[:, :8])).all()
    assert (items[:, 8:] == 0).all() and torch.isinf(scores[:, 8:]).all()
    with pytest.raises(ValueError, match="cannot exceed the beam width"):
        beam_search(model, histories(8), model.trie(), beam=5, k=6)


@pytest.mark.parametrize("beam", [3, 40])
def test_fast_search_equals_the_plain_reference(beam):
    model = tiny_model()
    a_items, a_scores = beam_search(model, histories(30), model.trie(), beam=beam)
    b_items, b_scores = reference_beam_search(model, histories(30), model.trie(), beam)
    width = b_items.shape[1]
    assert torch.equal(a_items[:, :width], b_items)
    assert torch.allclose(a_scores[:, :width], b_scores, atol=1e-5)


def test_leaf_counts_and_branching():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [2, 1, 2]])
    trie = PrefixTrie(codes, SIZES)
    assert trie.leaves[0].tolist() == [4, 0]  # the root, then the dead row
    assert sorted(trie.leaves[1].tolist()[:-1]) == [1, 3] and sorted(trie.leaves[2].tolist()[:-1]) == [1, 1, 2]
    assert trie.branching(1, torch.tensor([0, 1, -1])).tolist() == [True, False, False]


def test_batched_equals_one_user_at_a_time():
    model = tiny_model()
    hist = histories(30)
    items, scores = beam_search(model, hist, model.trie(), beam=6)
    for u in range(len(hist)):
        row = hist[u:u + 1]
        row = row[:, int((row[0] == 0).sum()):]  # the same history without padding
        one_items, one_scores = beam_search(model, row, model.trie(), beam=6)
        assert torch.equal(one_items[0], items[u])
        assert torch.allclose(one_scores[0], scores[u], atol=1e-5)
