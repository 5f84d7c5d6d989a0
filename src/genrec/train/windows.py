"""The training data of a sequential run: every training window in memory, or streamed shard by shard from a
prepared dataset (``train.data``, genrec.data.stream), with the validation cases (or their fixed sample) and the
training item counts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec.data import EvalCases, Jagged, SequenceDataset, Split, load_dataset
from genrec.data.prepared import PreparedDataset
from genrec.data.stream import (
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
from genrec.errors import ConfigError
from genrec.progress import progress_bar
from genrec.train.config import RunConfig
from genrec.train.loop import run_split
from genrec.train.processes import Processes

Part = tuple[Jagged, Jagged | None]  # training windows and their timestamps, passed through the model together
Batch = tuple[list[Part], float]  # this process's parts of one global step, and its loss weight (0: padding only)


class MemoryWindows:
    """Every training window in memory: each global batch's rows are dealt to the processes in turn."""

    def __init__(self, split: Split, config: RunConfig, procs: Processes):
        tcfg = config.train
        self.windows, self.timestamps = training_windows(split, config.model.max_len, tcfg.windows)
        self.batch_size, self.seed, self.procs = tcfg.batch_size, tcfg.seed, procs
        self.steps = math.ceil(len(self.windows) / tcfg.batch_size)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        return {"epoch": epoch, "step": step}

    def epoch(self, epoch: int, start: dict[str, Any] | None = None) -> Iterator[Batch]:
        batches = epoch_batches(self.windows.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))
        for rows in batches[int(start["step"]) if start else 0:]:
            local, weight = rows[self.procs.rank::self.procs.world], 1.0
            if len(local) == 0:  # fewer rows than processes: join the gradient all-reduce with zero weight
                local, weight = rows[:1], 0.0
            yield [(self.windows.take(local),
                    self.timestamps.take(local) if self.timestamps is not None else None)], weight


class StreamedWindows:
    """Training windows streamed shard by shard (genrec.data.stream); ``counts``: every shard's windows.
    ``combine`` (train.stream.combine) says how a step's lane batches become its parts (one pass each)."""

    def __init__(self, stream: WindowStream, counts: np.ndarray, timestamps: bool, combine: str = "sorted",
                 pass_tokens: int = 1024):
        self.stream, self.counts, self.has_timestamps = stream, counts, timestamps
        self.combine, self.pass_tokens = combine, pass_tokens
        self.steps = stream.steps_per_epoch(counts)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        return self.stream.position(epoch, step, self.counts)

    def epoch(self, epoch: int, start: dict[str, Any] | None = None) -> Iterator[Batch]:
        for parts in self.stream.epoch(epoch, self.counts, start):
            if not parts:  # this process's lanes are done: join the gradient all-reduce with zero weight
                two = np.array([2], dtype=np.int64)
                yield [(Jagged.from_lengths(np.ones(2, dtype=np.int64), two),
                        Jagged.from_lengths(np.zeros(2, dtype=np.int64), two) if self.has_timestamps else None)], 0.0
            elif self.combine == "passes" or len(parts) == 1:
                yield parts, 1.0
            else:
                windows = concat_jagged([w for w, _ in parts])
                ts = concat_jagged([t for _, t in parts]) if parts[0][1] is not None else None
                groups = ([np.arange(len(windows))] if self.combine == "pad"
                          else length_groups(windows.lengths, self.pass_tokens))
                yield [(windows.take(g), ts.take(g) if ts is not None else None) for g in groups], 1.0


def length_groups(lengths: np.ndarray, pass_tokens: int) -> list[np.ndarray]:
    """Rows cut into passes, longest first: the cut of the length-sorted rows that minimises the padded tokens
    (each pass pads to its longest row) plus ``pass_tokens`` per pass (a dynamic program over the cut points)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    top = np.asarray(lengths, dtype=np.float64)[order]  # top[j]: the longest row of a pass that starts at j
    n = len(order)
    best, cut = np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        cost = best[:i] + (i - np.arange(i)) * top[:i] + pass_tokens
        cut[i] = int(np.argmin(cost))
        best[i] = cost[cut[i]]
    groups, i = [], n
    while i > 0:
        groups.append(order[cut[i]:i])
        i = cut[i]
    return groups[::-1]


@dataclass
class RunData:
    """What a run trains and evaluates on, held in memory or streamed."""

    header: Any  # the dataset, or a prepared folder's PreparedHeader (name, n_items, users, items, item_table, stats)
    train: MemoryWindows | StreamedWindows
    valid: EvalCases | None  # the validation cases or their fixed sample (rank 0 only when streamed)
    counts: np.ndarray  # training interactions per item [n_items + 1]
    use_timestamps: bool
    split: Split | None = None  # the whole split, in memory only
    test: Callable[[], EvalCases] | None = None  # streamed: builds the test cases shard by shard
    info: dict[str, Any] = field(default_factory=dict)  # how the data was read, for the run's metrics.json


def run_data(config: RunConfig, dataset: SequenceDataset | None, procs: Processes,
             show_progress: bool = True) -> RunData:
    """The run's data: streamed when ``train.data`` says so (or, for auto, when the dataset is a large
    prepared folder), else the whole split in memory. ``dataset``: the data in memory, else read
    ``config.dataset``."""
    if streams(config, dataset):
        return _streamed(config, dataset, procs, show_progress)
    ds = dataset or load_dataset(config.dataset)
    return in_memory(config, ds, run_split(config, ds), procs)


def in_memory(config: RunConfig, ds: SequenceDataset, split: Split, procs: Processes) -> RunData:
    """``split`` in memory, its validation cases (or their sample) included."""
    ecfg = config.eval
    counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
    return RunData(ds, MemoryWindows(split, config, procs),
                    sample_cases(split.valid, ecfg.valid_users, ecfg.valid_seed), counts,
                    ds.timestamps is not None, split)


def _streamed(config: RunConfig, dataset: SequenceDataset | None, procs: Processes, show_progress: bool) -> RunData:
    """One pass over the shards on rank 0 counts every shard's windows and the training item counts and
    gathers the validation cases (capped at max_len, or their sample); the other ranks receive the counts."""
    cfg, tcfg = config, config.train
    source, header, use_ts = _shard_source(config, dataset)
    cuts = _temporal_cuts(cfg, source, header) if cfg.split == "temporal" else None
    stream = WindowStream(source, lanes=tcfg.stream.lanes, batch_size=tcfg.batch_size, seed=tcfg.seed,
                          max_len=cfg.model.max_len, windows=tcfg.windows, split=cfg.split, cuts=cuts,
                          rank=procs.rank, world=procs.world, prefetch=tcfg.stream.prefetch)
    windows = np.zeros(stream.n_shards, dtype=np.int64)
    counts = np.zeros(header.n_items + 1, dtype=np.int64)
    valid = CaseCollector(cfg.eval.valid_users, cfg.eval.valid_seed, cap=cfg.model.max_len)
    if procs.rank == 0:
        with progress_bar(stream.n_shards, "reading shards", enabled=show_progress) as advance:
            def visit(k: int, shard: Any) -> None:
                counts[:] += np.bincount(shard.split.train.values, minlength=header.n_items + 1)
                valid.add(shard.split.valid)
                advance(1)

            windows = stream.survey(visit)
    windows, counts = procs.broadcast_array(windows), procs.broadcast_array(counts)

    def test_cases() -> EvalCases:
        every = CaseCollector(cfg.eval.test_users, cfg.eval.test_seed, cap=cfg.model.max_len)
        for k in range(stream.n_shards):
            every.add(split_shard(source.read_shard(k), cfg.split, cuts).test)
        info["test_cases"] = every.seen
        return every.cases()

    info = {"mode": "stream", "shards": stream.n_shards, "lanes": stream.lanes,
            "windows_per_lane_batch": stream.lane_batch, "history_cap": cfg.model.max_len,
            **({"temporal_cuts": cuts} if cuts else {})}
    train = StreamedWindows(stream, windows, use_ts, tcfg.stream.combine, tcfg.stream.pass_tokens)
    return RunData(header, train, valid.cases() if procs.rank == 0 else None, counts, use_ts, test=test_cases,
                    info=info)


def _shard_source(config: RunConfig, dataset: SequenceDataset | None) -> tuple[Any, Any, bool]:
    """(shards to stream, the dataset's header, whether it has timestamps): a prepared folder's own shards,
    or an in-memory dataset seen through train.stream.shards hash shards."""
    cfg = config
    if dataset is None and prepared_manifest(cfg.dataset) is not None:
        header = PreparedHeader(PreparedDataset.open(cfg.dataset))
        return header.prepared, header, header.has_timestamps
    ds = dataset or load_dataset(cfg.dataset)
    return MemoryShards(ds, cfg.train.stream.shards), ds, ds.timestamps is not None


def streams(config: RunConfig, dataset: SequenceDataset | None) -> bool:
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
