"""TIGER encoder-decoder: config validation, token layout, padding invariance, and KV-cached decoding giving
the same logits as the full (teacher-forced) decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from genrec.models.tiger import BOS, N_SPECIAL, PAD, TIGER, TigerConfig
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


def test_padding_and_history_cap_do_not_change_the_output():
    m = model()
    hist = torch.tensor([[3, 7, 1]])
    padded = torch.tensor([[0, 0, 3, 7, 1]])
    target = torch.tensor([4])
    for a, b in zip(m(hist, target), m(padded, target), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    long = torch.tensor([[9, 9, 2, 3, 7, 1, 5]])  # only the last max_len = 5 items are read
    for a, b in zip(m(long, target), m(long[:, -5:], target), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_kv_cached_steps_equal_the_full_decoder():
    m = model()
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


def test_loss_trains_and_dropout_only_in_train_mode():
    m = model(dropout=0.3)
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
