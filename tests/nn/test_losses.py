"""full_cross_entropy and sampled_softmax against manual computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrec.nn.losses import NegativeSampler, full_cross_entropy, sampled_softmax

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


# --- negative samplers and the logQ correction ---------------------------------------------------------------

class FixedDraws(NegativeSampler):
    """A sampler whose probabilities are a real sampler's but whose draws are given (hand-checked examples)."""

    def __init__(self, base: NegativeSampler, draws: torch.Tensor):
        self.__dict__.update(base.__dict__)
        self.draws = draws

    def draw(self, shape, generator=None, device="cpu"):
        assert tuple(shape) == tuple(self.draws.shape)
        return self.draws


def test_popularity_sampler_follows_counts_to_the_alpha() -> None:
    counts = torch.tensor([0, 50, 0, 10, 1, 200])
    sampler = NegativeSampler(5, counts, "popularity", alpha=0.5)
    draws = sampler.draw((200_000,), torch.Generator().manual_seed(0))
    observed = torch.bincount(draws, minlength=6).double() / len(draws)
    w = torch.tensor([0, 50, 0, 10, 1, 200], dtype=torch.float64).sqrt()
    expected = w / w.sum()
    assert observed[0] == 0 and observed[2] == 0  # padding and never-trained items are never drawn
    torch.testing.assert_close(observed, expected, atol=4e-3, rtol=0)
    torch.testing.assert_close(sampler.prob(torch.arange(6)), expected)
    torch.testing.assert_close(sampler.frequency(torch.tensor([5, 1])),
                               torch.tensor([200 / 261, 50 / 261], dtype=torch.float64))


def test_uniform_sampler_draws_like_before() -> None:
    """The default sampler consumes the generator exactly as a plain randint over 1..n (runs reproduce)."""
    a = NegativeSampler(30).draw((4, 7), torch.Generator().manual_seed(5))
    assert torch.equal(a, torch.randint(1, 31, (4, 7), generator=torch.Generator().manual_seed(5)))


def test_logq_matches_a_hand_computed_reference() -> None:
    # Identity item vectors: the logit of item i at row r is h[r, i]. 4 items, counts 1, 2, 3, 4 (p = i / 10),
    # popularity draws with alpha 1 (q = p), K = 3 shared draws, in-batch targets of N = 2 rows.
    h = torch.tensor([[0.0, 0.3, -0.2, 0.5, 0.1], [0.0, -0.4, 0.7, 0.2, 0.6]], dtype=torch.float64)
    items = torch.eye(5, dtype=torch.float64)
    targets = torch.tensor([2, 4])
    counts = torch.tensor([0, 1, 2, 3, 4])
    draws = torch.tensor([4, 1, 3])
    sampler = FixedDraws(NegativeSampler(4, counts, "popularity"), draws)
    loss = sampled_softmax(h, targets, items, 3, in_batch=True, sampler=sampler, logq=True, temperature=0.5)

    def expected_count(i: int) -> float:  # 3 draws with q(i) = i / 10, plus 2 in-batch targets with p(i) = i / 10
        return 3 * i / 10 + 2 * i / 10

    total = 0.0
    for r, t in enumerate([2, 4]):
        columns = [t] + [i for i in [4, 1, 3] + [2, 4] if i != t]  # accidental hits (== target) dropped
        z = [float(h[r, i]) / 0.5 - math.log(expected_count(i)) for i in columns]
        total += -(z[0] - math.log(sum(math.exp(v) for v in z)))
    assert abs(float(loss) - total) < 1e-12
    plain = sampled_softmax(h, targets, items, 3, in_batch=True, sampler=sampler, temperature=0.5)
    assert abs(float(plain) - float(loss)) > 1e-3  # the correction changed something


def test_logq_in_batch_only_is_yi_et_al() -> None:
    """No drawn negatives: every logit of the batch's softmax loses log p(item), the positive's included."""
    h, targets, items = data(10, n=6, n_items=12)
    targets[3] = targets[0]
    counts = torch.arange(13) % 5 + 1
    sampler = NegativeSampler(12, counts)
    loss = sampled_softmax(h, targets, items, 0, in_batch=True, sampler=sampler, logq=True)
    p = counts.double() / counts[1:].sum()
    logits = h @ items[targets].T - p[targets].log()[None, :]  # row r, column c: target of row c
    same = targets[:, None] == targets[None, :]
    logits = logits.masked_fill(same & ~torch.eye(6, dtype=torch.bool), float("-inf"))
    expected = -(logits.diagonal() - logits.logsumexp(1)).sum()
    torch.testing.assert_close(loss, expected, **TIGHT)


@pytest.mark.parametrize("shared", [True, False])
def test_logq_is_a_no_op_with_uniform_draws_only(shared: bool) -> None:
    h, targets, items = data(11, n=9, n_items=60)
    sampler = NegativeSampler(60, torch.arange(61))  # counts given but unused: nothing is in-batch
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    plain = sampled_softmax(h, targets, items, 20, shared=shared, generator=gen())
    corrected = sampled_softmax(h, targets, items, 20, shared=shared, generator=gen(), sampler=sampler, logq=True)
    torch.testing.assert_close(corrected, plain, **TIGHT)


def test_item_function_sees_only_the_needed_ids() -> None:
    h, targets, items = data(12, n=5, n_items=1000)
    asked = []

    def rows(ids: torch.Tensor) -> torch.Tensor:
        asked.append(ids)
        return items[ids]

    sampler = NegativeSampler(1000)
    via_rows = sampled_softmax(h, targets, rows, 7, in_batch=True, sampler=sampler,
                               generator=torch.Generator().manual_seed(1))
    via_table = sampled_softmax(h, targets, items, 7, in_batch=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(via_rows, via_table, **TIGHT)
    assert len(asked) == 1 and len(asked[0]) <= 5 + 7 and len(set(asked[0].tolist())) == len(asked[0])
    with pytest.raises(ValueError, match="sampler"):
        sampled_softmax(h, targets, rows, 7)


def test_logq_corrected_popularity_sampling_follows_the_full_softmax_gradient() -> None:
    """An estimator test: with many popularity-drawn negatives, the corrected sampled loss's gradient points
    where the full softmax's does; uncorrected, it is biased against popular items. Fixed seeds; the
    margins hold for other seeds too: the bias is systematic, the noise small at 20k draws per position."""
    torch.manual_seed(0)
    n_items, d, n = 300, 16, 8
    table = (0.6 * torch.randn(n_items + 1, d, dtype=torch.float64)).requires_grad_(True)
    h = torch.randn(n, d, dtype=torch.float64).requires_grad_(True)
    ranks = torch.randperm(n_items) + 1
    counts = torch.cat([torch.zeros(1), 2000.0 / ranks.double() ** 1.2]).round().clamp_min(1)
    targets = torch.multinomial(counts[1:] / counts.sum(), n, replacement=True) + 1
    sampler = NegativeSampler(n_items, counts, "popularity")

    def grad(loss: torch.Tensor) -> torch.Tensor:
        gh, gt = torch.autograd.grad(loss, (h, table))
        return torch.cat([gh.flatten(), gt.flatten()])

    full = grad(full_cross_entropy(h, targets, table))
    error = {}  # 1 - cosine to the full gradient
    for k in (2_000, 20_000):
        for logq in (False, True):
            g = grad(sampled_softmax(h, targets, table, k, shared=False, sampler=sampler, logq=logq,
                                     generator=torch.Generator().manual_seed(1)))
            error[k, logq] = 1 - float(F.cosine_similarity(g, full, dim=0))
    assert error[20_000, True] < 0.01, error
    assert error[20_000, True] < error[20_000, False] / 5, error  # uncorrected stays biased ...
    assert error[20_000, True] < error[2_000, True] / 3, error  # ... corrected converges with more draws
