"""The fast beam search (slots for branching beams only, KV cache, fused inference steps) against a plain
reference: the decoder re-run over every beam's whole prefix at every step, every beam decoded, nothing
skipped. Property tests over random models and code tables: the same items with the same scores, and never an
ID that is not an item."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.beam import BOS, PrefixTrie, _search, beam_search


@torch.no_grad()
def reference_beam_search(model, history, trie: PrefixTrie, beam: int, renormalize: bool = True):
    """Beam search as first written: no cache, no skipped beams; items and scores [B, min(beam, ...)]."""
    b = history.shape[0]
    memory, memory_mask = model.encode(history)
    memory_kv = model.memory_kv(memory)
    prefix = torch.full((b, 1, 1), BOS, dtype=torch.int64)
    scores, nodes = torch.zeros(b, 1), torch.zeros(b, 1, dtype=torch.int64)
    for t in range(trie.depth):
        h = model.decode(prefix, 0, memory_kv, memory_mask)[:, :, -1]
        logits = model.level_logits(h, t).float()
        allowed = trie.allowed(t, nodes)
        logp = torch.log_softmax(logits.masked_fill(~allowed, -torch.inf) if renormalize else logits, dim=-1)
        logp = logp.masked_fill(~allowed, -torch.inf)
        size = logp.shape[-1]
        candidates = (scores[:, :, None] + logp).view(b, -1)
        scores, idx = candidates.topk(min(beam, candidates.shape[1]), dim=1)
        parent, code = idx // size, idx % size
        nodes = trie.child(t, nodes.gather(1, parent), code).masked_fill(torch.isinf(scores), -1)
        tokens = model.code_tokens(code, t)[:, :, None]
        prefix = torch.cat([prefix.gather(1, parent[:, :, None].expand(-1, -1, prefix.shape[2])), tokens], 2)
    items = nodes.clamp(min=0)
    return items, scores.masked_fill(items == 0, -torch.inf)


def random_model(sizes: list[int], n_items: int, seed: int, layout: str = "codes") -> TIGER:
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), axis=1).astype(np.int64)
    torch.manual_seed(seed)
    cfg = TigerConfig(dim=16, heads=2, head_dim=8, ffn_dim=32, encoder_layers=1, decoder_layers=2, max_len=5,
                      dropout=0.0, encoder_tokens=layout, init_std=0.5)  # a wide init: peaked, varied logits
    return TIGER(cfg, np.concatenate([np.full((1, len(sizes)), -1), codes]), sizes).eval()


def random_histories(n_items: int, users: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    h = torch.from_numpy(rng.integers(1, n_items + 1, (users, 5)))
    for row in range(users):
        h[row, : int(rng.integers(0, 5))] = 0  # left padding, at least one item
    return h


def assert_same_beams(items, scores, ref_items, ref_scores, atol=1e-4):
    """Equal scores, and equal items wherever the scores are not (near) tied."""
    assert items.shape == ref_items.shape
    assert torch.allclose(scores, ref_scores, atol=atol)  # -inf (no item) only where the reference has it
    for row in range(items.shape[0]):
        for j in range(items.shape[1]):
            if items[row, j] != ref_items[row, j]:  # only a tie may swap two items
                tied = (ref_scores[row] - scores[row, j]).abs() <= atol
                assert int(items[row, j]) in ref_items[row][tied].tolist()


def assert_valid(model: TIGER, items: torch.Tensor, scores: torch.Tensor):
    real = torch.isfinite(scores)
    assert ((items >= 1) & (items <= model.n_items))[real].all()
    assert (items[~real] == 0).all()
    assert torch.equal(model.trie().lookup(model.codes[items[real]]), items[real])  # the ID is the item's
    for row, ok in zip(items.tolist(), real.tolist(), strict=True):
        got = [i for i, r in zip(row, ok, strict=True) if r]
        assert len(set(got)) == len(got)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), fill=st.floats(0.05, 1.0),
       seed=st.integers(0, 10_000), beam=st.integers(1, 12), renormalize=st.booleans(),
       layout=st.sampled_from(["codes", "items"]))
def test_fast_search_equals_the_reference_and_returns_only_items(sizes, fill, seed, beam, renormalize, layout):
    space = int(np.prod(sizes))
    n_items = max(1, int(round(fill * space)))
    model = random_model(sizes, n_items, seed, layout)
    hist = random_histories(n_items, 4, seed)
    items, scores = beam_search(model, hist, model.trie(), beam=beam, renormalize=renormalize)
    ref_items, ref_scores = reference_beam_search(model, hist, model.trie(), beam, renormalize)
    assert_valid(model, items, scores)
    width = min(beam, ref_items.shape[1])
    assert torch.isinf(scores[:, width:]).all()
    assert_same_beams(items[:, :width], scores[:, :width], ref_items[:, :width], ref_scores[:, :width])


def test_beauty_shaped_codes_match_the_reference_in_one_batch_and_one_user_at_a_time():
    """Deep, sparse IDs (most prefixes of length 2 hold one item) where most beams finish early."""
    sizes = [16, 16, 16, 3]
    model = random_model(sizes, 600, seed=3)
    hist = random_histories(600, 6, seed=4)
    ref_items, ref_scores = reference_beam_search(model, hist, model.trie(), 10)
    items, scores = beam_search(model, hist, model.trie(), beam=10)
    assert_same_beams(items, scores, ref_items, ref_scores)
    for u in range(len(hist)):
        row = hist[u:u + 1, int((hist[u] == 0).sum()):]  # unpadded: the encoder runs without a mask
        one_items, one_scores = beam_search(model, row, model.trie(), beam=10)
        assert_same_beams(one_items, one_scores, ref_items[u:u + 1], ref_scores[u:u + 1])


def test_every_beam_decoded_as_on_a_device_gives_the_same_beams():
    """On a device no beam is packed away (no host sync per step): the finished beams' logits change nothing."""
    model = random_model([16, 16, 16, 3], 600, seed=5)
    hist = random_histories(600, 6, seed=6)
    with torch.inference_mode():
        packed = _search(model, hist, model.trie(), 10, True, compact=True)
        every = _search(model, hist, model.trie(), 10, True, compact=False)
    assert_same_beams(every[0], every[1], packed[0], packed[1])
