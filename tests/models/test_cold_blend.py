"""ColdBlend: an ID model's scores for trained items, content-based scores for items absent from training, and the
validation grid that chooses the blend, checked against the evaluation's own ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.errors import ConfigError, DataError
from genrec.eval import rank_cases
from genrec.models.cold_blend import ColdBlend, ColdBlendConfig
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.train.cold_blend import blend_grid, select_blend

N_ITEMS, DIM, COLD = 60, 8, np.array([4, 17, 33, 41, 58])


def _setup(seed: int = 0, with_codes: bool = True):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = HSTU(HSTUConfig(dim=16, blocks=1, max_len=12, dropout=0.0), N_ITEMS).eval()
    content = rng.normal(size=(N_ITEMS + 1, DIM)).astype(np.float32)
    warm = np.setdiff1d(np.arange(1, N_ITEMS + 1), COLD)
    train = Jagged.from_lists([list(rng.choice(warm, size=8)) for _ in range(40)])
    codes = np.concatenate([np.full((1, 2), -1), rng.integers(0, 4, size=(N_ITEMS, 2))]) if with_codes else None
    blend = ColdBlend(ColdBlendConfig(prior_weight=0.5 if with_codes else 0.0), model, content, codes)
    hist = [list(rng.choice(warm, size=rng.integers(0, 6))) for _ in range(80)]
    targets = np.where(rng.random(80) < 0.4, rng.choice(COLD, 80), rng.choice(warm, 80))
    cases = EvalCases(np.arange(80), Jagged.from_lists(hist), targets.astype(np.int64))
    return blend.fit(train, N_ITEMS), model, cases


def test_trained_items_keep_the_id_model_scores_and_cold_items_follow_the_rule():
    blend, model, cases = _setup()
    assert blend.cold_.tolist() == COLD.tolist()
    s = blend.score(cases.history, cases.users)
    ref = model.score(cases.history)
    warm = np.setdiff1d(np.arange(1, N_ITEMS + 1), COLD)
    assert torch.allclose(s[:, warm], ref[:, warm], atol=1e-5)
    _, mu, sigma, z_emb, z_all = blend.components(cases.history)
    z_cos = z_all[:, COLD]
    c = blend.config
    expect = mu + sigma * (c.offset + c.spread * ((1 - c.embedding_share) * z_cos + c.embedding_share * z_emb)
                           + c.prior_weight * blend.prior_[None, :])
    assert torch.allclose(s[:, COLD], expect, atol=1e-5)
    assert torch.allclose(mu[:, 0], ref[:, warm].mean(1), atol=1e-4)
    knn = blend.knn_.score(cases.history, cases.users)
    assert torch.allclose(z_all, (knn - blend.cos_stats_[0]) / blend.cos_stats_[1], atol=1e-5)  # fixed constants
    assert abs(float(blend.prior_.mean())) < 1e-5  # standardised over the cold items
    boosted = blend.with_config(c.model_copy(update={"warm_content": 0.5})).score(cases.history, cases.users)
    assert torch.allclose(boosted[:, warm], ref[:, warm] + 0.5 * sigma * z_all[:, warm], atol=1e-4)
    assert torch.allclose(boosted[:, COLD], s[:, COLD])


@pytest.mark.parametrize("with_codes", [True, False])
def test_grid_matches_the_evaluation_at_every_checked_point(with_codes):
    blend, _, cases = _setup(1, with_codes)
    grid = blend_grid(blend, cases, k=10, shares=(0.0, 0.7), spreads=(1.0, 2.5), priors=(0.0, 0.8),
                      offsets=(-0.5, 1.0, 2.5), warm_content=(0.0, 0.6))
    cold_case = np.isin(cases.targets, COLD)
    assert grid.cases == {"cold": int(cold_case.sum()), "warm": int((~cold_case).sum())}
    for g, (lam, share, spread, prior) in enumerate(grid.points):
        for o, offset in enumerate(grid.offsets):
            cfg = blend.config.model_copy(update={"embedding_share": share, "spread": spread, "prior_weight": prior,
                                                  "offset": offset, "warm_content": lam})
            r = rank_cases(blend.with_config(cfg), cases, N_ITEMS, ks=[10], show_progress=False)
            for part, mask in (("cold", cold_case), ("warm", ~cold_case)):
                assert grid.hits[part][g, o] == pytest.approx(r.per_case["hr@10"][mask].sum())
                assert grid.ndcg[part][g, o] == pytest.approx(r.per_case["ndcg@10"][mask].sum(), abs=1e-6)
    alone = rank_cases(blend.id_model, cases, N_ITEMS, ks=[10], show_progress=False)
    # the ID model alone ranks cold items by noise rows; the unmixed count has none in the lists at all
    no_cold = blend.with_config(blend.config.model_copy(update={"offset": -1e4}))
    r = rank_cases(no_cold, cases, N_ITEMS, ks=[10], show_progress=False)
    assert grid.unmixed_warm_hits == pytest.approx(r.per_case["hr@10"][~cold_case].sum())
    assert alone.per_case["hr@10"].shape == (len(cases),)


def test_selection_keeps_the_warm_budget_on_validation():
    blend, _, cases = _setup(2)
    chosen, report = select_blend(blend, cases, max_warm_loss=0.0)
    assert report["valid_warm_hr@10"] >= report["valid_warm_hr@10_id_model_alone"] - 1e-12
    r = rank_cases(chosen, cases, N_ITEMS, ks=[10], show_progress=False)
    cold_case = np.isin(cases.targets, COLD)
    assert r.per_case["hr@10"][cold_case].mean() == pytest.approx(report["valid_cold_hr@10"])
    assert chosen.config.offset == report["chosen"]["offset"]
    loose, rep2 = select_blend(blend, cases, max_warm_loss=0.5)
    assert rep2["valid_cold_hr@10"] >= report["valid_cold_hr@10"]  # a looser budget never finds fewer cold hits
    _, rep3 = select_blend(blend, cases, objective="overall")
    assert rep3["valid_ndcg@10"] >= report["valid_ndcg@10"] - 1e-12
    _, rep4 = select_blend(blend, cases, warm_sample=10)
    assert rep4["cases"] == {"cold": int(cold_case.sum()), "warm": 10}


def test_errors():
    blend, model, cases = _setup()
    with pytest.raises(ConfigError, match="trained ID model"):
        ColdBlend().fit(Jagged.from_lists([[1, 2]]), N_ITEMS)
    with pytest.raises(DataError, match="no cold items"):
        ColdBlend(id_model=model, embeddings=np.ones((N_ITEMS + 1, 3), np.float32)).fit(
            Jagged.from_lists([list(range(1, N_ITEMS + 1))]), N_ITEMS)
    with pytest.raises(ConfigError, match="max_warm_loss"):
        select_blend(blend, cases, max_warm_loss=1.5)
    with pytest.raises(ConfigError, match="warm_content"):
        blend_grid(blend, cases, warm_content=(0.5,))
    with pytest.raises(ConfigError, match="objective"):
        select_blend(blend, cases, objective="best")
    with pytest.raises(ConfigError, match="use_prior"):
        select_blend(ColdBlend(id_model=model, embeddings=blend.embeddings).fit(
            Jagged.from_lists([[1, 2, 3]]), N_ITEMS), cases, use_prior=True)
