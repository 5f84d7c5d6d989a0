"""HSTU's relative attention bias: a learned weight per relative position and per bucketed time gap."""

from __future__ import annotations

import math

import torch
from torch import nn


class RelativeBias(nn.Module):
    """bias[b, i, j] = w_pos[i - j] (+ w_time[bucket(|t_i - t_j|)] when timestamps are given).

    Relative positions beyond ``max_len`` share the last weight; time gaps are bucketed on a log scale.
    """

    def __init__(self, max_len: int, time_buckets: int = 0, time_log_base: float = 2.0):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Parameter(torch.zeros(max_len))
        self.time_log_base = time_log_base
        self.time = nn.Parameter(torch.zeros(time_buckets + 1)) if time_buckets > 0 else None

    def forward(self, length: int, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """[1 or B, 1, L, L] bias (broadcast over heads)."""
        idx = torch.arange(length, device=self.pos.device)
        rel = (idx[:, None] - idx[None, :]).clamp(0, self.max_len - 1)  # only j <= i is ever used (causal)
        bias = self.pos[rel][None, None]
        if self.time is not None and timestamps is not None:
            gap = (timestamps[:, :, None] - timestamps[:, None, :]).abs().to(torch.float32)
            bucket = (torch.log1p(gap) / math.log(self.time_log_base)).floor().long()
            bias = bias + self.time[bucket.clamp(0, len(self.time) - 1)][:, None]
        return bias
