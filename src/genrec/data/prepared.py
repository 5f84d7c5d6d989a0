"""The prepared dataset layout (format version 2): hash-sharded Parquet events plus vocabularies and a manifest.

Every engine (in memory, DuckDB, Spark) writes the same folder, described in ``docs/data-layout.md``::

    manifest.json                  counts, columns, options, temporal cut times, sequence-length statistics
    users.parquet                  user_idx (1..U, first appearance in input row order), raw_id
    items.parquet                  item_idx (1..I), raw_id, count
    catalog.parquet                optional item catalog with item_idx
    events/shard=<k>/*.parquet     user_idx, pos, item_idx [, timestamp, value, event]

A user's whole sequence lives in one shard (``shard_of``), so a shard can be split and trained on by itself.
Row order inside the event files is not part of the format; readers sort a shard by (user_idx, pos).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.dataset import SequenceDataset, Vocab
from genrec.data.jagged import Jagged
from genrec.data.splits import Split, leave_one_out, temporal_split
from genrec.errors import ConfigError, DataError
from genrec.io import read_json, write_json, write_parquet

FORMAT = "genrec-prepared"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
EVENTS = "events"
HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash, reduced mod 2**32; the same expression in every engine
EVENTS_PER_SHARD = 4_000_000
# Default temporal split: the last 10% of interactions are test targets' time range, the 10% before validation.
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1


def shard_of(user_idx: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each dense user id: ``((user_idx * 2654435761) % 2**32) % shards``."""
    return ((np.asarray(user_idx, dtype=np.int64) * HASH_MULTIPLIER) % 4294967296) % shards


def default_shards(interactions: int) -> int:
    """About ``EVENTS_PER_SHARD`` (2-4 million) events per shard, at least one shard."""
    return max(1, math.ceil(interactions / EVENTS_PER_SHARD))


def default_cut_quantiles() -> tuple[float, float]:
    """Quantiles of all timestamps at which validation and test start, as :func:`temporal_split` computes them."""
    return 1 - TEST_FRACTION - VALID_FRACTION, 1 - TEST_FRACTION


def shard_folder(root: Path, k: int) -> Path:
    return root / EVENTS / f"shard={k}"


def build_manifest(*, name: str, engine: str, shards: int, users: int, items: int, interactions: int,
                   columns: list[str], dedup: bool, kcore: int | None, temporal: dict | None, source: str,
                   stats: dict, meta: dict | None = None) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "engine": engine, "shards": shards,
            "users": users, "items": items, "interactions": interactions, "columns": columns, "dedup": dedup,
            "kcore": kcore, "temporal": temporal, "source": source, "stats": stats, "meta": meta or {}}


def write_sequence_dataset(ds: SequenceDataset, folder: str | Path, *, shards: int | None = None,
                           source: str = "", meta: dict | None = None) -> dict[str, Any]:
    """Write an in-memory dataset in the prepared layout (the in-memory engine); returns the manifest."""
    folder = Path(folder)
    shards = shards or default_shards(ds.n_interactions)
    lengths = ds.sequences.lengths
    user_idx = np.repeat(np.arange(1, ds.n_users + 1, dtype=np.int64), lengths)
    pos = (np.arange(ds.n_interactions, dtype=np.int64) - np.repeat(ds.sequences.offsets[:-1], lengths))
    cols: dict[str, Any] = {"user_idx": user_idx, "pos": pos.astype(np.int32),
                            "item_idx": ds.sequences.values.astype(np.int64)}
    if ds.timestamps is not None:
        cols["timestamp"] = ds.timestamps.values
    if ds.values is not None:
        cols["value"] = ds.values.astype(np.float64)
    table = pa.table(cols)
    if ds.events is not None:
        table = table.append_column("event", ds.events.cast(pa.string()))
    shard = shard_of(user_idx, shards)
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(shards + 1))
    for k in range(shards):
        rows = order[bounds[k]:bounds[k + 1]]
        if len(rows):
            write_parquet(shard_folder(folder, k) / "part-0.parquet", table.take(pa.array(rows)))
    write_parquet(folder / "users.parquet", pa.table({"user_idx": np.arange(1, ds.n_users + 1, dtype=np.int64),
                                                      "raw_id": ds.users.raw}))
    counts = np.bincount(ds.sequences.values, minlength=ds.n_items + 1)[1:].astype(np.int64)
    write_parquet(folder / "items.parquet", pa.table({"item_idx": np.arange(1, ds.n_items + 1, dtype=np.int64),
                                                      "raw_id": ds.items.raw, "count": counts}))
    if ds.item_table is not None:
        write_parquet(folder / "catalog.parquet", ds.item_table)
    temporal = None
    if ds.timestamps is not None:
        q_valid, q_test = default_cut_quantiles()
        temporal = {"valid_start": float(np.quantile(ds.timestamps.values, q_valid)),
                    "test_start": float(np.quantile(ds.timestamps.values, q_test))}
    manifest = build_manifest(
        name=ds.name, engine="memory", shards=shards, users=ds.n_users, items=ds.n_items,
        interactions=ds.n_interactions, columns=table.column_names, dedup=bool(ds.meta.get("dedup", False)),
        kcore=ds.meta.get("kcore"), temporal=temporal, source=source, stats=ds.stats(), meta=meta)
    write_json(folder / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class _Rows:
    """The part of a dataset that :func:`leave_one_out` and :func:`temporal_split` read, for one shard's rows."""

    name: str
    sequences: Jagged
    timestamps: Jagged | None

    @property
    def n_users(self) -> int:
        return len(self.sequences)


@dataclass(frozen=True)
class PreparedShard:
    """One shard's users: rows in increasing dense user id, ``user_ids[r]`` is the dense id of row ``r``.

    Dense user and item ids are global (the dataset's vocabularies); ``n_users`` / ``n_items`` are the
    dataset's sizes, not the shard's.
    """

    name: str
    shard: int
    user_ids: np.ndarray
    sequences: Jagged
    n_users: int
    n_items: int
    timestamps: Jagged | None = None
    values: np.ndarray | None = None
    events: pa.Array | None = None
    temporal: dict | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.sequences.values)

    def split(self, kind: str = "loo", **kwargs: Any) -> Split:
        """This shard's part of the dataset's split, with global dense user ids.

        ``loo`` is per user; ``temporal`` uses the dataset's cut times from the manifest unless given.
        """
        rows = _Rows(self.name, self.sequences, self.timestamps)
        if kind == "loo":
            split = leave_one_out(rows, **kwargs)  # type: ignore[arg-type]
        elif kind == "temporal":
            cuts = {**(self.temporal or {}), **kwargs}
            split = temporal_split(rows, **cuts)  # type: ignore[arg-type]
        else:
            raise ConfigError(f"a shard splits by 'loo' or 'temporal', got {kind!r}")
        ids = self.user_ids

        def cases(c):  # row numbers (1-based) -> global dense ids
            return type(c)(ids[c.users - 1], c.history, c.targets, c.history_timestamps)

        return Split(split.kind, ids[split.train_users - 1], split.train, cases(split.valid), cases(split.test),
                     split.train_timestamps, split.info)


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder (format version 2), read shard by shard or whole."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            raise DataError(f"not a prepared dataset (no {MANIFEST})", path=path)
        manifest = read_json(file)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"unsupported prepared dataset format {manifest.get('format')!r} version "
                            f"{manifest.get('format_version')} (expected {FORMAT} {FORMAT_VERSION})", path=file)
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def n_users(self) -> int:
        return int(self.manifest["users"])

    @property
    def n_items(self) -> int:
        return int(self.manifest["items"])

    @property
    def n_interactions(self) -> int:
        return int(self.manifest["interactions"])

    @property
    def n_shards(self) -> int:
        return int(self.manifest["shards"])

    @property
    def temporal(self) -> dict | None:
        """The temporal split's cut times ``{"valid_start", "test_start"}`` over all interactions, or None."""
        return self.manifest.get("temporal")

    def stats(self) -> dict[str, Any]:
        """The same statistics as :meth:`SequenceDataset.stats`, from the manifest (nothing else is read)."""
        return self.manifest["stats"]

    def users(self) -> Vocab:
        return Vocab(self._vocab("users.parquet", "user_idx", self.n_users).column("raw_id").combine_chunks())

    def items(self) -> Vocab:
        return Vocab(self._vocab("items.parquet", "item_idx", self.n_items).column("raw_id").combine_chunks())

    def item_counts(self) -> np.ndarray:
        """Interactions per dense item id (index 0, padding, is 0)."""
        table = self._vocab("items.parquet", "item_idx", self.n_items)
        return np.concatenate([[0], table.column("count").to_numpy()]).astype(np.int64)

    def catalog(self) -> pa.Table | None:
        file = self.path / "catalog.parquet"
        return pq.read_table(file) if file.is_file() else None

    def shard_files(self, k: int) -> list[Path]:
        if not 0 <= k < self.n_shards:
            raise ConfigError(f"shard {k} out of range (the dataset has {self.n_shards} shards)")
        folder = shard_folder(self.path, k)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []  # a shard without users has no files

    def read_shard(self, k: int) -> PreparedShard:
        """Shard ``k``'s users with their whole sequences (chronological, rows by increasing user id)."""
        events = self._read_events(self.shard_files(k))
        user_idx = events.column("user_idx").to_numpy()
        user_ids, starts, lengths = np.unique(user_idx, return_index=True, return_counts=True)
        seq = Jagged.from_lengths(events.column("item_idx").to_numpy(), lengths)
        side = self._side_columns(events, seq)
        return PreparedShard(name=self.name, shard=k, user_ids=user_ids.astype(np.int64), sequences=seq,
                             n_users=self.n_users, n_items=self.n_items, temporal=self.temporal, **side)

    def iter_shards(self) -> Iterator[PreparedShard]:
        for k in range(self.n_shards):
            yield self.read_shard(k)

    def to_memory(self) -> SequenceDataset:
        """The whole dataset as a :class:`SequenceDataset` (for datasets that fit in memory)."""
        files = [f for k in range(self.n_shards) for f in self.shard_files(k)]
        events = self._read_events(files)
        if events.num_rows != self.n_interactions:
            raise DataError(f"the events hold {events.num_rows} interactions, the manifest says "
                            f"{self.n_interactions}", path=self.path / EVENTS)
        lengths = np.bincount(events.column("user_idx").to_numpy(), minlength=self.n_users + 1)[1:]
        seq = Jagged.from_lengths(events.column("item_idx").to_numpy(), lengths)
        side = self._side_columns(events, seq)
        m = self.manifest
        meta = {**m.get("meta", {}), "source": m.get("source", ""), "dedup": m["dedup"], "kcore": m["kcore"]}
        return SequenceDataset(name=self.name, users=self.users(), items=self.items(), sequences=seq,
                               item_table=self.catalog(), meta=meta, **side)

    # --- reading helpers ---------------------------------------------------------------------------------

    def _vocab(self, file: str, key: str, n: int) -> pa.Table:
        path = self.path / file
        if not path.is_file():
            raise DataError("missing vocabulary file", path=path)
        table = pq.read_table(path)
        ids = table.column(key).to_numpy()
        if not (len(ids) and np.all(ids[1:] > ids[:-1])):  # engines need not write the vocabulary in order
            table = table.sort_by(key)
            ids = table.column(key).to_numpy()
        if len(ids) != n or (n and (ids[0] != 1 or ids[-1] != n)):
            raise DataError(f"expected {key} 1..{n}", path=path)
        return table

    def _read_events(self, files: list[Path]) -> pa.Table:
        """Events of ``files`` sorted by (user_idx, pos), checked to be each user's positions 0..n-1."""
        schema = pa.schema([("user_idx", pa.int64()), ("pos", pa.int32()), ("item_idx", pa.int64())])
        tables = [pq.ParquetFile(f).read() for f in files]
        if not tables:
            return schema.empty_table()
        events = pa.concat_tables(tables).sort_by([("user_idx", "ascending"), ("pos", "ascending")])
        user_idx, pos = events.column("user_idx").to_numpy(), events.column("pos").to_numpy()
        _, starts, lengths = np.unique(user_idx, return_index=True, return_counts=True)
        expected = np.arange(len(pos), dtype=np.int64) - np.repeat(starts, lengths)
        if not np.array_equal(pos, expected):
            bad = int(user_idx[np.flatnonzero(pos != expected)[0]])
            raise DataError(f"user_idx {bad}: positions are not 0..n-1", path=files[0].parent)
        return events

    @staticmethod
    def _side_columns(events: pa.Table, seq: Jagged) -> dict[str, Any]:
        names = events.column_names
        return {
            "timestamps": Jagged(events.column("timestamp").to_numpy(), seq.offsets) if "timestamp" in names
            else None,
            "values": events.column("value").to_numpy() if "value" in names else None,
            "events": events.column("event").combine_chunks() if "event" in names else None,
        }


def is_prepared_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
