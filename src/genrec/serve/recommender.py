"""The in-process serving API: load a bundle, recommend from a history of raw item ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from genrec.data.jagged import Jagged
from genrec.errors import GenrecError
from genrec.models import SEQUENTIAL, SequentialModel
from genrec.serve.bundle import load_manifest


@dataclass
class Recommendation:
    items: list[dict[str, Any]]  # item_id, score, and display fields (title, ...)
    warnings: list[str] = field(default_factory=list)
    fallback: bool = False


class Recommender:
    def __init__(self, model: SequentialModel, items: dict[str, Any], manifest: dict[str, Any]):
        self.model, self.manifest = model.eval(), manifest
        self.raw_ids: list[str] = items["raw_id"]
        self.display = {k: v for k, v in items.items() if k not in ("raw_id", "item_idx", "train_count")}
        self.index = {raw: i + 1 for i, raw in enumerate(self.raw_ids)}
        self.popular = np.argsort(-np.asarray(items["train_count"]), kind="stable") + 1

    @classmethod
    def load(cls, bundle: str | Path) -> Recommender:
        bundle = Path(bundle)
        manifest = load_manifest(bundle)
        from genrec.io import read_json

        spec = read_json(bundle / "model.json")
        if spec["name"] not in SEQUENTIAL:
            raise GenrecError(f"{bundle}: unknown model {spec['name']!r}")
        model_cls, config_cls = SEQUENTIAL[spec["name"]]
        model = model_cls(config_cls.model_validate(spec["config"]), spec["n_items"], spec["use_timestamps"])
        state = load_file(bundle / "model.safetensors")
        model.attach_from_state(state)  # content / semantic-ID features travel in the weights
        model.load_state_dict(state)
        table = pq.read_table(bundle / "items.parquet").sort_by("item_idx")
        return cls(model, table.to_pydict(), manifest)

    def recommend(self, history: list[Any], k: int = 10, exclude_seen: bool = True) -> Recommendation:
        """Top-``k`` items after ``history`` (raw item ids, oldest first); unknown ids are skipped with a
        warning, and an empty history gets the most popular items (``fallback=True``)."""
        known = [self.index[str(h)] for h in history if str(h) in self.index]
        warnings = [f"unknown item id {h!r} ignored" for h in history if str(h) not in self.index]
        if not known:
            return Recommendation(self._items(self.popular[:k], None), warnings, fallback=True)
        scores = self.model.score(Jagged.from_lists([known]))[0]
        scores[0] = -torch.inf
        if exclude_seen:
            scores[known] = -torch.inf
        top = torch.topk(scores, min(k, len(self.raw_ids))).indices.numpy()
        return Recommendation(self._items(top, scores[top].tolist()), warnings)

    def _items(self, ids: np.ndarray, scores: list[float] | None) -> list[dict[str, Any]]:
        out = []
        for j, i in enumerate(ids.tolist()):
            row = {"item_id": self.raw_ids[i - 1], "score": None if scores is None else float(scores[j])}
            row.update({k: v[i - 1] for k, v in self.display.items()})
            out.append(row)
        return out
