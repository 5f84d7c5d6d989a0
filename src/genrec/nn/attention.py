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
                        n: int, *, masked: bool = False) -> torch.Tensor:
    """HSTU's attention: SiLU(Q K^T + rab) / n, causal, no softmax.

    ``n`` is the model's maximum length (as in the reference implementation), a constant, so a position's
    output never depends on how many items follow it. q, k: [B, H, L, Da]; v: [B, H, L, Dv];
    bias: broadcastable to [B, H, L, L] or None. ``masked``: the bias already holds the causal mask (see
    :func:`masked_bias`; :meth:`RelativeBias.causal` builds one directly), so it is used as given. Runs
    :class:`PointwiseAttention` (chunked, recomputing the scores in the backward pass).
    """
    if bias is None:
        bias, masked = q.new_zeros(1, 1, 1, 1), False
    return PointwiseAttention.apply(q, k, v, bias if masked else masked_bias(bias, q.shape[-2]), n)


QUERY_TILE = 64  # queries per tile: a tile reads keys only up to its last query (the causal triangle)


def _chunk_rows(q: torch.Tensor) -> int:
    """Sequences per chunk: a chunk's [rows, H, tile, L] scores stay within a few MB (cache-resident, and below
    the allocator's mmap threshold, so no page faults per step)."""
    b, h, length, _ = q.shape
    return max(1, min(b, (1 << 19) // max(1, h * min(length, QUERY_TILE) * length)))


def _tiles(length: int) -> list[tuple[int, int]]:
    """Query ranges [i0, i1); a last tile shorter than half a tile joins the one before."""
    bounds = list(range(0, length, QUERY_TILE)) + [length]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < QUERY_TILE // 2:
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class PointwiseAttention(torch.autograd.Function):
    """:func:`pointwise_attention` computed a few sequences and a tile of queries at a time. A tile of queries
    [i0, i1) scores only keys [0, i1), so the causal triangle's upper half is mostly never computed, and the
    [B, H, L, L] score tensor is never held whole: the forward pass keeps only q, k, v and the bias, and the
    backward pass recomputes each tile's scores (one extra Q K^T). The causal mask is folded into the bias as a
    large negative number, whose SiLU and SiLU derivative are exactly 0, so a tile needs one bias add and one
    fused SiLU (or SiLU-backward) pass over its scores and no mask multiplications."""

    @staticmethod
    def forward(ctx, q, k, v, masked, n):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # else every chunk's matmul copies its slice
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        step = _chunk_rows(q)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            for i0, i1 in _tiles(q.shape[-2]):
                s = q[rows, :, i0:i1] @ k[rows, :, :i1].transpose(-1, -2)
                s += _rows(masked, rows)[..., i0:i1, :i1]
                F.silu(s, inplace=True)
                out[rows, :, i0:i1] = s @ v[rows, :, :i1]
        ctx.save_for_backward(q, k, v, masked)
        ctx.n = n
        return out / n

    @staticmethod
    def backward(ctx, grad):
        q, k, v, masked = ctx.saved_tensors
        grad = (grad / ctx.n).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dbias = torch.zeros_like(masked) if ctx.needs_input_grad[3] else None
        step = _chunk_rows(q)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            for i0, i1 in _tiles(q.shape[-2]):
                qt, kt, g = q[rows, :, i0:i1], k[rows, :, :i1], grad[rows, :, i0:i1]
                s = qt @ kt.transpose(-1, -2)
                s += _rows(masked, rows)[..., i0:i1, :i1]
                dv[rows, :, :i1] += F.silu(s).transpose(-1, -2) @ g
                ds = torch.ops.aten.silu_backward(g @ v[rows, :, :i1].transpose(-1, -2), s)
                dq[rows, :, i0:i1] = ds @ kt
                dk[rows, :, :i1] += ds.transpose(-1, -2) @ qt
                if dbias is not None:
                    part = _rows(dbias, rows)[..., i0:i1, :i1]
                    part += ds.sum_to_size(part.shape)
        return dq, dk, dv, dbias, None


def masked_bias(bias: torch.Tensor, length: int) -> torch.Tensor:
    """``bias`` plus, above the diagonal, :func:`hidden_value`: SiLU there is -0 and its derivative 0."""
    hidden = ~causal_mask(length, bias.device)
    return bias + bias.new_zeros(length, length).masked_fill_(hidden, torch.finfo(bias.dtype).min / 2)


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
