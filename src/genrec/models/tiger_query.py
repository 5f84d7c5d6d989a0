"""Prompt-conditioned generation for the semantic-ID generator (``model.query`` of ``genrec.models.tiger``).

A text query becomes one more encoder token: the query's vector in the catalog's content space (what
``genrec.content.query.QueryEncoder.vector`` gives, L2-normalised) goes through a learned projection plus a learned
"query" type embedding and is placed before the history's tokens, so every encoder block and the decoder's
cross-attention read it. The decoder then writes the next item's codes given the history and the query, instead of
the query only re-weighting the finished beams' scores.

Training gives the token something to learn from: with probability ``prob`` a window's query is the target item's
own content vector plus Gaussian noise whose norm, relative to the unit vector, is drawn uniformly from
[0, ``noise``] per window (from near-exact to vague descriptions of the target, as typed queries are); the other
windows get no query (the token is
masked out), so decoding without a query stays the history-only generator. A zero vector means "no query".
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class QueryConditioning(BaseModel):
    """Condition decoding on a text query's content vector (one extra encoder token). Off unless set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: str | None = Field(None, description="Folder of the item content embeddings whose space queries "
                                "live in (genrec content encode; default runs/content/<dataset>); serve the model "
                                "with the same table (genrec export --content).")
    dim: int | None = Field(None, ge=1, description="Width of the query vectors; filled in from the content table "
                            "at training.")
    prob: float = Field(0.5, ge=0, le=1, description="Share of training windows that get a query (the target's "
                        "own content vector, noised); the rest train the history-only generator.")
    noise: float = Field(1.0, ge=0, description="Largest norm of the Gaussian noise added to a training query, "
                         "relative to its unit content vector (drawn uniformly up to it per window; 0: the exact "
                         "vector).")


class QueryToken(nn.Module):
    """The query's encoder token: ``proj(query) + kind``; rows whose query is all zero have none (masked out)."""

    def __init__(self, query_dim: int, dim: int, init_std: float):
        super().__init__()
        self.query_dim = int(query_dim)
        self.proj = nn.Linear(self.query_dim, dim)
        self.kind = nn.Parameter(torch.randn(dim) * init_std)

    def prepend(self, x: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D], key mask [B, 1, 1, S], query [B, query_dim] -> x [B, 1 + S, D] and its mask."""
        token = self.proj(query.to(x.dtype)) + self.kind  # [B, D]
        present = (query != 0).any(dim=1).view(-1, 1, 1, 1)
        return torch.cat([token[:, None], x], dim=1), torch.cat([present, mask], dim=-1)


def check_query(query: torch.Tensor, batch: int, query_dim: int | None) -> None:
    """A query batch must be [batch, query_dim] finite floats (zero rows: no query)."""
    from genrec.models.base import ModelInputError

    if query_dim is None:
        raise ModelInputError("this generator was trained without query conditioning (model.query); it cannot "
                              "read a query vector")
    if query.ndim != 2 or query.shape != (batch, query_dim):
        raise ModelInputError(f"query must be [batch {batch}, {query_dim}] content vectors, got shape "
                              f"{tuple(query.shape)}")
    if not bool(torch.isfinite(query).all()):
        raise ModelInputError("query vectors must be finite")


class Conditioned:
    """The generator seen by beam search with a fixed query batch: ``encode(history)`` reads the query too;
    everything else is the model's own (``genrec.nn.beam`` only calls the decoder interface)."""

    def __init__(self, model: nn.Module, query: torch.Tensor):
        self._model, self._query = model, query

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._model.encode(history, query=self._query)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def item_query_table(vectors: np.ndarray) -> torch.Tensor:
    """Item content vectors [n_items + 1, dim] L2-normalised (items without content, and row 0, stay zero)."""
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    return torch.nn.functional.normalize(v, dim=1)


def training_queries(table: torch.Tensor, targets: torch.Tensor, config: QueryConditioning,
                     generator: torch.Generator) -> torch.Tensor:
    """Each window's training query [B, dim]: with probability ``config.prob`` its target's content vector plus
    noise (norm uniform in [0, ``config.noise``]), renormalised; else zero (no query). ``table`` from
    :func:`item_query_table`, on the targets' device."""
    q = table[targets]
    b, d = q.shape
    keep = torch.rand(b, generator=generator) < config.prob
    if config.noise > 0:
        scale = torch.rand(b, 1, generator=generator) * (config.noise / d ** 0.5)
        q = q + (torch.randn(b, d, generator=generator) * scale).to(q.device)
        q = torch.nn.functional.normalize(q, dim=1)
    has = table[targets].abs().sum(dim=1) > 0  # an item without content gives no query
    return q * (keep.to(q.device) & has)[:, None]
