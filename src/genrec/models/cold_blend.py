"""Cold blend: a trained ID model ranks the items it knows; items it never trained join the same list through
their content (after LIGER, Yang et al. 2024: generated candidates mixed with dense retrieval of unseen items).

An ID model's row of an item that never occurred in training is noise. For every such ("cold") item the blend
scores two content signals, each standardised over the cold items per user:

- ``z_emb``: the user's query (the ID model's last hidden state) against the item's predicted output embedding,
  a ridge map from content to the ID model's item rows, fitted on the trained items;
- ``z_cos``: content-kNN's cosine between the item and the user's recent history;

and, optionally, ``prior``: a fresh-item prior, the mean log training count of the trained items that share the
cold item's first ``prior_prefix`` semantic-ID codes (standardised over the cold items).

A cold item's score is ``mu + sigma * (offset + spread * ((1 - w) z_cos + w z_emb) + prior_weight * prior)``, with
``mu`` / ``sigma`` the mean and standard deviation of the user's scores over the trained items: ``offset`` says how
many standard deviations above a typical trained item the cold candidates sit. The four numbers are chosen on
validation (``genrec.train.cold_blend.select_blend``); the trained items keep the ID model's scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.jagged import Jagged
from genrec.errors import ConfigError, DataError
from genrec.models.base import Recommender
from genrec.models.content_knn import ContentKNN, ContentKNNConfig
from genrec.models.sequential import SequentialModel


class ColdBlendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    offset: float = Field(2.0, description="Where cold candidates sit: standard deviations of the user's "
                          "trained-item scores above their mean.")
    spread: float = Field(1.0, ge=0, description="Scale of the standardised content signals around the offset.")
    embedding_share: float = Field(0.5, ge=0, le=1, description="w: share of the predicted-embedding score "
                                   "(1 - w: content cosine).")
    prior_weight: float = Field(0.0, description="Weight of the fresh-item prior (needs semantic IDs).")
    prior_prefix: int = Field(1, ge=1, description="Leading semantic-ID codes a cold item shares with the trained "
                              "items its prior averages over.")
    ridge: float = Field(1.0, ge=0, description="L2 penalty of the content -> item-embedding map.")
    content: ContentKNNConfig = Field(ContentKNNConfig(), description="The content-similarity query.")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-row z-scores over the finite entries (a row without spread becomes 0)."""
    finite = torch.isfinite(x)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, x, 0).sum(1, keepdim=True) / n
    var = torch.where(finite, (x - mean) ** 2, 0).sum(1, keepdim=True) / n
    z = (x - mean) / var.sqrt().clamp(min=1e-6)
    return torch.where(finite, z, x)  # -inf (seen) stays -inf


class ColdBlend(Recommender):
    """``id_model``: a trained SASRec/HSTU; ``embeddings``: item content [n_items + 1, dim] (or anything with
    ``vectors``); ``codes``: semantic IDs [n_items + 1, C] for the fresh-item prior (optional)."""

    def __init__(self, config: ColdBlendConfig | None = None, id_model: SequentialModel | None = None,
                 embeddings: Any = None, codes: np.ndarray | None = None):
        self.config = config or ColdBlendConfig()
        self.id_model, self.embeddings, self.codes = id_model, embeddings, codes

    def with_config(self, config: ColdBlendConfig) -> ColdBlend:
        """The same fitted blend under other blend weights (nothing is refitted; the ridge map stays)."""
        other = ColdBlend(config, self.id_model, self.embeddings, self.codes)
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        other.n_items = self.n_items
        return other

    def fit(self, train: Jagged, n_items: int) -> ColdBlend:
        """The cold items are those absent from ``train``; the map and the prior are fitted on the others."""
        self._check_train(train, n_items)
        if self.id_model is None or self.id_model.n_items != n_items:
            raise ConfigError(f"ColdBlend needs a trained ID model over the {n_items:,}-item catalog (id_model)")
        knn = ContentKNN(self.config.content, self.embeddings).fit(train, n_items)
        counts = np.bincount(train.values, minlength=n_items + 1)
        counts[0] = 0
        cold = np.flatnonzero(counts == 0)
        cold = cold[cold > 0]
        if len(cold) == 0:
            raise DataError("every item occurs in training: ColdBlend has no cold items to blend in")
        content = knn.vectors_.numpy()
        has = np.linalg.norm(content, axis=1) > 0
        warm = (counts > 0) & has
        with torch.no_grad():
            table = self.id_model.item_table().detach().cpu().to(torch.float32).numpy()
        x = np.concatenate([content, np.ones((len(content), 1), np.float32)], axis=1).astype(np.float64)
        gram = x[warm].T @ x[warm] + self.config.ridge * np.eye(x.shape[1])
        gram[-1, -1] -= self.config.ridge  # the bias is not penalised
        w = np.linalg.solve(gram, x[warm].T @ table[warm].astype(np.float64))
        self.knn_, self.cold_, self.table_ = knn, torch.from_numpy(cold), torch.from_numpy(table)
        self.cold_emb_ = torch.from_numpy((x[cold] @ w).astype(np.float32))
        self.is_cold_ = torch.zeros(n_items + 1, dtype=torch.bool)
        self.is_cold_[self.cold_] = True
        self.is_cold_[0] = True  # the padding column never counts as a trained item
        self.prior_ = torch.from_numpy(self._prior(counts, cold))
        self.n_items = n_items
        return self

    def _prior(self, counts: np.ndarray, cold: np.ndarray) -> np.ndarray:
        """The fresh-item prior of every cold item, standardised (zeros without semantic IDs)."""
        if self.codes is None:
            return np.zeros(len(cold), np.float32)
        codes = np.asarray(self.codes)
        if codes.shape[0] != len(counts):
            raise DataError(f"semantic IDs have {codes.shape[0] - 1:,} items, the catalog {len(counts) - 1:,}")
        trained = np.flatnonzero(counts > 0)
        logc = np.log1p(counts).astype(np.float64)
        prior = np.full(len(cold), logc[trained].mean())
        todo = np.ones(len(cold), bool)
        for p in range(min(self.config.prior_prefix, codes.shape[1]), 0, -1):  # longest shared prefix first
            keys_t = [tuple(r) for r in codes[trained, :p]]
            sums: dict[tuple, list[float]] = {}
            for k, v in zip(keys_t, logc[trained], strict=True):
                s = sums.setdefault(k, [0.0, 0.0])
                s[0] += v
                s[1] += 1
            for j in np.flatnonzero(todo):
                s = sums.get(tuple(codes[cold[j], :p]))
                if s:
                    prior[j], todo[j] = s[0] / s[1], False
        sd = prior.std()
        return ((prior - prior.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)

    def components(self, history: Jagged, timestamps: Jagged | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trained-item scores [B, n_items + 1] (cold and padding columns -inf), their per-user mean and standard
        deviation [B, 1], and the standardised cold signals z_emb, z_cos [B, n_cold]."""
        self._check_history(history)
        h = self.id_model.last_hidden(history, timestamps).cpu().to(torch.float32)
        scores = h @ self.table_.T
        scores[:, self.is_cold_] = -torch.inf
        finite = torch.isfinite(scores)
        n = finite.sum(1, keepdim=True).clamp(min=1)
        mu = torch.where(finite, scores, 0).sum(1, keepdim=True) / n
        sigma = (torch.where(finite, (scores - mu) ** 2, 0).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
        z_emb = _standardise(h @ self.cold_emb_.T)
        z_cos = _standardise(self.knn_.score(history, np.zeros(len(history), np.int64))[:, self.cold_])
        return scores, mu, sigma, z_emb, z_cos

    def cold_signal(self, z_emb: torch.Tensor, z_cos: torch.Tensor) -> torch.Tensor:
        """The cold items' scores in the user's standard deviations, without the offset [B, n_cold]."""
        c = self.config
        mix = (1 - c.embedding_share) * z_cos + c.embedding_share * z_emb
        return c.spread * mix + c.prior_weight * self.prior_[None, :]

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        scores, mu, sigma, z_emb, z_cos = self.components(history, timestamps)
        scores[:, self.cold_] = mu + sigma * (self.config.offset + self.cold_signal(z_emb, z_cos))
        scores[:, 0] = -torch.inf
        return scores
