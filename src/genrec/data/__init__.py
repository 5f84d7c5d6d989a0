"""genrec.data: read, validate, map ids, order chronologically, split, and batch interaction data."""

from __future__ import annotations

from pathlib import Path

from genrec.data.builtin import REGISTRY, BuiltinDataset, data_home, download, get_builtin, verify
from genrec.data.dataset import SequenceDataset, Vocab, prepare
from genrec.data.impressions import (
    ImpressionLog,
    ImpressionSplit,
    Requests,
    load_impressions,
    ranking_requests,
)
from genrec.data.jagged import Jagged
from genrec.data.readers import read_interactions, read_items, read_sequences
from genrec.data.schema import DataSchema, InteractionSchema, ItemSchema, load_schema
from genrec.data.splits import (
    ColdStartSplit,
    EvalCases,
    Split,
    cold_start_split,
    leave_one_out,
    make_split,
    temporal_split,
    with_validation_in_train,
)
from genrec.errors import UnknownDatasetError


def load_dataset(
    name_or_path: str | Path,
    schema: InteractionSchema | None = None,
    items_path: str | Path | None = None,
    item_schema: ItemSchema | None = None,
    dedup: bool = False,
    kcore: int | None = None,
) -> SequenceDataset:
    """A built-in dataset by name, a prepared dataset folder, or a user's interaction file."""
    path = Path(name_or_path)
    if str(name_or_path) in REGISTRY:
        ds = get_builtin(str(name_or_path)).load()
        if dedup or kcore:
            ds = _reprepare(ds, dedup, kcore)
        return ds
    if path.is_dir() and (path / "dataset.json").is_file():
        return SequenceDataset.load(path)
    if not path.exists():
        if path.suffix or "/" in str(name_or_path):
            read_interactions(path)  # raises a DataError naming the missing file
        raise UnknownDatasetError(
            f"unknown dataset '{name_or_path}'; built-in datasets are {', '.join(REGISTRY)} (or give a path)")
    table = read_interactions(path, schema)
    items = read_items(items_path, item_schema) if items_path is not None else None
    return prepare(table, name=path.stem, items=items, dedup=dedup, kcore=kcore, meta={"source": str(path)})


def _reprepare(ds: SequenceDataset, dedup: bool, kcore: int | None) -> SequenceDataset:
    import pyarrow as pa

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


__all__ = [
    "REGISTRY", "BuiltinDataset", "ColdStartSplit", "DataSchema", "EvalCases", "ImpressionLog", "ImpressionSplit",
    "InteractionSchema", "ItemSchema", "Jagged", "Requests", "SequenceDataset", "Split", "Vocab", "cold_start_split",
    "data_home", "download", "get_builtin", "leave_one_out", "load_dataset", "load_impressions", "load_schema",
    "make_split", "prepare", "ranking_requests", "read_interactions", "read_items", "read_sequences", "temporal_split",
    "verify", "with_validation_in_train",
]
