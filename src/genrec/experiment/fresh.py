"""Fresh-content slots of an experiment arm (``serving.fresh_share`` in the experiment file).

An arm with fresh share ``f`` reserves ``r = round(f * k)`` of an answer's ``k`` slots for **fresh items**: items
first seen at most ``fresh_days`` before the request. An item's first sighting is

- its publish time, from the catalog column ``fresh_column`` (unix seconds, an Arrow timestamp or a date), when the
  arm names one and the item has a value there;
- else, for an item the model trained on (training count > 0), never: it predates the model and is not fresh;
- else its first logged exposure or event in the server's store (read when the server starts, then kept up to date
  by every answer and event this process handles); an item the model never trained on and nobody has been shown
  yet counts as fresh (it has just arrived). A process of a multi-worker server learns of another worker's
  sightings only at its start, so it may count such an item fresh for longer: the error is toward freshness.

The reserved slots are filled from the fresh items that are **semantic-ID neighbours** of the request's history
(when the bundle has semantic IDs: items whose first code equals the first code of some history item, i.e. that
share a code prefix with it), best first by the model's score (retrieval, and the ranking stage where the bundle
has one, under the request's own filters); if they are too few, from the other fresh items by the model's score.
Without semantic IDs, every fresh item is a candidate by the model's score. The fresh picks go to the slots
``floor((j + 1) k / (r' + 1))``, ``j = 0..r'-1`` (``r'`` the picks found, at most ``r``): spread evenly down the
list, never all at the top; the model's own list fills the rest (without the picks). The answer marks each
reserved slot (``"fresh": true`` on the item) and the exposure log records them. At most MAX_CANDIDATES fresh
items (the most recently seen) are candidates for a request.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.errors import ConfigError

DAY = 86_400.0
MAX_CANDIDATES = 10_000  # fresh items scored per request at most (the most recently seen)
REFRESH_S = 1.0  # the fresh candidate set is recomputed at most this often


def reserved(k: int, share: float) -> int:
    """Slots reserved for fresh items in an answer of ``k``: ``share * k`` rounded half up."""
    return min(k, int(math.floor(share * k + 0.5)))


def positions(k: int, r: int) -> list[int]:
    """0-based slots of ``r`` fresh picks in a list of ``k``: evenly spread, distinct, never all at the top."""
    return [(j + 1) * k // (r + 1) for j in range(r)]


def place(main: list[dict[str, Any]], picks: list[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[bool]]:
    """The shown list: ``picks`` at :func:`positions`, the model's ``main`` list (less the picks) in the other slots;
    and for each slot whether it is a reserved fresh slot. Shorter than ``k`` only when both run out."""
    taken = {p["item_id"] for p in picks}
    rest = iter([m for m in main if m["item_id"] not in taken])
    slots, fresh_left = set(positions(k, len(picks))), iter(picks)
    shown: list[dict[str, Any]] = []
    flags: list[bool] = []
    for pos in range(k):
        first, second = (fresh_left, rest) if pos in slots else (rest, fresh_left)
        item = next(first, None)
        from_fresh = first is fresh_left
        if item is None:
            item, from_fresh = next(second, None), second is fresh_left
        if item is None:
            break
        if from_fresh:
            item["fresh"] = True
        shown.append(item)
        flags.append(from_fresh)
    return shown, flags


class Sightings:
    """First sighting (unix seconds) of each raw item id: the first logged exposure or event."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.changed = 0  # bumped on every new item, so cached candidate sets know to recompute

    def saw(self, items: Iterable[str], when: float) -> None:
        for item in items:
            if item not in self.first:  # setdefault under the GIL: a concurrent first sighting keeps one time
                self.first.setdefault(item, when)
                self.changed += 1

    @classmethod
    def from_store(cls, store: Any) -> Sightings:
        """From a store's exposure and engagement logs (every item's earliest time in either)."""
        return cls.from_logs(store.exposures(), store.engagements())

    @classmethod
    def from_logs(cls, exposures: Iterable[Any], engagements: Iterable[Any]) -> Sightings:
        """From exposure and engagement records (every item's earliest time in either)."""
        out = cls()
        rows = [(e.time, item) for e in exposures for item in e.items]
        rows += [(g.time, g.item_id) for g in engagements]
        for when, item in sorted(rows):
            out.first.setdefault(item, when)
        return out


def publish_times(table: pa.Table, column: str) -> np.ndarray:
    """The catalog column ``column`` as unix seconds [n] float64 (NaN where null); a ConfigError when the column
    is missing or of another type."""
    if column not in table.column_names:
        names = [c for c in table.column_names if c not in ("raw_id", "train_count")]
        raise ConfigError(f"fresh_column: the catalog has no column {column!r} (it has: {', '.join(names)})")
    values = table.column(column)
    kind = values.type
    if pa.types.is_date(kind):
        values, kind = pc.cast(values, pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(kind):
        seconds = pc.divide(pc.cast(pc.cast(values, pa.timestamp("us", kind.tz)), pa.int64()), 1e6)
        return seconds.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    raise ConfigError(f"fresh_column: column {column!r} holds {kind}; it must hold unix seconds (numbers), "
                      "timestamps or dates")


def catalog_first_seen(train_count: np.ndarray | None, published: np.ndarray | None) -> np.ndarray:
    """Per catalog item, what its catalog row says of its first sighting: the publish time where it has one, else
    -inf for an item the model trained on (never fresh), else NaN (its first logged sighting decides)."""
    n = len(train_count) if train_count is not None else len(published)
    base = np.full(n, np.nan) if train_count is None else np.where(np.asarray(train_count) > 0, -np.inf, np.nan)
    return base if published is None else np.where(np.isnan(published), base, published)


def first_seen_times(sightings: Sightings, catalog: pa.Table | None = None, column: str | None = None
                     ) -> dict[str, float]:
    """raw item id -> first sighting as serving decides freshness (module docstring): the catalog's publish
    ``column`` when given, else -inf for trained items (``train_count`` > 0), else the first logged exposure or
    event (``sightings``, the whole store's, from before the experiment too)."""
    out = dict(sightings.first)
    if catalog is None:
        return out
    counts = catalog.column("train_count").to_numpy() if "train_count" in catalog.column_names else None
    published = publish_times(catalog, column) if column is not None else None
    if counts is None and published is None:
        return out
    base = catalog_first_seen(counts, published)
    for raw, when in zip(map(str, catalog.column("raw_id").to_pylist()), base.tolist(), strict=True):
        if not math.isnan(when):
            out[raw] = when
    return out


class FreshCatalog:
    """The fresh items of one bundle's catalog (module docstring) and its semantic IDs, if any."""

    def __init__(self, rec: Any, column: str | None, sightings: Sightings):
        catalog = rec.catalog
        self.raw_ids, self.sightings = catalog.raw_ids, sightings
        published = publish_times(catalog.table, column) if column is not None else None
        base = catalog_first_seen(catalog.train_count, published)
        self.base = base  # [n] by dense id - 1: a time, -inf (old) or NaN (first sighting decides)
        self.published = np.flatnonzero(np.isfinite(base))
        self.unknown = np.flatnonzero(np.isnan(base))
        self.unknown_raw = [str(self.raw_ids[int(i)]) for i in self.unknown]
        self.codes = _semantic_ids(rec)
        self._lock = threading.Lock()
        self._cache: tuple[Any, list[str], np.ndarray] | None = None

    def candidates(self, now: float, days: float) -> tuple[list[str], np.ndarray]:
        """Raw ids and dense ids of the fresh items at ``now`` (the most recently seen MAX_CANDIDATES)."""
        key = (int(now // REFRESH_S), days, self.sightings.changed)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        cutoff = now - days * DAY
        first = self.base[self.published]
        keep = first >= cutoff
        dense, when = list(self.published[keep]), list(first[keep])
        seen = self.sightings.first
        for i, raw in zip(self.unknown.tolist(), self.unknown_raw, strict=True):
            t = seen.get(raw)
            if t is None or t >= cutoff:
                dense.append(i)
                when.append(math.inf if t is None else t)  # never shown: the newest of all
        order = np.argsort(-np.asarray(when, dtype=np.float64), kind="stable")[:MAX_CANDIDATES]
        ids = np.asarray(dense, dtype=np.int64)[order] + 1
        raw = [str(self.raw_ids[int(i) - 1]) for i in ids]
        with self._lock:
            self._cache = (key, raw, ids)
        return raw, ids

    def neighbours(self, history: Sequence[int], raw: list[str], ids: np.ndarray) -> tuple[list[str], list[str]]:
        """Split the candidates into semantic-ID neighbours of the history (dense ids; same first code as one of
        its items) and the others; without semantic IDs or history, all are 'others'."""
        if self.codes is None or not len(history) or not len(ids):
            return [], list(raw)
        near = np.isin(self.codes[ids, 0], self.codes[np.asarray(history, dtype=np.int64), 0])
        return [r for r, n in zip(raw, near.tolist(), strict=True) if n], [r for r, n in
                                                                            zip(raw, near.tolist(), strict=True)
                                                                            if not n]


def _semantic_ids(rec: Any) -> np.ndarray | None:
    """The bundle's semantic-ID table [n_items + 1, levels] (row 0 padding), or None without one."""
    from genrec.serve.bundle import SEMANTIC_ID_FILES

    folder = getattr(rec, "path", None)
    if folder is None or not all(name in (rec.manifest.get("files") or {}) for name in SEMANTIC_ID_FILES):
        return None
    from genrec.semantic_ids.codes import SemanticIds

    sids = SemanticIds.load(Path(folder))
    return sids.codes if sids.n_items == rec.n_items else None


class FreshItems:
    """Per bundle and publish column, its :class:`FreshCatalog` (built on first use; a reloaded default bundle
    gets its own), over one shared :class:`Sightings`."""

    def __init__(self, sightings: Sightings | None = None):
        self.sightings = sightings or Sightings()
        self._lock = threading.Lock()
        self._catalogs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def catalog(self, rec: Any, column: str | None) -> FreshCatalog:
        with self._lock:
            per = self._catalogs.setdefault(rec, {})
            if column not in per:
                per[column] = FreshCatalog(rec, column, self.sightings)
            return per[column]

    def saw(self, items: Iterable[str], when: float | None = None) -> None:
        self.sightings.saw(items, time.time() if when is None else when)
