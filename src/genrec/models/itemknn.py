"""Item-kNN: cosine similarity of items' co-occurrence in training sequences, scored from a recency-weighted
history. A strong simple baseline that every learned model must beat."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.jagged import Jagged
from genrec.models.base import Recommender


class ItemKNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    neighbors: int = Field(200, ge=1, description="Similar items kept per item.")
    shrink: float = Field(10.0, ge=0, description="Added to the cosine denominator; damps rare pairs.")
    # Defaults chosen on the validation split of MovieLens-1M and Amazon Beauty (benchmarks/baselines.py).
    window: int | None = Field(5, ge=1, description="Count co-occurrence only within this many steps of "
                               "each other in a sequence (None = anywhere in the user's training sequence).")
    history_decay: float = Field(0.5, gt=0, le=1, description="Weight of a history item k steps before the "
                                 "last one is decay**k (1.0 = every item counts the same).")
    max_history: int = Field(50, ge=1, description="Only the most recent items of a history are used.")


class ItemKNN(Recommender):
    def __init__(self, config: ItemKNNConfig | None = None):
        self.config = config or ItemKNNConfig()

    def fit(self, train: Jagged, n_items: int) -> ItemKNN:
        self._check_train(train, n_items)
        n = n_items + 1
        co = self._cooccurrence(train, n)
        counts = np.asarray(co.diagonal()).astype(np.float64)
        co.setdiag(0)
        co.eliminate_zeros()
        co = co.tocoo()
        norm = np.sqrt(counts[co.row] * counts[co.col]) + self.config.shrink
        sim = sp.csr_matrix((co.data / np.maximum(norm, 1e-12), (co.row, co.col)), shape=(n, n))
        self.similarity_ = _keep_top(sim, self.config.neighbors)
        self.n_items = n_items
        return self

    def _cooccurrence(self, train: Jagged, n: int) -> sp.csr_matrix:
        rows = train.row_ids()
        if self.config.window is None:
            x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, train.values)), shape=(len(train), n))
            x.data[:] = 1.0  # an item repeated in one sequence counts once
            return (x.T @ x).tocsr()
        # Pairs (i, j) no more than `window` steps apart in the same sequence, counted both ways.
        pos = np.arange(len(train.values)) - np.repeat(train.offsets[:-1], train.lengths)
        src, dst = [np.arange(len(train.values))], [np.arange(len(train.values))]
        for d in range(1, self.config.window + 1):
            ok = pos >= d
            src.append(np.flatnonzero(ok) - d)
            dst.append(np.flatnonzero(ok))
        a, b = train.values[np.concatenate(src)], train.values[np.concatenate(dst)]
        co = sp.coo_matrix((np.ones(len(a), np.float32), (a, b)), shape=(n, n)).tocsr()
        return (co + co.T - sp.diags(co.diagonal())).tocsr()

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        return torch.from_numpy(self.sparse_scores(history, users, timestamps).toarray())

    def sparse_scores(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> sp.csr_matrix:
        """Scores [batch, n_items + 1] (float32) where only items similar to the history have an entry; every
        other item scores 0. Evaluation ranks these rows without making them dense."""
        n = self._check_history(history) + 1
        hist = history.tail(self.config.max_history)
        steps_back = np.repeat(hist.offsets[1:], hist.lengths) - 1 - np.arange(len(hist.values))
        weights = self.config.history_decay ** steps_back.astype(np.float64)
        h = sp.csr_matrix((weights, (hist.row_ids(), hist.values)), shape=(len(hist), n))
        scores = (h @ self.similarity_).tocsr()
        scores.sum_duplicates()  # summed in float64, then rounded once, as a dense copy would be
        return scores.astype(np.float32)

    def state(self) -> dict[str, torch.Tensor]:
        sim = self.similarity_
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(sim, name)))
                for name in ("data", "indices", "indptr")}

    def load_state(self, tensors: dict[str, torch.Tensor], n_items: int) -> None:
        n = n_items + 1
        self.similarity_ = sp.csr_matrix(tuple(tensors[k].numpy() for k in ("data", "indices", "indptr")),
                                         shape=(n, n))
        self.n_items = n_items


def _keep_top(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row."""
    sim = sim.tocsr()
    lengths = np.diff(sim.indptr)
    if lengths.max(initial=0) <= k:
        return sim
    keep = np.zeros(len(sim.data), dtype=bool)
    row_ids = np.repeat(np.arange(sim.shape[0]), lengths)
    # Sort by (row, -value); the first k of each row survive.
    order = np.lexsort((-sim.data, row_ids))
    rank_in_row = np.arange(len(order)) - np.repeat(sim.indptr[:-1], lengths)
    keep[order[rank_in_row < k]] = True
    return sp.csr_matrix((sim.data[keep], sim.indices[keep], np.concatenate(([0], np.cumsum(
        np.bincount(row_ids[keep], minlength=sim.shape[0]))))), shape=sim.shape)
