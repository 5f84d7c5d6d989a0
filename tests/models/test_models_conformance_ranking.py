"""Conformance of the ranking models: the generative ranker, DCN, DIN and LightGBM go through the checks of
tests/models/conformance.py on tiny generated requests and impression logs (per-task scores of each candidate,
per-impression predictions)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel
from tests.models.conformance import N_ITEMS, ConformanceChecks, train_steps

from genrec.data.dataset import Vocab
from genrec.data.impression_readers import utc_day
from genrec.data.impression_splits import temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.models import RANKING
from genrec.models.gbdt import GBDTConfig, build_features
from genrec.models.ranking import RankBatch, RankSpec
from genrec.serve.model_io import load_ranking_model
from genrec.train.config import RunConfig
from genrec.train.ranking import save_ranking_model

N_USERS = 12


# --- tiny generated data ----------------------------------------------------------------------------------

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


class TestRankingConformance(ConformanceChecks):
    HARNESSES: typing.ClassVar[dict[str, typing.Callable]] = {"ranker": Ranking, "dcn": Ranking, "din": Ranking,
                                                              "gbdt": Trees}
