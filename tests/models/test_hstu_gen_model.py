"""The decoder-only generator (hstu-gen): shapes, padding invariance, decoding that reads the same states as
teacher forcing, only valid IDs, cold mixing, and a safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from genrec.errors import ConfigError
from genrec.models.base import ModelInputError
from genrec.models.hstu_generator import HSTUGenerator, HSTUGeneratorConfig
from genrec.nn.beam import BOS

N_ITEMS, SIZES = 30, [4, 4, 3]


def codes(seed: int = 0) -> np.ndarray:
    flat = np.random.default_rng(seed).choice(48, N_ITEMS, replace=False)
    body = np.stack([flat // 12, (flat // 3) % 4, flat % 3], axis=1)
    return np.concatenate([np.full((1, 3), -1), body]).clip(min=0)


def model(**kw) -> HSTUGenerator:
    torch.manual_seed(0)
    cfg = HSTUGeneratorConfig(dim=16, blocks=2, heads=2, max_len=6, dropout=0.0, head_hidden=8, beam_width=10, **kw)
    return HSTUGenerator(cfg, codes(), SIZES).eval()


def test_loss_is_a_finite_sum_over_every_target_position():
    m = model(item_loss=0.5).train()
    items = torch.tensor([[3, 4, 5, 0], [7, 8, 0, 0]])
    targets = torch.tensor([[4, 5, 6, 0], [8, 9, 0, 0]])
    loss, n = m.loss(items, torch.tensor([3, 2]), targets)
    assert n == 5 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.head.weight.grad is not None and m.item_emb.weight.grad.abs().sum() > 0
    with pytest.raises(ModelInputError):
        m.loss(items, torch.tensor([3, 2]), targets[:, :3])
    with pytest.raises(ModelInputError):
        m.loss(items, torch.tensor([3, 2]), targets + N_ITEMS)


def test_left_padding_does_not_change_the_encoded_state():
    m = model()
    short = m.encode(torch.tensor([[2, 5, 9]]))[0]
    padded = m.encode(torch.tensor([[0, 0, 0, 2, 5, 9], [0, 0, 0, 0, 0, 4]]))[0]
    assert padded.shape == (2, 1, 16)
    assert torch.allclose(short[0], padded[0], atol=1e-5)


def test_decoding_reads_the_states_teacher_forcing_trains():
    """The step-by-step decoder with the true codes as its beam gives the same level logits as training does at
    the last position (so beam scores are the trained model's probabilities)."""
    m = model()
    history, target = torch.tensor([[2, 5, 9, 11]]), 17
    h = m.hidden(history, torch.tensor([4]))[0, -1]
    truth = m.codes[target]
    written = m.prefix_emb(m.code_tokens(truth))
    prefix = torch.cat([torch.zeros_like(written[:1]), written[:-1].cumsum(0)])
    z = m.level_states(h[None], prefix, torch.arange(3))
    memory_kv = m.memory_kv(m.encode(history)[0])
    caches = m.new_caches()
    token = torch.full((1, 1, 1), BOS)
    for t in range(3):
        state = m.decode(token, t, memory_kv, None, caches)[:, 0, 0]
        assert torch.allclose(m.level_logits(state, t), m.level_logits(z[t], t)[None], atol=1e-5)
        token = m.code_tokens(truth[t:t + 1], t)[None, :, None]


def test_recommend_returns_distinct_valid_items_only():
    m = model()
    history = torch.randint(0, N_ITEMS + 1, (7, 6))
    history[:, -1] = torch.randint(1, N_ITEMS + 1, (7,))
    items, scores = m.recommend(history, k=10)
    assert items.shape == scores.shape == (7, 10)
    assert ((items >= 1) & (items <= N_ITEMS)).all() and torch.isfinite(scores).all()
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all() and (scores <= 0).all()
    with pytest.raises(ModelInputError):
        m.recommend(history + N_ITEMS)


def test_cold_mixing_adds_only_cold_items_sharing_a_beam_prefix():
    m = model(cold_mixing={"epsilon": 0.3})
    m.set_cold_items([1, 2, 3, 4, 5])
    items, _ = m.recommend(torch.tensor([[6, 7, 8]]), k=10, beam=10)
    plain, _ = m.recommend(torch.tensor([[6, 7, 8]]), k=10, beam=10, epsilon=0)
    added = set(items[0].tolist()) - set(plain[0].tolist())
    assert added <= {1, 2, 3, 4, 5} and len(added) <= 3
    with pytest.raises(ConfigError):
        HSTUGenerator(HSTUGeneratorConfig(cold_mixing={"epsilon": 0.1}), codes()[:, :1], SIZES[:1])


def test_weights_round_trip_through_safetensors(tmp_path):
    m = model()
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    other = HSTUGenerator(m.config, np.zeros((N_ITEMS + 1, 3), dtype=np.int64), SIZES).eval()
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    history = torch.tensor([[0, 3, 4, 5], [9, 10, 11, 12]])
    a, b = m.recommend(history, k=5), other.recommend(history, k=5)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.equal(other.codes, m.codes)
