"""The item embedding table every content encoder writes and every tokenizer reads.

On disk (one folder): ``embeddings.safetensors`` with tensor ``vectors`` [n_items + 1, dim] float32 (row 0 =
padding, zeros; row i = dense item i), ``items.parquet`` (columns ``item_idx`` and ``item``: the raw id, as a
string) and ``embeddings.json`` (dataset, model names, fields, dim, counts of missing inputs). Rows of items
whose content could not be read are zeros and listed in ``missing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from genrec.errors import DataError
from genrec.io import atomic_write, read_json, write_json, write_parquet

FILES = ("embeddings.safetensors", "items.parquet", "embeddings.json")


@dataclass
class ItemEmbeddings:
    vectors: np.ndarray  # [n_items + 1, dim] float32, row 0 = padding
    item_ids: list[str]  # raw id of dense items 1..n_items (index 0 of the list is dense item 1)
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, model(s), fields, template, ...
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # dense ids with no content

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.item_ids) + 1:
            raise DataError(f"embedding table has shape {self.vectors.shape}; expected [{len(self.item_ids) + 1}, dim]"
                            " (one row per item plus the padding row 0)")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / FILES[0], lambda tmp: save_file({"vectors": torch.from_numpy(self.vectors)}, tmp))
        write_parquet(folder / FILES[1], pa.table({"item_idx": pa.array(np.arange(1, self.n_items + 1), pa.int64()),
                                                   "item": pa.array([str(i) for i in self.item_ids], pa.string())}))
        write_json(folder / FILES[2], {**self.meta, "n_items": self.n_items, "dim": self.dim,
                                       "missing": [int(i) for i in self.missing]})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ItemEmbeddings:
        folder = Path(folder)
        for name in FILES:
            if not (folder / name).is_file():
                raise DataError(f"{folder}: not an embedding table (missing {name}); "
                                "write one with 'genrec content encode'")
        meta = read_json(folder / FILES[2])
        items = pq.read_table(folder / FILES[1])
        order = np.argsort(items.column("item_idx").to_numpy())
        item_ids = [items.column("item").to_pylist()[i] for i in order]
        missing = np.asarray(meta.pop("missing", []), dtype=np.int64)
        meta.pop("n_items", None), meta.pop("dim", None)
        vectors = load_file(folder / FILES[0])["vectors"].numpy()
        return cls(vectors=vectors, item_ids=item_ids, meta=meta, missing=missing)
