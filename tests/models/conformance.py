"""The conformance checks every model passes, in the spirit of scikit-learn's estimator checks: config round-trip,
save/load bit-exact, determinism with a seed, bad input rejected with an error naming the problem, and the scoring
contract of its kind. A test class per model family subclasses ``ConformanceChecks`` and names, per model, its
harness: how to configure, fit, score, save and break the model on tiny generated data."""

from __future__ import annotations

import typing

import annotated_types as at
import pytest
import torch
from pydantic import ValidationError

from genrec.errors import GenrecError

torch.set_num_threads(1)
N_ITEMS = 30
BAD = (GenrecError, ValueError)


def train_steps(model: torch.nn.Module, loss: typing.Callable[[], torch.Tensor], steps: int = 3) -> torch.nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return model.eval()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def bad_values(field) -> list:
    """Values that violate a field's declared type or bounds."""
    args = set(typing.get_args(field.annotation)) or {field.annotation}
    out: list = ["not a number"] if args & {int, float} else []
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


class ConformanceChecks:
    """The checks, run once per model of ``HARNESSES`` (model name -> harness class, built from the name)."""

    HARNESSES: typing.ClassVar[dict[str, typing.Callable]] = {}

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.HARNESSES))

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, tmp_path_factory):
        """``fitted(name, seed)``: (the model's harness, the model trained on the tiny data), once per (name, seed)."""
        folder, harnesses, models = tmp_path_factory.mktemp("fits"), {}, {}

        def get(name: str, seed: int = 0):
            h = harnesses.setdefault(name, cls.HARNESSES[name](name))
            if (name, seed) not in models:
                models[name, seed] = h.fit(seed, folder)
            return h, models[name, seed]

        return get

    def test_config_round_trips_and_rejects_bad_values(self, name):
        h = self.HARNESSES[name](name)
        cfg, cls = h.config(), h.config_cls
        assert cls.model_validate(cfg.model_dump()) == cfg == cls.model_validate_json(cfg.model_dump_json())
        with pytest.raises(ValidationError):
            setattr(cfg, next(iter(cls.model_fields)), None)  # frozen
        with pytest.raises(ValidationError):
            cls.model_validate({**cfg.model_dump(), "not_a_field": 1})
        for field_name, field in cls.model_fields.items():
            assert field.description or field_name == "name", f"{name}.{field_name} has no description"
            for value in bad_values(field):
                with pytest.raises(ValidationError):
                    cls(**{field_name: value})

    def test_save_then_load_is_bit_exact(self, name, fitted, tmp_path):
        h, model = fitted(name)
        loaded = h.save_load(model, tmp_path / "saved")
        assert same(h.outputs(loaded), h.outputs(model))
        if isinstance(model, torch.nn.Module):
            assert same(loaded.state_dict(), model.state_dict()) and loaded.config == model.config

    def test_the_same_seed_gives_the_same_model(self, name, fitted, tmp_path):
        h, model = fitted(name)
        again = h.fit(0, tmp_path)
        assert same(h.outputs(again), h.outputs(model))
        if h.seeded:
            assert not same(h.outputs(fitted(name, seed=1)[1]), h.outputs(model))

    def test_bad_input_raises_an_error_naming_it(self, name, fitted):
        h, model = fitted(name)
        for call, message in h.bad_calls(model):
            with pytest.raises(BAD, match=message):
                call()

    def test_scoring_contract(self, name, fitted):
        h, model = fitted(name)
        h.check_scores(model)
