"""Retrieval evaluation: full-catalog ranking of every evaluation case, in bounded-memory batches.

Anything that maps a batch of histories to scores over the catalog can be evaluated: baselines, ID models
and semantic-ID generators are judged by the same code. The order over items is total and deterministic:
higher score first, ties broken by the smaller dense item id.

Scorers that expose item embeddings, global scores or sparse scores are ranked exactly without a
[cases, items] matrix (:mod:`genrec.eval.fast`); every other scorer through its dense ``score``. Under
``torch.distributed``, ``distributed=True`` splits the cases across ranks and gathers the per-case results, so
every rank gets what one process would.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval.fast import BatchRanks, fast_kind, rank_batches
from genrec.eval.metrics import DEFAULT_KS, metrics_from_ranks, popularity_percentiles
from genrec.eval.topk import topk_deterministic
from genrec.progress import progress_bar

__all__ = ["RetrievalResult", "Scorer", "mask_seen", "rank_cases", "target_ranks", "topk_deterministic"]


class Scorer(Protocol):
    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        """Scores [batch, n_items + 1] for each history (column 0 is padding and ignored); ``timestamps``
        (aligned with ``history``) are given when the data has them."""


@dataclass
class RetrievalResult:
    ranks: np.ndarray  # 0-based rank of each target; >= n_items means it could not be ranked
    per_case: dict[str, np.ndarray]  # metric -> value per case
    aggregate: dict[str, float]  # catalog coverage@K (not per user)
    info: dict = field(default_factory=dict)


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
    batch_size: int | None = None,
    item_block: int | None = None,
    fast: bool = True,
    distributed: bool = False,
    show_progress: bool = True,
) -> RetrievalResult:
    """Rank each case's target against the whole catalog (or, only when asked, against sampled negatives).

    Memory stays bounded: at most ``max_batch_elements`` scores are held at once. ``batch_size`` (cases per
    batch) and ``item_block`` (items per score block) default to what suits the path taken; ``fast=False`` forces
    the dense path. With ``distributed`` (every rank must call), each rank of an initialised process group ranks
    a contiguous share of the cases and all ranks return the gathered result, the same as one process gives
    (sampled negatives come from one random stream, so that protocol is not split).
    """
    ks = sorted(set(int(k) for k in ks))
    max_k = min(max(ks), n_items)
    kind = fast_kind(scorer) if fast and not sampled_negatives else None
    start, stop, world = _share(len(cases), distributed and not sampled_negatives)
    local = cases.take(np.arange(start, stop)) if world > 1 else cases
    pct = popularity_percentiles(item_counts) if item_counts is not None else None
    tally = _Tally(len(local), ks, max_k, n_items, pct)
    if kind is not None:
        batches = rank_batches(scorer, kind, local, n_items, max_k, exclude_seen, batch_size, item_block,
                               max_batch_elements)
    else:
        batches = _dense_batches(scorer, local, n_items, max_k, exclude_seen, sampled_negatives, seed,
                                 max_batch_elements, batch_size or 256)
    clock, done = time.perf_counter(), 0
    with progress_bar(len(local), "ranking", enabled=show_progress and _rank() == 0) as advance:
        for batch in batches:
            tally.add(batch)
            done += len(batch.rows)
            rate = done * n_items * world / max(time.perf_counter() - clock, 1e-9)
            advance(len(batch.rows), f"ranking ({rate:,.0f} user-item pairs/s)")
    if world > 1:
        tally = tally.gathered()
    per_case = metrics_from_ranks(tally.ranks, ks)
    for values in per_case.values():
        values[tally.unranked] = 0.0  # an excluded target is a miss at every K (even K > n_items), with MRR 0
    aggregate = {}
    for k in ks:
        aggregate[f"coverage@{k}"] = int(np.count_nonzero(tally.covered[k][1:])) / n_items
        if pct is not None:
            per_case[f"popularity@{k}"] = tally.popularity[k]
    info = {"cases": len(cases), "n_items": n_items, "exclude_seen": exclude_seen,
            "targets_in_history_excluded": int(tally.unranked.sum()), "ks": ks,
            "protocol": f"sampled ({sampled_negatives} uniform negatives)" if sampled_negatives else "full catalog"}
    if sampled_negatives:
        warnings.warn(f"sampled metrics ({sampled_negatives} negatives) overstate quality; report full-catalog "
                      "numbers", stacklevel=2)
    return RetrievalResult(tally.ranks, per_case, aggregate, info)


class _Tally:
    """Per-case ranks, exclusions and popularity@K, and the items recommended at each K, filled batch by batch."""

    def __init__(self, n_cases: int, ks: list[int], max_k: int, n_items: int, pct: np.ndarray | None) -> None:
        self.ks, self.max_k, self.n_items, self.pct = ks, max_k, n_items, pct
        self.ranks = np.empty(n_cases, dtype=np.int64)
        self.unranked = np.zeros(n_cases, dtype=bool)
        self.popularity = {k: np.zeros(n_cases) for k in ks} if pct is not None else {}
        self.covered = {k: np.zeros(n_items + 1, dtype=bool) for k in ks}

    def add(self, batch: BatchRanks) -> None:
        self.ranks[batch.rows] = batch.ranks
        self.unranked[batch.rows] = batch.excluded
        for k in self.ks:
            top = batch.top[:, :min(k, self.max_k)]
            self.covered[k][top] = True  # index 0 marks empty slots and is never counted
            if self.pct is not None:  # mean percentile of the recommended items (pct[0] = 0 for empty slots)
                self.popularity[k][batch.rows] = self.pct[top].sum(axis=1) / np.maximum((top > 0).sum(1), 1)

    def gathered(self) -> _Tally:
        """Every rank's cases, in rank order (the order of one process)."""
        out = _Tally(0, self.ks, self.max_k, self.n_items, self.pct)
        out.ranks = _all_gather(self.ranks)
        out.unranked = _all_gather(self.unranked)
        out.popularity = {k: _all_gather(v) for k, v in self.popularity.items()}
        out.covered = {k: _all_reduce_any(v) for k, v in self.covered.items()}
        return out


def _dense_batches(scorer: Scorer, cases: EvalCases, n_items: int, max_k: int, exclude_seen: bool,
                   sampled_negatives: int | None, seed: int, max_batch_elements: int,
                   batch_size: int) -> Iterator[BatchRanks]:
    """Rank through ``scorer.score``: a [batch, n_items + 1] matrix per batch."""
    n_cols = n_items + 1
    bs = max(1, min(batch_size, max_batch_elements // n_cols))
    gen = torch.Generator().manual_seed(seed)
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
        # Rank over the item columns only, so the padding column never takes a place (ids shift by one,
        # which keeps the tie order); a -inf item (excluded or NaN) is never counted as recommended.
        top_ids, top_vals = topk_deterministic(scores[:, 1:], max_k)
        top = torch.where(top_vals == -torch.inf, 0, top_ids + 1).cpu().numpy()
        if sampled_negatives:
            r = _sampled_ranks(scores.cpu(), targets.cpu(), sampled_negatives, gen)
        else:
            r = target_ranks(scores[:, 1:], targets - 1)
        r = torch.where(excluded.to(r.device), torch.full_like(r, n_items), r)
        yield BatchRanks(rows, r.cpu().numpy(), excluded.cpu().numpy(), top)


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


# ------------------------------------------------------------------------------------------------------------------
# Splitting cases across torch.distributed ranks
# ------------------------------------------------------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _share(n_cases: int, distributed: bool) -> tuple[int, int, int]:
    """This rank's contiguous block of cases [start, stop) and the world size (1: all cases, no gathering)."""
    if not (distributed and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0, n_cases, 1
    world, rank = dist.get_world_size(), dist.get_rank()
    return n_cases * rank // world, n_cases * (rank + 1) // world, world


def _device() -> torch.device:
    """Where collectives run: NCCL needs the current GPU, gloo the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_gather(x: np.ndarray) -> np.ndarray:
    """The concatenation, in rank order, of every rank's ``x`` (lengths may differ)."""
    device, world = _device(), dist.get_world_size()
    payload = torch.from_numpy(np.ascontiguousarray(x.view(np.uint8) if x.dtype == np.bool_ else x)).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], dtype=torch.int64, device=device))
    lengths = [int(s) for s in sizes]
    padded = torch.zeros((max(lengths),), dtype=payload.dtype, device=device)
    padded[:len(x)] = payload
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, lengths, strict=True)])
    return out.view(np.bool_) if x.dtype == np.bool_ else out


def _all_reduce_any(x: np.ndarray) -> np.ndarray:
    """Element-wise OR of a boolean array over all ranks."""
    t = torch.from_numpy(x.astype(np.int32)).to(_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy() > 0
