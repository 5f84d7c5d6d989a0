"""Training a sequential model: AdamW with warmup and decay, clipping, validation-based early stopping,
atomic safetensors checkpoints with exact resume, and data-parallel training under torchrun.

The test split is evaluated once, at the end, with the weights that scored best on validation.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from genrec.data import Jagged, SequenceDataset, Split, load_dataset
from genrec.data.splits import ColdStartSplit, with_validation_in_train
from genrec.errors import ConfigError, GenrecError
from genrec.eval import Evaluation, evaluate, rank_cases, write_run
from genrec.eval.report import git_commit, subset_summary
from genrec.io import write_json, write_parquet
from genrec.models import SEQUENTIAL, SequentialModel
from genrec.nn.losses import NegativeSampler, full_cross_entropy, sampled_softmax
from genrec.progress import progress_bar
from genrec.train.allocator import tune_glibc_malloc
from genrec.train.checkpoint import load_tensors, save_checkpoint, save_tensors
from genrec.train.config import RunConfig
from genrec.train.loop import (
    finish_epoch,
    optimizer_step,
    print_epoch,
    resolve_device,
    run_split,
    select,
    start_run,
)


@dataclass
class TrainResult:
    model: SequentialModel
    run_dir: Path
    best_epoch: int
    best_valid: float
    test: Evaluation | None
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def training_windows(split: Split, max_len: int, windows: str = "last") -> tuple[Jagged, Jagged | None]:
    """Training windows of ``max_len + 1`` items (inputs plus the shifted targets).

    ``last``: each user's most recent window only (SASRec's and the reference HSTU's recipe). ``all``: long
    sequences are cut, from the end, into windows that overlap by one item, so every training target is
    predicted exactly once per epoch.
    """
    keep = np.flatnonzero(split.train.lengths >= 2)
    seq = split.train.take(keep)
    ts = split.train_timestamps.take(keep) if split.train_timestamps is not None else None
    if windows == "last":
        return seq.tail(max_len + 1), ts.tail(max_len + 1) if ts is not None else None
    n = seq.lengths
    count = np.ceil((n - 1) / max_len).astype(np.int64)
    row = np.repeat(np.arange(len(seq)), count)
    j = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # 0 = most recent window
    stop = n[row] - j * max_len
    start = np.maximum(0, stop - max_len - 1)
    cut = seq.take(row).slice_rows(start, stop)
    return cut, ts.take(row).slice_rows(start, stop) if ts is not None else None


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows; rows of similar length share a batch so little is padded."""
    perm = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(perm), pool):
        chunk = perm[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _wrap(model: SequentialModel, env: _Dist, device: torch.device) -> torch.nn.Module:
    """The model DDP runs (itself on one process)."""
    if not env.on:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _close_epoch(state: dict, epoch: int, steps: int, loss: float, tokens: float, seconds: float, sched: Any,
                 start_clock: float) -> dict[str, Any]:
    """Advance the loop state past ``epoch`` and return its record."""
    state["step"] += steps
    state["epoch"] = epoch
    state["train_seconds"] = time.perf_counter() - start_clock
    return {"epoch": epoch, "step": state["step"], "loss": loss, "tokens_per_s": tokens / seconds,
            "epoch_seconds": seconds, "elapsed_s": state["train_seconds"], "lr": sched.get_last_lr()[0]}


class _Dist:
    """Rank and world size, and the few collectives the trainer needs (no-ops on one process)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device  # collectives run where the backend wants them (nccl: the GPU)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, value: float) -> float:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, values: list[float]) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.tolist()


class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path, dataset: SequenceDataset | None = None,
                 show_progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        self.dataset = dataset
        self.show_progress = show_progress

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        """Train (or continue with ``resume``), then evaluate the best validation weights on test once.

        ``on_epoch_end(record)`` is called after each epoch's checkpoint is safely written.
        """
        cfg, tcfg = self.config, self.config.train
        device = resolve_device(tcfg.device, tcfg.tf32)
        env = _Dist(device)
        self.commit_at_start = git_commit()  # code that trained; write_run records HEAD at the end too
        self.allocator = tune_glibc_malloc()
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        seed_everything(tcfg.seed)
        ds = self.dataset or load_dataset(cfg.dataset)
        split = run_split(cfg, ds)
        windows, window_ts = training_windows(split, cfg.model.max_len, tcfg.windows)
        model = build_model(cfg, ds.n_items, use_timestamps=ds.timestamps is not None)
        attach_features(model, cfg, ds)
        model.to(device)
        self.known = _known_items(split, ds.n_items).to(device) if _mask_unseen(cfg) else None
        ddp = _wrap(model, env, device)
        steps_per_epoch = math.ceil(len(windows) / tcfg.batch_size)
        opt, sched, state, board, start_clock = start_run(cfg, model, steps_per_epoch, self.run_dir, resume,
                                                          writer=env.rank == 0)
        ckpt = self.run_dir / "checkpoint"
        k_sel = _select_k(cfg.eval.select_metric)
        while state["stopped"] is None and state["epoch"] < tcfg.epochs:
            epoch = state["epoch"] + 1
            model.train()
            loss, tokens, seconds, out_of_time = self._epoch(ddp, model, opt, sched, windows, window_ts, epoch, env,
                                                             start_clock)
            record = _close_epoch(state, epoch, steps_per_epoch, loss, tokens, seconds, sched, start_clock)
            if epoch % tcfg.eval_every == 0 or out_of_time or epoch == tcfg.epochs:
                record.update(self._validate(model, split, ds, env, k_sel))
                select(state, epoch, record[f"valid_{cfg.eval.select_metric}"], tcfg.patience,
                       lambda: save_tensors(ckpt / "best.safetensors", model.state_dict()) if env.rank == 0 else None)
            finish_epoch(self.run_dir, board, state, record, out_of_time, tcfg.max_minutes,
                         lambda: save_checkpoint(ckpt, model, opt, sched, state), writer=env.rank == 0)
            if env.rank == 0:
                self._say(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        if env.on:
            dist.barrier()
        model.load_state_dict(load_tensors(ckpt / "best.safetensors"))
        refit = None
        if tcfg.refit:
            model, split, refit = self._refit(split, ds, env, device, max(state["best_epoch"], 1), resume)
        model.eval()
        test = None
        if env.rank == 0:
            test = self._test(model, split, ds, state, refit)
        return TrainResult(model, self.run_dir, state["best_epoch"], state["best"], test, state["history"])

    def _refit(self, split: Split, ds: SequenceDataset, env: _Dist, device: torch.device, epochs: int,
               resume: bool) -> tuple[SequentialModel, Split, dict[str, Any]]:
        """``train.refit``: a fresh model (same seed, schedule and batches) trained on the training sequences
        plus every user's validation item for the selected number of epochs, in ``<run>/refit``. No selection
        happens here: the validation items are training targets now."""
        cfg, tcfg = self.config, self.config.train
        seed_everything(tcfg.seed)
        split = with_validation_in_train(split)
        windows, window_ts = training_windows(split, cfg.model.max_len, tcfg.windows)
        model = build_model(cfg, ds.n_items, use_timestamps=ds.timestamps is not None)
        attach_features(model, cfg, ds)
        model.to(device)
        ddp = _wrap(model, env, device)
        steps = math.ceil(len(windows) / tcfg.batch_size)
        folder = self.run_dir / "refit"
        again = resume and (folder / "checkpoint" / "trainer.json").is_file()
        opt, sched, state, board, start_clock = start_run(cfg, model, steps, folder, again, writer=env.rank == 0)
        while state["stopped"] is None and state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            model.train()
            loss, tokens, seconds, out_of_time = self._epoch(ddp, model, opt, sched, windows, window_ts, epoch, env,
                                                             start_clock)
            record = _close_epoch(state, epoch, steps, loss, tokens, seconds, sched, start_clock)
            finish_epoch(folder, board, state, record, out_of_time, tcfg.max_minutes,
                         lambda: save_checkpoint(folder / "checkpoint", model, opt, sched, state),
                         writer=env.rank == 0)
            if env.rank == 0:
                self._say({**record, "refit": True})
        info = {"epochs": state["epoch"], "selected_epoch": epochs, "train_seconds": state["train_seconds"],
                "stopped": state["stopped"] or "the selected epoch", "targets": int((windows.lengths - 1).sum())}
        return model, split, info

    def _validate(self, model: SequentialModel, split: Split, ds: SequenceDataset, env: _Dist,
                  k_sel: int) -> dict[str, float]:
        """Validation HR@10, NDCG@10 and the selection metric, computed on rank 0 and shared with all ranks."""
        shown = sorted({self.config.eval.select_metric, "hr@10", "ndcg@10"})
        values = [0.0] * len(shown)
        if env.rank == 0:
            model.eval()
            r = rank_cases(model, split.valid, ds.n_items, ks=sorted({k_sel, 10}),
                           exclude_seen=self.config.eval.exclude_seen, show_progress=False)
            values = [float(r.per_case[m].mean()) for m in shown]
        return {f"valid_{m}": v for m, v in zip(shown, env.broadcast(values), strict=True)}

    def _epoch(self, ddp, model, opt, sched, windows, window_ts, epoch, env, start_clock):
        tcfg = self.config.train
        batches = epoch_batches(windows.lengths, tcfg.batch_size, np.random.default_rng([tcfg.seed, epoch]))
        total_loss, total_tokens, t0 = 0.0, 0, time.perf_counter()
        out_of_time = False
        with progress_bar(len(batches), f"epoch {epoch}", enabled=self.show_progress and env.rank == 0) as advance:
            for rows in batches:
                local = rows[env.rank::env.world]
                weight = 1.0
                if len(local) == 0:  # fewer rows than processes: join the gradient all-reduce with zero weight
                    local, weight = rows[:1], 0.0
                items = windows.take(local).to_padded(left=False)
                lengths = torch.from_numpy(windows.lengths[local])
                ts = window_ts.take(local).to_padded(left=False)[:, :-1] if window_ts is not None else None
                inputs, targets = items[:, :-1], items[:, 1:].clone()
                targets[torch.arange(targets.shape[1])[None, :] >= (lengths - 1)[:, None]] = 0
                inputs, targets, lengths = inputs.to(env.device), targets.to(env.device), lengths.to(env.device)
                ts = ts.to(env.device) if ts is not None else None
                n_local = int((targets > 0).sum()) if weight else 0
                n_global = env.sum(float(n_local))
                h = ddp(inputs, (lengths - 1).clamp(min=1), ts)
                mask = targets > 0
                loss_sum = self._loss(h[mask], targets[mask], model)
                loss = loss_sum * (weight * env.world / max(n_global, 1.0))
                optimizer_step(loss, model, opt, sched, tcfg.clip_norm)
                total_loss += float(loss_sum.detach()) * weight
                total_tokens += n_local
                elapsed = time.perf_counter() - t0
                advance(1, f"epoch {epoch} loss {total_loss / max(total_tokens, 1):.4f} "
                           f"{total_tokens * env.world / max(elapsed, 1e-9):,.0f} tok/s")
                if tcfg.max_minutes and time.perf_counter() - start_clock > tcfg.max_minutes * 60:
                    out_of_time = True
                    break
        tokens = env.sum(float(total_tokens))
        return env.sum(total_loss) / max(tokens, 1), tokens, time.perf_counter() - t0, out_of_time

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

    def _test(self, model: SequentialModel, split: Split, ds: SequenceDataset, state: dict,
              refit: dict[str, Any] | None = None) -> Evaluation:
        cfg = self.config
        counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
        ev = evaluate(model, split.test, ds, part="test", ks=cfg.eval.ks, exclude_seen=cfg.eval.exclude_seen,
                      item_counts=counts, n_boot=cfg.eval.n_boot, seed=cfg.train.seed,
                      show_progress=self.show_progress)
        ev.info.update(best_epoch=state["best_epoch"], best_valid=state["best"], epochs_run=state["epoch"],
                       stopped=state["stopped"] or "max epochs", train_seconds=state["train_seconds"],
                       **({"refit": refit} if refit else {}),
                       commit_at_start=self.commit_at_start, allocator=self.allocator,
                       device=str(next(model.parameters()).device), **cold_start_info(split, ev, cfg))
        run_config = {"model": cfg.model.name, "split": cfg.split, **cfg.model_dump(mode="json")}
        write_run(self.run_dir, run_config, ev, ds, state["train_seconds"])
        save_model_files(self.run_dir, model, ds, counts)
        return ev

    def _say(self, record: dict) -> None:
        if self.show_progress:
            print_epoch(record)


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


def _known_items(split: Split, n_items: int) -> torch.Tensor:
    """[n_items + 1] bool: the items that occur in the training sequences (padding excluded)."""
    known = np.zeros(n_items + 1, dtype=bool)
    known[split.train.values] = True
    known[0] = False
    return torch.from_numpy(known)


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
