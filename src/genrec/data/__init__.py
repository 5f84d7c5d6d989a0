"""genrec.data: read, validate, map ids, order chronologically, split, and batch interaction data."""

from __future__ import annotations

from pathlib import Path

from genrec.data.builtin import REGISTRY, BuiltinDataset, data_home, download, get_builtin, verify
from genrec.data.dataset import SequenceDataset, Vocab, prepare, reprepare
from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import ImpressionSplit
from genrec.data.impressions import ImpressionLog
from genrec.data.jagged import Jagged
from genrec.data.ooc import PrepareConfig, prepare_to_folder
from genrec.data.prepared import PreparedDataset, PreparedShard
from genrec.data.readers import read_interactions, read_items, read_sequences
from genrec.data.requests import Requests, ranking_requests
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
    """A built-in dataset by name, a prepared dataset folder (either layout), or a user's interaction file."""
    path = Path(name_or_path)
    if str(name_or_path) in REGISTRY:
        ds = get_builtin(str(name_or_path)).load()
        if dedup or kcore:
            ds = reprepare(ds, dedup, kcore)
        return ds
    if path.is_dir() and ((path / "dataset.json").is_file() or (path / "manifest.json").is_file()):
        return SequenceDataset.load(path)
    if not path.exists():
        if path.suffix or "/" in str(name_or_path):
            read_interactions(path)  # raises a DataError naming the missing file
        raise UnknownDatasetError(
            f"unknown dataset '{name_or_path}'; built-in datasets are {', '.join(REGISTRY)} (or give a path)")
    table = read_interactions(path, schema)
    items = read_items(items_path, item_schema) if items_path is not None else None
    return prepare(table, name=path.stem, items=items, dedup=dedup, kcore=kcore, meta={"source": str(path)})


__all__ = [
    "REGISTRY", "BuiltinDataset", "ColdStartSplit", "DataSchema", "EvalCases", "ImpressionLog", "ImpressionSplit",
    "InteractionSchema", "ItemSchema", "Jagged", "PrepareConfig", "PreparedDataset", "PreparedShard", "Requests",
    "SequenceDataset", "Split", "Vocab", "cold_start_split", "data_home", "download", "get_builtin", "leave_one_out",
    "load_dataset", "load_impressions", "load_schema", "make_split", "prepare", "prepare_to_folder",
    "ranking_requests", "read_interactions", "read_items", "read_sequences", "reprepare", "temporal_split", "verify",
    "with_validation_in_train",
]
