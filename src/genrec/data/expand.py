"""Fractal expansion: a larger interaction log grown from a real one (Belletti et al., 2019, arXiv:1901.08910).

The source's binary user x item matrix ``R`` (``U x I``) is expanded to ``(m U) x (n I)`` by a randomised
Kronecker product with a small ``m x n`` matrix ``P`` of probabilities derived from ``R`` itself:

1. **Reduction** (the paper's Algorithm 2). Take the top ``k = min(m, n)`` singular triplets of ``R``; resize
   the left vectors from ``U`` to ``m`` rows and the right ones from ``I`` to ``n`` rows as images (Gaussian
   anti-aliasing, then linear interpolation); replace each resized factor by its closest matrix with
   orthonormal columns (polar factor); ``R' = U' diag(s) V'^T`` then has ``R``'s top singular values.
2. **Probabilities.** ``R'`` is min-max rescaled to ``[0, 1]`` and multiplied so its sum is the requested event
   factor: block ``(i, j)`` keeps each source event with probability ``P[i, j]``, so the expected number of
   events is ``factor x`` the source's and the expected expanded matrix is ``P (x) R``.
3. **Randomised Kronecker product** (the paper's Algorithm 1, ``F(P[i, j], R, w_ij)``): block ``(i, j)`` is
   ``R`` with its rows and columns permuted at random and each event kept with probability ``P[i, j]``.
   Expanded item ``x * n + j`` is slot ``x`` of item block ``j``; in row block ``i`` it holds source item
   ``perm_ij^-1(x)``; expanded user ``k * m + i`` is row ``k`` of row block ``i`` (modes below).

Shuffles within strata. The paper permutes uniformly, so an expanded item's count becomes the sum of ``m``
unrelated source items' counts, which flattens the popularity curve (benchmarks/expand_quality.py measures
it); without any shuffle the item blocks are exact clones of the catalog. Here a permutation only exchanges
items (users) of similar popularity (history length): ``strata`` strata per doubling of rank (0 restores the
uniform shuffle), so counts add up like the deterministic product's, whose power laws the paper proves
preserved, while no item block repeats another.

Users, three modes with the same expected matrix ``P (x) R``:

- ``shuffled``: the paper (and the MLPerf / generative-recommenders scripts that built MovieLens-1B/3B/13B/18B):
  rows are permuted per block, so an expanded user joins the sub-histories of ``n`` source users, merged
  here by time (by position when the source has no timestamps), an order with little meaning.
- ``kronecker``: rows are not permuted, so expanded user ``u * m + i`` is source user ``u``'s timeline and
  each block keeps an event independently; one source event then shows up in several item blocks at the same
  time, copies that make the next item easy to guess.
- ``timeline`` (default): rows are not permuted and each source event is kept at most once: with probability
  ``r_i = sum_j P[i, j]`` (at most 1), in the item block ``j = V_i(c)`` that row block ``i`` assigns to its item
  ``c`` (drawn once per row block and item, with probability ``P[i, j] / r_i``). An expanded user is thus a
  sub-sampled copy of one real timeline, and expanded item ``c * n + j`` is variant ``j`` of source item ``c``,
  the same item for every user who sees it; this randomisation replaces the column shuffles. Users grow by at
  least ``factor`` (``m >= factor``), items by ``n = ceil(sqrt(factor))``.

Events keep the source's timestamps (or, when it has none, their positions in the source user's sequence).
Output is produced one unit at a time (a row block ``i`` times a fixed number of source users), so memory
holds the source plus one unit, whatever the factor. Every random draw is keyed by the seed, the block and the
unit, so the files do not depend on how they are sharded.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.ndimage import gaussian_filter1d
from scipy.sparse.linalg import svds

from genrec.data.dataset import SequenceDataset
from genrec.data.jagged import _ranges
from genrec.data.synth import ShardWriter, prepare_out_dir, validation_message
from genrec.errors import ConfigError, DataError
from genrec.io import write_json
from genrec.progress import progress_bar

UNIT_EVENTS = 1 << 20  # expected output events per unit; sets the unit's number of source users


class ExpandConfig(BaseModel):
    """How to expand a dataset (see the module docstring for the method)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: float = Field(..., ge=1.0, description="Expected growth in events (the exact factors are reported).")
    user_blocks: int | None = Field(None, ge=1, description="Rows m of the reduced matrix (user growth); auto.")
    item_blocks: int | None = Field(None, ge=1, description="Columns n of the reduced matrix (item growth); auto.")
    mode: Literal["timeline", "kronecker", "shuffled"] = Field(
        "timeline", description="timeline: an expanded user is a sub-sample of one source user's timeline, each "
        "event in at most one item block; kronecker: the same rows, blocks drawn independently (events copied "
        "across item blocks); shuffled: rows permuted per block as in the paper (users join n source users).")
    strata: int = Field(4, ge=0, description="Modes kronecker and shuffled: shuffles exchange only items (users) of "
                        "similar popularity (history length), strata per doubling of rank; 0 = uniform, as in the "
                        "paper.")
    min_length: int = Field(3, ge=1, description="Drop expanded users with fewer events (the paper drops empty ones).")
    seed: int = Field(0, ge=0, description="Seed of every random draw.")
    shard_events: int = Field(1_000_000, ge=1, description="Target events per Parquet shard (cut at user boundaries).")


def expand_config(**fields: Any) -> ExpandConfig:
    """:class:`ExpandConfig` from keyword fields, with a :class:`ConfigError` naming the bad field."""
    try:
        return ExpandConfig(**fields)
    except ValidationError as e:
        raise ConfigError(f"data expand: {validation_message(e)}") from None


# --- reduction ---------------------------------------------------------------------------------------------

def interaction_matrix(ds: SequenceDataset) -> sp.csr_matrix:
    """The binary users x items matrix of ``ds`` (0-based dense ids)."""
    rows = ds.sequences.row_ids()
    cols = ds.sequences.values.astype(np.int64) - 1
    r = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(ds.n_users, ds.n_items))
    r.data[:] = 1.0  # repeated (user, item) pairs count once
    return r


def top_singular(r: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` singular triplets ``(u [U, k], s [k], v [I, k])``, largest first (``k`` capped by the shape)."""
    k = min(k, *r.shape)
    if k >= min(r.shape) - 1:  # ARPACK needs k < min(shape); such a matrix is tiny
        u, s, vt = np.linalg.svd(r.toarray(), full_matrices=False)
        return u[:, :k], s[:k], vt[:k].T
    v0 = np.random.default_rng([seed, 7]).standard_normal(min(r.shape))
    u, s, vt = svds(r, k=k, v0=v0)
    order = np.argsort(-s)
    return u[:, order], s[order], vt[order].T


def resize_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Resize ``a`` along axis 0 as an image: Gaussian anti-aliasing when shrinking, then linear interpolation
    at the centres of the new rows (the transform the paper's reference code uses)."""
    old = a.shape[0]
    scale = old / rows
    if scale > 1:
        a = gaussian_filter1d(a, sigma=(scale - 1) / 2, axis=0, mode="mirror")
    x = np.clip((np.arange(rows) + 0.5) * scale - 0.5, 0, old - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, old - 1)
    frac = (x - lo)[:, None]
    return a[lo] * (1 - frac) + a[hi] * frac


def closest_orthonormal(a: np.ndarray) -> np.ndarray:
    """The matrix with orthonormal columns nearest to ``a`` in Frobenius norm: ``a (a^T a)^(-1/2)``."""
    left, _, right = np.linalg.svd(a, full_matrices=False)
    return left @ right


def reduced_matrix(u: np.ndarray, s: np.ndarray, v: np.ndarray, m: int, n: int) -> np.ndarray:
    """The paper's reduction: an ``m x n`` matrix whose singular values are the top ``min(m, n)`` of the source."""
    k = min(m, n, len(s))
    uu = closest_orthonormal(resize_rows(u[:, :k], m))
    vv = closest_orthonormal(resize_rows(v[:, :k], n))
    return uu @ np.diag(s[:k]) @ vv.T


def rescale(reduced: np.ndarray) -> np.ndarray:
    """Min-max rescaling into ``[0, 1]`` (a 1 x 1 matrix, or a constant one, becomes all ones)."""
    lo, hi = float(reduced.min()), float(reduced.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones_like(reduced)
    return (reduced - lo) / (hi - lo)


def block_probabilities(r: sp.csr_matrix, cfg: ExpandConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(P, singular values)``: keep-probabilities of the ``m x n`` blocks, summing to ``cfg.factor``; each
    probability (``timeline``: each row's sum) is at most 1. Free dimensions grow until that holds."""
    timeline = cfg.mode == "timeline"
    start = math.ceil(math.sqrt(cfg.factor))
    m = cfg.user_blocks or (math.ceil(cfg.factor) if timeline else start)
    n = cfg.item_blocks or start
    svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    while True:
        if svd is None or len(svd[1]) < min(m, n, *r.shape):
            svd = top_singular(r, max(min(m, n), 8, 2 * (len(svd[1]) if svd else 0)), cfg.seed)
        base = rescale(reduced_matrix(*svd, m, n))
        largest = base.sum(axis=1).max() if timeline else base.max()
        if base.sum() * (1 + 1e-12) >= cfg.factor * largest:
            return base * (cfg.factor / base.sum()), svd[1][: min(m, n)]
        if cfg.user_blocks and (cfg.item_blocks or timeline):
            reach = base.sum() / largest
            raise ConfigError(f"--factor {cfg.factor:g} is out of reach with {m} x {n} blocks in mode {cfg.mode} "
                              f"(at most {reach:.3g}); give more --user-blocks / --item-blocks or leave them out")
        if timeline or cfg.item_blocks or (cfg.user_blocks is None and m < n):
            m += max(1, m // 64)  # steps of about 1.5%: large factors need hundreds of rows
        else:
            n += max(1, n // 64)


# --- the randomised Kronecker product, one unit at a time -------------------------------------------------

def _bernoulli(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Sorted positions in ``0..n-1`` each kept with probability ``p``, drawn as geometric gaps: the cost
    follows the kept events, not ``n``."""
    if p >= 1.0:
        return np.arange(n, dtype=np.int64)
    if n == 0 or p <= 0.0:
        return np.zeros(0, dtype=np.int64)
    size = int(n * p + 6 * math.sqrt(n * p) + 16)
    pos = np.cumsum(rng.geometric(p, size)) - 1
    while pos[-1] < n:
        pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(p, size))])
    return pos[pos < n]


def rank_strata(counts: np.ndarray, per_doubling: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, stratum)``: ids by decreasing count (ties by id) and the stratum of each rank position,
    ``floor(per_doubling * log2(rank + 1))`` (all one stratum when ``per_doubling`` is 0)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    if per_doubling == 0:
        return order, np.zeros(len(counts), dtype=np.int64)
    return order, np.floor(per_doubling * np.log2(np.arange(1, len(counts) + 1))).astype(np.int64)


def stratified_permutation(order: np.ndarray, stratum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``perm`` with ``perm[x]`` uniformly random among the ids of ``x``'s stratum (a bijection)."""
    shuffled = order[np.lexsort((rng.random(len(order)), stratum))]  # strata keep their rank positions
    perm = np.empty_like(order)
    perm[order] = shuffled
    return perm


class _Source:
    """The source log as flat arrays (0-based items, the ordering key: timestamps or positions) and the
    keyed stratified permutations of its items and users."""

    CACHE = 1 << 24  # permutation entries kept per row block; beyond that they are recomputed per unit

    def __init__(self, ds: SequenceDataset, cfg: ExpandConfig, n_blocks: int):
        self.offsets = ds.sequences.offsets.astype(np.int64)
        self.items = ds.sequences.values.astype(np.int64) - 1
        lengths = ds.sequences.lengths
        self.pos = np.arange(len(self.items), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        self.has_time = ds.timestamps is not None
        self.time = ds.timestamps.values if ds.timestamps is not None else self.pos
        self.n_users, self.n_items = ds.n_users, ds.n_items
        self.seed = cfg.seed
        self.item_strata = rank_strata(np.bincount(self.items, minlength=self.n_items), cfg.strata)
        self.user_strata = rank_strata(lengths, cfg.strata)
        self.cache_ok = n_blocks * max(self.n_items, self.n_users) <= self.CACHE
        self.cache: dict[tuple[str, int, int], np.ndarray] = {}

    def variants(self, i: int, p: np.ndarray) -> np.ndarray:
        """``V_i``: the item block of each source item for row block ``i`` (timeline mode)."""
        key = ("variant", i, -1)
        if key not in self.cache:
            if self.cache and next(iter(self.cache))[1] != i:
                self.cache.clear()
            cum = np.cumsum(p[i]) / max(float(p[i].sum()), 1e-300)
            draw = np.random.default_rng([self.seed, 12, i]).random(self.n_items)
            self.cache[key] = np.minimum(np.searchsorted(cum, draw, side="right"), len(cum) - 1)
        return self.cache[key]

    def perm(self, what: str, i: int, j: int) -> np.ndarray:
        """The permutation of items (``what='item'``) or users of block (i, j)."""
        key = (what, i, j)
        if key not in self.cache:
            if self.cache and next(iter(self.cache))[1] != i or not self.cache_ok:
                self.cache.clear()
            order, stratum = self.item_strata if what == "item" else self.user_strata
            rng = np.random.default_rng([self.seed, 10 if what == "item" else 11, i, j])
            self.cache[key] = stratified_permutation(order, stratum, rng)
        return self.cache[key]


def _unit(src: _Source, p: np.ndarray, i: int, rows: np.ndarray, unit: int, cfg: ExpandConfig,
          ) -> tuple[np.ndarray, ...]:
    """Events of expanded users ``rows * m + i``: (user, item, time), sorted by user then time."""
    m, n = p.shape
    rng = np.random.default_rng([cfg.seed, 1, i, unit])

    def gather(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # source events, their expanded row
        starts, lengths = src.offsets[users], src.offsets[users + 1] - src.offsets[users]
        return _ranges(starts, lengths), np.repeat(rows, lengths)

    own = gather(rows) if cfg.mode != "shuffled" else None
    if cfg.mode == "timeline":
        kept = _bernoulli(rng, len(own[0]), min(1.0, float(p[i].sum())))
        ev, owner = own[0][kept], own[1][kept]
        item = src.items[ev] * n + src.variants(i, p)[src.items[ev]]
        return _finish(owner * m + i, item, src.time[ev], src.pos[ev], None, cfg)  # in source order already
    parts = []
    for j in range(n):
        if float(p[i, j]) <= 0.0:
            continue
        events, owners = own or gather(src.perm("user", i, j)[rows])
        kept = _bernoulli(rng, len(events), float(p[i, j]))
        if len(kept) == 0:
            continue
        ev, owner = events[kept], owners[kept]
        item = src.perm("item", i, j)[src.items[ev]] * n + j
        parts.append((owner * m + i, item, src.time[ev], src.pos[ev], np.full(len(ev), j, dtype=np.int64)))
    if not parts:
        return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))
    return _finish(*(np.concatenate(c) for c in zip(*parts, strict=True)), cfg)


def _finish(user: np.ndarray, item: np.ndarray, t: np.ndarray, pos: np.ndarray, block: np.ndarray | None,
            cfg: ExpandConfig) -> tuple[np.ndarray, ...]:
    """Sort by (user, time, source position, block) unless ``block`` is None (rows already in that order), and
    drop users shorter than ``cfg.min_length``."""
    if block is not None:
        order = np.lexsort((block, pos, t, user))
        user, item, t = user[order], item[order], t[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    counts = np.diff(np.r_[starts, len(user)])
    keep = np.repeat(counts >= cfg.min_length, counts)
    return user[keep], item[keep], t[keep]


def expand(ds: SequenceDataset, cfg: ExpandConfig, out: str | Path, *, overwrite: bool = False,
           show_progress: bool = True) -> dict:
    """Write the fractal expansion of ``ds`` to ``out/part-*.parquet`` plus ``out/_expand.json``; returns the
    metadata (block probabilities, exact user / item / event factors).

    Columns: ``user_id`` int64, ``item_id`` int64 and ``timestamp`` (the source event's timestamp, or its
    0-based position in the source user's sequence when the source has no timestamps); rows are grouped by
    user and chronological within a user."""
    if ds.n_interactions == 0:
        raise DataError(f"dataset '{ds.name}' has no interactions to expand")
    out = prepare_out_dir(Path(out), overwrite, "_expand.json")
    t0 = time.perf_counter()
    r = interaction_matrix(ds)
    p, singular = block_probabilities(r, cfg)
    m, n = p.shape
    src = _Source(ds, cfg, n)
    per_user = ds.n_interactions / ds.n_users * float(p.sum(axis=1).max())
    unit_users = int(np.clip(UNIT_EVENTS / max(per_user, 1e-9), 1, ds.n_users))
    n_units = -(-ds.n_users // unit_users)
    writer = ShardWriter(out, cfg.shard_events)
    seen = np.zeros(n * ds.n_items, dtype=bool)
    users = 0
    with progress_bar(m * n_units, "expand units", enabled=show_progress) as advance:
        for i in range(m):
            for unit in range(n_units):
                rows = np.arange(unit * unit_users, min(ds.n_users, (unit + 1) * unit_users), dtype=np.int64)
                user, item, t = _unit(src, p, i, rows, unit, cfg)
                seen[item] = True
                users += int(np.count_nonzero(np.r_[True, user[1:] != user[:-1]])) if len(user) else 0
                writer.add(user, item, t)
                advance(1)
    shards = writer.close()
    items = int(seen.sum())
    meta = {
        "format": "genrec-expanded", "format_version": 1, "generator": "genrec data expand",
        "method": "fractal expansion (Belletti et al. 2019, arXiv:1901.08910): randomised Kronecker product with "
                  "a reduced matrix from the source's SVD",
        "columns": {"user_id": "int64 (row k of row block i: k * user_blocks + i; row k is source user k, 0-based "
                               "dense, unless mode is shuffled)",
                    "item_id": "int64 (label in item block j: label * item_blocks + j)",
                    "timestamp": "source event's timestamp" if src.has_time else
                                 "source event's 0-based position in its user's sequence (the source has no "
                                 "timestamps)"},
        "source": {"name": ds.name, "users": ds.n_users, "items": ds.n_items, "events": ds.n_interactions,
                   "has_timestamps": src.has_time},
        "config": cfg.model_dump(),
        "blocks": {"users": m, "items": n}, "probabilities": p.round(6).tolist(),
        "singular_values": singular.round(6).tolist(), "expected_event_factor": float(p.sum()),
        "users": users, "items": items, "events": writer.rows, "shards": shards, "unit_users": unit_users,
        "factors": {"users": users / ds.n_users, "items": items / ds.n_items,
                    "events": writer.rows / ds.n_interactions},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / "_expand.json", meta)
    return meta
