"""Prompt-conditioned generation (model.query): the query token's shapes, that a query changes decoding and
training learns to use it, that decoding never leaves the catalog, and that the weights round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from genrec.errors import ConfigError
from genrec.models.base import ModelInputError
from genrec.models.tiger import TIGER, TigerConfig
from genrec.models.tiger_query import QueryConditioning, item_query_table, training_queries

SIZES = [5, 4, 2]
QDIM = 6


def codes() -> np.ndarray:
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(SIZES)), 20, replace=False)
    return np.concatenate([np.full((1, 3), -1), np.stack(np.unravel_index(flat, SIZES), axis=1)])


def model(query: QueryConditioning | None = QueryConditioning(dim=QDIM), layout: str = "items", **kw) -> TIGER:
    torch.manual_seed(0)
    cfg = TigerConfig(dim=24, heads=3, head_dim=8, ffn_dim=40, encoder_layers=2, decoder_layers=2, max_len=5,
                      dropout=0.0, encoder_tokens=layout, query=query, **kw)
    return TIGER(cfg, codes(), SIZES).eval()


def table(n: int = 20) -> torch.Tensor:
    v = np.random.default_rng(1).normal(size=(n + 1, QDIM)).astype(np.float32)
    v[0] = 0
    return item_query_table(v)


def test_config_is_typed_and_off_by_default():
    assert TigerConfig().query is None
    with pytest.raises(ValidationError):
        QueryConditioning(prob=1.5)
    with pytest.raises(ValidationError):
        QueryConditioning(weight=1)  # unknown field
    with pytest.raises(ConfigError, match="query.dim"):
        model(QueryConditioning())
    assert not any(n.startswith("query_token") for n in model(None).state_dict())


@pytest.mark.parametrize("layout", ["codes", "items"])
def test_the_query_is_one_more_encoder_token(layout):
    m = model(layout=layout)
    hist = torch.tensor([[0, 1, 2], [3, 4, 5]])
    memory, mask = m.encode(hist)
    q_memory, q_mask = m.encode(hist, table()[[7, 0]])  # row 1: a zero vector, i.e. no query
    assert q_memory.shape == (2, memory.shape[1] + 1, 24) and q_mask.shape == (2, 1, 1, memory.shape[1] + 1)
    assert q_mask[:, 0, 0, 0].tolist() == [True, False]
    # a masked-out query token changes nothing for the history's tokens
    assert torch.allclose(q_memory[1, 1:], memory[1], atol=1e-5)
    assert not torch.allclose(q_memory[0, 1:], memory[0], atol=1e-3)
    logits = m(hist, torch.tensor([7, 8]), table()[[7, 0]])
    assert [lg.shape for lg in logits] == [(2, s) for s in SIZES]


def test_bad_queries_are_refused():
    hist = torch.tensor([[1, 2]])
    with pytest.raises(ModelInputError, match="without query conditioning"):
        model(None).recommend(hist, k=3, query=torch.zeros(1, QDIM))
    with pytest.raises(ModelInputError, match=r"\[batch 1, 6\]"):
        model().recommend(hist, k=3, query=torch.zeros(1, QDIM + 1))
    with pytest.raises(ModelInputError, match="finite"):
        model().recommend(hist, k=3, query=torch.full((1, QDIM), float("nan")))


def test_no_query_decodes_as_before_and_a_query_changes_decoding_after_training():
    m = model()
    tab = table()
    # train: the target is a fixed item unless a query names another one
    hist = torch.tensor([[1, 2, 3]] * 16)
    targets = torch.tensor([4] * 8 + list(range(5, 13)))
    query = torch.cat([torch.zeros(8, QDIM), tab[5:13]])
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    m.train()
    for _ in range(150):
        opt.zero_grad()
        m.loss(hist, targets, query).backward()
        opt.step()
    m.eval()
    plain, _ = m.recommend(hist[:1], k=5, beam=10)
    zero, _ = m.recommend(hist[:1], k=5, beam=10, query=torch.zeros(1, QDIM))
    assert plain[0, 0] == 4 and torch.equal(plain, zero)  # a zero vector is no query
    asked, scores = m.recommend(hist[:8], k=5, beam=10, query=tab[5:13])
    assert asked[:, 0].tolist() == list(range(5, 13))  # each query's item comes first
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("slate", [None, 1])
def test_conditioned_decoding_only_returns_catalog_items(slate):
    m = model(slate={"prefix": slate} if slate else {})
    g = torch.Generator().manual_seed(0)
    hist = torch.randint(0, 21, (12, 5), generator=g)
    hist[:, -1] = torch.randint(1, 21, (12,), generator=g)
    items, scores = m.recommend(hist, k=8, beam=8, query=torch.randn(12, QDIM, generator=g))
    found = items[torch.isfinite(scores)]
    assert ((found >= 1) & (found <= 20)).all()
    for row in items.tolist():
        real = [i for i in row if i]
        assert len(set(real)) == len(real)  # every beam a distinct item


def test_an_empty_history_with_a_query_decodes_from_the_query():
    m = model()
    items, scores = m.recommend(torch.zeros(2, 3, dtype=torch.int64), k=4, beam=4, query=table()[[3, 9]])
    assert torch.isfinite(scores).all() and (items > 0).all()
    assert not torch.equal(items[0], items[1])


def test_safetensors_roundtrip(tmp_path):
    m = model()
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    other = TIGER(TigerConfig.model_validate(m.config.model_dump(mode="json")), np.zeros_like(codes()), SIZES)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    other.eval()
    hist, q = torch.tensor([[1, 2, 3]]), table()[[6]]
    assert torch.equal(m.recommend(hist, k=5, query=q)[0], other.recommend(hist, k=5, query=q)[0])
    assert torch.allclose(m.recommend(hist, k=5, query=q)[1], other.recommend(hist, k=5, query=q)[1])


def test_training_queries_are_noised_targets_or_none():
    tab = table()
    cfg = QueryConditioning(dim=QDIM, prob=0.5, noise=0.3)
    targets = torch.arange(1, 21).repeat(50)
    q = training_queries(tab, targets, cfg, torch.Generator().manual_seed(0))
    present = (q != 0).any(dim=1)
    assert 0.4 < float(present.float().mean()) < 0.6
    assert torch.allclose(q[present].norm(dim=1), torch.ones(int(present.sum())), atol=1e-5)
    cos = (q[present] * tab[targets[present]]).sum(dim=1)
    assert float(cos.mean()) > 0.8 and float(cos.min()) < 0.9999  # close to the target, not equal
    exact = training_queries(tab, targets, QueryConditioning(dim=QDIM, prob=1.0, noise=0.0),
                             torch.Generator().manual_seed(0))
    assert torch.allclose(exact, tab[targets])
