"""The weight average some trainers validate, select and test instead of the last weights (``train.ema``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from genrec.errors import GenrecError


class WeightAverage:
    """An exponential moving average of a model's float parameters (``train.ema``), updated after every optimizer
    step: ``avg <- avg + (1 - d) (w - avg)`` with ``d = min(decay, (1 + t) / (10 + t))`` at step t, so the first
    steps are not dominated by the initial weights. Evaluating the average instead of the last iterate smooths
    the step-to-step noise of small-batch training; :meth:`swapped` puts it into the model for validation,
    selection and test."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.avg = {k: p.detach().clone() for k, p in model.named_parameters() if p.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, p in model.named_parameters():
            if k in self.avg:
                self.avg[k].lerp_(p.detach(), 1.0 - d)

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model holding the averaged weights for the duration of the block, its own weights after it."""
        params = dict(model.named_parameters())
        own = {k: params[k].detach().clone() for k in self.avg}
        with torch.no_grad():
            for k, v in self.avg.items():
                params[k].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in own.items():
                    params[k].copy_(v)

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.avg, "__steps__": torch.tensor(self.steps)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) - {"__steps__"} != set(self.avg):
            raise GenrecError("the checkpoint's weight average does not match the model")
        self.steps = int(tensors["__steps__"])
        for k, v in self.avg.items():
            v.copy_(tensors[k])
