"""Exact full-catalog ranking without a [cases, items] score matrix: the fast paths of
:func:`genrec.eval.retrieval.rank_cases`.

A scorer gets a fast path through the methods it exposes (eval imports no model; see the protocols below):

- :class:`EmbeddingScorer` (``last_hidden`` and ``item_table``, whose inner products are its scores): the catalog
  is scored one item block at a time with one matmul; each block has its seen items masked, feeds a running top-K
  and adds to the count of items ranked above each target, so memory holds one [batch, block] matrix.
- :class:`GlobalScorer` (``global_scores``, the same for every history, e.g. popularity): one global order; a
  history only removes items from it, so ranks and top-K lists follow without scoring the catalog.
- :class:`SparseScorer` (``sparse_scores``, a CSR matrix whose missing entries score 0, e.g. item-kNN): the
  explicit entries and the seen items are ranked against the implicit zeros in closed form.

Each path gives exactly what the dense path gives for the same scores: items ordered by score descending then id
ascending, NaN as -inf, the padding column never ranked, seen items set to -inf when excluded (a target among them
is a miss unless its score was already infinite), and -inf items never recommended.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval.topk import (
    EMPTY,
    GROUP_MAX,
    pack_np,
    running_top_k,
    top_ids,
)

# Defaults chosen with benchmarks/eval_speed.py: a [batch, block] float32 block stays in the last-level cache.
# An accelerator gets wider blocks: fewer, larger kernels.
EMBEDDING_BATCH = {"cpu": 512, "other": 1024}
ITEM_BLOCK = {"cpu": 2048, "other": 32768}
GLOBAL_BATCH = 8192
SPARSE_BATCH = 512
_MERGE_ELEMENTS = 1 << 22  # keys held at once when merging sparse entries into a top-K


@runtime_checkable
class EmbeddingScorer(Protocol):
    """Scores are ``last_hidden(history) @ item_table().T``; a scorer whose ``score`` differs must not offer both."""

    def last_hidden(self, history: Jagged, timestamps: Jagged | None = None) -> torch.Tensor:
        """One query [batch, D] per history."""

    def item_table(self) -> torch.Tensor:
        """One vector [n_items + 1, D] per item (row 0 is padding)."""


@runtime_checkable
class GlobalScorer(Protocol):
    def global_scores(self) -> torch.Tensor | np.ndarray:
        """Scores [n_items + 1] given to every history alike (index 0 is padding)."""


@runtime_checkable
class SparseScorer(Protocol):
    def sparse_scores(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> sp.spmatrix:
        """Scores [batch, n_items + 1] as a sparse matrix: an item without an entry scores 0."""


@dataclass(frozen=True)
class BatchRanks:
    rows: np.ndarray  # case indices
    ranks: np.ndarray  # 0-based rank of each target; n_items where it was excluded
    excluded: np.ndarray  # the target was seen and excluded: a miss
    top: np.ndarray  # [rows, max_k] recommended items, best first; 0 = nothing (only -inf items were left)


def fast_kind(scorer: object) -> str | None:
    """Which fast path ranks ``scorer`` ('global', 'sparse', 'embedding'), or None for the dense path."""
    for kind, protocol in (("global", GlobalScorer), ("sparse", SparseScorer), ("embedding", EmbeddingScorer)):
        if isinstance(scorer, protocol):
            return kind
    return None


def rank_batches(scorer: object, kind: str, cases: EvalCases, n_items: int, max_k: int, exclude_seen: bool,
                 batch_size: int | None = None, item_block: int | None = None,
                 max_batch_elements: int | None = None) -> Iterator[BatchRanks]:
    """Rank every case through the ``kind`` fast path, one batch of cases at a time."""
    if kind == "global":
        background = _Background(_score_vector(scorer.global_scores(), n_items))  # type: ignore[attr-defined]
        for rows in _batches(len(cases), batch_size or GLOBAL_BATCH):
            yield _rank_against(background, rows, cases.history.take(rows), cases.targets[rows], None,
                                exclude_seen, max_k)
    elif kind == "sparse":
        background = _Background(np.zeros(n_items + 1, np.float32))
        for rows in _batches(len(cases), batch_size or SPARSE_BATCH):
            hist = cases.history.take(rows)
            x = scorer.sparse_scores(hist, cases.users[rows], **_timestamps(cases, rows))  # type: ignore[attr-defined]
            yield _rank_against(background, rows, hist, cases.targets[rows], _explicit(x, len(rows), n_items),
                                exclude_seen, max_k)
    elif kind == "embedding":
        yield from _embedding_batches(scorer, cases, n_items, max_k, exclude_seen, batch_size, item_block,
                                      max_batch_elements)
    else:
        raise ValueError(f"unknown fast ranking path {kind!r}")


def _batches(n: int, size: int) -> Iterator[np.ndarray]:
    size = max(1, size)
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def _timestamps(cases: EvalCases, rows: np.ndarray) -> dict:
    return {"timestamps": cases.history_timestamps.take(rows)} if cases.history_timestamps is not None else {}


def _seen_targets(hist: Jagged, targets: np.ndarray) -> np.ndarray:
    """Whether each row's target is in its history."""
    hit = hist.values == np.repeat(targets, hist.lengths)
    return np.bincount(hist.row_ids()[hit], minlength=len(hist)) > 0


# ------------------------------------------------------------------------------------------------------------------
# Global and sparse scorers: a background order that a batch's few changed entries are ranked against
# ------------------------------------------------------------------------------------------------------------------
def _score_vector(scores: torch.Tensor | np.ndarray, n_items: int) -> np.ndarray:
    g = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    g = g.astype(np.float32).reshape(-1)
    if len(g) != n_items + 1:
        raise ValueError(f"global_scores has {len(g)} entries, expected n_items + 1 = {n_items + 1}")
    return np.where(np.isnan(g), np.float32(-np.inf), g)


def _explicit(x: sp.spmatrix, rows: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, item, score) of a sparse score matrix's entries (duplicates summed as a dense copy would)."""
    x = sp.csr_matrix(x, copy=True)
    if x.shape != (rows, n_items + 1):
        raise ValueError(f"sparse_scores returned shape {x.shape}, expected {(rows, n_items + 1)}")
    x.sum_duplicates()
    r = np.repeat(np.arange(rows, dtype=np.int64), np.diff(x.indptr))
    c = x.indices.astype(np.int64)
    v = x.data.astype(np.float32)
    v[np.isnan(v)] = -np.inf
    keep = c > 0  # the padding column is never ranked
    return r[keep], c[keep], v[keep]


class _Background:
    """Scores ``g`` [n_items + 1] shared by every row, with their total order (score desc, id asc)."""

    def __init__(self, g: np.ndarray) -> None:
        self.g, self.n = g, len(g) - 1
        items = np.arange(1, self.n + 1, dtype=np.int64)
        self.order = items[np.lexsort((items, -g[1:]))]  # position -> item
        self.pos = np.zeros(self.n + 1, dtype=np.int64)  # item -> position
        self.pos[self.order] = np.arange(self.n)
        ordered = g[self.order]
        self.neg_sorted = -ordered  # ascending
        group = np.cumsum(np.concatenate(([False], ordered[1:] != ordered[:-1])))  # index of the equal-score run
        self.group = group.astype(np.int64)
        self.group_key = self.group * (self.n + 1) + self.order  # increasing along the order

    def count_before(self, v: np.ndarray, t: np.ndarray) -> np.ndarray:
        """How many items i have (g_i, i) before (v, t): g_i > v, or g_i == v and i < t."""
        above = np.searchsorted(self.neg_sorted, -v, side="left")
        upto = np.searchsorted(self.neg_sorted, -v, side="right")
        q = self.group[np.minimum(above, self.n - 1)] * (self.n + 1) + t
        tied = np.searchsorted(self.group_key, q, side="left") - above
        return above + np.where(upto > above, tied, 0)


def _rank_against(bg: _Background, rows: np.ndarray, hist: Jagged, targets: np.ndarray,
                  explicit: tuple[np.ndarray, np.ndarray, np.ndarray] | None, exclude_seen: bool,
                  max_k: int) -> BatchRanks:
    """Ranks and top-K of one batch whose scores are the background except for a few entries per row: the
    explicit ones, the seen items (-inf when excluded). The target's rank is its place in the background order,
    corrected for those entries, which are moved from their background place to their own."""
    b, n, width = len(rows), bg.n, bg.n + 1
    t = targets.astype(np.int64)
    key_t = np.arange(b, dtype=np.int64) * width + t
    parts = [key_t]
    if explicit is not None:
        parts.append(explicit[0] * width + explicit[1])
    if exclude_seen:
        ok = hist.values > 0
        parts.append(hist.row_ids()[ok] * width + hist.values[ok].astype(np.int64))
    keys, where = _unique(parts)  # where[i]: the place of parts[i]'s keys among the unique keys
    row, col = keys // width, keys % width
    g = bg.g[col]
    m = g.copy()  # each entry's score in this batch
    if explicit is not None:
        m[where[1]] = explicit[2]
    at_t = where[0]
    excluded = np.zeros(b, dtype=bool)
    if exclude_seen:
        seen = np.zeros(len(keys), dtype=bool)
        seen[where[-1]] = True
        excluded = seen[at_t] & np.isfinite(m[at_t])
        m[where[-1]] = -np.inf
    mt, tr = m[at_t][row], t[row]
    was_before = (g > mt) | ((g == mt) & (col < tr))
    is_before = ((m > mt) | ((m == mt) & (col < tr))) & (col != tr)
    ranks = (bg.count_before(m[at_t], t) - np.bincount(row[was_before], minlength=b)
             + np.bincount(row[is_before], minlength=b))
    ranks[excluded] = n
    changed = m != g
    return BatchRanks(rows, ranks, excluded, _top_against(bg, b, row[changed], col[changed], m[changed], max_k))


def _unique(parts: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted distinct values of all ``parts``, and where each part's values are among them."""
    joined = np.concatenate(parts)
    order = np.argsort(joined)
    ordered = joined[order]
    first = np.concatenate(([True], ordered[1:] != ordered[:-1])) if len(ordered) else np.zeros(0, dtype=bool)
    place = np.empty(len(joined), dtype=np.int64)
    place[order] = np.cumsum(first) - 1
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return ordered[first], [place[bounds[i]:bounds[i + 1]] for i in range(len(parts))]


def _top_against(bg: _Background, b: int, row: np.ndarray, col: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Top-k per row: the first k background items that no changed entry moved, merged with the changed entries
    that still have a finite score (``row`` non-decreasing)."""
    pos = bg.pos[col]
    where = row * bg.n + pos
    o = np.arange(len(where)) if np.all(where[1:] > where[:-1]) else np.argsort(where)
    row_o, pos_o = row[o], pos[o]
    rank_in_row = np.arange(len(o)) - np.searchsorted(row_o, row_o)
    gap = pos_o - rank_in_row  # background items left free before this one
    near = gap < k
    moved = np.bincount(row_o[near] * k + gap[near], minlength=b * k).reshape(b, k).cumsum(axis=1)
    free = np.arange(k)[None, :] + moved  # positions of the first k free background items
    valid = free < bg.n
    ids = np.where(valid, bg.order[np.minimum(free, bg.n - 1)], 0)
    vals = np.where(valid, bg.g[ids], np.float32(-np.inf))
    live = score > -np.inf
    if not live.any():
        return np.where(vals > -np.inf, ids, 0)
    free_keys = np.where(valid, pack_np(vals, ids), EMPTY)
    live_keys = pack_np(score[live], col[live])
    live_row = row[live]
    keep = live_keys < free_keys[live_row, k - 1]  # else the k free items all come first
    live_keys, live_row = live_keys[keep], live_row[keep]
    n_live = np.bincount(live_row, minlength=b)
    place = np.arange(len(live_row)) - (np.cumsum(n_live) - n_live)[live_row]
    width = int(n_live.max()) + k
    best = np.empty((b, k), dtype=np.int64)
    step = max(1, _MERGE_ELEMENTS // width)  # rows per padded [rows, width] matrix of keys
    for r0 in range(0, b, step):
        r1 = min(b, r0 + step)
        m = np.full((r1 - r0, width), EMPTY, dtype=np.int64)
        sel = (live_row >= r0) & (live_row < r1)
        m[live_row[sel] - r0, place[sel]] = live_keys[sel]
        m[np.arange(r1 - r0)[:, None], n_live[r0:r1, None] + np.arange(k)[None, :]] = free_keys[r0:r1]
        best[r0:r1] = np.partition(m, k - 1, axis=1)[:, :k]
    return top_ids(best)


# ------------------------------------------------------------------------------------------------------------------
# Embedding scorers: item blocks, one matmul each
# ------------------------------------------------------------------------------------------------------------------
def _embedding_batches(scorer: object, cases: EvalCases, n_items: int, max_k: int, exclude_seen: bool,
                       batch_size: int | None, item_block: int | None,
                       max_batch_elements: int | None) -> Iterator[BatchRanks]:
    with torch.no_grad():
        table = scorer.item_table().detach()  # type: ignore[attr-defined]
    if table.ndim != 2 or table.shape[0] != n_items + 1:
        raise ValueError(f"item_table has shape {tuple(table.shape)}, expected [n_items + 1 = {n_items + 1}, dim]")
    where = "cpu" if table.device.type == "cpu" else "other"
    batch_size, item_block = batch_size or EMBEDDING_BATCH[where], item_block or ITEM_BLOCK[where]
    if max_batch_elements:
        item_block = min(item_block, max_batch_elements // max(batch_size, 1))
    item_block = max(GROUP_MAX, item_block // GROUP_MAX * GROUP_MAX)
    table_max = _abs_max(table)
    for rows in _batches(len(cases), batch_size):
        rows = rows[np.argsort(cases.targets[rows], kind="stable")]  # blocks then split rows by target position
        hist = cases.history.take(rows)
        with torch.no_grad():
            q = scorer.last_hidden(hist, **_timestamps(cases, rows)).detach()  # type: ignore[attr-defined]
        if q.shape != (len(rows), table.shape[1]):
            raise ValueError(f"last_hidden returned shape {tuple(q.shape)}, expected {(len(rows), table.shape[1])}")
        yield _rank_embedding_batch(q, table, table_max, rows, hist, cases.targets[rows].astype(np.int64),
                                    n_items, max_k, exclude_seen, item_block)


def _abs_max(x: torch.Tensor) -> float:
    """Largest magnitude, inf when anything is not finite."""
    if x.numel() == 0:
        return 0.0
    low, high = torch.aminmax(x.detach())
    m = max(-float(low), float(high))
    return m if np.isfinite(m) else float("inf")


def _blocks(n_cols: int, first: int, width: int) -> Iterator[tuple[int, int]]:
    """Item blocks [a, e): ``first`` wide, then each as wide as all before it up to ``width``, so that each
    block holds about as many new top-K candidates as the top-K itself."""
    a, e = 0, min(first, n_cols)
    while a < n_cols:
        yield a, e
        a, e = e, min(e + min(width, e), n_cols)


def _rank_embedding_batch(q: torch.Tensor, table: torch.Tensor, table_max: float, rows: np.ndarray, hist: Jagged,
                          targets: np.ndarray, n_items: int, max_k: int, exclude_seen: bool,
                          item_block: int) -> BatchRanks:
    """One batch whose rows are sorted by target: for the block [a, e), the rows with target < a count the items
    scoring above theirs, the rows with target >= e those scoring at least as high (ties go to the smaller id),
    and the few rows whose target lies in the block count exactly."""
    b, device = len(rows), q.device
    limit = min(torch.finfo(q.dtype).max, torch.finfo(torch.float32).max) / 2
    safe = _abs_max(q) * table_max * max(q.shape[1], 1) < limit  # no product or sum overflows: no inf, no NaN
    tg = torch.from_numpy(targets).to(device)
    # The target's own score, from a matmul like the blocks' (a dot product may round differently).
    t = torch.mm(q, table[tg].T).diagonal().float().nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
    excluded = np.zeros(b, dtype=bool)
    if exclude_seen:
        seen = _seen_targets(hist, targets)
        excluded = seen & np.isfinite(t.cpu().numpy())
        t[torch.from_numpy(seen).to(device)] = -torch.inf
        ok = hist.values > 0
        order = np.argsort(hist.values[ok], kind="stable")
        seen_items = hist.values[ok].astype(np.int64)[order]
        seen_rows = torch.from_numpy(hist.row_ids()[ok][order]).to(device)
        seen_cols = torch.from_numpy(seen_items).to(device)
    counts = torch.zeros(b, dtype=torch.int64, device=device)
    top = running_top_k(b, max_k, device)
    first = -(-max_k // GROUP_MAX) * GROUP_MAX
    work = torch.empty(b * item_block, device=device)  # differences, reused by every block
    for a, e in _blocks(n_items + 1, first, item_block):
        s = torch.mm(q, table[a:e].T)
        s = s.float() if s.dtype != torch.float32 else s
        if not safe:
            torch.nan_to_num_(s, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
        if a == 0:
            s[:, 0] = -torch.inf  # padding
        if exclude_seen:
            i0, i1 = np.searchsorted(seen_items, [a, e])
            if i1 > i0:
                s.view(-1).index_fill_(0, seen_rows[i0:i1] * (e - a) + seen_cols[i0:i1] - a, -torch.inf)
        lo, hi = np.searchsorted(targets, [a, e])
        if lo > 0:
            counts[:lo] += _count(s[:lo], t[:lo], True, work)
        if hi < b:
            counts[hi:] += _count(s[hi:], t[hi:], False, work)
            if a == 0:
                counts[hi:] -= (t[hi:] == -torch.inf).long()  # the -inf padding column tied a -inf target
        if hi > lo:
            sub, tt, gg = s[lo:hi], t[lo:hi, None], tg[lo:hi, None]
            cols = torch.arange(a, e, device=device)[None, :]
            before = ((sub > tt) | ((sub == tt) & (cols < gg))) & (cols != gg) & (cols > 0)
            counts[lo:hi] += before.sum(1)
        top.add(s, a)
    ranks = counts.cpu().numpy()
    ranks[excluded] = n_items
    return BatchRanks(rows, ranks, excluded, top.result().cpu().numpy())


_TINY = 2.0 ** -126  # the smallest normal float32


def _count(s: torch.Tensor, t: torch.Tensor, strict: bool, work: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries are > t (strict) or >= t.

    Counted through differences, three vectorised passes (a comparison into booleans is not vectorised): with
    |t| >= 1e-30 and t finite, two floats differ by at least the smallest normal float, so clamping each difference
    to [0, _TINY] marks exactly the entries above t, and their sum is exact. Other rows are compared directly.
    """
    d = work.view(-1)[:s.numel()].view(s.shape)
    torch.sub(s, t[:, None], out=d) if strict else torch.sub(t[:, None], s, out=d)
    d.clamp_(0.0, _TINY)
    n = (d.sum(1) * 2.0**126).round().long()  # entries above t (strict), or below t
    n = n if strict else s.shape[1] - n
    odd = ~(torch.isfinite(t) & (t.abs() >= 1e-30))
    if bool(odd.any()):
        rows, sub, tt = odd.nonzero()[:, 0], s[odd], t[odd, None]
        n[rows] = ((sub > tt) if strict else (sub >= tt)).sum(1)
    return n
