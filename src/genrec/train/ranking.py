"""Training a multi-task ranking model (the generative ranker or a baseline) on an impression log.

The log is split by time (``split: temporal``, ``genrec.data.impression_splits.default_split``: KuaiRand trains on
04-25..05-05 and validates / tests on the following days; ML-1M ratings on the source's global time split), or per
user by time (``split: loo``: each user's last two ratings, ``leave_one_out_split``). Every impression is
a candidate of exactly one forward-pass request whose history holds only that user's strictly earlier
impressions, whatever part they belong to (their outcomes are known by then at serving time). Training fits the
training part's impressions; the validation part selects the epoch (early stopping on ``eval.select_metric``:
``gauc:<task>``, ``auc:<task>`` or ``gauc:mean``, the binary tasks' GAUC weighted by the users each counts);
the test part is scored once, at the end, with the best weights, or (``train.refit``) with a fresh model trained
for the selected number of epochs on the training and validation impressions together.

The run folder gets the weights (safetensors), ``model.json`` (name, config, data spec, calibration),
``metrics.json`` (per task AUC / GAUC / log loss / NE / ECE with bootstrap intervals over users) and
``predictions_test.parquet`` (one row per test impression: labels and predictions), which paired comparisons
between runs read. With ``eval.calibrate`` (platt by default, or temperature) each binary task's probabilities
are rescaled with parameters fitted on the validation impressions (a monotone map: AUC and GAUC are unchanged;
log loss and ECE are not); the uncalibrated ECE and log loss are reported too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.data.actions import schema_for
from genrec.data.dataset import Vocab
from genrec.data.impression_readers import load_impressions, with_sampled_negatives
from genrec.data.impression_splits import ImpressionSplit, ranking_split
from genrec.data.impressions import ImpressionLog
from genrec.data.requests import Requests, collate, ranking_requests
from genrec.errors import ConfigError, DataError
from genrec.eval import ctr
from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_vocab
from genrec.models import RANKING
from genrec.models.ranking import RankBatch, RankSpec
from genrec.progress import progress_bar
from genrec.train.checkpoint import save_tensors
from genrec.train.loop import Loop, LoopTrainer, Steps, TrainResult, optimizer_step, resolve_device, seed_everything

EVAL_BATCH = 256  # requests per forward pass when predicting


def make_requests(cfg: Any, log: ImpressionLog, split: Any) -> dict[str, Requests]:
    """Training, validation and test requests of a ranking run. Frozen runs (``requests: frozen``) score each
    evaluation request of up to max_len impressions with one history, as benchmarks/ranking_frozen.py does;
    training requests follow ``train_requests`` and ``train_stride`` where set."""
    max_len, frozen = cfg.model.max_len, cfg.requests == "frozen"
    train_frozen = frozen if cfg.train_requests is None else cfg.train_requests == "frozen"
    out = {"train": ranking_requests(log, split.part("train"), max_len, cfg.train_stride, frozen=train_frozen)}
    for part in ("valid", "test"):
        out[part] = ranking_requests(log, split.part(part), max_len, max_len if frozen else None, frozen=frozen)
    return out


def build_ranking_model(config: Any, spec: RankSpec, log: ImpressionLog) -> torch.nn.Module:
    model_cls, _ = RANKING[config.name]
    return model_cls(config, spec, _tables(log.item_features), _tables(log.user_features))


def load_ranking_log(cfg: Any) -> ImpressionLog:
    """The run's impression log: ``cfg.dataset``, plus sampled negatives when ``cfg.negatives`` is set (from
    per-user pools or by popularity). Items a user rated before the run's held-out part are never their
    negatives: before the temporal split's validation cut, or, under ``split: loo``, before that user's own
    held-out ratings (so a held-out target can be an earlier negative, as it was then unrated)."""
    log = load_impressions(cfg.dataset)
    if cfg.negatives is None:
        return log
    if "negatives" in log.meta:
        raise ConfigError(f"negatives: {cfg.dataset} already has sampled negatives; name the log without them "
                          "(e.g. movielens-1m-ratings)")
    split = ranking_split(log, cfg.split, cfg.temporal.days())
    held = split.valid | split.test
    if cfg.split == "loo":
        until = np.full(log.n_users + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(until, log.user[held], log.time[held] - 1)
    else:
        until = int(log.time[held].min()) - 1
    pools = read_pools(cfg.negatives.pools, log) if cfg.negatives.pools is not None else None
    kind = "pool" if pools is not None else "sampled"
    out = with_sampled_negatives(log, cfg.negatives.per_row, cfg.negatives.seed, pools=pools, rated_until=until,
                                 name=f"{log.name}-{kind}" + ("-loo" if cfg.split == "loo" else ""))
    if pools is not None:
        out.meta["negatives"]["pools"] = str(cfg.negatives.pools)
    return out


def read_pools(path: Path, log: ImpressionLog) -> np.ndarray:
    """int64 [n_users + 1, K] pools of the log's dense items from a (user, items) parquet of raw ids; unknown
    users or items are dropped (empty slots are 0)."""
    if not Path(path).is_file():
        raise ConfigError(f"negatives.pools: {path} does not exist (write it with benchmarks/retrieval_pools.py)")
    table = pq.read_table(path)
    if {"user", "items"} - set(table.column_names):
        raise DataError(f"{path}: needs columns 'user' and 'items' (got {table.column_names})")
    users = Vocab(pa.array([str(x) for x in log.users.raw.to_pylist()])).encode(
        pa.array([str(x) for x in table.column("user").to_pylist()]), missing=0)
    item_vocab = Vocab(pa.array([str(x) for x in log.items.raw.to_pylist()]))
    lists = table.column("items").to_pylist()
    width = max((len(x) for x in lists), default=0)
    pools = np.zeros((log.n_users + 1, width), dtype=np.int64)
    for u, items in zip(users, lists, strict=True):
        if u > 0 and items:
            codes = item_vocab.encode(pa.array([str(i) for i in items]), missing=0)
            pools[u, :len(codes)] = codes
    return pools


def fit_item_prior(model: torch.nn.Module, log: ImpressionLog, train: np.ndarray) -> None:
    """Count the training impressions (mask ``train``) into the model's item prior, when it has one."""
    prior = getattr(model, "prior", None)
    if prior is not None:
        device = prior.keys.device
        prior.fit(torch.as_tensor(log.item[train], device=device), torch.as_tensor(log.time[train], device=device),
                  {t: torch.as_tensor(log.labels[t][train], device=device) for t in prior.tasks})


def _tables(features: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(codes, dtype=np.int64)) for name, codes in features.items()}


def to_batch(fields: dict[str, Any], device: torch.device) -> RankBatch:
    labels = {k: torch.as_tensor(v).to(device) for k, v in fields["labels"].items()}
    tensors = {k: torch.as_tensor(v).to(device) for k, v in fields.items() if k != "labels"}
    return RankBatch(**tensors, labels=labels)


@torch.no_grad()
def predict(model: torch.nn.Module, log: ImpressionLog, requests: Requests, spec: RankSpec,
            device: torch.device, show_progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every candidate row of ``requests`` and its predictions per task: probabilities for binary tasks,
    values for regression tasks."""
    model.eval()
    rows, preds = [], {t: [] for t in spec.tasks}
    order = np.arange(len(requests))
    chunks = [order[i:i + EVAL_BATCH] for i in range(0, len(order), EVAL_BATCH)]
    with progress_bar(len(chunks), "predict", enabled=show_progress) as advance:
        for idx in chunks:
            fields = collate(log, requests, idx)
            out = model(to_batch(fields, device))
            mask = fields["cand_items"] > 0
            rows.append(requests.candidates.take(idx).values)
            for t in spec.tasks:
                value = torch.sigmoid(out[t]) if t in spec.binary_tasks else out[t]
                preds[t].append(value.float().cpu().numpy()[mask])
            advance(1)
    return np.concatenate(rows), {t: np.concatenate(v) for t, v in preds.items()}


def selection_value(metric: str, log: ImpressionLog, rows: np.ndarray, preds: dict[str, np.ndarray],
                    binary: tuple[str, ...]) -> dict[str, float]:
    """Validation AUC and GAUC of every binary task, and the selection metric under the key ``select``.

    ``gauc:mean`` weighs each task's GAUC by the number of users it is computed on (users with both outcomes),
    so a rare signal (a few hundred follows) cannot swing the selection with its noise."""
    users = log.user[rows]
    out: dict[str, float] = {}
    counted: dict[str, int] = {}
    for t in binary:
        labels = log.labels[t][rows]
        out[f"auc:{t}"] = ctr.auc(labels, preds[t])
        out[f"gauc:{t}"], per_user = ctr.gauc(users, labels, preds[t])
        counted[t] = per_user.n_users
    if metric == "gauc:mean":
        ok = [t for t in binary if counted[t] and math.isfinite(out[f"gauc:{t}"])]
        w = np.array([counted[t] for t in ok], dtype=np.float64)
        out["select"] = float(np.dot(w, [out[f"gauc:{t}"] for t in ok]) / w.sum()) if ok else float("nan")
    else:
        out["select"] = out[metric]
    return out


MIN_SLOPE = 1e-2  # the smallest Platt slope: a calibration keeps the model's order, however poorly it pools


def fit_platt(labels: np.ndarray, probs: np.ndarray, steps: int = 100,
              intercept: bool = True) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit(p) + b) on held-out impressions (Platt scaling):
    two parameters, so it fixes over- or under-confidence without changing any ordering within a task.
    ``intercept=False`` fits a alone with b = 0 (temperature scaling, 1 / T = a).

    a is kept >= MIN_SLOPE: a model trained for the order within each user (listwise losses) can rank worse
    than chance across users, where an unconstrained fit turns the slope negative and so reverses every
    user's order; the floor keeps the order and leaves the probabilities near the base rate."""
    x = torch.logit(torch.as_tensor(probs, dtype=torch.float64).clamp(1e-7, 1 - 1e-7))
    y = torch.as_tensor(labels, dtype=torch.float64)
    raw = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)  # (log(a - MIN_SLOPE + ...), b)
    opt = torch.optim.LBFGS([raw], max_iter=steps, line_search_fn="strong_wolfe")
    keep_b = float(intercept)

    def slope(r: torch.Tensor) -> torch.Tensor:  # softplus, shifted so that r = 0 gives a = 1
        return MIN_SLOPE + torch.nn.functional.softplus(r + math.log(math.expm1(1 - MIN_SLOPE)))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(slope(raw[0]) * x + keep_b * raw[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(slope(raw[0].detach())), float(keep_b * raw[1].detach())


def fit_calibration(settings: Any, log: ImpressionLog, split: ImpressionSplit, rows: np.ndarray,
                    probs: dict[str, np.ndarray], tasks: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Per binary task, (a, b) of sigmoid(a * logit + b) fitted on the validation impressions ``rows`` with
    ``probs`` their predictions (``eval.calibrate``: platt fits both, temperature a alone, none nothing), then,
    with ``eval.calibrate_base_rate: train``, b moved so they average to the training part's positive rate."""
    if settings.calibrate == "none":
        return {}
    out = {}
    for t in tasks:
        a, b = fit_platt(log.labels[t][rows], probs[t], intercept=settings.calibrate == "platt")
        if settings.calibrate_base_rate == "train":
            b = match_mean(a, b, probs[t], float(np.mean(log.labels[t][split.part("train")])))
        out[t] = (a, b)
    return out


def carry_calibration(calibration: dict[str, tuple[float, float]], selected: dict[str, np.ndarray],
                      refit: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The calibration of a refit model (``train.refit``), from the selected model's: each task keeps its slope a,
    and b moves so the refit model's calibrated validation predictions (``refit``) average what the selected
    model's (``selected``, the same rows) did. A refit model trains on more data, so its logits sit higher or
    lower than the selected model's; without this its mean click prediction was 3-7% off on KuaiRand."""
    return {t: (a, match_mean(a, b, refit[t], float(apply_platt(selected[t], (a, b)).mean())))
            for t, (a, b) in calibration.items()}


def match_mean(a: float, b: float, probs: np.ndarray, target: float) -> float:
    """The intercept b' with mean(sigmoid(a * logit(p) + b')) = target (the mean is monotone in b': bisection)."""
    x = a * torch.logit(torch.as_tensor(probs, dtype=torch.float64).clamp(1e-7, 1 - 1e-7))
    lo, hi = b - 20.0, b + 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(torch.sigmoid(x + mid).mean()) < target else (lo, mid)
    return (lo + hi) / 2


def apply_platt(probs: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    x = torch.logit(torch.as_tensor(probs, dtype=torch.float64).clamp(1e-7, 1 - 1e-7))
    return torch.sigmoid(ab[0] * x + ab[1]).numpy().astype(np.float32)


def check_select_metric(metric: str, binary: tuple[str, ...]) -> None:
    allowed = {"gauc:mean"} | {f"{m}:{t}" for m in ("auc", "gauc") for t in binary}
    if metric not in allowed:
        raise ConfigError(f"eval.select_metric {metric!r} is not a ranking metric; use one of {sorted(allowed)}")


class RankingTrainer(LoopTrainer):
    def __init__(self, config: Any, run_dir: str | Path, log: ImpressionLog | None = None,
                 split: ImpressionSplit | None = None, show_progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        self.log, self.split = log, split
        self.show_progress = show_progress

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        cfg, tcfg = self.config, self.config.train
        device = resolve_device(tcfg.device, tcfg.tf32)
        self._begin()
        log = self.log or load_ranking_log(cfg)
        split = self.split or ranking_split(log, cfg.split, cfg.temporal.days())
        spec = RankSpec(**log.spec_fields())
        check_select_metric(cfg.eval.select_metric, spec.binary_tasks)
        requests = make_requests(cfg, log, split)
        model = build_ranking_model(cfg.model, spec, log).to(device)
        fit_item_prior(model, log, split.part("train"))
        steps = self._steps(model, log, requests["train"], device)
        loop = Loop(cfg, model, steps.steps, self.run_dir, resume, show_progress=self.show_progress)
        self.average = loop.average  # the running weight average (train.ema), or None
        loop.run(steps, tcfg.epochs, validate=lambda m: self._validate(m, log, requests["valid"], spec, device),
                 say=self._say, on_epoch_end=on_epoch_end)
        loop.restore_best()
        calibration = {}
        if cfg.eval.calibrate != "none":
            vrows, vpreds = predict(model, log, requests["valid"], spec, device)
            calibration = fit_calibration(cfg.eval, log, split, vrows, vpreds, spec.binary_tasks)
        refit = None
        if tcfg.refit:
            model, refit = self._refit(log, split, spec, device, max(loop.state["best_epoch"], 1), resume)
            if calibration:
                calibration = carry_calibration(calibration, vpreds, predict(model, log, requests["valid"], spec,
                                                                             device)[1])
        run = {**loop.summary(), **({"refit": refit} if refit else {})}
        return loop.result(model, self._test(model, log, split, requests["test"], spec, run, device, calibration))

    def _steps(self, model: torch.nn.Module, log: ImpressionLog, train: Requests, device: torch.device) -> Steps:
        """Shuffled batches of training requests; a step's loss is the mean over its candidate rows."""
        tcfg = self.config.train

        def batches(epoch: int, start: dict[str, Any] | None) -> list[np.ndarray]:
            order = np.random.default_rng([tcfg.seed, epoch]).permutation(len(train))
            first = int(start["step"]) * tcfg.batch_size if start else 0
            return [order[i:i + tcfg.batch_size] for i in range(first, len(order), tcfg.batch_size)]

        def step(idx: np.ndarray, opt: torch.optim.Optimizer, sched: Any) -> tuple[float, float]:
            batch = to_batch(collate(log, train, idx), device)
            loss, _ = model.loss(model(batch), batch.labels, batch.cand_mask)
            optimizer_step(loss, model, opt, sched, tcfg.clip_norm)
            n = int(batch.cand_mask.sum())
            return float(loss.detach()) * n, n

        return Steps(model, math.ceil(len(train) / tcfg.batch_size), batches, step, unit="rows")

    def _validate(self, model: torch.nn.Module, log: ImpressionLog, requests: Requests, spec: RankSpec,
                  device: torch.device) -> dict[str, float]:
        """Validation AUC and GAUC per binary task and the selection metric."""
        metric = self.config.eval.select_metric
        rows, preds = predict(model, log, requests, spec, device)
        valid = selection_value(metric, log, rows, preds, spec.binary_tasks)
        if not math.isfinite(valid["select"]):
            raise ConfigError(f"eval.select_metric {metric} is undefined on the validation part (GAUC needs users "
                              "with both outcomes there; under split: loo a user holds one validation rating and its "
                              "sampled candidates): select on auc:<task> or another task")
        return {**{f"valid_{k}": v for k, v in valid.items() if k != "select"}, f"valid_{metric}": valid["select"]}

    def _refit(self, log: ImpressionLog, split: ImpressionSplit, spec: RankSpec, device: torch.device, epochs: int,
               resume: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
        """``train.refit``: a fresh model (same seed and schedule) trained on the training and validation
        impressions for the selected number of epochs, in ``<run>/refit``; the test reads it (its weight average
        with ``train.ema``). Nothing is selected here (validation is training data now); the calibration is
        carried over from the selected model (:func:`carry_calibration`)."""
        cfg = self.config
        seed_everything(cfg.train.seed)
        both = split.train | split.valid
        train = make_requests(cfg, log, dataclasses.replace(split, train=both))["train"]
        model = build_ranking_model(cfg.model, spec, log).to(device)
        fit_item_prior(model, log, both)
        folder = self.run_dir / "refit"
        steps = self._steps(model, log, train, device)
        loop = Loop(cfg, model, steps.steps, folder, resume and Loop.started(folder), show_progress=self.show_progress)
        self.average = loop.average
        loop.run(steps, epochs, say=self._say_refit)
        return model, {**loop.refit_summary(epochs), "train_rows": int(both.sum())}

    def _test(self, model, log: ImpressionLog, split: ImpressionSplit, requests: Requests, spec: RankSpec,
              run: dict[str, Any], device, calibration: dict[str, tuple[float, float]]) -> dict[str, Any]:
        cfg = self.config
        rows, raw = predict(model, log, requests, spec, device, show_progress=self.show_progress)
        save_ranking_model(self.run_dir, model, spec, calibration={t: list(ab) for t, ab in calibration.items()},
                           actions=schema_for(log.name, log.action_sizes), row_values=log.row_feature_values)
        write_vocabularies(self.run_dir, log)
        run = {"commit_at_start": self.commit_at_start, "allocator": self.allocator, **run, "device": str(device)}
        return write_test_report(self.run_dir, cfg, log, split, spec, rows, raw, calibration, run,
                                 self.show_progress)


def save_ranking_model(folder: Path, model: torch.nn.Module, spec: RankSpec, **info: Any) -> None:
    """The weights (model.safetensors) and model.json (name, config, data spec and any ``info``) that
    :func:`genrec.serve.model_io.load_ranking_model` rebuilds the model from."""
    save_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "model.json", {"name": model.config.name, "config": model.config.model_dump(mode="json"),
                                       "spec": spec.to_json(), **info})


def write_vocabularies(run_dir: Path, log: ImpressionLog) -> None:
    """The vocabularies a served ranker maps raw item and user ids through (genrec.serve.ranking)."""
    write_vocab(run_dir / "ranker_items.parquet", log.items.raw.to_pylist())
    write_vocab(run_dir / "ranker_users.parquet", log.users.raw.to_pylist())


def write_test_report(run_dir: Path, cfg: Any, log: ImpressionLog, split: ImpressionSplit, spec: RankSpec,
                      rows: np.ndarray, raw: dict[str, np.ndarray], calibration: dict[str, tuple[float, float]],
                      run: dict[str, Any], show_progress: bool = False, extra: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Score the test impressions ``rows`` from the raw predictions (calibrated per ``calibration``): write
    ``predictions_test.parquet`` and ``metrics.json`` (per-task report, split, calibration, ``run`` facts on
    top of the config, commit and machine, and any ``extra`` sections) and print the main figures."""
    preds = {t: apply_platt(p, calibration[t]) if t in calibration else p for t, p in raw.items()}
    users = log.user[rows]
    tasks = {t: ctr.task_report(users, log.labels[t][rows], preds[t],
                                kind="binary" if t in spec.binary_tasks else "regression",
                                n_boot=cfg.eval.n_boot, seed=cfg.train.seed) for t in spec.tasks}
    columns = {"row": rows, "user": users, "item": log.item[rows], "time": log.time[rows]}
    for t in spec.tasks:
        columns[f"label_{t}"] = log.labels[t][rows]
        columns[f"pred_{t}"] = preds[t].astype(np.float32)
        if t in calibration:
            columns[f"raw_{t}"] = raw[t].astype(np.float32)
    pq.write_table(pa.table(columns), run_dir / "predictions_test.parquet")
    uncalibrated = {t: {"ece": ctr.ece(log.labels[t][rows], raw[t])[0],
                        "log_loss": ctr.log_loss(log.labels[t][rows], raw[t])} for t in calibration}
    result = {
        "dataset": {"name": log.name, "rows": log.n_rows, "users": log.n_users, "items": log.n_items},
        "split": split.describe(), "part": "test", "tasks": tasks, "requests": cfg.requests,
        "calibration": {"method": f"{cfg.eval.calibrate} on the validation impressions" + (
                            ", intercept moved to the training part's positive rate"
                            if cfg.eval.calibrate_base_rate == "train" else "") + (
                            "; refit model: the same slopes, intercepts moved so its validation predictions average "
                            "the selected model's" if cfg.train.refit else "") if calibration else "none",
                        "params": {t: list(ab) for t, ab in calibration.items()}, "uncalibrated": uncalibrated},
        "metrics": {f"{m}:{t}": v for t, r in tasks.items() for m, v in r["metrics"].items()
                    if isinstance(v, dict) and "value" in v},
        **(extra or {}),
        "run": {"model": cfg.model.name, "config": cfg.model_dump(mode="json"), "commit": git_commit(),
                "machine": machine(), "created": dt.datetime.now(dt.UTC).isoformat(), **run},
    }
    write_json(run_dir / "metrics.json", result)
    if show_progress:
        for t, r in tasks.items():
            m = r["metrics"]
            shown = ("auc", "gauc", "normalized_entropy", "ece") if r["kind"] == "binary" else ("mse", "pearson")
            print(f"test {t:>10}: " + "  ".join(f"{k} {m[k]['value']:.4f}" for k in shown if k in m))
    return result
