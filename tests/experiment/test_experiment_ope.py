"""Off-policy estimators: hand-computed tiny logs, and unbiasedness and coverage on simulated bandit data with a
known true value of the candidate policy."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.experiment import doubly_robust, effective_sample_size, ips, snips

R, P, PI = [1.0, 0.0, 1.0], [0.5, 0.25, 0.5], [1.0, 0.5, 0.0]  # weights 2, 2, 0


def test_hand_computed_log():
    est = ips(R, PI, P)
    assert est.value == pytest.approx(2 / 3) and est.ess == pytest.approx(2.0) and est.estimate.n == 3
    assert est.estimate.se == pytest.approx(np.std([2, 0, 0], ddof=1) / np.sqrt(3))
    assert snips(R, PI, P).value == pytest.approx(2 / 4)
    dr = doubly_robust(R, PI, P, q_logged=[0.5, 0.5, 0.5], q_target=[0.6, 0.4, 0.2])
    assert dr.value == pytest.approx((0.6 + 2 * 0.5 + 0.4 + 2 * -0.5 + 0.2) / 3)
    assert dr.estimator == "dr" and dr.ess == pytest.approx(2.0)
    assert ips(R, PI, P, clip=1.0).value == pytest.approx(1 / 3)
    on_policy = ips(R, P, P)
    assert on_policy.value == pytest.approx(np.mean(R)) and on_policy.ess == pytest.approx(3.0)
    assert effective_sample_size([1, 1, 1, 1]) == 4 and effective_sample_size([4, 0, 0, 0]) == 1


def test_rows_grouped_by_request():
    r, pi, p = [1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]
    alone, grouped = ips(r, pi, p), ips(r, pi, p, groups=["q1", "q1", "q2", "q2"])
    assert grouped.value == alone.value and grouped.estimate.n == 2
    singletons = ips(r, pi, p, groups=["a", "b", "c", "d"])
    assert singletons.estimate.se == pytest.approx(alone.estimate.se)


def test_bad_logs():
    with pytest.raises(ValueError, match=r"logging_prob: propensities must be in \(0, 1\]"):
        ips([1.0], [0.5], [0.0])
    with pytest.raises(ValueError, match="one per logged row"):
        ips([1.0, 0.0], [0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="reward: one finite value per logged row"):
        ips([1.0], [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="every importance weight is 0"):
        snips([1.0, 0.0], [0.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="q_logged and q_target"):
        doubly_robust(R, PI, P, q_logged=[0.5], q_target=[0.5, 0.5, 0.5])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_unbiased_with_intervals_that_cover_on_simulated_bandits():
    rng = np.random.default_rng(0)
    n, k, reps = 2000, 5, 200
    theta = rng.normal(size=(3, k))
    estimates = {"ips": [], "snips": [], "dr": []}
    cover = dict.fromkeys(estimates, 0)
    truths = []
    for _ in range(reps):
        x = rng.normal(size=(n, 3))
        mean_reward = 1 / (1 + np.exp(-(x @ theta)))  # P(click | context, action)
        logging = softmax(0.5 * (x @ theta) + rng.normal(size=(n, k)))  # noisy: explores every action
        target = softmax(3.0 * (x @ theta))  # a sharper candidate
        action = (rng.random((n, 1)) > logging.cumsum(1)).sum(1)
        rows = np.arange(n)
        reward = (rng.random(n) < mean_reward[rows, action]).astype(np.float64)
        truth = float((target * mean_reward).sum(1).mean())  # the candidate's value on these contexts
        q = np.clip(mean_reward + 0.15, 0, 1)  # a biased reward model: DR must stay unbiased anyway
        args = (reward, target[rows, action], logging[rows, action])
        got = {"ips": ips(*args), "snips": snips(*args),
               "dr": doubly_robust(*args, q_logged=q[rows, action], q_target=(target * q).sum(1))}
        truths.append(truth)
        for name, est in got.items():
            estimates[name].append(est.value)
            cover[name] += est.estimate.low <= truth <= est.estimate.high
    for name in ("ips", "dr"):
        err = np.array(estimates[name]) - np.array(truths)
        assert abs(err.mean()) < 3 * err.std() / np.sqrt(reps), name
        assert cover[name] / reps >= 0.9, name
    snips_err = np.array(estimates["snips"]) - np.array(truths)
    assert abs(snips_err.mean()) < 0.01 and cover["snips"] / reps >= 0.88
    assert np.std(estimates["dr"]) < np.std(estimates["ips"])  # the model helps even when biased
