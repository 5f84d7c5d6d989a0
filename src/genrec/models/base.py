"""What every recommender offers: ``fit`` on training sequences, ``score`` a batch of histories; and the input
checks every model runs at its entry points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrec.data.jagged import Jagged
from genrec.errors import GenrecError
from genrec.io import atomic_write, read_json, write_json


class ModelInputError(GenrecError, ValueError):
    """A model was given input it cannot read: ids outside its catalog, a wrong dtype or shape."""


def check_ids(values: np.ndarray | torch.Tensor, low: int, high: int, what: str) -> None:
    """Raise :class:`ModelInputError` naming ``what`` unless ``values`` are integers in ``low..high``."""
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise ModelInputError(f"{what} must be integers, got dtype {values.dtype}")
        bounds = [int(v) for v in torch.aminmax(values)] if values.numel() else None
    else:
        values = np.asarray(values)
        if values.dtype.kind not in "iu":
            raise ModelInputError(f"{what} must be integers, got dtype {values.dtype}")
        bounds = [int(values.min()), int(values.max())] if values.size else None
    if bounds is not None and (bounds[0] < low or bounds[1] > high):
        bad = bounds[0] if bounds[0] < low else bounds[1]
        raise ModelInputError(f"{what} must lie in {low}..{high}; got {bad}")


class Recommender(ABC):
    """No work in ``__init__``; learned state is set by :meth:`fit` (scikit-learn's rule). A fitted model is
    saved as ``model.json`` (class, config, n_items) and ``model.safetensors`` (its learned arrays), never
    pickled."""

    n_items: int | None = None
    config: Any

    @abstractmethod
    def fit(self, train: Jagged, n_items: int) -> Recommender:
        """Learn from training sequences of dense item ids (1..n_items)."""

    @abstractmethod
    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        """Scores [len(history), n_items + 1]; column 0 is padding."""

    def state(self) -> dict[str, torch.Tensor]:
        """The learned arrays, for :meth:`save`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def load_state(self, tensors: dict[str, torch.Tensor], n_items: int) -> None:
        """Set the learned arrays :meth:`state` returned."""
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded")

    def save(self, folder: str | Path) -> Path:
        n_items = self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.state().items()}
        atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
        write_json(folder / "model.json", {"class": type(self).__name__, "n_items": n_items,
                                           "config": self.config.model_dump(mode="json")})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Recommender:
        """The model :meth:`save` wrote to ``folder``."""
        folder = Path(folder)
        info = read_json(folder / "model.json")
        if info.get("class") != cls.__name__:
            raise GenrecError(f"{folder}: holds a {info.get('class')!r} model, not {cls.__name__}")
        model = cls(type(cls().config).model_validate(info["config"]))
        model.load_state(load_file(folder / "model.safetensors"), int(info["n_items"]))
        return model

    def _check_fitted(self) -> int:
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return self.n_items

    def _check_train(self, train: Jagged, n_items: int) -> None:
        if n_items < 1:
            raise ModelInputError(f"n_items must be at least 1, got {n_items}")
        check_ids(train.values, 1, n_items, "training item ids")

    def _check_history(self, history: Jagged) -> int:
        """The fitted catalog size, once ``history`` holds only its item ids."""
        n_items = self._check_fitted()
        check_ids(history.values, 1, n_items, "history item ids")
        return n_items
