"""Collaborative semantic IDs: codes learned from content vectors fused with a trained ID model's item embeddings.

Content-only codes group items that read alike; an ID model's item embeddings group items that the same people
take next. Fusing both (``[normalise(content), weight * normalise(id_embedding)]``, then the usual residual
quantiser) gives codes whose prefixes carry both. Items that the ID model never trained (absent from its
training sequences, or seen fewer than ``min_count`` times) have no usable embedding: theirs is predicted from
their content by a ridge map fitted on the trained items, so a new item gets a collaborative code from its
content alone, now and later (the map is saved with the tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open

from genrec.errors import DataError

ID_TABLE = "item_emb.weight"  # the learned id rows of a sequential model (item_repr: id)


class CollaborativeConfig(BaseModel):
    """Fuse a trained ID model's item embeddings into the vectors the quantiser sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id_model: Path = Field(description="Run folder of a trained ID model (SASRec/HSTU with item_repr: id): its "
                           "model.safetensors holds the item embeddings, its items.parquet the training counts.")
    weight: float = Field(1.0, gt=0, description="Weight of the normalised ID embedding next to the normalised "
                          "content vector (1 = equal say; larger = codes follow behaviour more).")
    ridge: float = Field(1.0, ge=0, description="L2 penalty of the content -> ID-embedding map for untrained items.")
    min_count: int = Field(1, ge=1, description="Items seen fewer times than this in the ID model's training "
                           "sequences use the predicted embedding instead of their own.")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def read_id_model(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The item id table [n_items + 1, D] and training counts [n_items + 1] of a trained ID-model run folder."""
    folder = Path(folder)
    weights, items = folder / "model.safetensors", folder / "items.parquet"
    for path in (weights, items):
        if not path.is_file():
            raise DataError(f"not a trained ID-model run folder (missing {path.name}); train one with "
                            "'genrec train' (sasrec or hstu, item_repr: id)", path=folder)
    with safe_open(str(weights), "pt") as f:
        names = set(f.keys())  # noqa: SIM118  (a safetensors handle is not a mapping)
        if ID_TABLE not in names:
            raise DataError(f"{weights.name} has no {ID_TABLE}: collaborative semantic IDs need an ID model with "
                            "item_repr: id (a learned row per item)", path=folder)
        table = f.get_tensor(ID_TABLE).to(torch.float32).numpy()
    t = pq.read_table(items, columns=["item_idx", "train_count"])
    counts = np.zeros(len(table), np.int64)
    idx = t.column("item_idx").to_numpy()
    if idx.min(initial=1) < 1 or idx.max(initial=0) >= len(table):
        raise DataError(f"items.parquet lists item ids outside 1..{len(table) - 1}", path=folder)
    counts[idx] = t.column("train_count").to_numpy()
    return table, counts


def fit_content_map(content: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge regression ``[normalise(content), 1] @ W ~ targets``: W [dim + 1, D] (the last row is the bias)."""
    x = np.concatenate([_unit(content.astype(np.float64)), np.ones((len(content), 1))], axis=1)
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    gram[-1, -1] -= ridge  # the bias is not penalised
    return np.linalg.solve(gram, x.T @ targets.astype(np.float64)).astype(np.float32)


def apply_content_map(content: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Predicted ID embeddings [n, D] of content vectors [n, dim]."""
    x = _unit(content.astype(np.float32))
    return x @ w[:-1] + w[-1]


def fuse(content: np.ndarray, parts: np.ndarray, weight: float) -> np.ndarray:
    """``[normalise(content), weight * normalise(parts)]`` row by row."""
    return np.concatenate([_unit(content.astype(np.float32)), weight * _unit(parts.astype(np.float32))], axis=1)


def collaborative_vectors(content: np.ndarray, table: np.ndarray, counts: np.ndarray,
                          config: CollaborativeConfig, has_content: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fused vectors [n_items + 1, dim + D] (row 0 padding), the content map W and a summary.

    ``content`` [n_items + 1, dim] and ``table`` / ``counts`` (from :func:`read_id_model`) describe the same
    catalog in dense-id order. ``has_content`` [n_items + 1] marks rows with real content (default: all): the map
    is fitted on trained items with content only."""
    if content.shape[0] != table.shape[0]:
        raise DataError(f"the content table has {content.shape[0] - 1:,} items, the ID model {table.shape[0] - 1:,};"
                        " both must describe the same catalog")
    trained = counts >= config.min_count
    trained[0] = False
    fit_rows = trained & (np.ones(len(trained), bool) if has_content is None else has_content)
    if fit_rows.sum() < 2:
        raise DataError(f"fewer than 2 items were trained at least {config.min_count} times; cannot fit the "
                        "content -> ID-embedding map")
    w = fit_content_map(content[fit_rows], table[fit_rows], config.ridge)
    ids = table.astype(np.float32).copy()
    ids[~trained] = apply_content_map(content[~trained], w)
    fused = fuse(content, ids, config.weight)
    fused[0] = 0.0
    pred = apply_content_map(content[fit_rows], w)
    cos = (_unit(pred) * _unit(table[fit_rows])).sum(1)
    summary = {"trained_items": int(trained.sum()), "predicted_items": int((~trained[1:]).sum()),
               "map_fit_items": int(fit_rows.sum()), "map_cosine_on_trained_mean": float(cos.mean()),
               "id_dim": int(table.shape[1]), "content_dim": int(content.shape[1])}
    return fused, w, summary
