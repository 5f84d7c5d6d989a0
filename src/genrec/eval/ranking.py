"""Full-catalog ranking of every evaluation case, in bounded-memory batches.

Anything that maps a batch of histories to scores over the catalog can be evaluated: baselines, ID models
and semantic-ID generators are judged by the same code. The order over items is total and deterministic:
higher score first, ties broken by the smaller dense item id.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval.metrics import DEFAULT_KS, metrics_from_ranks, popularity_percentiles
from genrec.progress import progress_bar


class Scorer(Protocol):
    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        """Scores [batch, n_items + 1] for each history (column 0 is padding and ignored); ``timestamps``
        (aligned with ``history``) are given when the data has them."""


@dataclass
class RankingResult:
    ranks: np.ndarray  # 0-based rank of each target; >= n_items means it could not be ranked
    per_case: dict[str, np.ndarray]  # metric -> value per case
    aggregate: dict[str, float]  # catalog coverage@K (not per user)
    info: dict = field(default_factory=dict)


def topk_deterministic(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids and scores per row; among equal scores the smaller id wins, so results never vary."""
    k = min(k, scores.shape[1])
    kth = scores.topk(k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    idx = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: ids ascending within each row
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)


def mask_seen(scores: torch.Tensor, history: Jagged) -> None:
    """Set the score of every item in each row's history to -inf, in place."""
    if len(history.values):
        rows = torch.from_numpy(history.row_ids()).to(scores.device)
        scores[rows, torch.from_numpy(history.values.astype(np.int64)).to(scores.device)] = -torch.inf


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target under the deterministic order (score desc, id asc)."""
    t = scores.gather(1, targets[:, None])
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    return (scores > t).sum(1) + ((scores == t) & (ids < targets[:, None])).sum(1)


def rank_cases(
    scorer: Scorer,
    cases: EvalCases,
    n_items: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    item_counts: np.ndarray | None = None,
    sampled_negatives: int | None = None,
    seed: int = 0,
    max_batch_elements: int = 1 << 24,
    batch_size: int = 256,
    show_progress: bool = True,
) -> RankingResult:
    """Rank each case's target against the whole catalog (or, only when asked, against sampled negatives).

    Memory stays bounded: at most ``max_batch_elements`` scores are held at once.
    """
    ks = sorted(set(int(k) for k in ks))
    n_cols = n_items + 1
    bs = max(1, min(batch_size, max_batch_elements // n_cols))
    max_k = min(max(ks), n_items)
    ranks = np.empty(len(cases), dtype=np.int64)
    unranked = np.zeros(len(cases), dtype=bool)
    top = np.empty((len(cases), max_k), dtype=np.int64)  # 0 marks "nothing recommended here"
    seen_targets = 0
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(len(cases), "ranking", enabled=show_progress) as advance:
        for start in range(0, len(cases), bs):
            rows = np.arange(start, min(start + bs, len(cases)))
            hist = cases.history.take(rows)
            ts = cases.history_timestamps.take(rows) if cases.history_timestamps is not None else None
            with torch.no_grad():
                extra = {"timestamps": ts} if ts is not None else {}
                scores = scorer.score(hist, cases.users[rows], **extra).detach().to(torch.float32).clone()
            targets = torch.from_numpy(cases.targets[rows].astype(np.int64)).to(scores.device)  # rank where scored
            if scores.shape != (len(rows), n_cols):
                raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected {(len(rows), n_cols)}")
            scores = torch.nan_to_num(scores, nan=-torch.inf, neginf=-torch.inf, posinf=torch.inf)
            scores[:, 0] = -torch.inf
            excluded = torch.zeros(len(rows), dtype=torch.bool, device=scores.device)
            if exclude_seen:
                t_before = scores.gather(1, targets[:, None])[:, 0].clone()
                mask_seen(scores, hist)
                excluded = torch.isinf(scores.gather(1, targets[:, None])[:, 0]) & ~torch.isinf(t_before)
                seen_targets += int(excluded.sum())
            # Rank over the item columns only, so the padding column never takes a place (ids shift by one,
            # which keeps the tie order); a -inf item (excluded or NaN) is never counted as recommended.
            top_ids, top_vals = topk_deterministic(scores[:, 1:], max_k)
            top[rows] = torch.where(top_vals == -torch.inf, 0, top_ids + 1).cpu().numpy()
            if sampled_negatives:
                r = _sampled_ranks(scores.cpu(), targets.cpu(), sampled_negatives, gen)
            else:
                r = target_ranks(scores[:, 1:], targets - 1)
            r = torch.where(excluded.to(r.device), torch.full_like(r, n_items), r)
            ranks[rows] = r.cpu().numpy()
            unranked[rows] = excluded.cpu().numpy()
            advance(len(rows))
    per_case = metrics_from_ranks(ranks, ks)
    for values in per_case.values():
        values[unranked] = 0.0  # an excluded target is a miss at every K (even K > n_items), with MRR 0
    aggregate = {}
    pct = popularity_percentiles(item_counts) if item_counts is not None else None
    for k in ks:
        kk = min(k, max_k)
        recommended = np.unique(top[:, :kk])
        aggregate[f"coverage@{k}"] = int(np.count_nonzero(recommended)) / n_items
        if pct is not None:  # mean percentile of the recommended items (pct[0] = 0 for empty slots)
            per_case[f"popularity@{k}"] = pct[top[:, :kk]].sum(axis=1) / np.maximum((top[:, :kk] > 0).sum(1), 1)
    info = {"cases": len(cases), "n_items": n_items, "exclude_seen": exclude_seen,
            "targets_in_history_excluded": seen_targets, "ks": ks,
            "protocol": f"sampled ({sampled_negatives} uniform negatives)" if sampled_negatives else "full catalog"}
    if sampled_negatives:
        warnings.warn(f"sampled metrics ({sampled_negatives} negatives) overstate quality; report full-catalog "
                      "numbers", stacklevel=2)
    return RankingResult(ranks, per_case, aggregate, info)


def _sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, n_neg: int, gen: torch.Generator) -> torch.Tensor:
    """Rank of the target among ``n_neg`` uniform negatives (never the target or an excluded item)."""
    b, n_cols = scores.shape
    draw = torch.randint(1, n_cols, (b, n_neg * 4 + 16), generator=gen)
    valid = (draw != targets[:, None]) & ~torch.isinf(scores.gather(1, draw))
    # Keep the first n_neg valid draws of each row (rows with too few valid draws use what they have).
    keep = valid & (valid.cumsum(1) <= n_neg)
    neg = scores.gather(1, draw)
    t = scores.gather(1, targets[:, None])
    better = (neg > t) | ((neg == t) & (draw < targets[:, None]))
    return (better & keep).sum(1)
