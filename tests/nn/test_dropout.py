"""genrec's dropout: nn.Dropout's distribution and gradient, drawn from torch's uniform sampler."""

import pytest
import torch

from genrec.nn.dropout import Dropout


def test_keeps_each_element_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(400_000)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)  # binomial sd about .0007
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # unbiased, as nn.Dropout


def test_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() * 2.0)


def test_identity_in_eval_mode_or_at_zero_and_bad_probabilities_refused():
    x = torch.randn(10)
    assert Dropout(0.4).eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
