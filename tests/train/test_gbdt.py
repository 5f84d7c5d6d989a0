"""The LightGBM ranking baseline: its config validates, its features never read a label from the same time or
later, it trains from a config into the run folder the benchmarks read, twice the same, and says what to install
when LightGBM is missing."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.dataset import Vocab
from genrec.data.impression_readers import utc_day
from genrec.data.impression_splits import temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.errors import GenrecError
from genrec.io import read_json
from genrec.models.gbdt import GBDTConfig, build_features, earlier_sums, import_lightgbm
from genrec.train import trainer_class
from genrec.train.config import RunConfig
from genrec.train.gbdt import GBDTTrainer, request_query_times
from genrec.train.ranking import make_requests

try:
    import lightgbm as lgb
except ImportError:  # the gbdt extra; `make install` has it
    lgb = None
needs_lightgbm = pytest.mark.skipif(lgb is None, reason="needs the gbdt extra (lightgbm)")

DAY_MS = 86_400_000
T0 = 1_650_000_000_000 - 1_650_000_000_000 % DAY_MS  # midnight UTC


def tiny_log(seed: int = 0, n_users: int = 40, n_items: int = 24, rows: int = 30) -> ImpressionLog:
    """click depends on the item's author and the user's taste; ties in time on purpose (coarse clock)."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, n_users + 1), rows)
    item = rng.integers(1, n_items + 1, size=len(user))
    time = T0 + rng.integers(0, 10 * 24, size=len(user)) * 3_600_000  # hourly: same-time rows exist
    author = np.r_[0, 1 + np.arange(n_items) % 4]
    taste = rng.integers(1, 5, n_users + 1)
    click = (rng.random(len(user)) < np.where(author[item] == taste[user], 0.8, 0.2)).astype(np.float32)
    like = click * (rng.random(len(user)) < 0.4)
    return ImpressionLog.build(
        name="gen", users=Vocab(pa.array(np.arange(n_users))), items=Vocab(pa.array(np.arange(n_items))),
        user=user, item=item, time=time, day=utc_day(time),
        labels={"click": click, "like": like, "watch_time": click * 2 + rng.random(len(user))},
        binary_tasks=("click", "like"), regression_tasks=("watch_time",),
        actions=np.ones((len(user), 1), dtype=np.int64), action_sizes={"signals": 2},
        item_features={"author": author, "duration": np.r_[0, 1 + np.arange(n_items) % 3]},
        item_feature_sizes={"author": 5, "duration": 4},
        user_features={"taste": np.r_[0, taste[1:]]}, user_feature_sizes={"taste": 5},
        row_features={"tab": 1 + np.arange(len(user)) % 3}, row_feature_sizes={"tab": 4})


@pytest.fixture(scope="module")
def log_and_split():
    log = tiny_log()
    days = np.unique(log.day)
    return log, temporal_split(log, valid_day=int(days[7]), test_day=int(days[8]))


def config(**model) -> RunConfig:
    return RunConfig.model_validate({
        "dataset": "gen", "split": "temporal", "model": {"name": "gbdt", "n_estimators": 20, "num_leaves": 7,
                                                         "min_child_samples": 5, "early_stopping_rounds": 5, **model},
        "train": {"seed": 3, "threads": 1}, "eval": {"select_metric": "gauc:mean", "n_boot": 10}})


def test_config_validates_and_dispatches():
    cfg = config()
    assert isinstance(cfg.model, GBDTConfig) and trainer_class(cfg) is GBDTTrainer
    for bad in ({"num_leaves": 1}, {"learning_rate": 0}, {"bagging": 1.5}, {"features": ["ids"]}, {"trees": 3}):
        with pytest.raises(ValueError):
            config(**bad)
    defaults = RunConfig.model_validate({"dataset": "gen", "model": {"name": "gbdt"}})  # the ranking defaults
    assert defaults.split == "temporal" and defaults.eval.select_metric == "gauc:mean"
    with pytest.raises(ValueError, match="split must be temporal"):
        RunConfig.model_validate({"dataset": "gen", "split": "loo", "model": {"name": "gbdt"}})


def test_earlier_sums_match_a_brute_force_count():
    rng = np.random.default_rng(1)
    key, time = rng.integers(0, 4, 200), rng.integers(0, 30, 200)
    values, weight = rng.random((200, 2)), rng.random(200) < 0.8
    count, sums, first = earlier_sums([key], time, values, weight)
    for i in range(200):
        m = (key == key[i]) & (time < time[i]) & weight
        assert count[i] == m.sum() and np.allclose(sums[i], values[m].sum(0))
        assert first[i] == (time[m].min() if m.any() else -1)


def test_earlier_sums_at_query_times_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    key, time = rng.integers(0, 4, 300), rng.integers(0, 30, 300)
    query = time - rng.integers(0, 10, 300)
    values, weight = rng.random((300, 2)), rng.random(300) < 0.8
    count, sums, first = earlier_sums([key], time, values, weight, query)
    for i in range(300):
        m = (key == key[i]) & (time < query[i]) & weight
        assert count[i] == m.sum() and np.allclose(sums[i], values[m].sum(0))
        assert first[i] == (time[(key == key[i]) & weight].min() if m.any() else -1)


@pytest.mark.parametrize("history", ["day", "impression"])
def test_frozen_features_read_nothing_from_their_request(history, log_and_split):
    log, split = log_and_split
    cfg = RunConfig.model_validate({"dataset": "gen", "model": {"name": "gbdt", "max_len": 6, "user_history": history},
                                    "requests": "frozen"})
    query = request_query_times(cfg, log, split)
    assert (query <= log.time).all() and (query < log.time).any()
    frozen = build_features(log, cfg.model, query)
    streaming = build_features(log, cfg.model)
    assert not np.array_equal(frozen.values, streaming.values, equal_nan=True)
    requests = make_requests(cfg, log, split)["test"]
    per_user = [frozen.names.index(n) for n in frozen.names if n.startswith(("user_", "match_", "hour", "since"))
                and n not in {f"user_{k}" for k in log.user_features}]
    for r in range(len(requests)):
        rows = requests.candidates.values[requests.candidates.offsets[r]:requests.candidates.offsets[r + 1]]
        block = frozen.values[np.ix_(rows, per_user)]
        match = [i for i, n in enumerate(frozen.names[j] for j in per_user) if n.startswith("match_")]
        same = np.delete(block, match, axis=1)  # match statistics depend on the candidate's author too
        np.testing.assert_array_equal(same, np.broadcast_to(same[:1], same.shape))
    # flipping an impression's labels changes nothing featured as of its time or earlier
    row = int(np.flatnonzero(split.test)[3])
    labels = {t: v.copy() for t, v in log.labels.items()}
    labels["click"][row] = 1 - labels["click"][row]
    after = build_features(ImpressionLog(**{**_fields(log), "labels": labels}), cfg.model, query)
    same = query <= log.time[row]
    np.testing.assert_array_equal(after.values[same], frozen.values[same])


@pytest.mark.parametrize("history", ["day", "impression"])
def test_features_read_only_strictly_earlier_labels(history):
    log = tiny_log()
    cfg = GBDTConfig(user_history=history, features=("categorical", "context", "user", "item", "match", "row"))
    before = build_features(log, cfg)
    assert {"item_author", "item_duration", "hour", "user_n", "item_click", "match_author_click", "row_tab",
            "match_row_tab_click"} <= set(before.names)
    assert "item_duration" not in before.categorical and {"item_author", "row_tab"} <= set(before.categorical)
    np.testing.assert_array_equal(before.values[:, before.names.index("row_tab")], log.row_features["tab"])
    assert not [n for n in build_features(log, GBDTConfig()).names if "row_" in n]  # off by default
    rng = np.random.default_rng(2)
    for row in rng.choice(log.n_rows, 5, replace=False):
        # flip every label of one impression: nothing at its time or earlier (itself included) may change
        labels = {t: v.copy() for t, v in log.labels.items()}
        for v in labels.values():
            v[row] = 1 - v[row] if v is not labels["watch_time"] else v[row] + 5
        changed = ImpressionLog(**{**_fields(log), "labels": labels})
        after = build_features(changed, cfg)
        same = log.time <= log.time[row]
        np.testing.assert_array_equal(after.values[same], before.values[same])
        assert not np.array_equal(after.values[~same], before.values[~same])  # later rows do read it


def _fields(log: ImpressionLog) -> dict:
    keep = ("name", "users", "items", "user", "item", "time", "day", "labels", "binary_tasks", "regression_tasks",
            "actions", "action_sizes", "item_features", "item_feature_sizes", "user_features", "user_feature_sizes",
            "row_features", "row_feature_sizes")
    return {k: getattr(log, k) for k in keep}


@needs_lightgbm
def test_frozen_run_is_recorded_and_scores_every_test_impression(log_and_split, tmp_path):
    log, split = log_and_split
    cfg = RunConfig.model_validate({**config(max_len=8).model_dump(), "requests": "frozen"})
    GBDTTrainer(cfg, tmp_path / "frozen", log=log, split=split, show_progress=False).fit()
    metrics = read_json(tmp_path / "frozen" / "metrics.json")
    assert metrics["requests"] == "frozen" and metrics["tasks"]["click"]["metrics"]["gauc"]["value"] > 0.55
    preds = pq.read_table(tmp_path / "frozen" / "predictions_test.parquet").to_pydict()
    assert sorted(preds["row"]) == np.flatnonzero(split.test).tolist()


@needs_lightgbm
def test_trains_and_writes_the_ranking_run_files(log_and_split, tmp_path):
    log, split = log_and_split
    result = GBDTTrainer(config(), tmp_path / "run", log=log, split=split, show_progress=False).fit()
    run = tmp_path / "run"
    metrics = read_json(run / "metrics.json")
    assert set(metrics["tasks"]) == {"click", "like", "watch_time"}
    assert metrics["tasks"]["click"]["metrics"]["gauc"]["value"] > 0.6  # the author x taste signal is learnt
    assert {"dataset", "split", "calibration", "metrics", "run"} <= set(metrics)
    assert {"epochs_run", "best_epoch", "train_seconds", "model", "commit"} <= set(metrics["run"])
    assert result.best_epoch == metrics["run"]["best_epoch"] and len(result.history) == 3
    for r in result.history:  # each task grew trees until 5 rounds without a better validation score, or 20
        assert r["rounds"] in (20, r["best_round"] + 5)
    preds = pq.read_table(run / "predictions_test.parquet").to_pydict()
    assert sorted(preds["row"]) == np.flatnonzero(split.test).tolist()
    assert {"label_click", "pred_click", "raw_click", "pred_watch_time"} <= set(preds)
    model = read_json(run / "model.json")
    assert model["name"] == "gbdt" and set(model["models"]) == {"click", "like", "watch_time"}
    # the saved text model alone reproduces the uncalibrated test predictions
    booster = lgb.Booster(model_file=str(run / model["models"]["click"]))
    feats = build_features(log, GBDTConfig.model_validate(model["config"]))
    np.testing.assert_allclose(booster.predict(feats.values[preds["row"]]), preds["raw_click"], rtol=1e-5)
    with pytest.raises(GenrecError, match="already holds a finished run"):
        GBDTTrainer(config(), run, log=log, split=split, show_progress=False).fit()


@needs_lightgbm
def test_same_config_same_metrics(log_and_split, tmp_path):
    log, split = log_and_split
    for name in ("a", "b"):
        GBDTTrainer(config(bagging=0.7, feature_fraction=0.7), tmp_path / name, log=log, split=split,
                    show_progress=False).fit()
    a, b = (read_json(tmp_path / n / "metrics.json")["metrics"] for n in ("a", "b"))
    assert a == b
    pa_, pb = (pq.read_table(tmp_path / n / "predictions_test.parquet") for n in ("a", "b"))
    assert pa_.equals(pb)


def test_missing_lightgbm_names_the_extra(monkeypatch, log_and_split, tmp_path):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # makes `import lightgbm` raise ImportError
    with pytest.raises(GenrecError, match=r"genrec\[gbdt\]"):
        import_lightgbm()
    log, split = log_and_split
    with pytest.raises(GenrecError, match=r"genrec\[gbdt\]"):
        GBDTTrainer(config(), tmp_path / "run", log=log, split=split, show_progress=False).fit()


@needs_lightgbm
def test_a_gbdt_run_is_not_a_servable_ranker(log_and_split, tmp_path):
    from genrec.serve.bundle import _copy_ranker

    log, split = log_and_split
    GBDTTrainer(config(n_estimators=3), tmp_path / "run", log=log, split=split, show_progress=False).fit()
    with pytest.raises(GenrecError, match="not a finished ranking run"):
        _copy_ranker(tmp_path / "run", tmp_path / "bundle", ["0", "1"], {})


@needs_lightgbm
def test_refit_grows_each_tasks_selected_rounds_on_training_and_validation(log_and_split, tmp_path):
    log, split = log_and_split
    plain = GBDTTrainer(config(), tmp_path / "plain", log=log, split=split, show_progress=False).fit()
    cfg = config().model_copy(update={"train": config().train.model_copy(update={"refit": True})})
    GBDTTrainer(cfg, tmp_path / "refit", log=log, split=split, show_progress=False).fit()
    refit = read_json(tmp_path / "refit" / "metrics.json")["run"]["refit"]
    assert refit["train_rows"] == int(split.train.sum() + split.valid.sum())
    assert refit["rounds"] == {r["task"]: r["best_round"] for r in plain.history}  # selection as without refit
    model = read_json(tmp_path / "refit" / "model.json")
    booster = lgb.Booster(model_file=str(tmp_path / "refit" / model["models"]["click"]))
    assert booster.num_trees() == refit["rounds"]["click"]
    a, b = (pq.read_table(tmp_path / n / "predictions_test.parquet").to_pydict() for n in ("plain", "refit"))
    assert a["row"] == b["row"] and a["raw_click"] != b["raw_click"]  # other trees: validation is training data
    cal_plain, cal_refit = (read_json(tmp_path / n / "model.json")["calibration"] for n in ("plain", "refit"))
    for t, (a, b) in cal_plain.items():  # the selected trees' slopes, intercepts moved for the refit trees
        assert cal_refit[t][0] == a and cal_refit[t][1] != b
