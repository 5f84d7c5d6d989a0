"""Conformance of the retrieval models: popularity, item-kNN, SASRec, HSTU and the semantic-ID generator (TIGER) go
through the checks of tests/models/conformance.py on tiny generated sequences (scores over the catalog, generated
top-k lists). The baselines (genrec.models.BASELINES) also follow the Recommender rules: no work in __init__, fit
returns self, refit replaces the state."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import BaseModel
from tests.models.conformance import N_ITEMS, ConformanceChecks, train_steps

from genrec.data import prepare
from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.errors import GenrecError
from genrec.eval import rank_cases
from genrec.models import BASELINES, SEQUENTIAL, Recommender
from genrec.models.sequential import next_item_targets
from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.losses import full_cross_entropy
from genrec.serve.model_io import load_model
from genrec.train.generator import load_generator, save_generator
from genrec.train.trainer import save_model_files

NAMES = sorted(BASELINES)


# --- tiny generated data ----------------------------------------------------------------------------------

def toy_train(seed: int = 0, n_users: int = 40) -> Jagged:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 12))).tolist() for _ in range(n_users)]
    rows[0] = [1, 1, 1, 2]  # repeats
    return Jagged.from_lists(rows)


def toy_history() -> Jagged:
    return Jagged.from_lists([[1, 2, 3], [], [N_ITEMS], [5, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10], [30, 29]])


def toy_dataset():
    """A catalog of exactly N_ITEMS items (what a run folder's item table is written from)."""
    return prepare(pa.table({"user": list(range(N_ITEMS)), "item": list(range(1, N_ITEMS + 1))}), name="toy")


# --- one harness per kind of model: how to fit, score, save and break it ----------------------------------

class Retrieval:
    """Popularity and item-kNN: fit on sequences, score histories over the catalog."""

    seeded = False  # no randomness: the same data gives the same model

    def __init__(self, name: str):
        self.name, (self.cls, self.config_cls) = name, BASELINES[name]

    def config(self) -> BaseModel:
        return self.config_cls()

    def fit(self, seed: int, folder: Path):
        return self.cls(self.config()).fit(toy_train(seed), N_ITEMS)

    def outputs(self, model) -> dict[str, torch.Tensor]:
        return {"scores": model.score(toy_history(), np.arange(1, 6))}

    def save_load(self, model, folder: Path):
        return self.cls.load(model.save(folder))

    def bad_calls(self, model) -> list[tuple[typing.Callable, str]]:
        users = np.arange(1, 3)
        return [(lambda: model.score(Jagged.from_lists([[1, N_ITEMS + 1], [2]]), users), f"1..{N_ITEMS}; got 31"),
                (lambda: model.score(Jagged.from_lists([[-1], [2]]), users), "got -1"),
                (lambda: model.score(Jagged.from_lists([[1.5], [2]], dtype=np.float64), users), "integers"),
                (lambda: self.cls(self.config()).fit(Jagged.from_lists([[1, N_ITEMS + 5]]), N_ITEMS),
                 "training item ids"),
                (lambda: self.cls(self.config()).fit(toy_train(), 0), "n_items")]

    def check_scores(self, model) -> None:
        check_catalog_scores(lambda h: model.score(h, np.arange(1, len(h) + 1)))


class Sequential(Retrieval):
    """SASRec and HSTU: a few seeded training steps (dropout on), then catalog scores from the last position."""

    seeded = True

    def __init__(self, name: str):
        self.name, (self.cls, self.config_cls) = name, SEQUENTIAL[name]

    def config(self) -> BaseModel:
        return self.config_cls(dim=8, blocks=1, heads=2, max_len=8, dropout=0.2)

    def fit(self, seed: int, folder: Path):
        torch.manual_seed(seed)
        model = self.cls(self.config(), N_ITEMS)
        windows = toy_train(0).tail(self.config().max_len + 1)
        inputs, targets = next_item_targets(windows.to_padded(left=False), torch.from_numpy(windows.lengths))
        lengths = torch.from_numpy(windows.lengths - 1).clamp(min=1)

        def loss():
            h = model(inputs, lengths)
            return full_cross_entropy(h[targets > 0], targets[targets > 0], model.item_table())

        return train_steps(model, loss)

    def outputs(self, model) -> dict[str, torch.Tensor]:
        return {"scores": model.score(toy_history())}

    def save_load(self, model, folder: Path):
        save_model_files(folder, model, toy_dataset(), np.ones(N_ITEMS + 1, dtype=np.int64))
        return load_model(folder)

    def bad_calls(self, model) -> list[tuple[typing.Callable, str]]:
        return [(lambda: model.score(Jagged.from_lists([[1, N_ITEMS + 1]])), f"1..{N_ITEMS}; got 31"),
                (lambda: model.score(Jagged.from_lists([[3, -1]])), "got -1"),
                (lambda: model.score(Jagged.from_lists([[0, 2]])), "got 0"),
                (lambda: model.score(Jagged.from_lists([[1.0, 2.0]], dtype=np.float64)), "integers"),
                (lambda: model.score(Jagged.from_lists([[1, 2]]), timestamps=Jagged.from_lists([[5]])),
                 "one value per history item")]

    def check_scores(self, model) -> None:
        check_catalog_scores(lambda h: model.score(h))


class Generator(Sequential):
    """TIGER: seeded teacher-forcing steps, then top-k items by constrained beam search."""

    sizes = [5, 6]  # (i // 6, i % 6) is unique for 30 items

    def __init__(self, name: str):
        self.name, self.cls, self.config_cls = name, TIGER, TigerConfig

    def config(self) -> BaseModel:
        return TigerConfig(dim=16, encoder_layers=1, decoder_layers=1, heads=2, head_dim=8, ffn_dim=32, max_len=6,
                           beam_width=8, dropout=0.1)

    def fit(self, seed: int, folder: Path):
        torch.manual_seed(seed)
        codes = [[-1, -1], *([i // 6, i % 6] for i in range(N_ITEMS))]
        model = TIGER(self.config(), codes, self.sizes)
        seqs = toy_train(0).take(np.flatnonzero(toy_train(0).lengths >= 2))
        history, targets = seqs.head(1).tail(6).to_padded(left=True), torch.from_numpy(seqs.at(1))
        return train_steps(model, lambda: model.loss(history, targets) / len(targets))

    def outputs(self, model) -> dict[str, torch.Tensor]:
        items, scores = model.recommend(toy_history().to_padded(left=True), k=5)
        return {"items": items, "scores": scores}

    def save_load(self, model, folder: Path):
        save_generator(folder, model, toy_dataset(), np.ones(N_ITEMS + 1, dtype=np.int64))
        return load_generator(folder)

    def bad_calls(self, model) -> list[tuple[typing.Callable, str]]:
        return [(lambda: model.recommend(torch.tensor([[1, N_ITEMS + 1]]), k=3), f"0..{N_ITEMS}; got 31"),
                (lambda: model.recommend(torch.tensor([[0, -2]]), k=3), "got -2"),
                (lambda: model.recommend(torch.tensor([[1.0, 2.0]]), k=3), "integers"),
                (lambda: model.recommend(torch.tensor([1, 2]), k=3), r"\[batch, length\]"),
                (lambda: model.recommend(torch.tensor([[1, 2]]), k=0), "k must be at least 1"),
                (lambda: model.loss(torch.tensor([[1, 2]]), torch.tensor([0])), "target item ids")]

    def check_scores(self, model) -> None:
        hist = toy_history()
        items, scores = model.recommend(hist.to_padded(left=True), k=5)
        assert items.shape == scores.shape == (len(hist), 5) and items.dtype == torch.int64
        assert ((items >= 1) & (items <= N_ITEMS)).all() and torch.isfinite(scores).all()
        assert all(len(set(row.tolist())) == 5 for row in items)  # no item twice
        assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
        for i in range(len(hist)):  # a row's list does not depend on the other rows
            one, s = model.recommend(hist.take(np.array([i])).to_padded(left=True), k=5)
            assert torch.equal(one[0], items[i]) and torch.allclose(s[0], scores[i], atol=1e-5)


def check_catalog_scores(score: typing.Callable[[Jagged], torch.Tensor]) -> None:
    """[B, n_items + 1] finite floats (an empty history too), an empty batch gives no rows, and a row's scores do
    not depend on the other rows of its batch."""
    hist = toy_history()
    scores = score(hist)
    assert isinstance(scores, torch.Tensor) and scores.dtype.is_floating_point
    assert scores.shape == (len(hist), N_ITEMS + 1) and torch.isfinite(scores).all()
    assert score(Jagged.from_lists([])).shape == (0, N_ITEMS + 1)
    for i in range(len(hist)):
        torch.testing.assert_close(score(hist.take(np.array([i])))[0], scores[i], rtol=1e-5, atol=1e-5)
    rev = np.arange(len(hist))[::-1].copy()
    torch.testing.assert_close(score(hist.take(rev)), scores[rev], rtol=1e-5, atol=1e-5)


class TestRetrievalConformance(ConformanceChecks):
    HARNESSES: typing.ClassVar[dict[str, typing.Callable]] = {
        "popularity": Retrieval, "itemknn": Retrieval, "sasrec": Sequential, "hstu": Sequential, "tiger": Generator}


# --- the Recommender rules of the baselines ---------------------------------------------------------------

def fresh(name: str) -> Recommender:
    cls, cfg = BASELINES[name]
    return cls(cfg())


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
def test_score_or_save_before_fit_raises(name, tmp_path):
    with pytest.raises(RuntimeError, match="fit"):
        fresh(name).score(toy_history(), np.arange(1, 6))
    with pytest.raises(RuntimeError, match="fit"):
        fresh(name).save(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_sets_state(name):
    model = fresh(name)
    assert model.fit(toy_train(), N_ITEMS) is model
    assert model.n_items == N_ITEMS
    assert any(a.endswith("_") and not a.startswith("_") for a in vars(model))


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
    cases = EvalCases(np.arange(1, 6), toy_history(), np.array([4, 1, 2, 3, 30]))
    r = rank_cases(model, cases, N_ITEMS, ks=(1, 10), show_progress=False)
    assert r.ranks.shape == (5,) and np.all((r.ranks >= 0) & (r.ranks <= N_ITEMS))


def test_loading_another_kind_of_model_is_refused(tmp_path):
    from genrec.models import ItemKNN, Popularity

    Popularity().fit(toy_train(), N_ITEMS).save(tmp_path)
    with pytest.raises(GenrecError, match="not ItemKNN"):
        ItemKNN.load(tmp_path)
