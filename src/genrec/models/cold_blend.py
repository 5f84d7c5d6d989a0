"""Cold blend: a trained ID model ranks the items it knows; items it never trained join the same list through
their content (after LIGER, Yang et al. 2024: generated candidates mixed with dense retrieval of unseen items).

An ID model's row of an item that never occurred in training is noise. For every such ("cold") item the blend
scores two content signals, each standardised over the cold items per user:

- ``z_emb``: the user's query (the ID model's last hidden state) against the item's predicted output embedding,
  a ridge map from content to the ID model's item rows, fitted on the trained items;
- ``z_cos``: content-kNN's cosine between the item and the user's recent history;

each standardised by constants measured at fit time on training histories (not per user, so a near-duplicate of a
history item keeps its absolute advantage),
and, optionally, ``prior``: a fresh-item prior, the mean log training count of the trained items that share the
cold item's first ``prior_prefix`` semantic-ID codes (standardised over the cold items).

A cold item's score is ``mu + sigma * (offset + spread * ((1 - w) z_cos + w z_emb) + prior_weight * prior)``, with
``mu`` / ``sigma`` the mean and standard deviation of the user's scores over the trained items: ``offset`` says how
many standard deviations above a typical trained item the cold candidates sit. A trained item keeps the ID model's
score plus ``warm_content * sigma * z_cos`` (0: the ID model's list as it is). The five numbers are chosen on
validation (``genrec.train.cold_blend.select_blend``).
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
    warm_content: float = Field(0.0, ge=0, description="Content similarity added to trained items' scores, in the "
                                "user's standard deviations per standardised cosine (0 = the ID model alone).")
    prior_prefix: int = Field(1, ge=1, description="Leading semantic-ID codes a cold item shares with the trained "
                              "items its prior averages over.")
    ridge: float = Field(1.0, ge=0, description="L2 penalty of the content -> item-embedding map.")
    content: ContentKNNConfig = Field(ContentKNNConfig(), description="The content-similarity query.")


def _moments(x: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the finite entries (1 for no spread)."""
    v = x[torch.isfinite(x)].to(torch.float64)
    if v.numel() == 0:
        return 0.0, 1.0
    sd = float(v.std(unbiased=False))
    return float(v.mean()), sd if sd > 0 else 1.0


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
        probe = train.take(np.arange(min(len(train), 1024)))  # a fixed sample of training histories
        self.cos_stats_ = _moments(knn.score(probe, np.zeros(len(probe), np.int64))[:, 1:])
        self.emb_stats_ = _moments(self.id_model.last_hidden(probe).cpu().to(torch.float32) @ self.cold_emb_.T)
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
        deviation [B, 1], the standardised predicted-embedding score of the cold items z_emb [B, n_cold] and the
        standardised content cosine of every item z_cos [B, n_items + 1]."""
        self._check_history(history)
        h = self.id_model.last_hidden(history, timestamps).cpu().to(torch.float32)
        scores = h @ self.table_.T
        scores[:, self.is_cold_] = -torch.inf
        finite = torch.isfinite(scores)
        n = finite.sum(1, keepdim=True).clamp(min=1)
        mu = torch.where(finite, scores, 0).sum(1, keepdim=True) / n
        sigma = (torch.where(finite, (scores - mu) ** 2, 0).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
        z_emb = (h @ self.cold_emb_.T - self.emb_stats_[0]) / self.emb_stats_[1]
        z_cos = (self.knn_.score(history, np.zeros(len(history), np.int64)) - self.cos_stats_[0]) / self.cos_stats_[1]
        return scores, mu, sigma, z_emb, z_cos

    def cold_signal(self, z_emb: torch.Tensor, z_cos: torch.Tensor) -> torch.Tensor:
        """The cold items' scores in the user's standard deviations, without the offset [B, n_cold] (``z_cos`` of
        the cold items only)."""
        c = self.config
        mix = (1 - c.embedding_share) * z_cos + c.embedding_share * z_emb
        return c.spread * mix + c.prior_weight * self.prior_[None, :]

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        scores, mu, sigma, z_emb, z_cos = self.components(history, timestamps)
        if self.config.warm_content:
            scores = scores + self.config.warm_content * sigma * z_cos
        scores[:, self.cold_] = mu + sigma * (self.config.offset + self.cold_signal(z_emb, z_cos[:, self.cold_]))
        scores[:, 0] = -torch.inf
        return scores
