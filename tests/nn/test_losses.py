"""full_cross_entropy and sampled_softmax against manual computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrec.nn.losses import full_cross_entropy, sampled_softmax

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def data(seed: int = 0, n: int = 13, d: int = 8, n_items: int = 20):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    items = torch.randn(n_items + 1, d, generator=g, dtype=torch.float64)
    targets = torch.randint(1, n_items + 1, (n,), generator=g)
    return h, targets, items


def manual_sampled(h, targets, items, neg, temperature=1.0, normalize=False):
    """Per position: -log softmax over [target] + [negatives != target], neg [N, K]."""
    if normalize:
        h, items = F.normalize(h, dim=-1), F.normalize(items, dim=-1)
    total = h.new_zeros(())
    for i in range(h.shape[0]):
        keep = neg[i][neg[i] != targets[i]]
        logits = torch.cat([(h[i] @ items[targets[i]])[None], items[keep] @ h[i]]) / temperature
        total = total - torch.log_softmax(logits, 0)[0]
    return total


def test_full_cross_entropy_matches_torch() -> None:
    h, targets, items = data()
    expected = F.cross_entropy(h @ items[1:].T, targets - 1, reduction="sum")
    torch.testing.assert_close(full_cross_entropy(h, targets, items), expected, **TIGHT)


def test_full_cross_entropy_padding_row_is_never_a_class() -> None:
    h, targets, items = data(1)
    base = full_cross_entropy(h, targets, items)
    items2 = items.clone()
    items2[0] = 1e3 * h.mean(0)  # a padding row that would dominate every softmax if it were a class
    torch.testing.assert_close(full_cross_entropy(h, targets, items2), base, **TIGHT)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 1000])
def test_full_cross_entropy_chunking_is_invisible(chunk: int) -> None:
    h, targets, items = data(2)
    torch.testing.assert_close(full_cross_entropy(h, targets, items, chunk=chunk),
                               full_cross_entropy(h, targets, items), **TIGHT)


def test_full_cross_entropy_temperature_and_grad() -> None:
    h, targets, items = data(3)
    expected = F.cross_entropy(h @ items[1:].T / 0.1, targets - 1, reduction="sum")
    torch.testing.assert_close(full_cross_entropy(h, targets, items, temperature=0.1), expected, **TIGHT)
    h.requires_grad_(True)
    items.requires_grad_(True)
    full_cross_entropy(h, targets, items, chunk=3).backward()
    assert torch.all(items.grad[0] == 0)  # padding row gets no gradient
    assert h.grad.abs().sum() > 0


def test_sampled_softmax_masks_negatives_equal_to_target() -> None:
    # A 3-item catalog with 16 negatives: every position's target is surely among the negatives.
    h, targets, items = data(4, n=6, n_items=3)
    loss = sampled_softmax(h, targets, items, 16, generator=torch.Generator().manual_seed(7))
    neg = torch.randint(1, 4, (16,), generator=torch.Generator().manual_seed(7))
    assert all(bool((neg == t).any()) for t in targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, manual_sampled(h, targets, items, neg[None].expand(6, -1)), **TIGHT)
    # Unmasked, the duplicate of the target would be counted as a negative: a different (larger) loss.
    unmasked = -torch.log_softmax(torch.cat([(h * items[targets]).sum(-1, keepdim=True), h @ items[neg].T], 1),
                                  1)[:, 0].sum()
    assert unmasked > loss


def test_sampled_softmax_all_negatives_equal_target_is_zero_loss() -> None:
    h, _, items = data(5, n=4, n_items=1)
    targets = torch.ones(4, dtype=torch.long)
    loss = sampled_softmax(h, targets, items, 5)
    assert torch.isfinite(loss) and loss.abs() < 1e-12


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_sampled_softmax_matches_manual(shared: bool, temperature: float) -> None:
    h, targets, items = data(6, n=7, n_items=30)
    k = 9
    loss = sampled_softmax(h, targets, items, k, temperature=temperature, shared=shared,
                           generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    shape = (k,) if shared else (7, k)
    neg = torch.randint(1, 31, shape, generator=g)
    neg = neg[None].expand(7, -1) if shared else neg
    assert neg.shape == (7, k)
    torch.testing.assert_close(loss, manual_sampled(h, targets, items, neg, temperature), **TIGHT)


def test_sampled_softmax_shared_and_per_position_draw_differently() -> None:
    """Shared negatives consume K draws, per-position ones N*K: the losses differ for the same seed."""
    h, targets, items = data(7, n=7, n_items=500)
    a = sampled_softmax(h, targets, items, 8, shared=True, generator=torch.Generator().manual_seed(0))
    b = sampled_softmax(h, targets, items, 8, shared=False, generator=torch.Generator().manual_seed(0))
    assert not torch.isclose(a, b)


@pytest.mark.parametrize("shared", [True, False])
def test_sampled_softmax_in_batch_adds_the_other_targets(shared: bool) -> None:
    h, targets, items = data(8, n=6, n_items=40)
    targets[1] = targets[0]  # a repeated target must be masked as a negative of both positions
    k = 5
    loss = sampled_softmax(h, targets, items, k, shared=shared, in_batch=True,
                           generator=torch.Generator().manual_seed(11))
    neg = torch.randint(1, 41, (k,) if shared else (6, k), generator=torch.Generator().manual_seed(11))
    neg = neg[None].expand(6, -1) if shared else neg
    with_batch = torch.cat([neg, targets[None].expand(6, -1)], dim=1)
    assert with_batch.shape == (6, k + 6)
    torch.testing.assert_close(loss, manual_sampled(h, targets, items, with_batch), **TIGHT)
    plain = sampled_softmax(h, targets, items, k, shared=shared, generator=torch.Generator().manual_seed(11))
    assert loss > plain  # more negative columns, never fewer


def test_sampled_softmax_l2_normalize_bounds_logits() -> None:
    h, targets, items = data(9, n=10, n_items=50)
    k, t = 12, 0.5
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    loss = sampled_softmax(h, targets, items, k, temperature=t, l2_normalize=True, generator=gen())
    # Scale-invariant: huge inputs give the same loss, so logits are cosines / temperature.
    huge = sampled_softmax(1e6 * h, targets, 1e6 * items, k, temperature=t, l2_normalize=True, generator=gen())
    torch.testing.assert_close(huge, loss, **TIGHT)
    neg = torch.randint(1, 51, (k,), generator=gen())[None].expand(10, -1)
    torch.testing.assert_close(loss, manual_sampled(h, targets, items, neg, t, normalize=True), **TIGHT)
    # Each logit lies in [-1/t, 1/t], so each position's loss is within log(1+K) +- 2/t.
    per_pos = loss / 10
    assert per_pos <= math.log(1 + k) + 2 / t
    assert per_pos >= 0
    # The gradient is finite even with inputs that would overflow without normalisation.
    hh = (1e6 * h).requires_grad_(True)
    sampled_softmax(hh, targets, 1e6 * items, k, temperature=0.05, l2_normalize=True).backward()
    assert torch.isfinite(hh.grad).all()
