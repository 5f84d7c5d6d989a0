"""Training a sequential model: AdamW with warmup and decay, clipping, validation-based early stopping,
atomic safetensors checkpoints with exact resume (also mid-epoch), and data-parallel training under torchrun.

The training windows come from memory (the whole split) or stream shard by shard from a prepared dataset
(``train.data``, genrec.data.stream). Validation reads every validation user or a fixed seeded sample of them
(``eval.valid_users``); the test split is evaluated once, at the end, with the weights that scored best on
validation.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from genrec.data import EvalCases, Jagged, SequenceDataset, Split, load_dataset
from genrec.data.prepared import PreparedDataset
from genrec.data.splits import ColdStartSplit, with_validation_in_train
from genrec.data.stream import (  # noqa: F401  (epoch_batches: re-exported, long imported from here)
    CaseCollector,
    MemoryShards,
    PreparedHeader,
    WindowStream,
    concat_jagged,
    epoch_batches,
    prepared_manifest,
    sample_cases,
    split_shard,
    training_windows,
)
from genrec.errors import ConfigError, GenrecError
from genrec.eval import Evaluation, evaluate, rank_cases, write_run
from genrec.eval.report import git_commit, subset_summary
from genrec.eval.stats import bootstrap_ci
from genrec.io import write_json, write_parquet, write_text
from genrec.models import SEQUENTIAL, SequentialModel
from genrec.nn.losses import NegativeSampler, full_cross_entropy, sampled_softmax
from genrec.progress import progress_bar
from genrec.train.allocator import tune_glibc_malloc
from genrec.train.checkpoint import load_tensors, save_checkpoint, save_tensors
from genrec.train.config import RunConfig
from genrec.train.loop import (
    apply_gradients,
    finish_epoch,
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

    def gather_rng(self) -> list[torch.Tensor] | None:
        """Every process's torch CPU generator state, in rank order (None on one process)."""
        if not self.on:
            return None
        state = torch.get_rng_state().to(self.device)  # where the backend gathers (nccl: the GPU)
        states = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(states, state)
        return [t.cpu() for t in states]

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's array on every rank (the others pass one of the same shape); float64 carries integers
        exactly up to 2^53."""
        if not self.on:
            return values
        t = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(self.device)
        dist.broadcast(t, 0)
        return t.cpu().numpy().astype(values.dtype)


Part = tuple[Jagged, Jagged | None]  # training windows and their timestamps, passed through the model together
Batch = tuple[list[Part], float]  # this process's parts of one global step, and its loss weight (0: padding only)


class _MemoryWindows:
    """Every training window in memory: each global batch's rows are dealt to the processes in turn."""

    def __init__(self, split: Split, config: RunConfig, env: _Dist):
        tcfg = config.train
        self.windows, self.timestamps = training_windows(split, config.model.max_len, tcfg.windows)
        self.batch_size, self.seed, self.env = tcfg.batch_size, tcfg.seed, env
        self.steps = math.ceil(len(self.windows) / tcfg.batch_size)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        return {"epoch": epoch, "step": step}

    def epoch(self, epoch: int, start: dict[str, Any] | None = None) -> Iterator[Batch]:
        batches = epoch_batches(self.windows.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))
        for rows in batches[int(start["step"]) if start else 0:]:
            local, weight = rows[self.env.rank::self.env.world], 1.0
            if len(local) == 0:  # fewer rows than processes: join the gradient all-reduce with zero weight
                local, weight = rows[:1], 0.0
            yield [(self.windows.take(local),
                    self.timestamps.take(local) if self.timestamps is not None else None)], weight


class _StreamedWindows:
    """Training windows streamed shard by shard (genrec.data.stream); ``counts``: every shard's windows. With
    ``lane_passes`` each lane's batch is its own part of a step, else the lanes' batches are one part."""

    def __init__(self, stream: WindowStream, counts: np.ndarray, timestamps: bool, lane_passes: bool = True):
        self.stream, self.counts, self.has_timestamps = stream, counts, timestamps
        self.lane_passes = lane_passes
        self.steps = stream.steps_per_epoch(counts)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        return self.stream.position(epoch, step, self.counts)

    def epoch(self, epoch: int, start: dict[str, Any] | None = None) -> Iterator[Batch]:
        for parts in self.stream.epoch(epoch, self.counts, start):
            if not parts:  # this process's lanes are done: join the gradient all-reduce with zero weight
                two = np.array([2], dtype=np.int64)
                yield [(Jagged.from_lengths(np.ones(2, dtype=np.int64), two),
                        Jagged.from_lengths(np.zeros(2, dtype=np.int64), two) if self.has_timestamps else None)], 0.0
            elif self.lane_passes or len(parts) == 1:
                yield parts, 1.0
            else:
                ts = [t for _, t in parts]
                yield [(concat_jagged([w for w, _ in parts]), concat_jagged(ts) if ts[0] is not None else None)], 1.0


@dataclass
class _RunData:
    """What a run trains and evaluates on, held in memory or streamed."""

    header: Any  # the dataset, or a prepared folder's PreparedHeader (name, n_items, users, items, item_table, stats)
    train: _MemoryWindows | _StreamedWindows
    valid: EvalCases | None  # the validation cases or their fixed sample (rank 0 only when streamed)
    counts: np.ndarray  # training interactions per item [n_items + 1]
    use_timestamps: bool
    split: Split | None = None  # the whole split, in memory only
    test: Callable[[], EvalCases] | None = None  # streamed: builds the test cases shard by shard
    info: dict[str, Any] = field(default_factory=dict)  # how the data was read, for the run's metrics.json


class Trainer:
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
        env = _Dist(device)
        self.commit_at_start = git_commit()  # code that trained; write_run records HEAD at the end too
        self.allocator = tune_glibc_malloc()
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        seed_everything(tcfg.seed)
        data = self._data(env)
        ds = data.header
        model = build_model(cfg, ds.n_items, use_timestamps=data.use_timestamps)
        attach_features(model, cfg, ds)
        model.to(device)
        self.known = _known_items(data.counts).to(device) if _mask_unseen(cfg) else None
        self.item_counts = torch.from_numpy(data.counts).to(device)  # read by the sampled-softmax loss
        ddp = _wrap(model, env, device)
        opt, sched, state, board, start_clock = start_run(cfg, model, data.train.steps, self.run_dir, resume,
                                                          writer=env.rank == 0, rank=env.rank)
        ckpt = self.run_dir / "checkpoint"
        k_sel = _select_k(cfg.eval.select_metric)
        while state["stopped"] is None and state["epoch"] < tcfg.epochs:
            epoch = state["epoch"] + 1
            model.train()
            loss, tokens, seconds, out_of_time = self._epoch(ddp, model, opt, sched, data.train, epoch, env,
                                                             start_clock, state, ckpt)
            record = _close_epoch(state, epoch, data.train.steps, loss, tokens, seconds, sched, start_clock)
            if epoch % tcfg.eval_every == 0 or out_of_time or epoch == tcfg.epochs:
                record.update(self._validate(model, data.valid, ds.n_items, env, k_sel))
                select(state, epoch, record[f"valid_{cfg.eval.select_metric}"], tcfg.patience,
                       lambda: save_tensors(ckpt / "best.safetensors", model.state_dict()) if env.rank == 0 else None)
            rngs = env.gather_rng()
            finish_epoch(self.run_dir, board, state, record, out_of_time, tcfg.max_minutes,
                         lambda rngs=rngs: save_checkpoint(ckpt, model, opt, sched, state, rngs), writer=env.rank == 0)
            if env.rank == 0:
                self._say(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        if env.on:
            dist.barrier()
        model.load_state_dict(load_tensors(ckpt / "best.safetensors"))
        refit = None
        if tcfg.refit:
            model, data, refit = self._refit(data, env, device, max(state["best_epoch"], 1), resume)
        model.eval()
        test = None
        if env.rank == 0:
            test = self._test(model, data, state, refit)
        return TrainResult(model, self.run_dir, state["best_epoch"], state["best"], test, state["history"])

    def _data(self, env: _Dist) -> _RunData:
        """The run's data: streamed when ``train.data`` says so (or, for auto, when the dataset is a large
        prepared folder), else the whole split in memory."""
        if _streams(self.config, self.dataset):
            return self._streamed(env)
        ds = self.dataset or load_dataset(self.config.dataset)
        return self._in_memory(ds, run_split(self.config, ds), env)

    def _in_memory(self, ds: SequenceDataset, split: Split, env: _Dist) -> _RunData:
        ecfg = self.config.eval
        counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
        return _RunData(ds, _MemoryWindows(split, self.config, env),
                        sample_cases(split.valid, ecfg.valid_users, ecfg.valid_seed), counts,
                        ds.timestamps is not None, split)

    def _streamed(self, env: _Dist) -> _RunData:
        """One pass over the shards on rank 0 counts every shard's windows and the training item counts and
        gathers the validation cases (capped at max_len, or their sample); the other ranks receive the counts."""
        cfg, tcfg = self.config, self.config.train
        source, header, use_ts = self._shard_source()
        cuts = _temporal_cuts(cfg, source, header) if cfg.split == "temporal" else None
        stream = WindowStream(source, lanes=tcfg.stream.lanes, batch_size=tcfg.batch_size, seed=tcfg.seed,
                              max_len=cfg.model.max_len, windows=tcfg.windows, split=cfg.split, cuts=cuts,
                              rank=env.rank, world=env.world, prefetch=tcfg.stream.prefetch)
        windows = np.zeros(stream.n_shards, dtype=np.int64)
        counts = np.zeros(header.n_items + 1, dtype=np.int64)
        valid = CaseCollector(cfg.eval.valid_users, cfg.eval.valid_seed, cap=cfg.model.max_len)
        if env.rank == 0:
            with progress_bar(stream.n_shards, "reading shards", enabled=self.show_progress) as advance:
                def visit(k: int, shard: Any) -> None:
                    counts[:] += np.bincount(shard.split.train.values, minlength=header.n_items + 1)
                    valid.add(shard.split.valid)
                    advance(1)

                windows = stream.survey(visit)
        windows, counts = env.broadcast_array(windows), env.broadcast_array(counts)

        def test_cases() -> EvalCases:
            every = CaseCollector(cfg.eval.test_users, cfg.eval.test_seed, cap=cfg.model.max_len)
            for k in range(stream.n_shards):
                every.add(split_shard(source.read_shard(k), cfg.split, cuts).test)
            info["test_cases"] = every.seen
            return every.cases()

        info = {"mode": "stream", "shards": stream.n_shards, "lanes": stream.lanes,
                "windows_per_lane_batch": stream.lane_batch, "history_cap": cfg.model.max_len,
                **({"temporal_cuts": cuts} if cuts else {})}
        train = _StreamedWindows(stream, windows, use_ts, tcfg.stream.lane_passes)
        return _RunData(header, train, valid.cases() if env.rank == 0 else None, counts, use_ts, test=test_cases,
                        info=info)

    def _shard_source(self) -> tuple[Any, Any, bool]:
        """(shards to stream, the dataset's header, whether it has timestamps): a prepared folder's own shards,
        or an in-memory dataset seen through train.stream.shards hash shards."""
        cfg = self.config
        if self.dataset is None and prepared_manifest(cfg.dataset) is not None:
            header = PreparedHeader(PreparedDataset.open(cfg.dataset))
            return header.prepared, header, header.has_timestamps
        ds = self.dataset or load_dataset(cfg.dataset)
        return MemoryShards(ds, cfg.train.stream.shards), ds, ds.timestamps is not None

    def _refit(self, data: _RunData, env: _Dist, device: torch.device, epochs: int,
               resume: bool) -> tuple[SequentialModel, _RunData, dict[str, Any]]:
        """``train.refit``: a fresh model (same seed, schedule and batches) trained on the training sequences
        plus every user's validation item for the selected number of epochs, in ``<run>/refit``. No selection
        happens here: the validation items are training targets now."""
        cfg, tcfg = self.config, self.config.train
        seed_everything(tcfg.seed)
        data = self._in_memory(data.header, with_validation_in_train(data.split), env)
        self.item_counts = torch.from_numpy(data.counts).to(device)
        ds = data.header
        model = build_model(cfg, ds.n_items, use_timestamps=data.use_timestamps)
        attach_features(model, cfg, ds)
        model.to(device)
        ddp = _wrap(model, env, device)
        folder = self.run_dir / "refit"
        again = resume and (folder / "checkpoint" / "trainer.json").is_file()
        opt, sched, state, board, start_clock = start_run(cfg, model, data.train.steps, folder, again,
                                                          writer=env.rank == 0, rank=env.rank)
        while state["stopped"] is None and state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            model.train()
            loss, tokens, seconds, out_of_time = self._epoch(ddp, model, opt, sched, data.train, epoch, env,
                                                             start_clock, state, folder / "checkpoint")
            record = _close_epoch(state, epoch, data.train.steps, loss, tokens, seconds, sched, start_clock)
            rngs = env.gather_rng()
            finish_epoch(folder, board, state, record, out_of_time, tcfg.max_minutes,
                         lambda rngs=rngs: save_checkpoint(folder / "checkpoint", model, opt, sched, state, rngs),
                         writer=env.rank == 0)
            if env.rank == 0:
                self._say({**record, "refit": True})
        info = {"epochs": state["epoch"], "selected_epoch": epochs, "train_seconds": state["train_seconds"],
                "stopped": state["stopped"] or "the selected epoch",
                "targets": int((data.train.windows.lengths - 1).sum())}
        return model, data, info

    def _validate(self, model: SequentialModel, cases: EvalCases | None, n_items: int, env: _Dist,
                  k_sel: int) -> dict[str, float]:
        """Validation HR@10, NDCG@10 and the selection metric, computed on rank 0 and shared with all ranks;
        on a sample of users (``eval.valid_users``) also each metric's 95% bootstrap interval, the sample's
        size and seed."""
        ecfg = self.config.eval
        shown = sorted({ecfg.select_metric, "hr@10", "ndcg@10"})
        sampled = ecfg.valid_users is not None
        values = [0.0] * (3 * len(shown) + 1 if sampled else len(shown))
        if env.rank == 0:
            model.eval()
            r = rank_cases(model, cases, n_items, ks=sorted({k_sel, 10}), exclude_seen=ecfg.exclude_seen,
                           show_progress=False)
            values = [float(r.per_case[m].mean()) for m in shown]
            if sampled:
                ci = bootstrap_ci({m: r.per_case[m] for m in shown}, n_boot=ecfg.n_boot, seed=ecfg.valid_seed)
                values += [ci[m][b] for b in ("ci_low", "ci_high") for m in shown] + [float(len(cases))]
        values = env.broadcast(values)
        out = {f"valid_{m}": v for m, v in zip(shown, values, strict=False)}
        if sampled:
            n = len(shown)
            out.update({f"valid_{m}_lo": values[n + i] for i, m in enumerate(shown)})
            out.update({f"valid_{m}_hi": values[2 * n + i] for i, m in enumerate(shown)})
            out.update(valid_users=int(values[-1]), valid_seed=ecfg.valid_seed)
        return out

    def _epoch(self, ddp, model, opt, sched, train, epoch: int, env: _Dist, start_clock: float, state: dict,
               ckpt: Path) -> tuple[float, float, float, bool]:
        """One epoch, or its rest when ``state`` holds a mid-epoch position; every ``train.checkpoint_every``
        steps a checkpoint with the data position and the epoch's running loss lets a resumed run continue at
        the exact batch."""
        tcfg = self.config.train
        start = state.pop("position", None)
        done = int(start["step"]) if start else 0
        total_loss = float(start["loss"]) if start and env.rank == 0 else 0.0
        total_tokens = start["tokens"] if start and env.rank == 0 else 0
        t0 = time.perf_counter() - (float(start["seconds"]) if start else 0.0)
        out_of_time = False
        with progress_bar(train.steps, f"epoch {epoch}", enabled=self.show_progress and env.rank == 0) as advance:
            advance(done)
            for step, (parts, weight) in enumerate(train.epoch(epoch, start), done + 1):
                loss_sum, n_local = self._step(ddp, model, opt, sched, parts, weight, env)
                total_loss += loss_sum
                total_tokens += n_local
                elapsed = time.perf_counter() - t0
                advance(1, f"epoch {epoch} loss {total_loss / max(total_tokens, 1):.4f} "
                           f"{total_tokens * env.world / max(elapsed, 1e-9):,.0f} tok/s")
                every = tcfg.checkpoint_every
                if every and (state["step"] + step) % every == 0 and step < train.steps:
                    position = {**train.position(epoch, step), "loss": env.sum(total_loss),
                                "tokens": env.sum(total_tokens), "seconds": elapsed}
                    rngs = env.gather_rng()
                    if env.rank == 0:
                        save_checkpoint(ckpt, model, opt, sched, {**state, "position": position,
                                        "train_seconds": time.perf_counter() - start_clock}, rngs)
                if tcfg.max_minutes and time.perf_counter() - start_clock > tcfg.max_minutes * 60:
                    out_of_time = True
                    break
        tokens = env.sum(float(total_tokens))
        return env.sum(total_loss) / max(tokens, 1), tokens, time.perf_counter() - t0, out_of_time

    def _step(self, ddp, model: SequentialModel, opt, sched, parts: list[Part], weight: float,
              env: _Dist) -> tuple[float, int]:
        """One optimizer step on this process's parts of a global batch: a forward and backward pass per part,
        gradients summed (DDP all-reduces them with the last part's backward), then one update. The loss is
        divided by the global token count (DDP averages gradients over processes, hence the world factor), so
        any number of processes makes the same update. Returns (this process's summed loss times ``weight``, its
        target count)."""
        batches = [_next_item_batch(windows, ts, env.device) for windows, ts in parts]
        n_local = sum(int((targets > 0).sum()) for _, targets, _, _ in batches) if weight else 0
        n_global = env.sum(float(n_local))
        scale = weight * env.world / max(n_global, 1.0)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j, (inputs, targets, lengths, ts) in enumerate(batches):
            with ddp.no_sync() if env.on and j < len(batches) - 1 else contextlib.nullcontext():
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

    def _test(self, model: SequentialModel, data: _RunData, state: dict,
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
        ev.info.update(best_epoch=state["best_epoch"], best_valid=state["best"], epochs_run=state["epoch"],
                       stopped=state["stopped"] or "max epochs", train_seconds=state["train_seconds"],
                       **({"refit": refit} if refit else {}),
                       commit_at_start=self.commit_at_start, allocator=self.allocator,
                       device=str(next(model.parameters()).device),
                       **(cold_start_info(data.split, ev, cfg) if data.split is not None else {}),
                       **({"data": data.info} if data.info else {}))
        if ecfg.test_users is not None:
            ev.info["test_sample"] = {"users": len(cases), "of": every, "seed": ecfg.test_seed}
        sample = _validation_sample(cfg, state)
        if sample:
            ev.info["validation"] = sample
        run_config = {"model": cfg.model.name, "split": cfg.split, **cfg.model_dump(mode="json")}
        write_run(self.run_dir, run_config, ev, ds, state["train_seconds"])
        if sample:
            report = self.run_dir / "report.md"
            write_text(report, report.read_text(encoding="utf-8") + _validation_line(sample))
        save_model_files(self.run_dir, model, ds, data.counts)
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


def _streams(config: RunConfig, dataset: SequenceDataset | None) -> bool:
    """Whether the run streams its training windows: ``train.data: stream``, or ``auto`` on a prepared folder
    (format 2) with more than ``train.stream.auto_events`` interactions and a split that streams."""
    tcfg = config.train
    if tcfg.data != "auto":
        return tcfg.data == "stream"
    if dataset is not None or config.split == "cold" or tcfg.refit:
        return False
    manifest = prepared_manifest(config.dataset)
    return manifest is not None and int(manifest.get("interactions", 0)) > tcfg.stream.auto_events


def _temporal_cuts(config: RunConfig, source: Any, header: Any) -> dict[str, float]:
    """The global cut times of a streamed temporal split: the config's, else as the in-memory split computes
    them (an in-memory dataset), else the prepared folder's manifest (for the default fractions)."""
    t = config.temporal
    given = {"valid_start": t.valid_start, "test_start": t.test_start}
    if isinstance(source, MemoryShards):
        if source.ds.timestamps is None:
            raise ConfigError(f"dataset '{source.ds.name}' has no timestamps; the temporal split needs them "
                              "(use 'loo')")
        ts = source.ds.timestamps.values
        test = t.test_start if t.test_start is not None else float(np.quantile(ts, 1 - t.test_fraction))
        valid = (t.valid_start if t.valid_start is not None
                 else float(np.quantile(ts, 1 - t.test_fraction - t.valid_fraction)))
        return {"valid_start": valid, "test_start": test}
    saved = header.manifest.get("temporal") or {}
    defaults = t.valid_fraction == 0.1 and t.test_fraction == 0.1
    cuts = {k: v if v is not None else (saved.get(k) if defaults else None) for k, v in given.items()}
    if any(v is None for v in cuts.values()):
        raise ConfigError(f"{config.dataset}: a streamed temporal split needs global cut times: set "
                          "temporal.valid_start and temporal.test_start, or keep the default fractions and use a "
                          "prepared folder whose manifest holds its temporal cuts")
    if cuts["valid_start"] > cuts["test_start"]:
        raise ConfigError(f"temporal.valid_start ({cuts['valid_start']}) must not be after test_start "
                          f"({cuts['test_start']})")
    return {k: float(v) for k, v in cuts.items()}


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
