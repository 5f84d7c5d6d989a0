"""Fast attention kernels against their plain per-sequence references: values and gradients, float64."""

from __future__ import annotations

import pytest
import torch

from genrec.nn.attention import (
    causal_mask,
    pointwise_attention,
    pointwise_attention_reference,
    softmax_attention,
    softmax_attention_reference,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def random_batch(seed: int, b: int = 4, h: int = 2, length: int = 9, da: int = 6, dv: int = 5):
    """q, k, v [B, H, L, D] in float64 (padded positions hold garbage, not zeros) and varied lengths."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, length, da, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, length, da, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, length, dv, generator=g, dtype=torch.float64)
    lengths = torch.tensor([length, 1, 4, length - 2][:b])
    return q, k, v, lengths, g


def real_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B, 1, L, 1] True at real positions."""
    return (torch.arange(length)[None, :] < lengths[:, None])[:, None, :, None]


def values_and_grads(fn, tensors: list[torch.Tensor], mask: torch.Tensor, weight: torch.Tensor):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    loss = (out * weight * mask).sum()
    grads = torch.autograd.grad(loss, leaves)
    return out.detach(), grads


def test_causal_mask() -> None:
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert torch.equal(m, torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_attention_matches_reference(heads: int, seed: int) -> None:
    q, k, v, lengths, g = random_batch(seed, h=heads, dv=6)
    mask = real_mask(lengths, q.shape[2])
    weight = torch.randn(q.shape, generator=g, dtype=torch.float64)
    fast, fast_grads = values_and_grads(lambda a, b, c: softmax_attention(a, b, c), [q, k, v], mask, weight)
    ref, ref_grads = values_and_grads(lambda a, b, c: softmax_attention_reference(a, b, c, lengths),
                                      [q, k, v], mask, weight)
    sel = mask.expand_as(fast)
    torch.testing.assert_close(fast[sel], ref[sel], **TIGHT)
    assert torch.all(ref[~sel] == 0)
    # With the loss on real positions only, padded rows of q/k/v get zero gradient in both kernels,
    # so the whole gradient tensors must agree.
    for name, a, b in zip("qkv", fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, n=name: f"grad {n}: {m}")
        assert torch.all(a.masked_select(~mask.expand_as(a)) == 0), name


def _bias(kind: str, b: int, h: int, length: int, g: torch.Generator) -> torch.Tensor | None:
    shapes = {"none": None, "shared": (1, 1, length, length), "per_row": (b, 1, length, length),
              "full": (b, h, length, length)}
    shape = shapes[kind]
    return None if shape is None else torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("bias_kind", ["none", "shared", "per_row", "full"])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("tile", [64, 3])
def test_pointwise_attention_matches_reference(bias_kind: str, heads: int, tile: int, monkeypatch) -> None:
    monkeypatch.setattr("genrec.nn.attention.QUERY_TILE", tile)  # 3: several query tiles, the last one joined
    q, k, v, lengths, g = random_batch(10 + heads, h=heads)
    length, n = q.shape[2], 12
    bias = _bias(bias_kind, q.shape[0], heads, length, g)
    mask = real_mask(lengths, length)
    weight = torch.randn(v.shape, generator=g, dtype=torch.float64)
    tensors = [q, k, v] + ([bias] if bias is not None else [])

    def fast_fn(a, b, c, d=None):
        return pointwise_attention(a, b, c, d, n)

    def ref_fn(a, b, c, d=None):
        return pointwise_attention_reference(a, b, c, d, lengths, n)

    fast, fast_grads = values_and_grads(fast_fn, tensors, mask, weight)
    ref, ref_grads = values_and_grads(ref_fn, tensors, mask, weight)
    assert fast.shape == ref.shape == v.shape
    sel = mask.expand_as(fast)
    torch.testing.assert_close(fast[sel], ref[sel], **TIGHT)
    for name, a, b in zip(["q", "k", "v", "bias"], fast_grads, ref_grads, strict=False):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, n=name: f"grad {n}: {m}")
    if bias is not None:
        assert fast_grads[3].abs().sum() > 0  # the bias really is used


def test_pointwise_attention_is_divided_by_constant_n() -> None:
    """Doubling n halves the output; the output of a position ignores anything after it."""
    q, k, v, lengths, _ = random_batch(3)
    a = pointwise_attention(q, k, v, None, 10)
    b = pointwise_attention(q, k, v, None, 20)
    torch.testing.assert_close(a, 2 * b, **TIGHT)
    short = pointwise_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], None, 10)
    torch.testing.assert_close(short, a[:, :, :5], **TIGHT)


def test_softmax_attention_first_position_is_its_own_value() -> None:
    q, k, v, lengths, _ = random_batch(4, dv=6)
    out = softmax_attention(q, k, v)
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], **TIGHT)


@pytest.mark.parametrize("bias_shape", [(1, 1, 12, 12), (7, 1, 12, 12), (7, 2, 12, 12), (12, 12), None])
@pytest.mark.parametrize("tile", [64, 5])
def test_pointwise_attention_gradients_are_exact(bias_shape, tile, monkeypatch) -> None:
    """The chunked kernel recomputes scores in its backward pass: its gradients must be the true ones (float64
    finite differences), for every bias layout, with more sequences than one chunk holds and, with tile 5,
    several query tiles."""
    import genrec.nn.attention as attention

    monkeypatch.setattr(attention, "QUERY_TILE", tile)
    assert len(attention._tiles(12)) == (3 if tile == 5 else 1)

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(7, 2, 12, 4, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, dtype=torch.float64, generator=gen,
                                                       requires_grad=True)
    old = attention._chunk_rows
    attention._chunk_rows = lambda q: 3  # several chunks, the last one short
    try:
        inputs = (q, k, v) if bias is None else (q, k, v, bias)
        assert torch.autograd.gradcheck(lambda *t: pointwise_attention(*t[:3], t[3] if len(t) > 3 else None, 12),
                                        inputs)
    finally:
        attention._chunk_rows = old
