"""What every recommender offers: ``fit`` on training sequences, ``score`` a batch of histories."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from genrec.data.jagged import Jagged


class Recommender(ABC):
    """No work in ``__init__``; learned state is set by :meth:`fit` (scikit-learn's rule)."""

    n_items: int | None = None

    @abstractmethod
    def fit(self, train: Jagged, n_items: int) -> Recommender:
        """Learn from training sequences of dense item ids (1..n_items)."""

    @abstractmethod
    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        """Scores [len(history), n_items + 1]; column 0 is padding."""

    def _check_fitted(self) -> int:
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return self.n_items
