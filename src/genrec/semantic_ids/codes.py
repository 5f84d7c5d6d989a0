"""Semantic IDs as the models read them: L content codes per item plus one code that makes every ID unique.

``codes[i]`` is dense item i's ID, a row of ``levels + 1`` ints; column j lies in ``[0, sizes[j])``. Row 0 is
the padding item and holds -1 everywhere. On disk: ``semantic_ids.safetensors`` (tensor ``codes``, int64) and
``semantic_ids.json`` (sizes, method, dataset and the tokenizer that produced them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrec.errors import DataError
from genrec.io import atomic_write, read_json, write_json


@dataclass
class SemanticIds:
    codes: np.ndarray  # [n_items + 1, n_levels] int64; row 0 = -1 (padding)
    sizes: list[int]  # number of distinct codes of each column (content levels, then the uniqueness code)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codes = np.ascontiguousarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.sizes):
            raise DataError(f"semantic IDs have shape {self.codes.shape}; expected [n_items + 1, {len(self.sizes)}]")
        body = self.codes[1:]
        if body.size and (body.min() < 0 or (body >= np.asarray(self.sizes)).any()):
            raise DataError("a semantic-ID code lies outside its codebook")

    @property
    def n_items(self) -> int:
        return self.codes.shape[0] - 1

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    def is_unique(self) -> bool:
        return len(np.unique(self.codes[1:], axis=0)) == self.n_items

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "semantic_ids.safetensors",
                     lambda tmp: save_file({"codes": torch.from_numpy(self.codes)}, tmp))
        write_json(folder / "semantic_ids.json", {**self.meta, "sizes": list(self.sizes)})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SemanticIds:
        folder = Path(folder)
        for name in ("semantic_ids.safetensors", "semantic_ids.json"):
            if not (folder / name).is_file():
                raise DataError(f"{folder}: no semantic IDs here (missing {name}); make them with 'genrec tokenize'")
        meta = read_json(folder / "semantic_ids.json")
        sizes = [int(s) for s in meta.pop("sizes")]
        return cls(codes=load_file(folder / "semantic_ids.safetensors")["codes"].numpy(), sizes=sizes, meta=meta)
