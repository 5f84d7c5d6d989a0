"""Training the gradient-boosted-trees ranking baseline (model ``gbdt``, LightGBM) on an impression log.

The same protocol as :mod:`genrec.train.ranking`: the log's default time split, features of each impression
from strictly earlier impressions only (:func:`genrec.models.gbdt.build_features`), the validation part for
early stopping, the test part scored once. One LightGBM model per task: binary tasks stop on their validation
GAUC (AUC when ``eval.select_metric`` is ``auc:<task>``), regression tasks on validation l2; each keeps its best
round. With ``eval.calibrate`` the binary tasks' probabilities are rescaled (Platt, or temperature) with
parameters fitted on the validation impressions, as the torch rankers' are.

The run folder gets ``model_<task>.txt`` (LightGBM's own text format, not pickle), ``model.json`` (config,
data spec, feature names, calibration, rounds, gain importances), ``config.json``, ``metrics.json`` and
``predictions_test.parquet`` with the schema of the torch rankers' runs, so ``benchmarks/ranking.py`` compares
them on the same test impressions. There are no checkpoints: a run takes minutes, and the same config and seed
give the same models (``deterministic``), so ``--resume`` trains again from the start.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from genrec.data.actions import schema_for
from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import ImpressionSplit, ranking_split
from genrec.data.impressions import ImpressionLog
from genrec.errors import ConfigError, GenrecError
from genrec.eval import ctr
from genrec.eval.report import git_commit
from genrec.io import write_json, write_text
from genrec.models.gbdt import Features, build_features, import_lightgbm
from genrec.models.ranking import RankSpec
from genrec.progress import progress_bar
from genrec.train.loop import TrainResult
from genrec.train.ranking import (
    carry_calibration,
    check_select_metric,
    fit_calibration,
    make_requests,
    selection_value,
    write_test_report,
    write_vocabularies,
)

PARTS = ("train", "valid", "test")


def check_run(cfg: Any) -> None:
    """The run-level settings a GBDT reads like the torch rankers (their defaults are not applied to gbdt)."""
    if cfg.split != "temporal":
        raise ConfigError("model gbdt trains on an impression log split by time: set split: temporal")
    if cfg.features.semantic_ids or cfg.features.content:
        raise ConfigError("features: applies to retrieval models, not to gbdt")


class GBDTTrainer:
    def __init__(self, config: Any, run_dir: str | Path, log: ImpressionLog | None = None,
                 split: ImpressionSplit | None = None, show_progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        self.log, self.split = log, split
        self.show_progress = show_progress

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        cfg, mcfg = self.config, self.config.model
        check_run(cfg)
        lgb = import_lightgbm()
        commit_at_start, start = git_commit(), time.perf_counter()
        log = self.log or load_impressions(cfg.dataset)
        split = self.split or ranking_split(log, cfg.split, cfg.temporal.days())
        spec = RankSpec(**log.spec_fields())
        metric = cfg.eval.select_metric
        check_select_metric(metric, spec.binary_tasks)
        self._open(resume)
        feats = build_features(log, mcfg, request_query_times(cfg, log, split) if cfg.requests == "frozen" else None)
        feature_seconds = time.perf_counter() - start
        rows = {part: np.flatnonzero(split.part(part)) for part in PARTS}
        for part in ("train", "valid"):
            if not len(rows[part]):
                raise ConfigError(f"the {part} part of {log.name} has no impressions")
        boosters, history, valid_raw = {}, [], {}
        for task in spec.tasks:
            booster, record = self._fit_task(lgb, task, task in spec.binary_tasks, feats, log, rows)
            boosters[task], valid_raw[task] = booster, _predict(booster, feats, rows["valid"])
            history.append(record)
            if self.show_progress:
                print(f"{task:>10}: {record['best_round']} of {record['rounds']} rounds, valid "
                      f"{record['stop_metric']} {record['best_score']:.4f}", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(record)
        valid = selection_value(metric, log, rows["valid"], valid_raw, spec.binary_tasks)
        calibration = fit_calibration(self.config.eval, log, split, rows["valid"], valid_raw, spec.binary_tasks)
        refit = None
        if cfg.train.refit:
            boosters, refit = self._refit(lgb, spec, feats, log, rows, history)
            if calibration:
                calibration = carry_calibration(calibration, valid_raw, {t: _predict(b, feats, rows["valid"])
                                                                         for t, b in boosters.items()})
        state = {"commit_at_start": commit_at_start, "history": history, "valid": valid, "refit": refit,
                 "feature_seconds": feature_seconds, "train_seconds": time.perf_counter() - start}
        self._save(boosters, feats, spec, log, calibration, history)
        test = self._test(boosters, feats, log, split, rows["test"], spec, state, calibration)
        best = max(r["best_round"] for r in history)
        return TrainResult(boosters, self.run_dir, best, valid["select"], test, history)

    def _open(self, resume: bool) -> None:
        if (self.run_dir / "metrics.json").is_file() and not resume:
            raise GenrecError(f"{self.run_dir} already holds a finished run; choose another --out (or pass --resume "
                              "to train it again: gbdt runs have no checkpoints)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self.config.model_dump(mode="json"))

    def _params(self, binary: bool) -> dict[str, Any]:
        m, t = self.config.model, self.config.train
        return {"objective": "binary" if binary else "regression", "metric": "None" if binary else "l2",
                "num_leaves": m.num_leaves, "learning_rate": m.learning_rate,
                "min_child_samples": m.min_child_samples, "feature_fraction": m.feature_fraction,
                "bagging_fraction": m.bagging, "bagging_freq": 1 if m.bagging < 1 else 0, "lambda_l2": m.lambda_l2,
                "num_threads": m.num_threads or t.threads or 1, "seed": t.seed, "deterministic": True,
                "force_col_wise": True, "verbosity": -1}

    def _fit_task(self, lgb: Any, task: str, binary: bool, feats: Features, log: ImpressionLog,
                  rows: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
        m = self.config.model
        y = log.labels[task]
        tr, va = rows["train"], rows["valid"]
        train = lgb.Dataset(feats.values[tr], y[tr], feature_name=feats.names, categorical_feature=feats.categorical,
                            free_raw_data=True)
        valid = lgb.Dataset(feats.values[va], y[va], reference=train)
        stop_metric = "l2"
        feval = None
        if binary:
            stop_metric = "auc" if self.config.eval.select_metric.startswith("auc:") else "gauc"
            feval = _ranking_eval(stop_metric, log.user[va])
        t0, ran = time.perf_counter(), [0]
        with progress_bar(m.n_estimators, f"{task} trees", enabled=self.show_progress) as advance:

            def tick(env: Any) -> None:
                ran[0] = env.iteration + 1
                advance(1)

            booster = lgb.train(self._params(binary), train, num_boost_round=m.n_estimators, valid_sets=[valid],
                                valid_names=["valid"], feval=feval,
                                callbacks=[lgb.early_stopping(m.early_stopping_rounds, verbose=False), tick])
        # lgb.train keeps only the best round's trees after early stopping; `ran` counts the rounds grown
        best_round = booster.best_iteration or booster.current_iteration()
        score = booster.best_score["valid"][stop_metric]
        return booster, {"task": task, "rounds": ran[0], "best_round": best_round,
                         "stop_metric": stop_metric, "best_score": float(score),
                         "seconds": time.perf_counter() - t0}

    def _refit(self, lgb: Any, spec: RankSpec, feats: Features, log: ImpressionLog, rows: dict[str, np.ndarray],
               history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``train.refit``: each task's trees grown again on the training and validation impressions together,
        for the number of rounds its validation chose (same parameters and seed); the test reads these."""
        both = np.sort(np.concatenate([rows["train"], rows["valid"]]))
        t0, boosters = time.perf_counter(), {}
        for record in history:
            task = record["task"]
            data = lgb.Dataset(feats.values[both], log.labels[task][both], feature_name=feats.names,
                               categorical_feature=feats.categorical, free_raw_data=True)
            boosters[task] = lgb.train(self._params(task in spec.binary_tasks), data,
                                       num_boost_round=record["best_round"])
        return boosters, {"rounds": {r["task"]: r["best_round"] for r in history}, "train_rows": len(both),
                          "seconds": time.perf_counter() - t0}

    def _save(self, boosters: dict[str, Any], feats: Features, spec: RankSpec, log: ImpressionLog,
              calibration: dict[str, tuple[float, float]], history: list[dict[str, Any]]) -> None:
        cfg = self.config
        files = {t: f"model_{t}.txt" for t in boosters}
        for t, booster in boosters.items():
            write_text(self.run_dir / files[t], booster.model_to_string(num_iteration=booster.best_iteration or -1))
        importance = {t: dict(zip(feats.names, b.feature_importance("gain", iteration=b.best_iteration or -1)
                                  .round(3).tolist(), strict=True)) for t, b in boosters.items()}
        write_json(self.run_dir / "model.json", {
            "name": cfg.model.name, "config": cfg.model.model_dump(mode="json"), "spec": spec.to_json(),
            "calibration": {t: list(ab) for t, ab in calibration.items()}, "models": files,
            "features": feats.names, "categorical": feats.categorical,
            "rounds": {r["task"]: r["best_round"] for r in history}, "importance_gain": importance,
            "actions": schema_for(log.name, log.action_sizes)})
        write_vocabularies(self.run_dir, log)

    def _test(self, boosters: dict[str, Any], feats: Features, log: ImpressionLog, split: ImpressionSplit,
              rows: np.ndarray, spec: RankSpec, state: dict[str, Any],
              calibration: dict[str, tuple[float, float]]) -> dict[str, Any]:
        if not len(rows):
            raise ConfigError(f"the test part of {log.name} has no impressions")
        raw = {t: _predict(b, feats, rows) for t, b in boosters.items()}
        history = state["history"]
        run = {"commit_at_start": state["commit_at_start"],
               # epochs are boosting rounds: the most any task ran / kept (per task under "rounds")
               "best_epoch": max(r["best_round"] for r in history), "best_valid": state["valid"]["select"],
               "epochs_run": max(r["rounds"] for r in history), "rounds": {r["task"]: r for r in history},
               "stopped": "early stopping per task", "train_seconds": state["train_seconds"],
               "feature_seconds": state["feature_seconds"], "threads": self._params(True)["num_threads"],
               "device": "cpu", **({"refit": state["refit"]} if state["refit"] else {})}
        valid = {"valid": {k: v for k, v in state["valid"].items() if k != "select"}}
        return write_test_report(self.run_dir, self.config, log, split, spec, rows, raw, calibration, run,
                                 self.show_progress, extra=valid)


def request_query_times(cfg: Any, log: ImpressionLog, split: ImpressionSplit) -> np.ndarray:
    """Per row, the time of its frozen request's first impression: the requests the torch rankers form under
    ``requests: frozen`` (``genrec.train.ranking.make_requests``, ``model.max_len``); rows in no part keep
    their own time."""
    query = log.time.copy()
    for requests in make_requests(cfg, log, split).values():
        offsets, rows = requests.candidates.offsets, requests.candidates.values
        query[rows] = np.repeat(log.time[rows[offsets[:-1]]], np.diff(offsets))
    return query


def _predict(booster: Any, feats: Features, rows: np.ndarray) -> np.ndarray:
    """Probabilities (binary objective) or values (regression) of the best round."""
    return booster.predict(feats.values[rows], num_iteration=booster.best_iteration or None).astype(np.float32)


def _ranking_eval(metric: str, users: np.ndarray):
    """LightGBM ``feval``: validation GAUC (or AUC), higher is better. A task where no validation user has both
    outcomes has no GAUC; it falls back to AUC, then to 0.5, so early stopping still ends it."""

    def evaluate(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
        y = data.get_label()
        value = ctr.gauc(users, y, preds)[0] if metric == "gauc" else float("nan")
        if not np.isfinite(value):
            value = ctr.auc(y, preds)
        return metric, float(value) if np.isfinite(value) else 0.5, True

    return evaluate
