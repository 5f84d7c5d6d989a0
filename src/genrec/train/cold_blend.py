"""Choosing a cold blend's weights (:class:`genrec.models.cold_blend.ColdBlend`) on validation cases only.

Every grid point is scored exactly, without a [cases, items] matrix per point: a case whose target is a trained
item moves down only by the cold items that overtake it, and a cold target only by the trained items above its
blended score, so each point costs a sort-free search over one sorted row per case. The rank convention is the
evaluation's (higher score first, ties to the smaller id); a tie between a trained and a cold item (measure zero
for these real-valued scores) is not split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from genrec.data.splits import EvalCases
from genrec.errors import ConfigError, DataError
from genrec.eval.retrieval import mask_seen
from genrec.models.cold_blend import ColdBlend

OFFSETS = tuple(float(x) for x in np.arange(-2.0, 6.01, 0.25))
SPREADS = (0.5, 1.0, 2.0)
SHARES = (0.0, 0.5, 1.0)
PRIORS = (0.0, 0.5)
WARM_CONTENT = (0.0, 0.25, 0.5, 1.0)


@dataclass
class BlendGrid:
    """Validation sums over cases at every point: ``points`` [(warm_content, share, spread, prior_weight)] x
    ``offsets``."""

    points: list[tuple[float, float, float, float]]
    offsets: tuple[float, ...]
    hits: dict[str, np.ndarray]  # "cold" / "warm" -> [points, offsets] summed HR@k
    ndcg: dict[str, np.ndarray]
    cases: dict[str, int]
    unmixed_warm_hits: float  # trained-item targets' HR@k with no cold item in any list


def _rows(sorted_rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """How many entries of each sorted row are strictly above each of that row's ``values`` [B, G]."""
    return sorted_rows.shape[1] - torch.searchsorted(sorted_rows.contiguous(), values.contiguous(), right=True)


def blend_grid(model: ColdBlend, cases: EvalCases, k: int = 10, shares=SHARES, spreads=SPREADS,
               priors=PRIORS, offsets=OFFSETS, warm_content=WARM_CONTENT, batch_size: int = 256) -> BlendGrid:
    """HR@k and NDCG@k sums of ``cases`` (seen items excluded) at every grid point of the blend."""
    if len(cases) == 0:
        raise DataError("no validation cases to choose the cold blend on")
    if 0.0 not in warm_content:
        raise ConfigError("warm_content must include 0 (the ID model's own list is the warm reference)")
    inner = list(itertools.product(shares, spreads, priors))
    points = [(lam, *p) for lam in warm_content for p in inner]
    off = torch.tensor(offsets, dtype=torch.float32)
    hits = {p: np.zeros((len(points), len(off))) for p in ("cold", "warm")}
    ndcg = {p: np.zeros((len(points), len(off))) for p in ("cold", "warm")}
    n = {"cold": 0, "warm": 0}
    unmixed = 0.0
    cold_pos = {int(c): j for j, c in enumerate(model.cold_.tolist())}
    col = torch.arange(len(model.cold_))  # cold items are sorted by id, so position order is id order
    for start in range(0, len(cases), batch_size):
        rows = np.arange(start, min(start + batch_size, len(cases)))
        hist = cases.history.take(rows)
        ts = cases.history_timestamps.take(rows) if cases.history_timestamps is not None else None
        scores, mu, sigma, z_emb, z_all = model.components(hist, ts)
        mask_seen(scores, hist)
        seen = torch.zeros_like(scores, dtype=torch.bool)
        mask_seen_bool(seen, hist)
        seen_cold = seen[:, model.cold_]
        z_cos = z_all[:, model.cold_]
        t = torch.from_numpy(cases.targets[rows].astype(np.int64))
        is_cold = model.is_cold_[t] & (t > 0)
        wr, cr = torch.nonzero(~is_cold)[:, 0], torch.nonzero(is_cold)[:, 0]
        pos = torch.tensor([cold_pos[int(x)] for x in t[cr]], dtype=torch.int64)
        valid_c = ~seen_cold[cr, pos]
        n["warm"] += len(wr)
        n["cold"] += len(cr)
        ms_by_inner = {}
        for li, lam in enumerate(warm_content):
            zw = (scores - mu) / sigma + lam * z_all  # -inf (cold, seen, padding) stays -inf
            t_z = zw[wr, t[wr]]
            warm_above = (zw[wr] > t_z[:, None]).sum(1)
            valid_w = torch.isfinite(t_z)  # a seen target is a miss at every point
            if lam == 0:
                unmixed += float(((warm_above < k) & valid_w).sum())
            zw_sorted = torch.sort(zw[cr], dim=1).values
            for j, (share, spread, prior) in enumerate(inner):
                g = li * len(inner) + j
                if j not in ms_by_inner:
                    m = spread * ((1 - share) * z_cos + share * z_emb) + prior * model.prior_[None, :]
                    m = torch.where(seen_cold, -torch.inf, m)
                    ms_by_inner[j] = (m, torch.sort(m[wr], dim=1).values)
                m, ms = ms_by_inner[j]
                rank_w = warm_above[:, None] + _rows(ms, t_z[:, None] - off[None, :])
                m_t = m[cr, pos]
                m_c = m[cr]  # cold items tied with the target (e.g. an empty history) go first by smaller id
                before = (m_c > m_t[:, None]) | ((m_c == m_t[:, None]) & (col[None, :] < pos[:, None]))
                rank_c = before.sum(1)[:, None] + _rows(zw_sorted, m_t[:, None] + off[None, :])
                for part, rank, ok in (("warm", rank_w, valid_w), ("cold", rank_c, valid_c)):
                    hit = (rank < k) & ok[:, None]
                    hits[part][g] += hit.sum(0).numpy()
                    ndcg[part][g] += (hit / torch.log2(rank.to(torch.float64) + 2)).sum(0).numpy()
    return BlendGrid(points, tuple(offsets), hits, ndcg, n, unmixed)


def mask_seen_bool(seen: torch.Tensor, history) -> None:
    """Mark every item of each row's history in a [B, n_items + 1] bool matrix, in place."""
    if len(history.values):
        seen[torch.from_numpy(history.row_ids()), torch.from_numpy(history.values.astype(np.int64))] = True


def select_blend(model: ColdBlend, cases: EvalCases, *, objective: Literal["cold_recall", "overall"] = "cold_recall",
                 max_warm_loss: float = 0.03, k: int = 10, use_prior: bool | None = None,
                 warm_sample: int | None = None, seed: int = 0,
                 grid: BlendGrid | None = None) -> tuple[ColdBlend, dict[str, Any]]:
    """The blend of ``model`` at the grid point chosen on validation ``cases``, and what was chosen and why.

    ``cold_recall``: the most cold-target hits at k among the points that keep the trained-item targets' HR@k
    within ``max_warm_loss`` (a fraction) of the ID model's alone; ``overall``: the best NDCG@k over all cases.
    Ties go to the better overall NDCG@k. ``use_prior`` (default: when the model has semantic IDs) adds the
    fresh-item prior's weights to the grid. ``warm_sample``: every cold-target case but only a uniform sample
    (``seed``) of this many of the others (rates per part stay unbiased; the search gets faster)."""
    if not 0 <= max_warm_loss < 1:
        raise ConfigError(f"max_warm_loss must be in [0, 1), got {max_warm_loss}")
    use_prior = model.codes is not None if use_prior is None else use_prior
    if use_prior and model.codes is None:
        raise ConfigError("use_prior needs a ColdBlend with semantic IDs (codes)")
    if grid is None:
        cold_case = model.is_cold_[torch.from_numpy(cases.targets.astype(np.int64))].numpy() & (cases.targets > 0)
        warm_rows = np.flatnonzero(~cold_case)
        if warm_sample is not None and warm_sample < len(warm_rows):
            warm_rows = np.random.default_rng(seed).choice(warm_rows, warm_sample, replace=False)
        cases = cases.take(np.sort(np.concatenate([np.flatnonzero(cold_case), warm_rows])))
        grid = blend_grid(model, cases, k=k, priors=PRIORS if use_prior else (0.0,))
    total_ndcg = grid.ndcg["cold"] + grid.ndcg["warm"]
    if objective == "overall":
        allowed = np.ones_like(total_ndcg, bool)
        goal = total_ndcg
    elif objective == "cold_recall":
        allowed = grid.hits["warm"] >= (1 - max_warm_loss) * grid.unmixed_warm_hits - 1e-9
        goal = grid.hits["cold"] + total_ndcg / (1 + total_ndcg.max())  # cold hits first, then overall NDCG
    else:
        raise ConfigError(f"objective must be 'cold_recall' or 'overall', got {objective!r}")
    if not allowed.any():
        raise DataError("no grid point keeps the trained-item targets within max_warm_loss; raise it")
    g, o = np.unravel_index(np.argmax(np.where(allowed, goal, -np.inf)), goal.shape)
    lam, share, spread, prior = grid.points[g]
    config = model.config.model_copy(update={"offset": grid.offsets[o], "spread": spread, "warm_content": lam,
                                             "embedding_share": share, "prior_weight": prior})
    nc, nw = max(grid.cases["cold"], 1), max(grid.cases["warm"], 1)
    report = {"objective": objective, "max_warm_loss": max_warm_loss, "k": k, "grid_points": int(goal.size),
              "warm_sample": warm_sample, "sample_seed": seed,
              "cases": grid.cases, "chosen": {"offset": grid.offsets[o], "spread": spread, "embedding_share": share,
                                              "prior_weight": prior, "warm_content": lam},
              f"valid_cold_hr@{k}": grid.hits["cold"][g, o] / nc, f"valid_warm_hr@{k}": grid.hits["warm"][g, o] / nw,
              f"valid_hr@{k}": (grid.hits["cold"][g, o] + grid.hits["warm"][g, o]) / (nc + nw),
              f"valid_ndcg@{k}": total_ndcg[g, o] / (nc + nw),
              f"valid_warm_hr@{k}_id_model_alone": grid.unmixed_warm_hits / nw}
    return model.with_config(config), report
