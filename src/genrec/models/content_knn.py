"""Content-kNN: score every item by the cosine similarity of its content embedding to a recency-weighted mean of
the user's last history items. It learns nothing from interactions, so it scores items never seen in training:
the cold-start baseline (``genrec.data.cold_start_split``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.jagged import Jagged
from genrec.errors import ConfigError, DataError
from genrec.models.base import Recommender

PADDING_SCORE = -2.0  # column 0 (padding): finite and below every cosine similarity


class ContentKNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Not tuned: the recency weighting of ItemKNN's defaults; tune on the validation split.
    window: int = Field(5, ge=1, description="Only the user's most recent this many history items form the query.")
    decay: float = Field(0.5, gt=0, le=1, description="Weight of a history item k steps before the last one is "
                         "decay**k (1.0 = a plain mean of the window).")


class ContentKNN(Recommender):
    """``embeddings``: [n_items + 1, dim] (row 0 = padding, ignored), a numpy array, a tensor or anything with a
    ``vectors`` attribute such as :class:`genrec.content.store.ItemEmbeddings`; given here or to :meth:`fit`.
    Items whose embedding row is all zeros (no content) score 0."""

    def __init__(self, config: ContentKNNConfig | None = None, embeddings: Any = None):
        self.config = config or ContentKNNConfig()
        self.embeddings = embeddings

    def fit(self, train: Jagged, n_items: int, embeddings: Any = None) -> ContentKNN:
        """``train`` is not used (the model has nothing to learn from interactions); ``embeddings`` given here
        replace those given to the constructor."""
        source = embeddings if embeddings is not None else self.embeddings
        if source is None:
            raise ConfigError("ContentKNN needs item embeddings: pass 'embeddings' ([n_items + 1, dim], row 0 = "
                              "padding) to ContentKNN(...) or fit(...)")
        source = getattr(source, "vectors", source)
        vectors = source.detach().cpu() if isinstance(source, torch.Tensor) else torch.from_numpy(np.asarray(source))
        if vectors.ndim != 2 or vectors.shape[0] != n_items + 1:
            raise DataError(f"ContentKNN embeddings have shape {tuple(vectors.shape)}; expected [{n_items + 1}, dim] "
                            f"(one row per item of the {n_items}-item catalog plus the padding row 0)")
        vectors = vectors.to(torch.float32).clone()
        if not torch.isfinite(vectors).all():
            raise DataError("ContentKNN embeddings contain NaN or infinite values")
        vectors[0] = 0.0
        self.vectors_ = torch.nn.functional.normalize(vectors, dim=1)  # zero rows stay zero
        self.n_items = n_items
        return self

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        self._check_fitted()
        hist = history.tail(self.config.window)
        steps_back = np.repeat(hist.offsets[1:], hist.lengths) - 1 - np.arange(len(hist.values))
        weights = torch.from_numpy(self.config.decay ** steps_back.astype(np.float64)).to(torch.float32)
        items = torch.from_numpy(hist.values.astype(np.int64))
        query = torch.zeros(len(hist), self.vectors_.shape[1])
        query.index_add_(0, torch.from_numpy(hist.row_ids()), self.vectors_[items] * weights[:, None])
        # Normalising the weighted sum gives the direction of the weighted mean; an empty history scores all 0.
        scores = torch.nn.functional.normalize(query, dim=1) @ self.vectors_.T
        scores[:, 0] = PADDING_SCORE
        return scores
