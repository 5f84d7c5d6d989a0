"""Shared pieces of the GenerativeRanker tests: a tiny spec and feature tables, a seeded model, generated request
batches, and the check that the cached pass is exact and reads only each candidate's visible history."""

from __future__ import annotations

import dataclasses

import torch

from genrec.models.ranker import GenerativeRanker, RankerConfig
from genrec.models.ranking import RankBatch, RankSpec

N_ITEMS, N_USERS = 30, 8
SPEC = RankSpec(n_items=N_ITEMS, n_users=N_USERS, binary_tasks=("click", "like"), regression_tasks=("watch",),
                item_feature_sizes={"cat": 5}, user_feature_sizes={"age": 4}, action_sizes={"clicked": 3, "liked": 3})
ITEM_CAT = torch.tensor([0] + [1 + i % 4 for i in range(N_ITEMS)])
USER_AGE = torch.tensor([0] + [1 + u % 3 for u in range(N_USERS)])
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def make_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> GenerativeRanker:
    torch.manual_seed(seed)
    cfg = {"dim": 16, "heads": 2, "blocks": 2, "max_len": 16, "dropout": 0.0, "init_std": 0.3, **overrides}
    model = GenerativeRanker(RankerConfig(**cfg), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    with torch.no_grad():  # the relative bias starts at zero; random weights make positions and gaps matter
        for block in model.blocks:
            block.rab.pos.normal_(std=0.5)
            block.rab.time.normal_(std=0.5)
    return model.to(dtype).eval()


def make_batch(seed: int, b: int = 4, length: int = 7, m: int = 5) -> RankBatch:
    """Right-padded histories (one empty, one full) and candidates (varied counts), sorted ms timestamps."""
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(1, length + 1, (b,), generator=g)
    hist_len[0], hist_len[-1] = length, 0
    real = torch.arange(length)[None, :] < hist_len[:, None]
    hist_items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g) * real
    actions = torch.randint(1, 3, (b, length, 2), generator=g) * real[..., None]
    gaps = torch.randint(1, 10**7, (b, length), generator=g)
    hist_time = (1_600_000_000_000 + gaps.cumsum(1)) * real
    n_cand = torch.randint(1, m + 1, (b,), generator=g)
    n_cand[0] = m
    cand_real = torch.arange(m)[None, :] < n_cand[:, None]
    cand_items = torch.randint(1, N_ITEMS + 1, (b, m), generator=g) * cand_real
    cand_time = hist_time.max(1).values[:, None] + torch.randint(0, 10**8, (b, m), generator=g)
    visible = (torch.rand(b, m, generator=g) * (hist_len[:, None] + 1)).long()
    visible[0, 0] = hist_len[0]
    return RankBatch(user=torch.randint(0, N_USERS + 1, (b,), generator=g), hist_items=hist_items,
                     hist_actions=actions, hist_time=hist_time, hist_len=hist_len, cand_items=cand_items,
                     cand_time=cand_time, visible=visible)


def replace(batch: RankBatch, **fields) -> RankBatch:
    values = {f: getattr(batch, f).clone() for f in ("user", "hist_items", "hist_actions", "hist_time",
                                                     "hist_len", "cand_items", "cand_time", "visible")}
    values.update(fields)
    return RankBatch(**values)


def stacked(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([out[t] for t in SPEC.tasks], dim=-1)  # [B, M, T]


def assert_exact_and_prefix_only(model: GenerativeRanker, edit) -> None:
    """The cached pass (whole and one candidate per micro-batch) equals the one-by-one pass, and with row 0's
    candidates reading history tokens < 5, ``edit(batch, j)`` of token 5 changes nothing there, of token 4 does."""
    batch = make_batch(9, length=8)
    out = model(batch)
    torch.testing.assert_close(stacked(out), stacked(model.score_one_by_one(batch)), **TIGHT)
    one = model.score_candidates(model.encode_history(batch), batch.cand_items, batch.cand_time, batch.visible,
                                 micro_batch=1)
    torch.testing.assert_close(stacked(one), stacked(out), **TIGHT)
    short = dataclasses.replace(batch, visible=batch.visible.clamp(max=5))
    base = stacked(model(short))[0]
    for j, changes in ((5, False), (4, True)):
        assert torch.allclose(stacked(model(edit(short, j)))[0], base) is not changes


def with_row_context(batch: RankBatch, seed: int) -> RankBatch:
    """``batch`` plus random codes of two row features (0 on padding): tab (4 codes) and slot (3 codes)."""
    g = torch.Generator().manual_seed(seed)

    def codes(items: torch.Tensor) -> torch.Tensor:
        tab, slot = (torch.randint(1, n, items.shape, generator=g) for n in (4, 3))
        return torch.stack([tab, slot], -1) * (items > 0)[..., None]

    hist, cand = codes(batch.hist_items), codes(batch.cand_items)
    return dataclasses.replace(batch, hist_context=hist, cand_context=cand)
