"""HSTU, the Hierarchical Sequential Transduction Unit ("Actions Speak Louder than Words", ICML 2024).

One fused projection gives U, V, Q, K through SiLU; attention is pointwise SiLU(Q K^T + rab) / n, causal,
without softmax; the block output is x + W2(dropout(LayerNorm(A V) * U)). rab is a learned relative bias
over positions and, when timestamps exist, bucketed time gaps.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genrec.models.sequential import SequentialConfig, SequentialModel
from genrec.nn.attention import pointwise_attention, pointwise_attention_reference
from genrec.nn.dropout import Dropout
from genrec.nn.relative_bias import RelativeBias


class HSTUConfig(SequentialConfig):
    name: Literal["hstu"] = "hstu"
    attn_dim: int | None = Field(None, ge=1, description="Per-head Q/K size (default dim // heads).")
    linear_dim: int | None = Field(None, ge=1, description="Per-head U/V size (default dim // heads).")
    time_buckets: int = Field(64, ge=0, description="Log-scale time-gap buckets of the relative bias "
                              "(used only when the data has timestamps; 0 = none).")


class HSTUBlock(nn.Module):
    def __init__(self, cfg: HSTUConfig, use_timestamps: bool = False):
        super().__init__()
        self.h = cfg.heads
        self.da = cfg.attn_dim or cfg.dim // cfg.heads
        self.dv = cfg.linear_dim or cfg.dim // cfg.heads
        self.max_len = cfg.max_len
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.uvqk = nn.Linear(cfg.dim, self.h * (2 * self.dv + 2 * self.da))
        self.norm_attn = nn.LayerNorm(self.h * self.dv)
        self.out = nn.Linear(self.h * self.dv, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.rab = RelativeBias(cfg.max_len, cfg.time_buckets if use_timestamps else 0)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused SiLU projection of ``x`` [B, N, D]: U [B, N, H*Dv] and per-head V, Q, K [B, H, N, Dv/Da]."""
        b, n, _ = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).split(
            [self.h * self.dv, self.h * self.dv, self.h * self.da, self.h * self.da], dim=-1)
        v, q, k = (t.view(b, n, self.h, -1).transpose(1, 2) for t in (v, q, k))
        return u, v, q, k

    def finish(self, x: torch.Tensor, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The block output x + W2(dropout(LayerNorm(A) * U)) from the per-head attention output A [B, H, N, Dv]."""
        a = a.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.h * self.dv)
        return x + self.out(self.drop(self.norm_attn(a) * u))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor | None = None,
                reference: bool = False, bias_index: torch.Tensor | None = None) -> torch.Tensor:
        """``bias_index``: :meth:`RelativeBias.causal_index` of this batch, shared by the blocks (else built)."""
        u, v, q, k = self.project(x)
        if reference:
            bias = self.rab(x.shape[1], timestamps)
            a = pointwise_attention_reference(q, k, v, bias, lengths, self.max_len)
        else:
            if bias_index is None:
                bias_index = self.rab.causal_index(x.shape[1], timestamps)
            a = pointwise_attention(q, k, v, self.rab.causal(bias_index, timestamps), self.max_len, masked=True)
        return self.finish(x, a, u)

    def forward_last(self, x: torch.Tensor, lengths: torch.Tensor,
                     timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output at each sequence's last position only [B, D]: keys and values for every position,
        one query row per sequence (serving and evaluation read nothing else from the last block)."""
        b, n, _ = x.shape
        u, v, q, k = self.project(x)  # v, q, k: [B, H, N, *]
        rows, last = torch.arange(b, device=x.device), lengths - 1
        cols = torch.arange(n, device=x.device)
        q_last = q[rows, :, last].unsqueeze(-2)  # [B, H, 1, Da]
        gap = None
        if timestamps is not None and self.rab.time is not None:
            gap = timestamps[rows, last][:, None] - timestamps
        bias = self.rab.at(last[:, None] - cols[None, :], gap)  # [B, N]
        scores = (q_last @ k.transpose(-1, -2)).squeeze(-2) + bias[:, None, :]  # [B, H, N]
        w = F.silu(scores) * (cols[None, None, :] <= last[:, None, None])
        a = (w.unsqueeze(-2) @ v).squeeze(-2).reshape(b, self.h * self.dv) / self.max_len
        return x[rows, last] + self.out(self.drop(self.norm_attn(a) * u[rows, last]))


class HSTU(SequentialModel):
    def __init__(self, config: HSTUConfig, n_items: int, use_timestamps: bool = False):
        """``use_timestamps``: the data has timestamps, so the relative bias also learns time-gap weights."""
        super().__init__(config, n_items, use_timestamps)
        self.blocks = nn.ModuleList(HSTUBlock(config, use_timestamps) for _ in range(config.blocks))

    def encode_embeddings(self, x: torch.Tensor, lengths: torch.Tensor,
                          timestamps: torch.Tensor | None) -> torch.Tensor:
        index = None if self.reference else self.blocks[0].rab.causal_index(x.shape[1], timestamps)
        for block in self.blocks:
            x = block(x, lengths, timestamps, self.reference, index)
        return x

    def encode_last(self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        if self.reference:
            return super().encode_last(x, lengths, timestamps)
        index = self.blocks[0].rab.causal_index(x.shape[1], timestamps) if len(self.blocks) > 1 else None
        for block in self.blocks[:-1]:
            x = block(x, lengths, timestamps, bias_index=index)
        return self.blocks[-1].forward_last(x, lengths, timestamps)
