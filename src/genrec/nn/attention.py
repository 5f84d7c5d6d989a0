"""Causal attention over right-padded batches, with a plain per-sequence reference for each kernel.

Batches are right-padded: position t of row b is real iff t < lengths[b]. With a causal mask a real query
only ever sees real keys, so no key-padding mask is needed; outputs at padded positions are ignored.
The ``*_reference`` functions loop over sequences one at a time with no padding at all; tests compare the
fast kernels with them on values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """[L, L] bool, True where query i may attend to key j (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """SASRec's attention. q, k, v: [B, H, L, Dh] -> [B, H, L, Dh]."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)


def pointwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                        n: int) -> torch.Tensor:
    """HSTU's attention: SiLU(Q K^T + rab) / n, causal, no softmax.

    ``n`` is the model's maximum length (as in the reference implementation), a constant, so a position's
    output never depends on how many items follow it. q, k: [B, H, L, Da]; v: [B, H, L, Dv];
    bias: broadcastable to [B, H, L, L] or None. Runs :class:`PointwiseAttention` (chunked, recomputing the
    scores in the backward pass).
    """
    if bias is None:
        bias = q.new_zeros(1, 1, 1, 1)
    return PointwiseAttention.apply(q, k, v, bias, n)


def _chunk_rows(q: torch.Tensor) -> int:
    """Sequences per chunk: a chunk's [rows, H, L, L] scores stay within a few MB (cache-resident, and below
    the allocator's mmap threshold, so no page faults per step)."""
    b, h, length, _ = q.shape
    return max(1, min(b, (1 << 19) // max(1, h * length * length)))


class PointwiseAttention(torch.autograd.Function):
    """:func:`pointwise_attention` computed a few sequences at a time. The [B, H, L, L] score tensor is never
    held whole: the forward pass keeps only q, k, v and the bias, and the backward pass recomputes each chunk's
    scores (one extra Q K^T) and differentiates SiLU in place."""

    @staticmethod
    def forward(ctx, q, k, v, bias, n):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # else every chunk's matmul copies its slice
        mask = causal_mask(q.shape[-2], q.device).to(q.dtype)
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        step = _chunk_rows(q)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            s = q[rows] @ k[rows].transpose(-1, -2)
            s += _rows(bias, rows)
            F.silu(s, inplace=True)
            s *= mask
            torch.matmul(s, v[rows], out=out[rows])
        ctx.save_for_backward(q, k, v, bias)
        ctx.n = n
        return out / n

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias = ctx.saved_tensors
        mask = causal_mask(q.shape[-2], q.device).to(q.dtype)
        grad = (grad / ctx.n).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbias = torch.zeros_like(bias) if ctx.needs_input_grad[3] else None
        step = _chunk_rows(q)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            s = q[rows] @ k[rows].transpose(-1, -2)
            s += _rows(bias, rows)
            sig = torch.sigmoid(s)
            torch.matmul((s * sig * mask).transpose(-1, -2), grad[rows], out=dv[rows])
            ds = grad[rows] @ v[rows].transpose(-1, -2)
            ds *= s.mul_(1 - sig).add_(1).mul_(sig)  # SiLU'(s) = sig (1 + s (1 - sig))
            ds *= mask
            torch.matmul(ds, k[rows], out=dq[rows])
            torch.matmul(ds.transpose(-1, -2), q[rows], out=dk[rows])
            if dbias is not None:
                part = _rows(dbias, rows)
                part += ds.sum_to_size(part.shape)
        return dq, dk, dv, dbias, None


def _rows(bias: torch.Tensor, rows: slice) -> torch.Tensor:
    """The bias of a chunk of sequences (a bias shared by the batch is used whole)."""
    return bias[rows] if bias.dim() == 4 and bias.shape[0] > 1 else bias


def masked_pointwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                               mask: torch.Tensor, n: int) -> torch.Tensor:
    """Pointwise SiLU attention under an arbitrary mask: SiLU(Q K^T + rab) * mask / n.

    For attention patterns that are not a plain causal square, such as ranking candidates that read a
    prefix of a cached history (queries and keys then differ in number). q: [B, H, Nq, Da]; k: [B, H, Nk, Da];
    v: [B, H, Nk, Dv]; bias and mask (bool, True = may attend): broadcastable to [B, H, Nq, Nk].
    With a causal mask it equals :func:`pointwise_attention`.
    """
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return (F.silu(scores) * mask) @ v / n


def softmax_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                lengths: torch.Tensor) -> torch.Tensor:
    """Per-sequence, unpadded, explicit softmax; padded positions of the output are zero."""
    out = torch.zeros_like(q)
    for b, n in enumerate(lengths.tolist()):
        qb, kb, vb = q[b, :, :n], k[b, :, :n], v[b, :, :n]
        s = (qb @ kb.transpose(-1, -2)) / qb.shape[-1] ** 0.5
        s = s.masked_fill(~causal_mask(n, q.device), float("-inf"))
        out[b, :, :n] = s.softmax(-1) @ vb
    return out


def pointwise_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                                  lengths: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    for b, length in enumerate(lengths.tolist()):
        s = q[b, :, :length] @ k[b, :, :length].transpose(-1, -2)
        if bias is not None:
            s = s + bias.expand(q.shape[0], q.shape[1], -1, -1)[b, :, :length, :length]
        w = F.silu(s).masked_fill(~causal_mask(length, q.device), 0.0) / n
        out[b, :, :length] = w @ v[b, :, :length]
    return out
