"""TIGER encoder-decoder: config validation, token layout, padding invariance, KV-cached decoding giving
the same logits as the full (teacher-forced) decoder, and cold-start mixing (epsilon 0 changes nothing; a cold
item sharing a beam's prefix joins below it; never more than ceil(epsilon * n) cold items in a top n, nothing
outside the catalog, nothing twice, the beams' own items in order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from genrec.errors import ConfigError
from genrec.models.tiger import BOS, N_SPECIAL, PAD, TIGER, TigerConfig
from genrec.nn.beam import beam_search, cold_quota
from genrec.train.config import RunConfig

SIZES = [5, 4, 2]


def model(dropout: float = 0.0, **kw) -> TIGER:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(SIZES)), 20, replace=False)
    codes = np.concatenate([np.full((1, 3), -1), np.stack(np.unravel_index(flat, SIZES), axis=1)])
    cfg = TigerConfig(dim=24, heads=3, head_dim=8, ffn_dim=40, encoder_layers=2, decoder_layers=2, max_len=5,
                      dropout=dropout, **kw)
    return TIGER(cfg, codes, SIZES).eval()


def test_config_validation():
    assert TigerConfig().dim == 128 and TigerConfig().heads == 6 and TigerConfig().max_len == 20
    with pytest.raises(ValidationError):
        TigerConfig(layers=3)  # unknown field
    with pytest.raises(ValidationError):
        TigerConfig(heads=0)
    with pytest.raises(ValidationError):
        TigerConfig(activation="tanh")
    with pytest.raises(ValidationError):
        TigerConfig(dropout=1.0)
    run = RunConfig.model_validate({"dataset": "x", "model": {"name": "tiger", "semantic_ids": "sids"}})
    assert isinstance(run.model, TigerConfig) and run.model.semantic_ids == "sids"
    with pytest.raises(ValidationError):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "tiger", "blocks": 2}})


def test_levels_use_separate_tokens():
    m = model()
    tokens = m.item_tokens(torch.arange(0, 21)[None])[0]  # [21, C]
    assert (tokens[0] == PAD).all()
    for j, size in enumerate(SIZES):
        lo = N_SPECIAL + sum(SIZES[:j])
        assert ((tokens[1:, j] >= lo) & (tokens[1:, j] < lo + size)).all()
    assert m.tok_emb.num_embeddings == N_SPECIAL + sum(SIZES) and BOS < N_SPECIAL


@pytest.mark.parametrize("layout", ["codes", "items"])
def test_padding_and_history_cap_do_not_change_the_output(layout):
    m = model(encoder_tokens=layout)
    hist = torch.tensor([[3, 7, 1]])
    padded = torch.tensor([[0, 0, 3, 7, 1]])
    target = torch.tensor([4])
    for a, b in zip(m(hist, target), m(padded, target), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    long = torch.tensor([[9, 9, 2, 3, 7, 1, 5]])  # only the last max_len = 5 items are read
    for a, b in zip(m(long, target), m(long[:, -5:], target), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("layout", ["codes", "items"])
def test_kv_cached_steps_equal_the_full_decoder(layout):
    m = model(encoder_tokens=layout)
    hist = torch.tensor([[0, 0, 3, 7, 1], [2, 4, 6, 8, 10]])
    targets = torch.tensor([4, 11])
    full = m(hist, targets)  # teacher forcing, no cache
    memory, mask = m.encode(hist)
    kv, caches = m.memory_kv(memory), m.new_caches()
    tokens = torch.full((2, 1, 1), BOS)
    for t in range(len(SIZES)):
        h = m.decode(tokens, t, kv, mask, caches)[:, 0, -1]
        assert torch.allclose(m.level_logits(h, t), full[t], atol=1e-5)
        tokens = m.code_tokens(m.codes[targets][:, t], t)[:, None, None]


def test_item_tokens_layout_reads_one_token_per_item_summing_its_codes():
    m = model(encoder_tokens="items")
    hist = torch.tensor([[0, 0, 3, 7, 1]])
    memory, mask = m.encode(hist)
    assert memory.shape == (1, 5, 24) and mask.tolist() == [[[[False, False, True, True, True]]]]
    codes_memory, codes_mask = model().encode(hist)
    assert codes_memory.shape == (1, 15, 24) and int(codes_mask.sum()) == 9
    # an item's token is the sum of its codes' embeddings: changing one code of one item changes its token
    other = model(encoder_tokens="items")
    other.codes[7, 2] = 1 - other.codes[7, 2]
    assert not torch.allclose(other.encode(hist)[0], memory)
    with pytest.raises(ValidationError):
        TigerConfig(encoder_tokens="words")


@pytest.mark.parametrize("layout", ["codes", "items"])
def test_loss_trains_and_dropout_only_in_train_mode(layout):
    m = model(dropout=0.3, encoder_tokens=layout)
    hist, targets = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([7, 8])
    assert torch.allclose(m.loss(hist, targets), m.loss(hist, targets))  # eval: deterministic
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    first = float(m.loss(hist, targets).detach())
    for _ in range(15):
        opt.zero_grad()
        m.loss(hist, targets).backward()
        opt.step()
    assert float(m.eval().loss(hist, targets).detach()) < first / 3


def test_codes_travel_with_the_weights():
    m = model()
    state = m.state_dict()
    assert torch.equal(state["codes"], m.codes)
    other = TIGER(m.config, np.zeros_like(m.codes.numpy()), SIZES)
    other.load_state_dict(state)
    assert torch.equal(other.codes, m.codes)
    assert other.trie().n_items == 20


# --- cold-start mixing (TIGER section 4.2) -------------------------------------------------------------------

TWIN_SIZES = [5, 4, 2]  # 40 items = every ID: items 2j-1 and 2j share their first two codes


def twin_model(**mixing) -> TIGER:
    torch.manual_seed(0)
    codes = np.stack(np.unravel_index(np.arange(40), TWIN_SIZES), axis=1)
    cfg = TigerConfig(dim=24, heads=3, head_dim=8, ffn_dim=40, encoder_layers=1, decoder_layers=1, max_len=5,
                      dropout=0.0, beam_width=20, cold_mixing=mixing)
    return TIGER(cfg, np.concatenate([np.full((1, 3), -1), codes]), TWIN_SIZES).eval()


def twin(item: int) -> int:
    return item + 1 if item % 2 else item - 1


HIST = torch.tensor([[0, 0, 3, 7, 1], [2, 4, 6, 8, 10], [0, 0, 0, 0, 33], [5, 9, 13, 17, 21]])


def test_cold_mixing_config_is_validated():
    assert TigerConfig().cold_mixing.epsilon == 0.0 and TigerConfig().cold_mixing.prefix is None
    for bad in ({"epsilon": -0.1}, {"epsilon": 1.5}, {"prefix": 0}, {"share": 0.1}):
        with pytest.raises(ValidationError):
            TigerConfig(cold_mixing=bad)
    run = RunConfig.model_validate({"dataset": "x", "model": {"name": "tiger", "cold_mixing": {"epsilon": 0.2}}})
    assert run.model.cold_mixing.epsilon == 0.2
    with pytest.raises(ConfigError, match="prefix"):
        twin_model(epsilon=0.1, prefix=3)  # an item has 3 codes: a prefix is 1 or 2 of them
    m = twin_model(epsilon=0.1)
    assert m.cold_prefix() == 2 and m.cold_prefix(1) == 1
    m.set_cold_items([2])
    with pytest.raises(ValueError, match="epsilon"):
        m.recommend(HIST, k=5, epsilon=1.5)
    with pytest.raises(ValueError, match="cold items"):
        m.set_cold_items([0, 41])


def test_epsilon_zero_changes_nothing():
    plain = twin_model()
    mixed = twin_model(epsilon=0.3)
    for m in (plain, mixed):
        m.set_cold_items(range(2, 41, 3))
    reference = beam_search(plain, HIST, plain.trie(), beam=20, k=10)
    for out in (plain.recommend(HIST, k=10), mixed.recommend(HIST, k=10, epsilon=0)):
        assert torch.equal(out[0], reference[0]) and torch.equal(out[1], reference[1])
    unmarked = twin_model(epsilon=0.3)  # nothing marked cold: nothing to mix
    out = unmarked.recommend(HIST, k=10)
    assert torch.equal(out[0], reference[0]) and torch.equal(out[1], reference[1])


def test_a_cold_item_sharing_the_top_beams_prefix_joins_right_below_it():
    m = twin_model(epsilon=0.2)
    plain, _ = m.recommend(HIST, k=20, epsilon=0)
    top = int(plain[0, 0])
    m.set_cold_items([twin(top)])
    items, scores = m.recommend(HIST[:1], k=10)
    assert items[0, 0] == top and items[0, 1] == twin(top)  # ceil(0.2 * 2) = 1 cold item allowed in the top 2
    assert (items[0] == twin(top)).sum() == 1 and scores[0, 1] < scores[0, 0]
    warm = [i for i in plain[0].tolist() if i != twin(top)]
    assert [i for i in items[0].tolist() if i != twin(top)] == warm[:9]  # the beams' own items, in order
    # prefix 1: every cold item with the top beam's first code is a candidate, in ID order
    first = [i for i in range(1, 41) if m.codes[i, 0] == m.codes[top, 0] and i != top]
    m.set_cold_items(first)
    m2 = twin_model(epsilon=0.3, prefix=1)
    m2.load_state_dict(m.state_dict())
    items1, _ = m2.recommend(HIST[:1], k=10)
    assert items1[0, 0] == top and items1[0, 1] == first[0]
    assert sum(int(i) in first for i in items1[0]) == 3  # ceil(0.3 * 10)


def check_mixed(m: TIGER, plain: torch.Tensor, items: torch.Tensor, scores: torch.Tensor, eps: float, k: int,
                prefix: int) -> None:
    """Every invariant of a mixed top-k against the plain beams it came from."""
    cold = m.cold.numpy()
    for row in range(len(items)):
        got, sc = items[row].tolist(), scores[row].numpy()
        returned = [i for i in got if i > 0]
        assert len(returned) == len(set(returned))  # nothing twice
        assert all(1 <= i <= m.n_items for i in returned)  # only catalog items
        assert np.isfinite(sc[: len(returned)]).all() and np.isinf(sc[len(returned):]).all()
        assert got[: len(returned)] == returned  # the list is contiguous, then padding
        assert (np.diff(sc[: len(returned)]) < 0).all()  # strictly decreasing: a ranking gives the list back
        for n in range(1, k + 1):
            assert sum(cold[i] for i in returned[:n]) <= cold_quota(eps, n)
        beams = [i for i in plain[row].tolist() if i > 0]
        warm_beams = [i for i in beams if not cold[i]]
        warm = [i for i in returned if not cold[i]]
        assert warm == warm_beams[: len(warm)]  # the beams' warm items, in order, none skipped
        for pos, i in enumerate(returned):
            if cold[i] and i not in beams:  # brought by a beam placed before it that shares its prefix
                assert any(torch.equal(m.codes[i, :prefix], m.codes[j, :prefix]) for j in returned[:pos])
        if len(warm_beams) >= k:
            assert len(returned) == k


@pytest.mark.parametrize("eps,k,prefix", [(0.1, 10, None), (0.25, 5, None), (0.5, 10, 1), (1.0, 20, 2),
                                          (0.3, 10, 1)])
def test_mixed_lists_keep_every_invariant(eps, k, prefix):
    m = twin_model(epsilon=eps, prefix=prefix)
    m.set_cold_items(np.random.default_rng(3).choice(np.arange(1, 41), 14, replace=False))
    plain, _ = m.recommend(HIST, k=20, beam=20, epsilon=0)
    items, scores = m.recommend(HIST, k=k, beam=20)
    check_mixed(m, plain, items, scores, eps, k, m.cold_prefix())
    assert m.cold[items].any()  # some cold item made it in
    assert m.cold[items].sum(1).max() <= cold_quota(eps, k)


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(0.01, 1.0), k=st.integers(1, 12), prefix=st.integers(1, 2), seed=st.integers(0, 10_000),
       n_cold=st.integers(0, 40))
def test_mixer_invariants_on_random_beams(eps, k, prefix, seed, n_cold):
    rng = np.random.default_rng(seed)
    m = twin_model()
    m.set_cold_items(rng.choice(np.arange(1, 41), n_cold, replace=False))
    width = int(rng.integers(1, 16))
    plain = torch.from_numpy(np.stack([rng.choice(np.arange(1, 41), width, replace=False) for _ in range(3)]))
    scores = torch.from_numpy(-np.sort(rng.exponential(size=(3, width)), axis=1).astype(np.float32))
    plain[1, width // 2:], scores[1, width // 2:] = 0, -torch.inf  # a user with fewer reachable items
    items, out = m.mix_cold(plain, scores, k, eps, prefix)
    assert items.shape == (3, k) and out.dtype == torch.float32
    check_mixed(m, plain, items, out, eps, k, prefix)


def test_cold_marks_travel_with_the_weights_and_old_weights_load():
    m = twin_model(epsilon=0.2)
    m.set_cold_items([4, 9])
    other = twin_model(epsilon=0.2)
    other.load_state_dict(m.state_dict())
    assert other.cold_items().tolist() == [4, 9]
    old = {k: v for k, v in m.state_dict().items() if k != "cold"}  # saved before the mark existed
    other.load_state_dict(old)
    assert other.cold_items().tolist() == []
    assert torch.equal(other.recommend(HIST, k=10)[0], m.recommend(HIST, k=10, epsilon=0)[0])
