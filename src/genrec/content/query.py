"""Text queries in a catalog's content space: a query is embedded by the catalog's text model and fused the way its
items were (:func:`genrec.content.encode.fuse`), so its cosine to every item's content vector is meaningful.

Fusion of a query: its text vector is L2-normalised and weighted like the text block, the other modalities' blocks
are zero, then the table's projection applies (``pca``: the stored map; ``random``: the same seeded map). A query
steers a model's ranking by :func:`blend_with_query`: (1 - w) z(model score) + w z(cosine(query, item)).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genrec.content.encode import FusionConfig, fit_projection, l2_normalize
from genrec.content.text import text_encoder
from genrec.errors import GenrecError


@dataclass
class ContentTable:
    """A catalog's content embeddings: rows L2-normalised (items without content stay zero)."""

    vectors: torch.Tensor  # [n_items + 1, dim]
    has: torch.Tensor  # [n_items + 1] bool: the item has a content vector
    meta: dict[str, Any]  # the table's description (modalities, text model, fusion settings, block widths)
    projection: dict[str, torch.Tensor] | None  # the pca map (mean, components) when the table was projected

    @classmethod
    def from_vectors(cls, vectors: torch.Tensor, meta: dict[str, Any],
                     projection: dict[str, torch.Tensor] | None = None) -> ContentTable:
        vectors = vectors.to(torch.float32)
        return cls(F.normalize(vectors, dim=1), vectors.norm(dim=1) > 0, meta, projection)


def to_content_space(text: np.ndarray, content: ContentTable) -> np.ndarray:
    """Text vectors [n, text_dim] fused like the table's items -> [n, dim] (see the module docstring)."""
    meta = content.meta
    fusion = FusionConfig.model_validate(meta.get("fusion") or {})
    blocks = []
    for name in meta.get("modalities", ["text"]):
        if name == "text":
            blocks.append(l2_normalize(text) * np.float32(fusion.weights.get("text", 1.0)))
        else:
            blocks.append(np.zeros((len(text), int(meta.get(f"{name}_dim", 0))), np.float32))
    x = np.concatenate(blocks, axis=1)
    if fusion.projection == "pca":
        if content.projection is None:
            raise GenrecError("the content table was projected with pca, but its projection is missing")
        p = content.projection
        x = ((x - p["mean"].numpy()) @ p["components"].numpy()).astype(np.float32)
    elif fusion.projection == "random":
        proj = fit_projection(x, fusion)
        assert proj is not None
        x = proj(x)
    if x.shape[1] != content.vectors.shape[1]:
        raise GenrecError(f"the query maps to {x.shape[1]} dimensions; the content table has "
                          f"{content.vectors.shape[1]}")
    return x


class QueryEncoder:
    """cosine(query, item content) over a :class:`ContentTable`. The text encoder is created and loaded once, on
    the first query, under a lock; a failure is kept and raised again, so a broken encoder is not reloaded on
    every request. Safe to share between threads."""

    def __init__(self, content: ContentTable):
        self.content = content
        self._lock = threading.Lock()
        self._encoder: Any = None
        self._error: str | None = None
        self._dim = 0

    def similarity(self, query: str) -> torch.Tensor:
        """cosine(query, item content) [n_items + 1]."""
        return self.similarity_to(self.vector(query))

    def vector(self, query: str) -> torch.Tensor:
        """The query in the table's content space, L2-normalised [dim] (what a prompt-conditioned generator reads)."""
        encoder, dim = self._load()
        text = np.asarray(encoder.encode([query]), dtype=np.float32).reshape(1, -1)
        if text.shape[1] != dim:
            raise GenrecError(f"the text encoder gives {text.shape[1]}-d vectors; the content table's text has {dim}")
        return F.normalize(torch.from_numpy(to_content_space(text, self.content)), dim=1)[0].float()

    def similarity_to(self, vector: torch.Tensor) -> torch.Tensor:
        """cosine(:meth:`vector`, item content) [n_items + 1]."""
        return (self.content.vectors @ vector).float()

    def _load(self) -> tuple[Any, int]:
        with self._lock:
            if self._encoder is None and self._error is None:
                try:
                    meta = self.content.meta
                    if "text" not in meta.get("modalities", ["text"]) or not meta.get("text_model"):
                        raise GenrecError("the content embeddings hold no text (no text model named)")
                    encoder = text_encoder(str(meta["text_model"]))
                    load = getattr(encoder, "load", None)
                    if callable(load):
                        load()
                    self._dim = int(meta.get("text_dim") or encoder.dim)
                    self._encoder = encoder
                except Exception as e:
                    self._error = f"{type(e).__name__}: {e}"
            if self._error is not None:
                raise GenrecError(f"no text encoder for queries ({self._error})")
            return self._encoder, self._dim


def blend_with_query(scores: torch.Tensor, similarity: torch.Tensor, weight: float,
                     ids: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - weight) * z(scores) + weight * z(similarity). Dense ``scores`` [n_items + 1] are z-scored over the real
    items (row 0, the padding, stays 0); with ``ids``, ``scores`` are those candidates' and z-scored among them,
    the similarity still over the catalog."""
    if ids is None:
        return (1 - weight) * _zscore_items(scores) + weight * _zscore_items(similarity)
    return (1 - weight) * _zscore_all(scores) + weight * _zscore_items(similarity)[ids]


def _zscore_all(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over every entry (0 where they do not vary)."""
    std = x.std() if x.numel() > 1 else torch.tensor(0.0)
    if torch.isfinite(std) and std > 0:
        return (x - x.mean()) / std
    return torch.zeros_like(x)


def _zscore_items(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the real items (row 0, the padding, is left at 0)."""
    body = x[1:]
    std = body.std()
    out = torch.zeros_like(x)
    if body.numel() > 1 and torch.isfinite(std) and std > 0:
        out[1:] = (body - body.mean()) / std
    return out
