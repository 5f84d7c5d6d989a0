"""The conformance suite every baseline in genrec.models.BASELINES passes (like check_estimator)."""

from __future__ import annotations

import annotated_types as at
import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval import rank_cases
from genrec.models import BASELINES, Recommender

N_ITEMS = 30
NAMES = sorted(BASELINES)


def toy_train(seed: int = 0, n_users: int = 40) -> Jagged:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 12))).tolist() for _ in range(n_users)]
    rows[0] = [1, 1, 1, 2]  # repeats
    return Jagged.from_lists(rows)


def toy_history() -> Jagged:
    return Jagged.from_lists([[1, 2, 3], [], [N_ITEMS], [5, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10], [30, 29]])


def fresh(name: str) -> Recommender:
    cls, cfg = BASELINES[name]
    return cls(cfg())


def bad_values(field) -> list:
    """Values that violate a field's declared type or bounds."""
    out: list = ["not a number", [1, 2]]
    for c in field.metadata:
        if isinstance(c, at.Ge):
            out.append(c.ge - 1)
        elif isinstance(c, at.Gt):
            out.append(c.gt)
        elif isinstance(c, at.Le):
            out.append(c.le + 1)
        elif isinstance(c, at.Lt):
            out.append(c.lt)
    return out


def test_baselines_registry():
    assert {"popularity", "itemknn"} <= set(BASELINES)
    for cls, cfg in BASELINES.values():
        assert issubclass(cls, Recommender) and issubclass(cfg, BaseModel)


@pytest.mark.parametrize("name", NAMES)
def test_no_work_in_init(name):
    model = fresh(name)
    learned = [a for a in vars(model) if a.endswith("_") and not a.startswith("_")]
    assert learned == [], f"{name} sets learned state in __init__: {learned}"
    assert model.n_items is None
    cls, cfg = BASELINES[name]
    assert isinstance(cls().config, cfg)  # the config is optional and defaults to the config's defaults
    assert cls().config == cfg()


@pytest.mark.parametrize("name", NAMES)
def test_score_before_fit_raises(name):
    with pytest.raises(RuntimeError, match="fit"):
        fresh(name).score(toy_history(), np.arange(1, 6))


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_sets_state(name):
    model = fresh(name)
    assert model.fit(toy_train(), N_ITEMS) is model
    assert model.n_items == N_ITEMS
    assert any(a.endswith("_") and not a.startswith("_") for a in vars(model))


@pytest.mark.parametrize("name", NAMES)
def test_score_shape_and_values(name):
    model = fresh(name).fit(toy_train(), N_ITEMS)
    hist = toy_history()
    scores = model.score(hist, np.arange(1, len(hist) + 1))
    assert isinstance(scores, torch.Tensor)
    assert scores.shape == (len(hist), N_ITEMS + 1)
    assert scores.dtype.is_floating_point
    assert torch.isfinite(scores).all()
    empty = model.score(Jagged.from_lists([]), np.zeros(0, dtype=np.int64))
    assert empty.shape == (0, N_ITEMS + 1)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    hist, users = toy_history(), np.arange(1, 6)
    a = fresh(name).fit(toy_train(), N_ITEMS)
    b = fresh(name).fit(toy_train(), N_ITEMS)
    assert torch.equal(a.score(hist, users), b.score(hist, users))
    assert torch.equal(a.score(hist, users), a.score(hist, users))


@pytest.mark.parametrize("name", NAMES)
def test_rows_independent_of_batch(name):
    # Evaluation chunks cases into batches: a row's scores must not depend on the other rows.
    model = fresh(name).fit(toy_train(), N_ITEMS)
    hist, users = toy_history(), np.arange(1, 6)
    full = model.score(hist, users)
    for i in range(len(hist)):
        one = model.score(hist.take(np.array([i])), users[i : i + 1])
        assert torch.allclose(one[0], full[i], rtol=1e-6, atol=1e-6)
    rev = np.arange(len(hist))[::-1].copy()
    assert torch.allclose(model.score(hist.take(rev), users[rev]), full[rev], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_refit_replaces_state(name):
    model = fresh(name).fit(toy_train(seed=1), N_ITEMS)
    model.fit(toy_train(seed=2), N_ITEMS + 5)
    expected = fresh(name).fit(toy_train(seed=2), N_ITEMS + 5)
    hist = toy_history()
    assert torch.equal(model.score(hist, np.arange(1, 6)), expected.score(hist, np.arange(1, 6)))


@pytest.mark.parametrize("name", NAMES)
def test_evaluates_with_rank_cases(name):
    model = fresh(name).fit(toy_train(), N_ITEMS)
    hist = toy_history()
    cases = EvalCases(np.arange(1, 6), hist, np.array([4, 1, 2, 3, 30]))
    r = rank_cases(model, cases, N_ITEMS, ks=(1, 10), show_progress=False)
    assert r.ranks.shape == (5,) and np.all((r.ranks >= 0) & (r.ranks <= N_ITEMS))


@pytest.mark.parametrize("name", NAMES)
def test_config_rejects_unknown_keys(name):
    _, cfg = BASELINES[name]
    with pytest.raises(ValidationError):
        cfg(not_a_field=1)
    with pytest.raises(ValidationError):
        cfg.model_validate({"not_a_field": 1})


@pytest.mark.parametrize("name", NAMES)
def test_config_rejects_bad_values(name):
    _, cfg = BASELINES[name]
    assert cfg.model_fields, f"{name} config has no fields"
    for field_name, field in cfg.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
        for value in bad_values(field):
            with pytest.raises(ValidationError):
                cfg(**{field_name: value})


@pytest.mark.parametrize("name", NAMES)
def test_config_is_frozen_and_round_trips(name):
    _, cfg = BASELINES[name]
    c = cfg()
    field_name = next(iter(cfg.model_fields))
    with pytest.raises(ValidationError):
        setattr(c, field_name, getattr(c, field_name))
    assert cfg.model_validate(c.model_dump()) == c
    assert cfg.model_validate_json(c.model_dump_json()) == c
