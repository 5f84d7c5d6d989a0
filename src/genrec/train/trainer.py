"""Training a sequential model (SASRec, HSTU) in the shared loop (genrec.train.loop: schedule, early stopping,
budgets, exact resume, also mid-epoch): next-item steps with full or sampled softmax, data-parallel under torchrun.

The training windows come from memory (the whole split) or stream shard by shard from a prepared dataset
(``train.data``, genrec.data.stream). Validation reads every validation user or a fixed seeded sample of them
(``eval.valid_users``); the test split is evaluated once, at the end, with the weights that scored best on
validation.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from genrec.data import EvalCases, Jagged, SequenceDataset, Split
from genrec.data.splits import ColdStartSplit, with_validation_in_train
from genrec.data.stream import epoch_batches, sample_cases, training_windows  # noqa: F401  (re-exported)
from genrec.errors import ConfigError, GenrecError
from genrec.eval import Evaluation, evaluate, rank_cases, write_run
from genrec.eval.report import subset_summary
from genrec.eval.stats import bootstrap_ci
from genrec.io import write_json, write_parquet, write_text
from genrec.models import SEQUENTIAL, SequentialModel
from genrec.nn.losses import NegativeSampler, full_cross_entropy, sampled_softmax
from genrec.train.checkpoint import save_tensors
from genrec.train.config import RunConfig
from genrec.train.loop import Loop, LoopTrainer, Steps, TrainResult, apply_gradients, resolve_device, seed_everything
from genrec.train.processes import Processes
from genrec.train.windows import MemoryWindows, Part, RunData, StreamedWindows, in_memory, run_data


def build_model(config: RunConfig, n_items: int, use_timestamps: bool = False) -> SequentialModel:
    cls, _ = SEQUENTIAL[config.model.name]
    return cls(config.model, n_items, use_timestamps)


def attach_features(model: SequentialModel, config: RunConfig, ds: SequenceDataset) -> None:
    """Attach the semantic-ID and content features named in ``config.features`` (before the optimizer is made);
    each must describe exactly this dataset's items, in its dense-id order."""
    feats = config.features
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    if feats.semantic_ids is not None:
        from genrec.semantic_ids.codes import SemanticIds
        from genrec.semantic_ids.pipeline import items_digest

        sids = SemanticIds.load(feats.semantic_ids)
        if sids.n_items != ds.n_items:
            raise ConfigError(f"features.semantic_ids: {feats.semantic_ids} has IDs for {sids.n_items:,} items, but "
                              f"dataset {ds.name} has {ds.n_items:,}")
        if sids.meta.get("items_sha256") not in (None, items_digest(raw)):
            raise ConfigError(f"features.semantic_ids: {feats.semantic_ids} was made for another item catalog "
                              f"(dataset {sids.meta.get('dataset')!r}) than {ds.name}")
        model.attach_semantic_ids(torch.from_numpy(sids.codes), sids.sizes)
    if feats.content is not None:
        from genrec.content.store import ItemEmbeddings

        emb = ItemEmbeddings.load(feats.content)
        if emb.n_items != ds.n_items or [str(i) for i in emb.item_ids] != raw:
            raise ConfigError(f"features.content: {feats.content} holds {emb.n_items:,} items that do not match "
                              f"dataset {ds.name}'s {ds.n_items:,} items in dense-id order")
        model.attach_item_features(torch.from_numpy(emb.vectors))


class Trainer(LoopTrainer):
    def __init__(self, config: RunConfig, run_dir: str | Path, dataset: SequenceDataset | None = None,
                 show_progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        self.dataset = dataset
        self.show_progress = show_progress

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        """Train (or continue with ``resume``, mid-epoch when the last checkpoint was), then evaluate the best
        validation weights on test once.

        ``on_epoch_end(record)`` is called after each epoch's checkpoint is safely written.
        """
        cfg, tcfg = self.config, self.config.train
        device = resolve_device(tcfg.device, tcfg.tf32)
        procs = Processes(device, join=True)
        self._begin()
        data = run_data(cfg, self.dataset, procs, self.show_progress)
        model = self._model(data, device)
        self.known = _known_items(data.counts).to(device) if _mask_unseen(cfg) else None
        ddp = procs.wrap(model)
        loop = Loop(cfg, model, data.train.steps, self.run_dir, resume, procs=procs, show_progress=self.show_progress)
        k_sel = _select_k(cfg.eval.select_metric)
        loop.run(self._steps(ddp, model, data.train, procs), tcfg.epochs, say=self._say, on_epoch_end=on_epoch_end,
                 validate=lambda m: self._validate(m, data.valid, data.header.n_items, procs, k_sel))
        loop.restore_best()
        refit = None
        if tcfg.refit:
            model, data, refit = self._refit(data, procs, device, max(loop.state["best_epoch"], 1), resume)
        model.eval()
        test = self._test(model, data, loop, refit) if procs.rank == 0 else None
        return loop.result(model, test)

    def _model(self, data: RunData, device: torch.device) -> SequentialModel:
        """A fresh model for ``data`` with the config's features, on ``device``; the loss reads ``data``'s training
        item counts."""
        model = build_model(self.config, data.header.n_items, use_timestamps=data.use_timestamps)
        attach_features(model, self.config, data.header)
        self.item_counts = torch.from_numpy(data.counts).to(device)
        return model.to(device)

    def _steps(self, ddp: torch.nn.Module, model: SequentialModel, train: MemoryWindows | StreamedWindows,
               procs: Processes) -> Steps:
        return Steps(model, train.steps, train.epoch, position=train.position,
                     step=lambda batch, opt, sched: self._step(ddp, model, opt, sched, *batch, procs))

    def _refit(self, data: RunData, procs: Processes, device: torch.device, epochs: int,
               resume: bool) -> tuple[SequentialModel, RunData, dict[str, Any]]:
        """``train.refit``: a fresh model (same seed, schedule and batches) trained on the training sequences
        plus every user's validation item for the selected number of epochs, in ``<run>/refit``. No selection
        happens here: the validation items are training targets now."""
        seed_everything(self.config.train.seed)
        data = in_memory(self.config, data.header, with_validation_in_train(data.split), procs)
        model = self._model(data, device)
        ddp = procs.wrap(model)
        folder = self.run_dir / "refit"
        loop = Loop(self.config, model, data.train.steps, folder, resume and Loop.started(folder), procs=procs,
                    show_progress=self.show_progress)
        loop.run(self._steps(ddp, model, data.train, procs), epochs, say=self._say_refit)
        return model, data, {**loop.refit_summary(epochs), "targets": int((data.train.windows.lengths - 1).sum())}

    def _validate(self, model: SequentialModel, cases: EvalCases | None, n_items: int, procs: Processes,
                  k_sel: int) -> dict[str, float]:
        """Validation HR@10, NDCG@10 and the selection metric, computed on rank 0 and shared with all ranks;
        on a sample of users (``eval.valid_users``) also each metric's 95% bootstrap interval, the sample's
        size and seed."""
        ecfg = self.config.eval
        shown = sorted({ecfg.select_metric, "hr@10", "ndcg@10"})
        sampled = ecfg.valid_users is not None
        values = [0.0] * (3 * len(shown) + 1 if sampled else len(shown))
        if procs.rank == 0:
            model.eval()
            r = rank_cases(model, cases, n_items, ks=sorted({k_sel, 10}), exclude_seen=ecfg.exclude_seen,
                           show_progress=False)
            values = [float(r.per_case[m].mean()) for m in shown]
            if sampled:
                ci = bootstrap_ci({m: r.per_case[m] for m in shown}, n_boot=ecfg.n_boot, seed=ecfg.valid_seed)
                values += [ci[m][b] for b in ("ci_low", "ci_high") for m in shown] + [float(len(cases))]
        values = procs.broadcast(values)
        out = {f"valid_{m}": v for m, v in zip(shown, values, strict=False)}
        if sampled:
            n = len(shown)
            out.update({f"valid_{m}_lo": values[n + i] for i, m in enumerate(shown)})
            out.update({f"valid_{m}_hi": values[2 * n + i] for i, m in enumerate(shown)})
            out.update(valid_users=int(values[-1]), valid_seed=ecfg.valid_seed)
        return out

    def _step(self, ddp, model: SequentialModel, opt, sched, parts: list[Part], weight: float,
              procs: Processes) -> tuple[float, int]:
        """One optimizer step on this process's parts of a global batch: a forward and backward pass per part,
        gradients summed (DDP all-reduces them with the last part's backward), then one update. The loss is
        divided by the global token count (DDP averages gradients over processes, hence the world factor), so
        any number of processes makes the same update. Returns (this process's summed loss times ``weight``, its
        target count)."""
        batches = [_next_item_batch(windows, ts, procs.device) for windows, ts in parts]
        n_local = sum(int((targets > 0).sum()) for _, targets, _, _ in batches) if weight else 0
        n_global = procs.sum(float(n_local))
        scale = weight * procs.world / max(n_global, 1.0)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j, (inputs, targets, lengths, ts) in enumerate(batches):
            with ddp.no_sync() if procs.on and j < len(batches) - 1 else contextlib.nullcontext():
                h = ddp(inputs, (lengths - 1).clamp(min=1), ts)
                mask = targets > 0
                loss_sum = self._loss(h[mask], targets[mask], model)
                (loss_sum * scale).backward()
            total += float(loss_sum.detach())
        apply_gradients(model, opt, sched, self.config.train.clip_norm)
        return total * weight, n_local

    def _loss(self, h: torch.Tensor, targets: torch.Tensor, model: SequentialModel) -> torch.Tensor:
        """The summed loss of one step. Sampled softmax reads ``self.item_counts`` ([n_items + 1] training
        interactions per item, on the training device) when it draws by popularity or corrects in-batch
        negatives; its sampler is rebuilt whenever those counts change (a refit adds the validation items)."""
        tcfg = self.config.train
        known = getattr(self, "known", None)
        if tcfg.loss == "full_ce":
            return full_cross_entropy(h, targets, model.item_table(), temperature=tcfg.temperature, known=known)
        counts = getattr(self, "item_counts", None)
        if counts is None and (tcfg.negative_sampler == "popularity" or (tcfg.logq and tcfg.in_batch_negatives)):
            raise GenrecError("train.negative_sampler: popularity and train.logq with in-batch negatives need the "
                              "training item counts, which this trainer did not provide")
        sampler = getattr(self, "_sampler", None)
        if sampler is None or sampler.counts is not counts:
            sampler = self._sampler = NegativeSampler(model.n_items, counts, tcfg.negative_sampler,
                                                      tcfg.popularity_alpha)
        # An id table is used whole, as it is; code-built items are computed for the step's ids only.
        items = model.item_table() if model.config.item_repr == "id" else model.item_table
        return sampled_softmax(h, targets, items, tcfg.negatives, temperature=tcfg.temperature,
                               shared=tcfg.shared_negatives, in_batch=tcfg.in_batch_negatives, known=known,
                               sampler=sampler, logq=tcfg.logq)

    def _test(self, model: SequentialModel, data: RunData, loop: Loop,
              refit: dict[str, Any] | None = None) -> Evaluation:
        cfg = self.config
        ds = data.header
        ecfg = cfg.eval
        cases = data.split.test if data.split is not None else data.test()
        every = len(cases) if data.split is not None else data.info.get("test_cases")
        cases = sample_cases(cases, ecfg.test_users, ecfg.test_seed)
        ev = evaluate(model, cases, ds, part="test", ks=cfg.eval.ks, exclude_seen=cfg.eval.exclude_seen,
                      item_counts=data.counts, n_boot=cfg.eval.n_boot, seed=cfg.train.seed,
                      show_progress=self.show_progress)
        ev.info.update(**loop.summary(), **({"refit": refit} if refit else {}),
                       commit_at_start=self.commit_at_start, allocator=self.allocator,
                       device=str(next(model.parameters()).device),
                       **(cold_start_info(data.split, ev, cfg) if data.split is not None else {}),
                       **({"data": data.info} if data.info else {}))
        if ecfg.test_users is not None:
            ev.info["test_sample"] = {"users": len(cases), "of": every, "seed": ecfg.test_seed}
        sample = _validation_sample(cfg, loop.state)
        if sample:
            ev.info["validation"] = sample
        run_config = {"model": cfg.model.name, "split": cfg.split, **cfg.model_dump(mode="json")}
        write_run(self.run_dir, run_config, ev, ds, loop.state["train_seconds"])
        if sample:
            report = self.run_dir / "report.md"
            write_text(report, report.read_text(encoding="utf-8") + _validation_line(sample))
        save_model_files(self.run_dir, model, ds, data.counts)
        return ev


def save_model_files(folder: Path, model: SequentialModel, ds: SequenceDataset, counts: np.ndarray) -> None:
    """What a bundle needs: weights, the model spec, and the item table (raw ids, display fields, popularity)."""
    save_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "model.json", {"name": model.config.name, "config": model.config.model_dump(mode="json"),
                                       "n_items": model.n_items, "use_timestamps": model.use_timestamps})
    items = pa.table({"item_idx": np.arange(1, ds.n_items + 1, dtype=np.int64),
                      "raw_id": pa.array([str(x) for x in ds.items.raw.to_pylist()], pa.string()),
                      "train_count": counts[1:].astype(np.int64)})
    if ds.item_table is not None:
        catalog = ds.item_table.sort_by("item_idx")
        dense = catalog.column("item_idx").to_numpy()
        for name in catalog.column_names:
            if name in ("item", "item_idx"):
                continue
            values = [None] * ds.n_items
            for i, v in zip(dense.tolist(), catalog.column(name).to_pylist(), strict=True):
                values[i - 1] = v
            items = items.append_column(name, pa.array(values))
    write_parquet(folder / "items.parquet", items)


def _mask_unseen(config: RunConfig) -> bool:
    flag = config.train.mask_unseen
    return config.split == "cold" if flag is None else flag


def _next_item_batch(windows: Jagged, window_ts: Jagged | None, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-padded inputs, shifted targets (0 where a window has none), lengths and input timestamps."""
    items = windows.to_padded(left=False)
    lengths = torch.from_numpy(windows.lengths)
    ts = window_ts.to_padded(left=False)[:, :-1] if window_ts is not None else None
    inputs, targets = items[:, :-1], items[:, 1:].clone()
    targets[torch.arange(targets.shape[1])[None, :] >= (lengths - 1)[:, None]] = 0
    return (inputs.to(device), targets.to(device), lengths.to(device),
            ts.to(device) if ts is not None else None)


def _known_items(counts: np.ndarray) -> torch.Tensor:
    """[n_items + 1] bool: the items that occur in the training sequences (padding excluded)."""
    known = np.asarray(counts) > 0
    known[0] = False
    return torch.from_numpy(known)


def _validation_sample(config: RunConfig, state: dict[str, Any]) -> dict[str, Any] | None:
    """The validation sample and the selected epoch's metric with its 95% interval (None without a sample)."""
    if config.eval.valid_users is None:
        return None
    metric = config.eval.select_metric
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"] and f"valid_{metric}_lo" in r),
                None)
    out: dict[str, Any] = {"users": config.eval.valid_users, "seed": config.eval.valid_seed, "metric": metric,
                           "ci": "95% percentile bootstrap over the sampled users"}
    if best is not None:
        out.update(users=best["valid_users"], epoch=best["epoch"], mean=best[f"valid_{metric}"],
                   ci_low=best[f"valid_{metric}_lo"], ci_high=best[f"valid_{metric}_hi"])
    return out


def _validation_line(sample: dict[str, Any]) -> str:
    line = (f"- validation: a fixed sample of {sample['users']:,} users (seed {sample['seed']}, the same every "
            "epoch)")
    if "mean" in sample:
        line += (f"; selected epoch {sample['epoch']}: {sample['metric']} {sample['mean']:.4f} "
                 f"[{sample['ci_low']:.4f}, {sample['ci_high']:.4f}] ({sample['ci']})")
    return line + "\n"


def cold_start_info(split: Split, ev: Evaluation, config: RunConfig) -> dict[str, Any]:
    """For ``split: cold``: the test metrics on cases whose target was held out of training ("cold") and on
    the rest ("warm"), each with its bootstrap interval, under the key ``cold_start``."""
    if not isinstance(split, ColdStartSplit):
        return {}
    out = {"held_out_items": len(split.cold_items), "fraction": config.cold_start.fraction,
           "draw_seed": config.cold_start.seed}
    for name, mask in (("cold", split.test_cold), ("warm", ~split.test_cold)):
        out[name] = {"cases": int(mask.sum()), **subset_summary(ev, mask, config.eval.n_boot, config.train.seed)}
    return {"cold_start": out}


def _select_k(metric: str) -> int:
    if metric == "mrr":
        return 10
    name, _, k = metric.partition("@")
    if name not in ("hr", "ndcg") or not k.isdigit():
        raise ConfigError(f"eval.select_metric must be hr@K, ndcg@K or mrr, got {metric!r}")
    return int(k)
