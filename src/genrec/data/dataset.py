"""The prepared dataset: dense id vocabularies and one chronological jagged sequence per user.

Raw ids are mapped to dense ints once, here; index 0 is padding, so dense id ``i`` is ``raw[i - 1]``.
A dataset is saved as Parquet + JSON and travels with every run; ``genrec data prepare`` writes the sharded
layout of :mod:`genrec.data.prepared`, which :meth:`SequenceDataset.load` reads as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data.jagged import Jagged
from genrec.errors import DataError
from genrec.io import read_prepared_info, write_json, write_parquet

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Vocab:
    """Raw id <-> dense id. ``raw[i]`` is the raw id of dense id ``i + 1``."""

    raw: pa.Array

    def __len__(self) -> int:
        return len(self.raw)

    def encode(self, raw_ids: pa.Array | list, missing: int = -1) -> np.ndarray:
        """Dense ids of ``raw_ids``; unknown ids become ``missing``."""
        arr = pa.array(raw_ids) if isinstance(raw_ids, list) else raw_ids
        if arr.type != self.raw.type:
            try:
                arr = pc.cast(arr, self.raw.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return np.full(len(arr), missing, dtype=np.int64)
        idx = pc.index_in(arr, value_set=self.raw).to_numpy(zero_copy_only=False)
        dense = np.where(np.isnan(idx.astype(np.float64)), missing - 1, idx) + 1
        return dense.astype(np.int64)

    def decode(self, dense_ids: np.ndarray) -> list:
        return self.raw.take(pa.array(np.asarray(dense_ids, dtype=np.int64) - 1)).to_pylist()


@dataclass(frozen=True)
class SequenceDataset:
    """Users' chronological item sequences with their vocabularies and optional side columns."""

    name: str
    users: Vocab
    items: Vocab
    sequences: Jagged  # row u-1 holds the dense item ids of dense user u, oldest first
    timestamps: Jagged | None = None
    values: np.ndarray | None = None  # aligned with sequences.values
    events: pa.Array | None = None
    item_table: pa.Table | None = None  # column 'item_idx' (dense) + catalog columns
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return len(self.sequences.values)

    def stats(self) -> dict[str, Any]:
        lengths = self.sequences.lengths
        n = self.n_users * self.n_items
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / n if n else 0.0,
            "has_timestamps": self.timestamps is not None,
            "has_item_table": self.item_table is not None,
            "sequence_length": {
                "min": int(lengths.min()),
                "mean": float(lengths.mean()),
                "median": float(np.median(lengths)),
                "p90": float(np.percentile(lengths, 90)),
                "p99": float(np.percentile(lengths, 99)),
                "max": int(lengths.max()),
            },
        }

    def item_titles(self) -> list[str] | None:
        """Display title of every dense item id (index 0 = padding ''), when the catalog has one."""
        if self.item_table is None or "title" not in self.item_table.column_names:
            return None
        titles = [""] * (self.n_items + 1)
        for i, t in zip(self.item_table.column("item_idx").to_pylist(), self.item_table.column("title").to_pylist(),
                        strict=True):
            titles[i] = t or ""
        return titles

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        lengths = self.sequences.lengths
        cols = {"user_idx": np.repeat(np.arange(1, self.n_users + 1, dtype=np.int64), lengths),
                "item_idx": self.sequences.values.astype(np.int64)}
        if self.timestamps is not None:
            cols["timestamp"] = self.timestamps.values
        if self.values is not None:
            cols["value"] = self.values
        table = pa.table(cols)
        if self.events is not None:
            table = table.append_column("event", self.events)
        write_parquet(folder / "interactions.parquet", table)
        write_parquet(folder / "users.parquet", pa.table({"raw_id": self.users.raw}))
        write_parquet(folder / "items.parquet", pa.table({"raw_id": self.items.raw}))
        if self.item_table is not None:
            write_parquet(folder / "catalog.parquet", self.item_table)
        write_json(folder / "dataset.json", {"format_version": FORMAT_VERSION, "name": self.name,
                                              "stats": self.stats(), "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SequenceDataset:
        """A folder written by :meth:`save` (format version 1) or a prepared dataset (version 2, read whole)."""
        folder = Path(folder)
        if not (folder / "dataset.json").is_file() and (folder / "manifest.json").is_file():
            from genrec.data.prepared import PreparedDataset  # it builds on this module

            return PreparedDataset.open(folder).to_memory()
        info = read_prepared_info(folder, "dataset.json", FORMAT_VERSION, "genrec dataset")
        inter = pq.read_table(folder / "interactions.parquet")
        users = pq.read_table(folder / "users.parquet").column("raw_id").combine_chunks()
        items = pq.read_table(folder / "items.parquet").column("raw_id").combine_chunks()
        lengths = np.bincount(inter.column("user_idx").to_numpy(), minlength=len(users) + 1)[1:]
        seq = Jagged.from_lengths(inter.column("item_idx").to_numpy(), lengths)
        ts = Jagged(inter.column("timestamp").to_numpy(), seq.offsets) if "timestamp" in inter.column_names else None
        catalog = folder / "catalog.parquet"
        return cls(
            name=info["name"], users=Vocab(users), items=Vocab(items), sequences=seq, timestamps=ts,
            values=inter.column("value").to_numpy() if "value" in inter.column_names else None,
            events=inter.column("event").combine_chunks() if "event" in inter.column_names else None,
            item_table=pq.read_table(catalog) if catalog.is_file() else None, meta=info.get("meta", {}),
        )


def prepare(
    interactions: pa.Table,
    *,
    name: str,
    items: pa.Table | None = None,
    dedup: bool = False,
    kcore: int | None = None,
    meta: dict[str, Any] | None = None,
) -> SequenceDataset:
    """Canonical interaction table -> :class:`SequenceDataset`.

    Order within a user is chronological by ``timestamp`` when present, ties (and files without
    timestamps) keep the original row order. Dense ids follow first appearance in that row order.
    ``dedup`` keeps the first occurrence of each (user, item) pair; ``kcore`` repeatedly drops users and
    items with fewer than k interactions.
    """
    if interactions.num_rows == 0:
        raise DataError("the interaction table is empty")
    user_raw, item_raw = interactions.column("user").combine_chunks(), interactions.column("item").combine_chunks()
    user_codes = _codes(user_raw)
    item_codes = _codes(item_raw)
    ts = interactions.column("timestamp").to_numpy() if "timestamp" in interactions.column_names else None
    # Chronological order, ties (and files without timestamps) in original row order; users come later.
    order = np.arange(len(user_codes)) if ts is None else np.argsort(ts, kind="stable")
    keep = np.ones(len(order), dtype=bool)
    if dedup:
        pair = user_codes[order].astype(np.int64) * (int(item_codes.max()) + 1) + item_codes[order]
        _, first = np.unique(pair, return_index=True)
        keep[:] = False
        keep[first] = True
    order = order[keep]
    if kcore:
        order = order[_kcore_mask(user_codes[order], item_codes[order], kcore)]
    if len(order) == 0:
        raise DataError(f"no interactions left after preprocessing (kcore={kcore}, dedup={dedup})")
    # Re-densify over what is left, in first-appearance order of the original rows.
    first_rows = np.sort(order)
    users = pc.unique(user_raw.take(pa.array(first_rows)))
    item_vocab = pc.unique(item_raw.take(pa.array(first_rows)))
    u_dense = Vocab(users).encode(user_raw.take(pa.array(order)))
    i_dense = Vocab(item_vocab).encode(item_raw.take(pa.array(order)))
    by_user = np.argsort(u_dense, kind="stable")  # order is already chronological within each user
    rows = order[by_user]
    lengths = np.bincount(u_dense, minlength=len(users) + 1)[1:]
    seq = Jagged.from_lengths(i_dense[by_user], lengths)
    timestamps = Jagged(ts[rows], seq.offsets) if ts is not None else None
    values = interactions.column("value").to_numpy()[rows] if "value" in interactions.column_names else None
    events = (interactions.column("event").combine_chunks().take(pa.array(rows))
              if "event" in interactions.column_names else None)
    catalog = _join_catalog(items, Vocab(item_vocab)) if items is not None else None
    return SequenceDataset(name=name, users=Vocab(users), items=Vocab(item_vocab), sequences=seq,
                           timestamps=timestamps, values=values, events=events, item_table=catalog,
                           meta={**(meta or {}), "dedup": dedup, "kcore": kcore})


def _codes(arr: pa.Array) -> np.ndarray:
    return pc.index_in(arr, value_set=pc.unique(arr)).to_numpy(zero_copy_only=False).astype(np.int64)


def _kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    mask = np.ones(len(users), dtype=bool)
    while True:
        u_count = np.bincount(users[mask], minlength=users.max() + 1)
        i_count = np.bincount(items[mask], minlength=items.max() + 1)
        new = mask & (u_count[users] >= k) & (i_count[items] >= k)
        if new.sum() == mask.sum():
            return mask
        mask = new


def _join_catalog(items: pa.Table, vocab: Vocab) -> pa.Table:
    """Keep catalog rows of items that occur in the interactions; add their dense ``item_idx``."""
    dense = vocab.encode(items.column("item").combine_chunks())
    keep = dense > 0
    table = items.filter(pa.array(keep)).append_column("item_idx", pa.array(dense[keep]))
    _, first = np.unique(table.column("item_idx").to_numpy(), return_index=True)  # one row per item
    return table.take(pa.array(np.sort(first)))


def reprepare(ds: SequenceDataset, dedup: bool, kcore: int | None) -> SequenceDataset:
    """``ds`` prepared again from its raw rows with ``dedup`` / ``kcore``."""
    cols = {"user": ds.users.raw.take(pa.array(ds.sequences.row_ids())),
            "item": ds.items.raw.take(pa.array(ds.sequences.values - 1))}
    if ds.timestamps is not None:
        cols["timestamp"] = ds.timestamps.values
    if ds.values is not None:
        cols["value"] = ds.values
    if ds.events is not None:
        cols["event"] = ds.events
    catalog = None
    if ds.item_table is not None:
        catalog = ds.item_table.drop_columns(["item_idx"])
    return prepare(pa.table(cols), name=ds.name, items=catalog, dedup=dedup, kcore=kcore, meta=ds.meta)
