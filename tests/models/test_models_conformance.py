"""The conformance suite every model passes, in the spirit of scikit-learn's estimator checks: SASRec, HSTU, the
semantic-ID generator (TIGER), the generative ranker, DCN, DIN, LightGBM, popularity and item-kNN each go through
the same checks on tiny generated data: config round-trip, save/load bit-exact, determinism with a seed, bad
input rejected with an error naming the problem, and the scoring contract of its kind (retrieval scores over the
catalog, generated top-k lists, per-task candidate scores, per-impression predictions). The baselines
(genrec.models.BASELINES) also follow the Recommender rules: no work in __init__, fit returns self, refit
replaces the state."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import annotated_types as at
import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import BaseModel, ValidationError

from genrec.data import prepare
from genrec.data.dataset import Vocab
from genrec.data.impression_readers import utc_day
from genrec.data.impression_splits import temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.errors import GenrecError
from genrec.eval import rank_cases
from genrec.models import BASELINES, RANKING, SEQUENTIAL, Recommender
from genrec.models.gbdt import GBDTConfig, build_features
from genrec.models.ranking import RankBatch, RankSpec
from genrec.models.sequential import next_item_targets
from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.losses import full_cross_entropy
from genrec.serve.model_io import load_model, load_ranking_model
from genrec.train.config import RunConfig
from genrec.train.generator import load_generator, save_generator
from genrec.train.ranking import save_ranking_model
from genrec.train.trainer import save_model_files

torch.set_num_threads(1)
N_ITEMS, N_USERS = 30, 12
NAMES = sorted(BASELINES)
MODELS = ["popularity", "itemknn", "sasrec", "hstu", "tiger", "ranker", "dcn", "din", "gbdt"]
BAD = (GenrecError, ValueError)


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


SPEC = RankSpec(n_items=N_ITEMS, n_users=N_USERS, binary_tasks=("click", "like"), regression_tasks=("watch",),
                item_feature_sizes={"cat": 4}, user_feature_sizes={"age": 3}, action_sizes={"signal": 3, "bucket": 5})
ITEM_CAT = torch.tensor([0] + [1 + i % 3 for i in range(N_ITEMS)])
USER_AGE = torch.tensor([0] + [1 + u % 2 for u in range(N_USERS)])


def rank_batch(seed: int, b: int = 4, length: int = 7, m: int = 5) -> RankBatch:
    """Right-padded requests with an empty history and padded candidates among them."""
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(0, length + 1, (b,), generator=g)
    hist_len[0], hist_len[1] = length, 0
    real = torch.arange(length)[None] < hist_len[:, None]
    items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g) * real
    actions = torch.stack([torch.randint(1, s, (b, length), generator=g) * real for s in SPEC.action_sizes.values()],
                          dim=-1)
    n_cand = torch.randint(1, m + 1, (b,), generator=g)
    n_cand[0] = m
    cands = torch.randint(1, N_ITEMS + 1, (b, m), generator=g) * (torch.arange(m)[None] < n_cand[:, None])
    visible = (torch.rand(b, m, generator=g) * (hist_len[:, None] + 1)).long().clamp(max=hist_len[:, None])
    user = torch.randint(1, N_USERS + 1, (b,), generator=g)
    cat = ITEM_CAT[cands]
    labels = {"click": (cat == 1).float(), "like": (USER_AGE[user] == 1).float()[:, None].expand_as(cat).clone(),
              "watch": cat.float() / 3}
    return RankBatch(user=user, hist_items=items, hist_actions=actions, hist_time=torch.arange(length)[None]
                     .expand(b, -1) * 1000, hist_len=hist_len, cand_items=cands, cand_time=torch.full((b, m), 10**6),
                     visible=visible, labels=labels)


def with_fields(batch: RankBatch, **changes) -> RankBatch:
    return RankBatch(**({k: getattr(batch, k) for k in batch.__dataclass_fields__} | changes))


DAY_MS = 86_400_000
T0 = 1_650_000_000_000 - 1_650_000_000_000 % DAY_MS


def impression_log(n_users: int = 24, n_items: int = 16, rows: int = 20) -> ImpressionLog:
    """Ten days of impressions; click follows the item's author and the user's taste."""
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(1, n_users + 1), rows)
    item = rng.integers(1, n_items + 1, size=len(user))
    time = T0 + rng.integers(0, 10 * 24, size=len(user)) * 3_600_000
    author, taste = np.r_[0, 1 + np.arange(n_items) % 4], rng.integers(1, 5, n_users + 1)
    click = (rng.random(len(user)) < np.where(author[item] == taste[user], 0.8, 0.2)).astype(np.float32)
    return ImpressionLog.build(
        name="gen", users=Vocab(pa.array(np.arange(n_users))), items=Vocab(pa.array(np.arange(n_items))),
        user=user, item=item, time=time, day=utc_day(time),
        labels={"click": click, "like": click * (rng.random(len(user)) < 0.4),
                "watch_time": click * 2 + rng.random(len(user))},
        binary_tasks=("click", "like"), regression_tasks=("watch_time",),
        actions=np.ones((len(user), 1), dtype=np.int64), action_sizes={"signals": 2},
        item_features={"author": author}, item_feature_sizes={"author": 5},
        user_features={"taste": np.r_[0, taste[1:]]}, user_feature_sizes={"taste": 5})


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


class Ranking:
    """The generative ranker, DCN and DIN: seeded steps on requests, then per-task scores of each candidate."""

    seeded = True

    def __init__(self, name: str):
        self.name, (self.cls, self.config_cls) = name, RANKING[name]

    def config(self) -> BaseModel:
        sizes = {"dim": 8, "heads": 2, "blocks": 1} if self.name == "ranker" else {"dim": 8, "hidden": (16, 8)}
        return self.config_cls(**sizes, max_len=8, dropout=0.1)

    def fit(self, seed: int, folder: Path):
        torch.manual_seed(seed)
        model = self.cls(self.config(), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
        batch = rank_batch(0)
        return train_steps(model, lambda: model.loss(model(batch), batch.labels, batch.cand_mask)[0])

    def outputs(self, model) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model(rank_batch(1))

    def save_load(self, model, folder: Path):
        save_ranking_model(folder, model, SPEC)
        return load_ranking_model(folder)

    def bad_calls(self, model) -> list[tuple[typing.Callable, str]]:
        b = rank_batch(1)
        return [(lambda: model(with_fields(b, cand_items=b.cand_items + N_ITEMS)), "cand_items must lie in"),
                (lambda: model(with_fields(b, user=b.user + N_USERS)), "user must lie in"),
                (lambda: model(with_fields(b, hist_items=b.hist_items.float())), "hist_items must be integers"),
                (lambda: model(with_fields(b, visible=b.visible[:, :2])), "visible must have shape"),
                (lambda: model(with_fields(b, hist_actions=b.hist_actions + 4)), r"hist_actions\[..., 0\] \(signal\)"),
                (lambda: model(with_fields(b, hist_len=b.hist_len[:, None])), "hist_len must have 1 dimension")]

    def check_scores(self, model) -> None:
        b = rank_batch(1)
        with torch.no_grad():
            out = model(b)
            assert tuple(out) == SPEC.tasks
            for value in out.values():
                assert value.shape == b.cand_items.shape and value.dtype.is_floating_point
                assert torch.isfinite(value).all()
            for r in range(len(b.user)):  # a request's scores do not depend on the other requests
                alone = model(RankBatch(**{k: v[r:r + 1] if isinstance(v, torch.Tensor) else v
                                           for k, v in vars(b).items() if k != "labels"}))
                for t in SPEC.tasks:
                    torch.testing.assert_close(alone[t][0], out[t][r], rtol=1e-5, atol=1e-5)


@dataclasses.dataclass
class Boosters:
    tasks: dict[str, typing.Any]  # task -> lightgbm.Booster
    folder: Path  # the run folder that holds them


class Trees:
    """LightGBM: one booster per task from the GBDT trainer; its run folder's model_<task>.txt is the saved form."""

    seeded = True

    def __init__(self, name: str):
        self.name, self.config_cls = name, GBDTConfig
        self.log = impression_log()
        days = np.unique(self.log.day)
        self.split = temporal_split(self.log, valid_day=int(days[7]), test_day=int(days[8]))
        self.features = build_features(self.log, self.config())

    def config(self) -> BaseModel:
        return GBDTConfig(n_estimators=12, num_leaves=7, min_child_samples=5, early_stopping_rounds=4, num_threads=1)

    def run_config(self, seed: int) -> RunConfig:
        return RunConfig.model_validate({"dataset": "gen", "split": "temporal", "model": self.config().model_dump(),
                                         "train": {"seed": seed}, "eval": {"n_boot": 10}})

    def fit(self, seed: int, folder: Path) -> Boosters:
        from genrec.train.gbdt import GBDTTrainer

        folder = folder / f"gbdt-{seed}"
        result = GBDTTrainer(self.run_config(seed), folder, log=self.log, split=self.split, show_progress=False).fit()
        return Boosters(result.model, result.run_dir)

    def outputs(self, model: Boosters) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(self.split.part("test"))
        return {t: b.predict(self.features.values[rows], num_iteration=b.best_iteration or None)
                for t, b in model.tasks.items()}

    def save_load(self, model: Boosters, folder: Path) -> Boosters:
        import lightgbm

        return Boosters({t: lightgbm.Booster(model_file=str(model.folder / f"model_{t}.txt")) for t in model.tasks},
                        model.folder)

    def bad_calls(self, model) -> list[tuple[typing.Callable, str]]:
        from genrec.train.gbdt import GBDTTrainer

        no_valid = dataclasses.replace(self.split, valid=np.zeros_like(self.split.valid))
        return [(lambda: build_features(self.log, self.config(), self.log.time + 1), "query_time"),
                (lambda: GBDTTrainer(self.run_config(0), model.folder.parent / "bad", log=self.log, split=no_valid,
                                     show_progress=False).fit(), "valid part of gen has no impressions")]

    def check_scores(self, model) -> None:
        out = self.outputs(model)
        assert set(out) == {"click", "like", "watch_time"}
        n = int(self.split.part("test").sum())
        for task, pred in out.items():
            assert pred.shape == (n,) and np.isfinite(pred).all()
            if task != "watch_time":
                assert ((pred >= 0) & (pred <= 1)).all()


def harness(name: str):
    if name in BASELINES:
        return Retrieval(name)
    if name in SEQUENTIAL:
        return Sequential(name)
    if name == "tiger":
        return Generator(name)
    return Ranking(name) if name in RANKING else Trees(name)


def train_steps(model: torch.nn.Module, loss: typing.Callable[[], torch.Tensor], steps: int = 3) -> torch.nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return model.eval()


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


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(name, seed)``: (the model's harness, the model trained on the tiny data), once per (name, seed)."""
    folder, harnesses, models = tmp_path_factory.mktemp("fits"), {}, {}

    def get(name: str, seed: int = 0):
        h = harnesses.setdefault(name, harness(name))
        if (name, seed) not in models:
            models[name, seed] = h.fit(seed, folder)
        return h, models[name, seed]

    return get


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


# --- the checks every model passes ------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_config_round_trips_and_rejects_bad_values(name):
    h = harness(name)
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


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_is_bit_exact(name, fitted, tmp_path):
    h, model = fitted(name)
    loaded = h.save_load(model, tmp_path / "saved")
    assert same(h.outputs(loaded), h.outputs(model))
    if isinstance(model, torch.nn.Module):
        assert same(loaded.state_dict(), model.state_dict()) and loaded.config == model.config


@pytest.mark.parametrize("name", MODELS)
def test_the_same_seed_gives_the_same_model(name, fitted, tmp_path):
    h, model = fitted(name)
    again = h.fit(0, tmp_path)
    assert same(h.outputs(again), h.outputs(model))
    if h.seeded:
        assert not same(h.outputs(fitted(name, seed=1)[1]), h.outputs(model))


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_raises_an_error_naming_it(name, fitted):
    h, model = fitted(name)
    for call, message in h.bad_calls(model):
        with pytest.raises(BAD, match=message):
            call()


@pytest.mark.parametrize("name", MODELS)
def test_scoring_contract(name, fitted):
    h, model = fitted(name)
    h.check_scores(model)


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
