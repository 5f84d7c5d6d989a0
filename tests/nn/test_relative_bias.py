"""RelativeBias: a weight per relative position i - j, plus log-bucketed time gaps when timestamps exist."""

from __future__ import annotations

import math

import torch

from genrec.nn.relative_bias import RelativeBias


def test_shape_and_position_weights() -> None:
    rb = RelativeBias(max_len=6)
    with torch.no_grad():
        rb.pos.copy_(torch.arange(6, dtype=torch.float32) * 10)
    bias = rb(5)
    assert bias.shape == (1, 1, 5, 5)
    for i in range(5):
        for j in range(i + 1):
            assert bias[0, 0, i, j] == 10 * (i - j)


def test_relative_positions_beyond_max_len_share_the_last_weight() -> None:
    rb = RelativeBias(max_len=3)
    with torch.no_grad():
        rb.pos.copy_(torch.tensor([1.0, 2.0, 3.0]))
    bias = rb(6)[0, 0]
    assert bias[5, 0] == 3.0 and bias[3, 1] == 3.0 and bias[2, 1] == 2.0 and bias[4, 4] == 1.0


def test_time_buckets_used_only_with_timestamps() -> None:
    rb = RelativeBias(max_len=8, time_buckets=10)
    with torch.no_grad():
        rb.pos.normal_()
        rb.time.copy_(torch.arange(11, dtype=torch.float32) * 100)
    ts = torch.tensor([[0, 5, 105, 1_000_105], [7, 7, 7, 7]])
    plain = rb(4)
    assert plain.shape == (1, 1, 4, 4)
    with_time = rb(4, ts)
    assert with_time.shape == (2, 1, 4, 4)

    def bucket(gap: int) -> int:
        return min(math.floor(math.log2(1 + gap)), 10)

    for b in range(2):
        for i in range(4):
            for j in range(i + 1):
                gap = abs(int(ts[b, i]) - int(ts[b, j]))
                expected = plain[0, 0, i, j] + 100 * bucket(gap)
                torch.testing.assert_close(with_time[b, 0, i, j], expected)
    # Identical timestamps all fall in bucket 0.
    torch.testing.assert_close(with_time[1, 0], plain[0, 0] + 0.0)
    # A gap of a million seconds is past the last bucket and clamps to it.
    assert with_time[0, 0, 3, 0] - plain[0, 0, 3, 0] == 1000.0


def test_no_time_buckets_ignores_timestamps() -> None:
    rb = RelativeBias(max_len=5, time_buckets=0)
    assert rb.time is None
    with torch.no_grad():
        rb.pos.normal_()
    ts = torch.tensor([[0, 10, 1000, 10**6]])
    torch.testing.assert_close(rb(4, ts), rb(4))


def test_gradients_reach_time_weights_only_with_timestamps() -> None:
    rb = RelativeBias(max_len=5, time_buckets=4)
    rb(4).sum().backward()
    assert rb.time.grad is None and rb.pos.grad is not None
    rb(4, torch.tensor([[0, 1, 3, 9]])).sum().backward()
    assert rb.time.grad is not None and rb.time.grad.abs().sum() > 0


def test_precomputed_tables_serve_eval_lookups_and_are_dropped_by_training() -> None:
    rab = RelativeBias(max_len=6, time_buckets=4)
    with torch.no_grad():
        rab.pos.copy_(torch.arange(6.0))
        rab.time.copy_(torch.arange(5.0) * 10)
    rel = torch.tensor([[0, 1, 5], [2, 3, 4]])
    gap = torch.tensor([[0, 3, 100], [1, 7, 40]])
    idx = rab.index(rel, gap)
    expected = rab.lookup(idx)
    ts = torch.tensor([[0, 5, 9]])
    with torch.no_grad():
        expected_causal = rab.causal(rab.causal_index(3, ts), ts)
    rab.eval()
    rab.precompute()
    with torch.no_grad():
        assert torch.equal(rab.lookup(idx), expected)
        assert torch.equal(rab.causal(rab.causal_index(3, ts), ts), expected_causal)
        rab.pos.add_(1.0)  # changed weights: a stale table would still answer the old values
    rab.train()
    assert rab._tables is None
    assert torch.equal(rab.lookup(idx), expected + 1)
    rab.eval()
    with torch.enable_grad():  # gradients flow through the live table, never the precomputed one
        rab.lookup(idx).sum().backward()
    assert rab.pos.grad is not None
