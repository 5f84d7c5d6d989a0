"""Impression logs for the multi-task ranking stage: every shown item with its feedback, per user, in time order.

An :class:`ImpressionLog` holds N impressions sorted user-major, by (user, time, original row), so the rows of
dense user ``u`` are ``user_offsets[u - 1]:user_offsets[u]``. Each row carries one label per task (binary tasks
and regression tasks), one code per action field (what the user did, as a history token sees it; 0 = padding,
real rows >= 1) and a day (the dataset's own calendar). Items and users carry categorical feature tables
(codes 0 = unknown / padding) indexed by dense id; users and items are those seen in the log. Row features are
per-impression context codes known when the impression is served (KuaiRand-Pure: ``tab``, the app surface). A
row is a *context* row (the default) when it was a real interaction that a later request may read as history;
rows that are only candidates (sampled negatives, ``genrec.data.impression_readers.with_sampled_negatives``) have
``context`` False and never appear in any history. A log is saved as Parquet tables + ``impressions.json``.

The rest of the ranking data path, mirroring the retrieval side (``dataset``, ``readers``, ``splits``):
:mod:`genrec.data.impression_readers` (the built-in logs, sampled negatives, the cache),
:mod:`genrec.data.impression_splits` (temporal, source and leave-one-out splits) and
:mod:`genrec.data.requests` (requests and their collation into ranking batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.actions import action_bits, schema_for
from genrec.data.dataset import Vocab
from genrec.errors import DataError
from genrec.io import read_prepared_info, write_json, write_parquet

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "valid", "test")  # codes 0, 1, 2 of ImpressionLog.source_split


@dataclass(frozen=True, eq=False)
class ImpressionLog:
    """N impressions sorted by (user, time, original row); see the module docstring."""

    name: str
    users: Vocab
    items: Vocab
    user: np.ndarray  # int64 [N] dense user 1..n_users
    item: np.ndarray  # int64 [N] dense item 1..n_items
    time: np.ndarray  # int64 [N] unix ms
    day: np.ndarray  # int32 [N] YYYYMMDD in the dataset's own calendar
    labels: dict[str, np.ndarray]  # task -> float32 [N]
    binary_tasks: tuple[str, ...]
    regression_tasks: tuple[str, ...]
    actions: np.ndarray  # int64 [N, A], one code per field of action_sizes (in order), >= 1
    action_sizes: dict[str, int]
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_items + 1]
    item_feature_sizes: dict[str, int] = field(default_factory=dict)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_users + 1]
    user_feature_sizes: dict[str, int] = field(default_factory=dict)
    titles: list[str] | None = None  # per dense item (index 0 = '')
    source_split: np.ndarray | None = None  # int8 [N] index into SPLIT_NAMES, where the source has a split
    meta: dict[str, Any] = field(default_factory=dict)
    context: np.ndarray | None = None  # bool [N]: the row may be a history token (None: every row may)
    # Per-impression context known when the impression is served (KuaiRand: the app tab), name -> int64 [N]
    # codes in [0, size), 0 = unknown.
    row_features: dict[str, np.ndarray] = field(default_factory=dict)
    row_feature_sizes: dict[str, int] = field(default_factory=dict)
    # The raw value (as text) of each row feature's codes 1..size-1, where the reader knows them: what a served
    # request's context ({"tab": 1}) is mapped through.
    row_feature_values: dict[str, list[str]] = field(default_factory=dict)
    user_offsets: np.ndarray = field(init=False)  # int64 [n_users + 1]
    context_rows: np.ndarray | None = field(init=False)  # int64 row index of each context row (None: all rows)
    context_before: np.ndarray = field(init=False, repr=False)  # int64 [N + 1]: context rows among rows [0, i)

    def __post_init__(self) -> None:
        n, nu, ni = len(self.user), len(self.users), len(self.items)
        if self.context is None:
            object.__setattr__(self, "context", np.ones(n, dtype=bool))
        elif np.asarray(self.context).dtype != np.bool_:
            raise DataError(f"impression log '{self.name}': context must be boolean, got {self.context.dtype}")
        for key, arr in [("item", self.item), ("time", self.time), ("day", self.day), ("actions", self.actions),
                         ("context", self.context), *self.labels.items(),
                         *([("source_split", self.source_split)] if self.source_split is not None else [])]:
            if len(arr) != n:
                raise DataError(f"impression log '{self.name}': {key} has {len(arr)} rows, expected {n}")
        if set(self.labels) != set(self.binary_tasks + self.regression_tasks):
            raise DataError(f"impression log '{self.name}': labels {sorted(self.labels)} do not match the tasks")
        if self.actions.shape[1:] != (len(self.action_sizes),):
            raise DataError(f"impression log '{self.name}': actions have shape {self.actions.shape}, expected "
                            f"[{n}, {len(self.action_sizes)}] (one column per action field)")
        if n and (self.user.min() < 1 or self.user.max() > nu or self.item.min() < 1 or self.item.max() > ni):
            raise DataError(f"impression log '{self.name}': user/item indices outside 1..{nu} / 1..{ni}")
        sizes = np.array(list(self.action_sizes.values()), dtype=np.int64)
        if n and ((self.actions < 1).any() or (self.actions >= sizes).any()):
            raise DataError(f"impression log '{self.name}': action codes must be in [1, size) per field")
        for tables, sizes_, count, what in ((self.item_features, self.item_feature_sizes, ni, "item"),
                                            (self.user_features, self.user_feature_sizes, nu, "user")):
            if set(tables) != set(sizes_):
                raise DataError(f"impression log '{self.name}': {what} feature tables and sizes differ")
            for key, t in tables.items():
                if t.shape != (count + 1,) or t.min() < 0 or t.max() >= sizes_[key] or t[0] != 0:
                    raise DataError(f"impression log '{self.name}': {what} feature '{key}' must have shape "
                                    f"({count + 1},), codes in [0, {sizes_[key]}) and 0 at index 0")
        if set(self.row_features) != set(self.row_feature_sizes):
            raise DataError(f"impression log '{self.name}': row feature columns and sizes differ")
        for key, col in self.row_features.items():
            if col.shape != (n,) or (n and (col.min() < 0 or col.max() >= self.row_feature_sizes[key])):
                raise DataError(f"impression log '{self.name}': row feature '{key}' must have {n} rows with codes "
                                f"in [0, {self.row_feature_sizes[key]})")
        for key, values in self.row_feature_values.items():
            if key not in self.row_feature_sizes or len(values) != self.row_feature_sizes[key] - 1:
                raise DataError(f"impression log '{self.name}': row feature values of '{key}' must name codes "
                                f"1..{self.row_feature_sizes.get(key, 1) - 1} of a row feature")
        order_ok = (np.diff(self.user) >= 0) & ((np.diff(self.user) > 0) | (np.diff(self.time) >= 0))
        if not order_ok.all():
            raise DataError(f"impression log '{self.name}': rows are not sorted by (user, time)")
        offsets = np.zeros(nu + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user, minlength=nu + 1)[1:], out=offsets[1:])
        object.__setattr__(self, "user_offsets", offsets)
        before = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.context, out=before[1:])
        object.__setattr__(self, "context_before", before)
        object.__setattr__(self, "context_rows", None if before[-1] == n else np.flatnonzero(self.context))

    @classmethod
    def build(cls, *, user: np.ndarray, item: np.ndarray, time: np.ndarray,
              tiebreak: tuple[np.ndarray, ...] = (), **fields_: Any) -> ImpressionLog:
        """A log from rows in any order: sorts them by (user, time, *tiebreak, original row) and takes every
        per-row field (``day``, ``labels``, ``actions``, ``source_split``, ``row_features``) along. Other keyword
        arguments are the dataclass fields (``context`` is per row too)."""
        n = len(user)
        order = np.lexsort((np.arange(n), *reversed(tiebreak), time, user))
        per_row = {k: np.asarray(fields_.pop(k))[order] for k in ("day", "actions", "source_split", "context")
                   if fields_.get(k) is not None}
        per_row["labels"] = {k: np.asarray(v, dtype=np.float32)[order] for k, v in fields_.pop("labels").items()}
        per_row["row_features"] = {k: np.asarray(v, dtype=np.int64)[order]
                                   for k, v in (fields_.pop("row_features", None) or {}).items()}
        return cls(user=np.asarray(user, dtype=np.int64)[order], item=np.asarray(item, dtype=np.int64)[order],
                   time=np.asarray(time, dtype=np.int64)[order], **per_row, **fields_)

    @property
    def n_rows(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.binary_tasks + self.regression_tasks

    def spec_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``genrec.models.ranking.RankSpec`` for this log."""
        return {"n_items": self.n_items, "n_users": self.n_users, "binary_tasks": self.binary_tasks,
                "regression_tasks": self.regression_tasks, "item_feature_sizes": dict(self.item_feature_sizes),
                "user_feature_sizes": dict(self.user_feature_sizes), "action_sizes": dict(self.action_sizes),
                "row_feature_sizes": dict(self.row_feature_sizes),
                "action_bits": action_bits(schema_for(self.name, self.action_sizes))}

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.n_rows, "users": self.n_users, "items": self.n_items,
                "context_rows": int(self.context_before[-1]),
                "first_day": int(self.day.min()) if self.n_rows else None,
                "last_day": int(self.day.max()) if self.n_rows else None,
                **label_stats(self, np.ones(self.n_rows, dtype=bool))}

    # --- Parquet + JSON ---------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """rows / users / items Parquet tables, then impressions.json (written last: it marks a complete copy)."""
        folder = Path(folder)
        rows = {"user": self.user, "item": self.item, "time": self.time, "day": self.day,
                **{f"label:{k}": v for k, v in self.labels.items()},
                **{f"action:{k}": np.ascontiguousarray(self.actions[:, a]) for a, k in enumerate(self.action_sizes)},
                **{f"row:{k}": v for k, v in self.row_features.items()}}
        if self.source_split is not None:
            rows["source_split"] = self.source_split
        if not self.context.all():  # absent: every row is a context row (logs saved before the column existed)
            rows["context"] = self.context
        write_parquet(folder / "rows.parquet", pa.table(rows))
        write_parquet(folder / "users.parquet", pa.table(
            {"raw_id": self.users.raw, **{f"feature:{k}": v[1:] for k, v in self.user_features.items()}}))
        items = {"raw_id": self.items.raw, **{f"feature:{k}": v[1:] for k, v in self.item_features.items()}}
        if self.titles is not None:
            items["title"] = pa.array(self.titles[1:], pa.string())
        write_parquet(folder / "items.parquet", pa.table(items))
        write_json(folder / "impressions.json", {
            "format_version": FORMAT_VERSION, "name": self.name, "binary_tasks": list(self.binary_tasks),
            "regression_tasks": list(self.regression_tasks), "action_sizes": self.action_sizes,
            "item_feature_sizes": self.item_feature_sizes, "user_feature_sizes": self.user_feature_sizes,
            "row_feature_sizes": self.row_feature_sizes, "row_feature_values": self.row_feature_values,
            "stats": self.stats(), "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ImpressionLog:
        folder = Path(folder)
        info = read_prepared_info(folder, "impressions.json", FORMAT_VERSION, "impression log")
        rows, users, items = (pq.read_table(folder / f"{p}.parquet") for p in ("rows", "users", "items"))

        def col(t: pa.Table, key: str, dtype: type = np.int64) -> np.ndarray:
            return t.column(key).to_numpy().astype(dtype, copy=False)

        def table(t: pa.Table, key: str) -> np.ndarray:
            return np.concatenate([[0], col(t, f"feature:{key}")])

        tasks = info["binary_tasks"] + info["regression_tasks"]
        return cls(
            name=info["name"], users=Vocab(users.column("raw_id").combine_chunks()),
            items=Vocab(items.column("raw_id").combine_chunks()), user=col(rows, "user"), item=col(rows, "item"),
            time=col(rows, "time"), day=col(rows, "day", np.int32),
            labels={k: col(rows, f"label:{k}", np.float32) for k in tasks},
            binary_tasks=tuple(info["binary_tasks"]), regression_tasks=tuple(info["regression_tasks"]),
            actions=np.stack([col(rows, f"action:{k}") for k in info["action_sizes"]], axis=1),
            action_sizes=info["action_sizes"],
            item_features={k: table(items, k) for k in info["item_feature_sizes"]},
            item_feature_sizes=info["item_feature_sizes"],
            user_features={k: table(users, k) for k in info["user_feature_sizes"]},
            user_feature_sizes=info["user_feature_sizes"],
            titles=["", *items.column("title").to_pylist()] if "title" in items.column_names else None,
            source_split=col(rows, "source_split", np.int8) if "source_split" in rows.column_names else None,
            meta=info.get("meta", {}),
            context=col(rows, "context", np.bool_) if "context" in rows.column_names else None,
            row_features={k: col(rows, f"row:{k}") for k in info.get("row_feature_sizes", {})},
            row_feature_sizes=info.get("row_feature_sizes", {}),
            row_feature_values=info.get("row_feature_values", {}))


def label_stats(log: ImpressionLog, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    return {"positive_rate": {t: float(log.labels[t][mask].mean()) if n else None for t in log.binary_tasks},
            "mean": {t: float(log.labels[t][mask].mean()) if n else None for t in log.regression_tasks}}
