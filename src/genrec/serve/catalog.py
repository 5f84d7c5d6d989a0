"""The item catalog a recommender serves: raw ids and display fields as Arrow columns, never one Python object per
item, so a catalog of tens of millions of items loads in about the time it takes to map two files.

An export writes, besides ``items.parquet``:

- ``catalog.arrow``: the items in dense-id order (row i = dense id i + 1): ``raw_id`` as text, ``train_count`` and
  the display fields, uncompressed Arrow IPC;
- ``catalog_index.arrow``: ``hash``, a 64-bit FNV-1a hash of every raw id's UTF-8 bytes, sorted, with ``item``,
  the dense id at each position (a raw id is found by binary search on its hash and confirmed by comparing the
  stored id, so a collision is never a wrong answer); and ``by_count``, the dense ids most trained first (ties in
  dense order).

Loading memory-maps both files read-only: every process serving the bundle shares their pages, and only the rows a
request returns are decoded. A bundle without them (an older export) reads ``items.parquet`` into memory and builds
the same lookup there. A catalog of at most DICT_MAX_ITEMS items also keeps a dict of its raw ids (a few MB), which
answers a request's lookups without the Arrow round trips of the hash search.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.errors import GenrecError
from genrec.io import atomic_write

CATALOG_FILE = "catalog.arrow"
CATALOG_INDEX_FILE = "catalog_index.arrow"
CATALOG_FILES = (CATALOG_FILE, CATALOG_INDEX_FILE)
HIDDEN = ("raw_id", "item_idx", "train_count")  # columns that are not display fields
HASH_CHUNK = 1 << 20  # raw ids hashed per step: bounded scratch memory at any catalog size
DICT_MAX_ITEMS = 1 << 17  # catalogs up to this size also look raw ids up in a dict
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def hash_ids(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of each text value's UTF-8 bytes [n] uint64, computed column-wise (one numpy step per byte
    position, over the values still that long)."""
    values = pc.cast(values, pa.large_string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:
        raise GenrecError("item ids must not be null")
    out = np.empty(len(values), np.uint64)
    for lo in range(0, len(values), HASH_CHUNK):
        out[lo:lo + HASH_CHUNK] = _fnv1a(values.slice(lo, HASH_CHUNK))
    return out


def _fnv1a(values: pa.LargeStringArray) -> np.ndarray:
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[values.offset:values.offset + len(values) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start, length = offsets[:-1], np.diff(offsets)
    h = np.full(len(values), _FNV_OFFSET, np.uint64)
    alive, j = np.flatnonzero(length > 0), 0
    while alive.size:
        h[alive] = (h[alive] ^ data[start[alive] + j]) * _FNV_PRIME
        j += 1
        alive = alive[length[alive] > j]
    return h


class Column(Sequence):
    """A read-only view of one catalog column: ``column[i]`` decodes row ``i`` (0-based) only."""

    def __init__(self, values: pa.Array):
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.values[i].as_py()

    def __iter__(self) -> Iterator[Any]:
        for lo in range(0, len(self.values), HASH_CHUNK):
            yield from self.values.slice(lo, HASH_CHUNK).to_pylist()


class IdIndex(Mapping):
    """Raw id (text) -> dense id, over the catalog's hash lookup (no dict of every id)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def __getitem__(self, raw: Any) -> int:
        i = int(self.catalog.lookup([raw])[0])
        if not i:
            raise KeyError(raw)
        return i

    def __len__(self) -> int:
        return self.catalog.n_items

    def __iter__(self) -> Iterator[str]:
        return iter(self.catalog.raw_ids)


class Catalog:
    """Items 1..n: ``raw_ids`` and ``display`` (name -> :class:`Column`), ``train_count`` [n], ``by_count``
    (dense ids, most trained first) and the raw id -> dense id lookup (:meth:`lookup`, :attr:`index`)."""

    def __init__(self, table: pa.Table, hashes: np.ndarray, hash_items: np.ndarray, by_count: np.ndarray):
        self.table = table
        self.raw = _one_chunk(table.column("raw_id"))
        self.n_items = len(self.raw)
        self.raw_ids = Column(self.raw)
        self.display = {name: Column(_one_chunk(table.column(name))) for name in table.column_names
                        if name not in HIDDEN}
        self.train_count = _one_chunk(table.column("train_count")).to_numpy()
        self.hashes, self.hash_items, self.by_count = hashes, hash_items, by_count
        self.index = IdIndex(self)
        self._ids: dict[str, int] | None = None
        if self.n_items <= DICT_MAX_ITEMS:  # reversed: a repeated raw id maps to its first dense id, as in the hash
            self._ids = dict(zip(reversed(self.raw.to_pylist()), range(self.n_items, 0, -1), strict=True))

    @classmethod
    def from_items(cls, items: pa.Table) -> Catalog:
        """From an ``items.parquet`` table (item_idx, raw_id, train_count, display fields), in memory."""
        table = _dense_table(items)
        hashes, hash_items, by_count = _lookup_arrays(table)
        return cls(table, hashes, hash_items, by_count)

    @classmethod
    def load(cls, bundle: str | Path, files: Iterable[str]) -> Catalog:
        """The bundle's catalog: memory-mapped when the manifest lists the catalog files, else from items.parquet."""
        bundle = Path(bundle)
        if not all(name in set(files) for name in CATALOG_FILES):
            return cls.from_items(pq.read_table(bundle / "items.parquet"))
        table, index = (_read_mapped(bundle / name) for name in CATALOG_FILES)
        columns = [_one_chunk(index.column(c)).to_numpy() for c in ("hash", "item", "by_count")]
        return cls(table, *columns)

    def save(self, bundle: str | Path) -> list[str]:
        """Write the catalog files into ``bundle``; returns their names."""
        index = pa.table({"hash": self.hashes, "item": self.hash_items, "by_count": self.by_count})
        for name, table in ((CATALOG_FILE, self.table), (CATALOG_INDEX_FILE, index)):
            atomic_write(Path(bundle) / name, lambda tmp, t=table: _write_ipc(tmp, t))
        return list(CATALOG_FILES)

    def lookup(self, raw: Sequence[Any]) -> np.ndarray:
        """Dense ids [len(raw)] int64 of raw ids (compared as text); 0 for ids not in the catalog."""
        if not len(raw) or not self.n_items:
            return np.zeros(len(raw), np.int64)
        if self._ids is not None:
            ids = self._ids
            return np.fromiter((ids.get(str(r), 0) for r in raw), np.int64, len(raw))
        keys = pa.array([str(r) for r in raw], pa.large_string())
        h = hash_ids(keys)
        pos = np.minimum(np.searchsorted(self.hashes, h), self.n_items - 1)
        found = np.where(self.hashes[pos] == h, self.hash_items[pos], 0).astype(np.int64)
        hit = np.flatnonzero(found)
        if hit.size:
            stored = self.raw.take(pa.array(found[hit] - 1))
            same = pc.equal(stored, keys.take(pa.array(hit))).to_numpy(zero_copy_only=False)
            for j in hit[~same].tolist():  # another id with the same hash: look through the equal-hash run
                found[j] = self._scan(int(pos[j]), h[j], str(raw[j]))
        return found

    def _scan(self, start: int, h: np.uint64, key: str) -> int:
        j = start
        while j < self.n_items and self.hashes[j] == h:
            if self.raw[int(self.hash_items[j]) - 1].as_py() == key:
                return int(self.hash_items[j])
            j += 1
        return 0

    def rows(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Dense ids as the API shows items: ``item_id`` (the raw id) and the display fields, decoded per row."""
        return [{"item_id": self.raw_ids[i - 1], **{k: v[i - 1] for k, v in self.display.items()}} for i in ids]


def _dense_table(items: pa.Table) -> pa.Table:
    """items.parquet in dense-id order without ``item_idx`` (row i = dense id i + 1), raw ids as text."""
    missing = {"item_idx", "raw_id", "train_count"} - set(items.column_names)
    if missing:
        raise GenrecError(f"items.parquet: missing column(s) {', '.join(sorted(missing))}")
    items = items.sort_by("item_idx")
    idx = items.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(1, len(idx) + 1)):
        raise GenrecError("items.parquet: item_idx must be the dense ids 1..n, each once")
    items = items.drop_columns(["item_idx"])
    items = items.set_column(items.column_names.index("raw_id"), "raw_id",
                             pc.cast(items.column("raw_id"), pa.large_string()))
    return items.combine_chunks()


def _lookup_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted hashes, the dense id at each position, dense ids by training count) of a dense catalog table."""
    h = hash_ids(table.column("raw_id"))
    order = np.argsort(h, kind="stable")
    counts = _one_chunk(table.column("train_count")).to_numpy()
    return h[order], order.astype(np.int64) + 1, np.argsort(-counts, kind="stable").astype(np.int64) + 1


def _one_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _write_ipc(path: str, table: pa.Table) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def _read_mapped(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped: its buffers point into the page cache (zero copy, shared)."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise GenrecError(f"{path}: not a readable Arrow file ({e})") from None
