"""The ranking trainer: every ranking model trains from a config on a generated impression log split by time,
selects on validation GAUC, writes a complete run folder, resumes exactly, and learns a learnable signal."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.data.dataset import Vocab
from genrec.data.impression_readers import utc_day
from genrec.data.impression_splits import leave_one_out_split, temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.errors import ConfigError, GenrecError
from genrec.io import read_json
from genrec.train import trainer_class
from genrec.train.checkpoint import load_tensors
from genrec.train.config import RunConfig
from genrec.train.loop import WeightAverage
from genrec.train.ranking import RankingTrainer

DAY_MS = 86_400_000
T0 = 1_650_000_000_000 - 1_650_000_000_000 % DAY_MS  # midnight UTC


def learnable_log(seed: int = 0, n_users: int = 60, n_items: int = 30, rows: int = 40) -> ImpressionLog:
    """click depends on the item (even items are liked) and on the user's taste; 10 days of impressions."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, n_users + 1), rows)
    item = rng.integers(1, n_items + 1, size=len(user))
    time = T0 + rng.integers(0, 10 * DAY_MS, size=len(user))
    taste = rng.random(n_users + 1) < 0.5
    p = np.where((item % 2 == 0) ^ taste[user], 0.85, 0.15)
    click = (rng.random(len(user)) < p).astype(np.float32)
    like = click * (rng.random(len(user)) < 0.5)
    return ImpressionLog.build(
        name="gen", users=Vocab(pa.array(np.arange(n_users))), items=Vocab(pa.array(np.arange(n_items))),
        user=user, item=item, time=time, day=utc_day(time),
        labels={"click": click, "forward": like, "watch_time": click * 2 + rng.random(len(user))},
        binary_tasks=("click", "forward"), regression_tasks=("watch_time",),
        actions=np.stack([1 + click.astype(np.int64) + 2 * like.astype(np.int64)], axis=1), action_sizes={"signals": 5},
        item_features={"parity": np.r_[0, 1 + (np.arange(1, n_items + 1) % 2)]}, item_feature_sizes={"parity": 3},
        user_features={"taste": np.r_[0, 1 + taste[1:].astype(np.int64)]}, user_feature_sizes={"taste": 3})


@pytest.fixture(scope="module")
def log_and_split():
    log = learnable_log()
    days = np.unique(log.day)
    return log, temporal_split(log, valid_day=int(days[7]), test_day=int(days[8]))


def config(name: str, **train) -> RunConfig:
    model = {"name": name, "dim": 16, "max_len": 32}
    if name == "ranker":
        model |= {"blocks": 1, "heads": 2}
    return RunConfig.model_validate({"dataset": "gen", "model": model, "train": {
        "epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "patience": 5, **train},
        "eval": {"n_boot": 20}})


@pytest.mark.parametrize("name", ["ranker", "dcn", "din"])
def test_each_model_trains_and_writes_a_run(name, log_and_split, tmp_path):
    log, split = log_and_split
    cfg = config(name, epochs=6)
    assert cfg.split == "temporal" and cfg.eval.select_metric == "gauc:mean"  # ranking defaults
    assert trainer_class(cfg) is RankingTrainer
    result = RankingTrainer(cfg, tmp_path / name, log=log, split=split, show_progress=False).fit()
    metrics = read_json(tmp_path / name / "metrics.json")
    assert set(metrics["tasks"]) == {"click", "forward", "watch_time"}  # "forward": a Module attribute name
    assert metrics["tasks"]["click"]["metrics"]["auc"]["value"] > 0.6  # the signal is learnable
    assert 1 <= result.best_epoch <= 6 and len(result.history) == metrics["run"]["epochs_run"]
    preds = pq.read_table(tmp_path / name / "predictions_test.parquet").to_pydict()
    assert sorted(preds["row"]) == np.flatnonzero(split.test).tolist()  # every test impression, once
    assert all(0 <= p <= 1 for p in preds["pred_click"])
    spec = read_json(tmp_path / name / "model.json")
    assert spec["name"] == name and spec["spec"]["binary_tasks"] == ["click", "forward"]


def test_leave_one_out_run_tests_each_users_last_impression(tmp_path):
    log = learnable_log(1, n_users=40, rows=20)
    cfg = RunConfig.model_validate({**config("ranker").model_dump(), "split": "loo"})
    with pytest.raises(ConfigError, match="gauc:mean is undefined"):  # one validation row per user, no negatives
        RankingTrainer(cfg, tmp_path / "bad", log=log, show_progress=False).fit()
    cfg = RunConfig.model_validate({**cfg.model_dump(), "eval": {"select_metric": "auc:click", "n_boot": 20}})
    RankingTrainer(cfg, tmp_path / "loo", log=log, show_progress=False).fit()  # the split comes from the config
    expected = leave_one_out_split(log)
    preds = pq.read_table(tmp_path / "loo" / "predictions_test.parquet").to_pydict()
    assert sorted(preds["row"]) == np.flatnonzero(expected.test).tolist()
    assert len(set(preds["user"])) == log.n_users  # every user has a test impression
    assert read_json(tmp_path / "loo" / "metrics.json")["split"]["rule"]["kind"] == "leave-one-out"


def test_frozen_run_scores_every_test_impression_with_its_request_history(log_and_split, tmp_path):
    log, split = log_and_split
    cfg = RunConfig.model_validate({**config("ranker").model_dump(), "requests": "frozen"})
    RankingTrainer(cfg, tmp_path / "frozen", log=log, split=split, show_progress=False).fit()
    metrics = read_json(tmp_path / "frozen" / "metrics.json")
    assert metrics["requests"] == "frozen" and metrics["tasks"]["click"]["metrics"]["auc"]["value"] > 0.6
    preds = pq.read_table(tmp_path / "frozen" / "predictions_test.parquet").to_pydict()
    assert sorted(preds["row"]) == np.flatnonzero(split.test).tolist()


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_gives_the_same_result(ema, log_and_split, tmp_path):
    log, split = log_and_split
    full = RankingTrainer(config("dcn", ema=ema), tmp_path / "full", log=log, split=split, show_progress=False).fit()
    stopped = []

    def stop_after_two(record):
        if record["epoch"] == 2:
            stopped.append(True)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RankingTrainer(config("dcn", ema=ema), tmp_path / "resumed", log=log, split=split,
                       show_progress=False).fit(on_epoch_end=stop_after_two)
    resumed = RankingTrainer(config("dcn", ema=ema), tmp_path / "resumed", log=log, split=split,
                             show_progress=False).fit(resume=True)
    a = read_json(tmp_path / "full" / "metrics.json")["metrics"]
    b = read_json(tmp_path / "resumed" / "metrics.json")["metrics"]
    assert stopped and resumed.best_epoch == full.best_epoch
    assert a["auc:click"]["value"] == pytest.approx(b["auc:click"]["value"], abs=1e-6)


def test_a_mid_epoch_checkpoint_resumes_exactly(log_and_split, tmp_path, monkeypatch):
    """The shared loop's train.checkpoint_every: a kill between two mid-epoch checkpoints resumes from the last
    one (data position, weight average and generators) to the weights of an uninterrupted run."""
    import genrec.train.ranking as ranking

    log, split = log_and_split
    cfg = config("dcn", epochs=2, ema=0.9, checkpoint_every=4)
    full = RankingTrainer(cfg, tmp_path / "full", log=log, split=split, show_progress=False).fit()
    per_epoch = full.history[0]["step"]
    original, calls = ranking.optimizer_step, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == per_epoch + 7:
            raise KeyboardInterrupt
        original(*args, **kwargs)

    monkeypatch.setattr(ranking, "optimizer_step", killed)
    with pytest.raises(KeyboardInterrupt):
        RankingTrainer(cfg, tmp_path / "cut", log=log, split=split, show_progress=False).fit()
    monkeypatch.setattr(ranking, "optimizer_step", original)
    saved = read_json(tmp_path / "cut" / "checkpoint" / "trainer.json")
    assert saved["epoch"] == 1 and saved["position"]["epoch"] == 2 and saved["position"]["step"] > 0
    resumed = RankingTrainer(cfg, tmp_path / "cut", log=log, split=split, show_progress=False).fit(resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    a, b = load_tensors(tmp_path / "full" / "model.safetensors"), load_tensors(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_weight_average_is_what_validation_reads_and_the_run_keeps(log_and_split, tmp_path):
    log, split = log_and_split
    plain = RankingTrainer(config("ranker"), tmp_path / "plain", log=log, split=split, show_progress=False).fit()
    averaged = RankingTrainer(config("ranker", ema=0.99), tmp_path / "ema", log=log, split=split,
                              show_progress=False)
    result = averaged.fit()
    assert read_json(tmp_path / "ema" / "metrics.json")["tasks"]["click"]["metrics"]["auc"]["value"] > 0.6
    assert [h["valid_gauc:mean"] for h in result.history] != [h["valid_gauc:mean"] for h in plain.history]
    # the checkpoint holds the running average; the kept (best) weights are the average at the best epoch
    saved = load_tensors(tmp_path / "ema" / "checkpoint" / "ema.safetensors")
    assert int(saved.pop("__steps__")) == averaged.average.steps > 0
    assert all(torch.equal(saved[k], v) for k, v in averaged.average.avg.items())
    last = load_tensors(tmp_path / "ema" / "checkpoint" / "model.safetensors")  # the last iterate, not averaged
    assert any(not torch.equal(last[k], v) for k, v in averaged.average.avg.items())
    if result.best_epoch == len(result.history):
        for k, p in result.model.named_parameters():
            assert torch.equal(p.detach(), saved[k]), k


def test_weight_average_warms_up_then_follows_the_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    avg = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update(model)  # step 1: d = min(.5, 2 / 11) = 2 / 11
    assert avg.avg["weight"][0, 0].item() == pytest.approx(9 / 11)
    avg.update(model)  # step 2: d = min(.5, 3 / 12) = .25
    assert avg.avg["weight"][0, 0].item() == pytest.approx(1 - 0.25 * 2 / 11)
    with avg.swapped(model) as m:
        assert m.weight[0, 0].item() == pytest.approx(1 - 0.5 / 11)
    assert model.weight[0, 0].item() == 1.0  # its own weights back
    with pytest.raises(GenrecError, match="does not match"):
        avg.load({"other": torch.zeros(1), "__steps__": torch.tensor(1)})


def test_bad_ranking_configs():
    with pytest.raises(Exception, match="train.ema applies"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "sasrec"}, "train": {"ema": 0.99}})
    with pytest.raises(Exception, match="ema"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "din"}, "train": {"ema": 1.0}})
    with pytest.raises(Exception, match="split must be temporal or loo"):
        RunConfig.model_validate({"dataset": "x", "split": "cold", "model": {"name": "din"}})
    assert RunConfig.model_validate({"dataset": "x", "split": "loo", "model": {"name": "din"}}).split == "loo"
    with pytest.raises(Exception, match="split must be temporal"):
        RunConfig.model_validate({"dataset": "x", "split": "loo", "model": {"name": "gbdt"}})
    with pytest.raises(Exception, match="features"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "dcn"}, "features": {"content": "x"}})
    gbdt = RunConfig.model_validate({"dataset": "x", "model": {"name": "gbdt"}, "requests": "frozen"})
    assert gbdt.requests == "frozen"
    with pytest.raises(Exception, match="requests: applies to ranking models"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "sasrec"}, "requests": "frozen"})
    with pytest.raises(Exception, match="requests"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "din"}, "requests": "served"})
    fold = RunConfig.model_validate({"dataset": "x", "model": {"name": "gbdt"},
                                     "temporal": {"valid_day": 20220504, "test_day": 20220505, "end_day": 20220507}})
    assert fold.temporal.days() == {"valid_day": 20220504, "test_day": 20220505, "end_day": 20220507}
    with pytest.raises(Exception, match="cut ranking logs"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "sasrec"}, "temporal": {"test_day": 20220505}})
    with pytest.raises(Exception, match="end_day"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "din"}, "temporal": {"end_day": 2022}})
    cfg = RunConfig.model_validate({"dataset": "x", "model": {"name": "dcn"}, "eval": {"select_metric": "ndcg@10"}})
    from genrec.train.ranking import check_select_metric

    with pytest.raises(ConfigError, match="not a ranking metric"):
        check_select_metric(cfg.eval.select_metric, ("click",))


def test_temperature_scaling_keeps_the_intercept_at_zero_and_fixes_overconfidence():
    from genrec.train.ranking import MIN_SLOPE, apply_platt, fit_platt

    rng = np.random.default_rng(0)
    true = rng.uniform(0.05, 0.95, 20_000)
    labels = (rng.uniform(size=true.size) < true).astype(np.float32)
    logit = np.log(true / (1 - true))
    overconfident = 1 / (1 + np.exp(-3 * logit))  # the right ordering and base rate, three times too sharp
    a, b = fit_platt(labels, overconfident, intercept=False)
    assert b == 0 and a == pytest.approx(1 / 3, rel=0.05)
    assert np.abs(apply_platt(overconfident, (a, b)) - true).max() < 0.05
    shifted = 1 / (1 + np.exp(-(logit + 1)))  # right sharpness, wrong base rate: only platt moves it back
    assert fit_platt(labels, shifted)[1] == pytest.approx(-1, abs=0.1)
    # scores that rank worse than chance across the pool: the slope stays positive, so no order is reversed
    reversed_ = 1 - true
    a, b = fit_platt(labels, reversed_)
    assert a > 0 and a == pytest.approx(MIN_SLOPE, rel=0.5)
    calibrated = apply_platt(reversed_, (a, b))
    assert np.all(np.diff(calibrated[np.argsort(reversed_)]) >= 0)
    assert abs(float(calibrated.mean()) - float(labels.mean())) < 0.02
    assert RunConfig.model_validate({**config("ranker").model_dump(), "eval": {"calibrate": False}}).eval.calibrate \
        == "none"
    with pytest.raises(Exception, match="calibrate"):
        RunConfig.model_validate({**config("ranker").model_dump(), "eval": {"calibrate": "isotonic"}})


def test_calibration_to_the_training_base_rate(log_and_split):
    from genrec.train.ranking import fit_calibration, match_mean

    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 5000)
    b = match_mean(0.7, 0.2, p, 0.3)
    logit = np.log(p / (1 - p))
    assert np.mean(1 / (1 + np.exp(-(0.7 * logit + b)))) == pytest.approx(0.3, abs=1e-6)
    log, split = log_and_split
    rows = np.flatnonzero(split.valid)
    probs = {"click": rng.uniform(0.05, 0.95, rows.size).astype(np.float32)}
    cfg = config("ranker")
    plain = fit_calibration(cfg.eval, log, split, rows, probs, ("click",))["click"]
    moved_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"calibrate_base_rate": "train"})})
    moved = fit_calibration(moved_cfg.eval, log, split, rows, probs, ("click",))["click"]
    assert moved[0] == plain[0] and moved[1] != plain[1]  # the same slope, the intercept moved
    logit = np.log(probs["click"] / (1 - probs["click"]))
    mean = np.mean(1 / (1 + np.exp(-(moved[0] * logit + moved[1]))))
    assert mean == pytest.approx(log.labels["click"][split.train].mean(), abs=1e-4)



def test_carried_calibration_keeps_slopes_and_matches_the_selected_models_mean():
    from genrec.train.ranking import apply_platt, carry_calibration

    rng = np.random.default_rng(2)
    selected = {"click": rng.uniform(0.05, 0.6, 4000), "like": rng.uniform(0.01, 0.2, 4000)}
    refit = {t: np.clip(p * 1.3, 0, 0.99) for t, p in selected.items()}  # a refit model that predicts higher
    calibration = {"click": (0.8, 0.1), "like": (1.2, -0.3)}
    carried = carry_calibration(calibration, selected, refit)
    for t, (a, b) in calibration.items():
        assert carried[t][0] == a and carried[t][1] < b
        assert apply_platt(refit[t], carried[t]).mean() == pytest.approx(apply_platt(selected[t], (a, b)).mean(),
                                                                         abs=1e-5)
    same = carry_calibration(calibration, selected, selected)  # the selected model itself: nothing moves
    assert all(same[t] == pytest.approx(ab, abs=1e-6) for t, ab in calibration.items())

def test_leave_one_out_negatives_spare_only_what_each_user_rated_before_their_held_out_part(monkeypatch):
    import genrec.train.ranking as ranking

    log = learnable_log(2, n_users=20, n_items=200, rows=30)
    monkeypatch.setattr(ranking, "load_impressions", lambda name: log)
    cfg = RunConfig.model_validate({"dataset": "gen", "split": "loo", "model": {"name": "ranker"},
                                    "negatives": {"per_row": 3}})
    out = ranking.load_ranking_log(cfg)
    assert out.name == "gen-sampled-loo" and out.n_rows == 4 * log.n_rows
    split = ranking.ranking_split(out, "loo")
    assert (split.test & out.context).sum() == log.n_users  # the same held-out ratings as the log alone
    fake = ~out.context
    rated = {(u, i, t) for u, i, t in zip(log.user.tolist(), log.item.tolist(), log.time.tolist(), strict=True)}
    cut = {int(u): int(out.time[split.valid | split.test][out.user[split.valid | split.test] == u].min())
           for u in np.unique(out.user)}
    for u, i in zip(out.user[fake].tolist(), out.item[fake].tolist(), strict=True):
        assert not any(ru == u and ri == i and rt < cut[u] for ru, ri, rt in rated)
    monkeypatch.setattr(ranking, "load_impressions", lambda name: out)
    with pytest.raises(ConfigError, match="already has sampled negatives"):
        ranking.load_ranking_log(cfg)


def test_negative_pools_are_read_by_raw_id_and_checked(log_and_split, tmp_path):
    from genrec.errors import DataError
    from genrec.train.ranking import read_pools

    log, _ = log_and_split
    users = [str(x) for x in log.users.raw.to_pylist()]
    items = [str(x) for x in log.items.raw.to_pylist()]
    path = tmp_path / "pools.parquet"
    pq.write_table(pa.table({"user": [users[2], "nobody"], "items": [[items[4], "unknown", items[0]], [items[1]]]}),
                   path)
    pools = read_pools(path, log)
    assert pools.shape == (log.n_users + 1, 3)
    assert pools[3].tolist() == [5, 0, 1]  # dense = position + 1; an unknown raw id is an empty slot
    assert pools.sum() == 6  # the unknown user is dropped
    with pytest.raises(ConfigError, match="does not exist"):
        read_pools(tmp_path / "missing.parquet", log)
    pq.write_table(pa.table({"user": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="items"):
        read_pools(tmp_path / "bad.parquet", log)
    with pytest.raises(Exception, match="negatives"):
        RunConfig.model_validate({"dataset": "gen", "model": {"name": "gbdt"}, "negatives": {"pools": str(path)}})
    with pytest.raises(Exception, match="negatives"):
        RunConfig.model_validate({"dataset": "gen", "model": {"name": "sasrec"}, "negatives": {"pools": str(path)}})
    assert config("ranker").model_copy(update={"negatives": None}).negatives is None


def test_training_requests_can_differ_from_the_evaluated_ones(log_and_split):
    from genrec.train.ranking import make_requests
    log, split = log_and_split
    frozen = RunConfig.model_validate({**config("ranker").model_dump(), "requests": "frozen"})
    mixed = RunConfig.model_validate({**frozen.model_dump(), "train_requests": "streaming", "train_stride": 4})
    a, b = make_requests(frozen, log, split), make_requests(mixed, log, split)
    for part in ("valid", "test"):  # evaluation follows `requests`
        assert np.array_equal(a[part].visible.values, b[part].visible.values)
        assert np.array_equal(a[part].candidates.offsets, b[part].candidates.offsets)
    assert a["train"].frozen and not b["train"].frozen
    assert np.diff(b["train"].candidates.offsets).max() <= 4 < np.diff(a["train"].candidates.offsets).max()
    assert np.array_equal(np.sort(a["train"].candidates.values), np.sort(b["train"].candidates.values))
    with pytest.raises(Exception, match="train_stride"):
        RunConfig.model_validate({**frozen.model_dump(), "train_stride": 33})  # above max_len 32
    with pytest.raises(Exception, match="apply to the torch ranking models"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "gbdt"}, "train_requests": "frozen"})


def test_refit_trains_a_fresh_model_on_training_and_validation_for_the_selected_epochs(log_and_split, tmp_path):
    log, split = log_and_split
    plain = RankingTrainer(config("ranker"), tmp_path / "plain", log=log, split=split, show_progress=False).fit()
    cfg = config("ranker", refit=True)
    result = RankingTrainer(cfg, tmp_path / "refit", log=log, split=split, show_progress=False).fit()
    refit = read_json(tmp_path / "refit" / "metrics.json")["run"]["refit"]
    assert result.best_epoch == plain.best_epoch == refit["epochs"] == refit["selected_epoch"]
    assert refit["train_rows"] == int(split.train.sum() + split.valid.sum())
    assert len((tmp_path / "refit" / "refit" / "metrics.jsonl").read_text().splitlines()) == refit["epochs"]
    saved = load_tensors(tmp_path / "refit" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in result.model.state_dict().items())  # the refit model is tested
    a, b = (pq.read_table(tmp_path / n / "predictions_test.parquet").to_pydict() for n in ("plain", "refit"))
    assert a["row"] == b["row"] and a["raw_click"] != b["raw_click"]
    assert read_json(tmp_path / "refit" / "metrics.json")["tasks"]["click"]["metrics"]["auc"]["value"] > 0.6
    cal_plain, cal_refit = (read_json(tmp_path / n / "metrics.json")["calibration"] for n in ("plain", "refit"))
    assert "refit model" in cal_refit["method"] and "refit" not in cal_plain["method"]
    for t, (a, b) in cal_plain["params"].items():  # the selected model's slopes, the refit model's intercepts
        assert cal_refit["params"][t][0] == a and cal_refit["params"][t][1] != b
    # --resume of the finished run reads both checkpoints back: no more epochs, the same refit model and test
    again = RankingTrainer(cfg, tmp_path / "refit", log=log, split=split, show_progress=False).fit(resume=True)
    assert all(torch.equal(saved[k], v) for k, v in again.model.state_dict().items())
    assert len((tmp_path / "refit" / "refit" / "metrics.jsonl").read_text().splitlines()) == refit["epochs"]
