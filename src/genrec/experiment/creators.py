"""Creator and content health of what an arm showed, from its exposure table (one row per shown item).

- **Fresh share**: exposures going to items first seen (published, or first logged) at most ``fresh_days`` before
  the exposure.
- **Unexposed share**: exposures going to items with no exposure before the analysed window (``prior_items``: the
  items exposed before the experiment), i.e. how much of the traffic discovers content the platform never showed.
- **Gini** of exposures over items and over creators (0: equal exposure; 1: all on one), counting the catalog's
  never-shown items (or creators) as zeros when the catalog size is given (Gini, 1912; used for exposure
  concentration by Fleder & Hosanagar, 2009, "Blockbuster culture's next rise or fall", Management Science).
- **Coverage**: the share of the catalog shown at least once.
- **Time to first K exposures** of new items (first seen inside the window): the Kaplan-Meier median of the time
  from an item's first sighting to its K-th exposure, items that have not reached K by the window's end counted as
  censored rather than dropped (Kaplan & Meier, 1958), and the share that did reach K.

Time is in seconds (any epoch); items and creators are any ids numpy can sort (strings or integers).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DAY = 86_400.0


@dataclass(frozen=True)
class Exposures:
    """An exposure table as arrays of one length: ``item``, ``time`` (seconds) and optionally ``creator``."""

    item: np.ndarray
    time: np.ndarray
    creator: np.ndarray | None = None

    @classmethod
    def of(cls, item: Sequence[Hashable] | np.ndarray, time: Sequence[float] | np.ndarray,
           creator: Sequence[Hashable] | np.ndarray | None = None) -> Exposures:
        it, tm = np.asarray(item), np.asarray(time, dtype=np.float64)
        cr = None if creator is None else np.asarray(creator)
        if it.ndim != 1 or tm.shape != it.shape or (cr is not None and cr.shape != it.shape):
            raise ValueError(f"item, time and creator: one value per exposure each, got shapes {it.shape}, "
                             f"{tm.shape}" + ("" if cr is None else f", {cr.shape}"))
        if not np.isfinite(tm).all():
            raise ValueError("time: exposure times must be finite")
        return cls(it, tm, cr)

    def subset(self, mask: np.ndarray) -> Exposures:
        return Exposures(self.item[mask], self.time[mask], None if self.creator is None else self.creator[mask])


def gini(counts: Sequence[float] | np.ndarray, population: int | None = None) -> float:
    """Gini coefficient of non-negative counts; ``population`` > len(counts) adds the missing members as zeros."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if (x < 0).any():
        raise ValueError("gini: counts must be >= 0")
    if population is not None:
        if population < len(x):
            raise ValueError(f"population ({population}) is smaller than the {len(x)} counted members")
        x = np.concatenate([np.zeros(population - len(x)), x])
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    rank = np.arange(1, n + 1)
    return float(((2 * rank - n - 1) * x).sum() / (n * total))


def km_median(duration: np.ndarray, observed: np.ndarray) -> float:
    """Kaplan-Meier median of durations with right censoring (``observed`` False); inf when the survival curve
    never falls to one half."""
    d, e = np.asarray(duration, dtype=np.float64), np.asarray(observed, dtype=bool)
    order = np.lexsort((~e, d))  # at equal times, events before censorings
    d, e = d[order], e[order]
    at_risk = len(d) - np.arange(len(d))
    survival = np.cumprod(np.where(e, 1 - 1 / at_risk, 1.0))
    hit = np.flatnonzero(e & (survival <= 0.5))
    return float(d[hit[0]]) if len(hit) else float("inf")


def _first_seen(ex: Exposures, first_seen: Mapping[Hashable, float] | None) -> np.ndarray:
    """Each exposure's item's first sighting: from ``first_seen`` where it has the item, else the item's first
    exposure in the table."""
    uniq, inv = np.unique(ex.item, return_inverse=True)
    first = np.full(len(uniq), np.inf)
    np.minimum.at(first, inv, ex.time)
    if first_seen:
        known = np.array([float(first_seen.get(u, np.nan)) for u in uniq])  # numpy scalars hash as Python's
        first = np.where(np.isnan(known), first, known)
    return first[inv]


@dataclass(frozen=True)
class Health:
    """Content and creator health of one exposure table (module docstring); None where the input lacks what a
    metric needs (creators, the catalog size)."""

    exposures: int
    fresh_share: float
    unexposed_share: float | None
    item_gini: float
    creator_gini: float | None
    coverage: float | None
    new_items: int
    new_reached_k: float
    median_time_to_k_s: float


def health(ex: Exposures, *, k: int = 100, fresh_days: float = 7.0,
           first_seen: Mapping[Hashable, float] | None = None, prior_items: set | None = None,
           catalog_size: int | None = None, creator_count: int | None = None,
           start: float | None = None, end: float | None = None) -> Health:
    """Health metrics of ``ex`` over the window [start, end] (default: its first and last exposure times).
    ``first_seen``: item -> time it entered the catalog (items it lacks: their first exposure in ``ex``);
    ``prior_items``: items exposed before the window; ``catalog_size`` / ``creator_count``: the populations for
    coverage and Gini (None: exposed items / creators only)."""
    if len(ex.item) == 0:
        raise ValueError("health: the exposure table is empty")
    start = float(ex.time.min()) if start is None else start
    end = float(ex.time.max()) if end is None else end
    seen = _first_seen(ex, first_seen)
    items, inv, per_item = np.unique(ex.item, return_inverse=True, return_counts=True)
    unexposed = None if prior_items is None else float(1 - np.isin(ex.item, list(prior_items)).mean())
    creator_gini = None
    if ex.creator is not None:
        creator_gini = gini(np.unique(ex.creator, return_counts=True)[1], creator_count)
    new_reached, median = _time_to_k(ex.time, inv, seen, k, start, end)
    return Health(
        exposures=len(ex.item),
        fresh_share=float((seen >= ex.time - fresh_days * DAY).mean()),
        unexposed_share=unexposed,
        item_gini=gini(per_item, catalog_size),
        creator_gini=creator_gini,
        coverage=None if not catalog_size else len(items) / catalog_size,
        new_items=len(new_reached),
        new_reached_k=float(new_reached.mean()) if len(new_reached) else float("nan"),
        median_time_to_k_s=median,
    )


def _time_to_k(time: np.ndarray, inv: np.ndarray, seen: np.ndarray, k: int, start: float, end: float
               ) -> tuple[np.ndarray, float]:
    """Per new item (first seen in [start, end]): whether it reached k exposures by ``end``, and the Kaplan-Meier
    median of the time from first sighting to the k-th exposure."""
    n_items = inv.max() + 1
    item_seen = np.zeros(n_items)
    item_seen[inv] = seen
    new = (item_seen >= start) & (item_seen <= end)
    order = np.lexsort((time, inv))  # exposures grouped by item, in time order
    inv_sorted, time_sorted = inv[order], time[order]
    rank = np.arange(len(order)) - np.searchsorted(inv_sorted, inv_sorted)  # 0-based exposure count per item
    kth = np.full(n_items, np.nan)
    at_k = (rank == k - 1) & (time_sorted <= end)
    kth[inv_sorted[at_k]] = time_sorted[at_k]
    reached = ~np.isnan(kth[new])
    duration = np.where(reached, kth[new], end) - item_seen[new]
    return reached, km_median(duration, reached) if len(duration) else float("nan")


@dataclass(frozen=True)
class CreatorTable:
    """Per creator: exposures, distinct items shown, exposures of fresh items and the share of all exposures."""

    creator: np.ndarray
    exposures: np.ndarray
    items: np.ndarray
    fresh_exposures: np.ndarray
    share: np.ndarray

    def rows(self) -> list[dict]:
        """One JSON-ready mapping per creator, most exposed first."""
        order = np.argsort(-self.exposures, kind="stable")
        return [{"creator": np.asarray(self.creator[i]).item(), "exposures": int(self.exposures[i]),
                 "items": int(self.items[i]), "fresh_exposures": int(self.fresh_exposures[i]),
                 "share": float(self.share[i])} for i in order]


def per_creator(ex: Exposures, *, fresh_days: float = 7.0,
                first_seen: Mapping[Hashable, float] | None = None) -> CreatorTable:
    """The per-creator breakdown of ``ex`` (it must have a creator column)."""
    if ex.creator is None:
        raise ValueError("per_creator: the exposure table has no creator column")
    fresh = _first_seen(ex, first_seen) >= ex.time - fresh_days * DAY
    creators, inv = np.unique(ex.creator, return_inverse=True)
    exposures = np.bincount(inv, minlength=len(creators))
    pairs = np.unique(np.stack([inv, np.unique(ex.item, return_inverse=True)[1]]), axis=1)
    items = np.bincount(pairs[0], minlength=len(creators))
    fresh_n = np.bincount(inv, weights=fresh, minlength=len(creators)).astype(np.int64)
    return CreatorTable(creators, exposures, items, fresh_n, exposures / len(inv))


def health_by_arm(ex: Exposures, arm: Sequence[str] | np.ndarray, **options) -> dict[str, Health]:
    """:func:`health` of each arm's rows (``arm``: one name per exposure; ``options`` as for :func:`health`)."""
    arms = np.asarray(arm)
    if arms.shape != ex.item.shape:
        raise ValueError(f"arm: one name per exposure, got {arms.shape} for {ex.item.shape}")
    options.setdefault("start", float(ex.time.min()))  # one window for every arm
    options.setdefault("end", float(ex.time.max()))
    return {str(a): health(ex.subset(arms == a), **options) for a in np.unique(arms)}
