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
        self._tables: dict[bool, torch.Tensor] | None = None  # see precompute (not saved with the weights)

    def precompute(self) -> None:
        """Serving: build both forms of the weight table once (call it after the weights are loaded), so that an
        eval-mode lookup under no_grad is one gather instead of rebuilding the table per block and batch."""
        self._tables = None
        with torch.no_grad():
            self._tables = {timed: self._table(timed) for timed in (False, self.time is not None)}

    def train(self, mode: bool = True) -> RelativeBias:
        if mode:  # training changes the weights: the precomputed tables would go stale
            self._tables = None
        return super().train(mode)

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

    def index(self, rel: torch.Tensor, gap: torch.Tensor | None = None) -> torch.Tensor:
        """Flat indices into the (relative position, time bucket) table for explicit relative positions
        ``rel`` (int) and, when given, time gaps ``gap`` (same shape); :meth:`lookup` turns them into the bias.

        For tokens whose positions are not 0..L-1 of one sequence (a ranking candidate placed right after
        the history prefix it reads). Stacked blocks built alike share the indices, so they are computed once
        per batch. Negative ``rel`` (keys after the query) use weight 0; callers mask them.
        """
        idx = rel.clamp(0, self.max_len - 1)
        if self.time is None:
            return idx
        n_time = len(self.time)
        if gap is None:  # the table's extra last column holds no time weight
            return idx * (n_time + 1) + n_time
        bucket = (torch.log1p(gap.abs().to(torch.float32)) / math.log(self.time_log_base)).floor().long()
        return idx * (n_time + 1) + bucket.clamp(0, n_time - 1)

    def causal_index(self, length: int, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """[1 or B, L, L] indices for :meth:`causal`: positions (and, with timestamps, time gaps) of 0..L-1, keys
        after the query pointing at one extra, hidden entry. Stacked blocks built alike share them, so a batch
        computes them once."""
        idx = torch.arange(length, device=self.pos.device)
        rel = idx[:, None] - idx[None, :]
        if self._timed(timestamps):
            index = self.index(rel.expand(len(timestamps), -1, -1), timestamps[:, :, None] - timestamps[:, None, :])
        else:
            index = rel.clamp(0, self.max_len - 1)[None]
        table = self._table(self._timed(timestamps))
        return index.masked_fill((rel < 0).expand_as(index), table.numel())

    def causal(self, index: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """[1 or B, 1, L, L] bias from :meth:`causal_index` (built with the same ``timestamps``), the causal mask
        folded in: keys after the query get :func:`~genrec.nn.attention.hidden_value` (SiLU 0, derivative 0)."""
        flat = self._table(self._timed(timestamps)).reshape(-1)
        hidden = flat.new_full((1,), torch.finfo(flat.dtype).min / 2)
        return torch.cat([flat, hidden])[index].unsqueeze(1)

    def _timed(self, timestamps: torch.Tensor | None) -> bool:
        return self.time is not None and timestamps is not None

    def _table(self, timed: bool) -> torch.Tensor:
        """Position weights, or [position, time bucket] sums whose extra last column has no time weight."""
        if self._tables is not None and not self.training and not torch.is_grad_enabled():
            return self._tables[timed]
        if not timed:
            return self.pos
        return self.pos[:, None] + torch.cat([self.time, self.time.new_zeros(1)])[None, :]

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """w_pos[rel] (+ w_time[bucket(|gap|)]) for indices from :meth:`index`, shaped like ``index``."""
        return self._table(self.time is not None).reshape(-1)[index]

    def at(self, rel: torch.Tensor, gap: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`lookup` of :meth:`index`: the bias for explicit relative positions and time gaps."""
        return self.lookup(self.index(rel, gap))
