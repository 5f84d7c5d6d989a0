"""Most-popular: every user gets the items most often interacted with in training."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.jagged import Jagged
from genrec.models.base import Recommender


class PopularityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recent_fraction: float = Field(1.0, gt=0, le=1, description="Count only each user's most recent share of "
                                   "training interactions (1.0 = all).")


class Popularity(Recommender):
    def __init__(self, config: PopularityConfig | None = None):
        self.config = config or PopularityConfig()

    def fit(self, train: Jagged, n_items: int) -> Popularity:
        self._check_train(train, n_items)
        src = train
        if self.config.recent_fraction < 1.0:
            keep = np.ceil(train.lengths * self.config.recent_fraction).astype(np.int64)
            src = train.slice_rows(train.lengths - keep, train.lengths)
        self.counts_ = torch.from_numpy(np.bincount(src.values, minlength=n_items + 1).astype(np.float32))
        self.n_items = n_items
        return self

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        self._check_history(history)
        return self.global_scores().expand(len(history), -1)

    def global_scores(self) -> torch.Tensor:
        """The scores [n_items + 1] every history gets; evaluation ranks them in one global order."""
        self._check_fitted()
        return self.counts_

    def state(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts_}

    def load_state(self, tensors: dict[str, torch.Tensor], n_items: int) -> None:
        self.counts_, self.n_items = tensors["counts"], n_items
