"""Dropout whose mask is drawn as uniform > p.

The same distribution as :class:`torch.nn.Dropout` (each element kept with probability 1 - p and scaled by
1 / (1 - p)), but on CPU ``torch.rand`` fills a tensor several times faster than the ``bernoulli_`` sampler
that ``nn.Dropout`` calls, and the sequence models draw a mask over every token of every block.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x).gt_(self.p).mul_(1.0 / (1.0 - self.p))  # 0 or the kept elements' scale
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
