"""GenerativeRanker as served: a request's candidates share one column of time, visible count and context."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.models.ranker_testing import ITEM_CAT, SPEC, TIGHT, USER_AGE, make_batch, stacked, with_row_context

from genrec.models.ranker import GenerativeRanker, RankerConfig


@pytest.mark.parametrize("options", [{}, {"context": ("hour", "gap"), "row_context": ("slot",), "row_bias": True},
                                     {"target_attention": (8,), "history_stats": ("item", "cat")}])
def test_candidates_sharing_one_column_score_as_with_a_column_each(options: dict) -> None:
    """A served request's candidates share their time, visible count and context: passed as one column [B, 1],
    the outputs equal those of the same values repeated per candidate, exactly (micro-batches included)."""
    spec = dataclasses.replace(SPEC, row_feature_sizes={"tab": 4, "slot": 3})
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3, **options), spec,
                             {"cat": ITEM_CAT}, {"age": USER_AGE}).double().eval()
    batch = with_row_context(make_batch(9, length=8), 1)  # max_len 6 < 8: the cap shifts the visible counts
    m = batch.cand_items.shape[1]
    now, seen = batch.cand_time[:, :1], batch.hist_len[:, None]
    ctx = batch.cand_context[:, :1] + (batch.cand_items[:, :1] == 0)[..., None]  # a real code on every row
    repeated = dataclasses.replace(batch, cand_time=now.expand(-1, m), visible=seen.expand(-1, m),
                                   cand_context=ctx.expand(-1, m, -1))
    cache = model.encode_history(repeated)
    for micro_batch in (None, 2):
        want = model.score_candidates(cache, batch.cand_items, repeated.cand_time, repeated.visible, micro_batch,
                                      cand_context=repeated.cand_context)
        got = model.score_candidates(cache, batch.cand_items, now, seen, micro_batch, cand_context=ctx)
        assert torch.equal(stacked(got), stacked(want))
    torch.testing.assert_close(stacked(got), stacked(model(repeated)), **TIGHT)
