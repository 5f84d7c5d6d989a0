"""Training windows, and their stream from a prepared dataset's shards.

A streamed epoch's order is defined by a fixed number of lanes L, independent of the number of processes. Lane j
reads the shards j, j + L, j + 2L, ... in an order shuffled per epoch. A shard's users are split on their own
(leave-one-out, or the temporal split at the dataset's global cut times: both are per user) and cut into
training windows exactly as :func:`training_windows` cuts the whole split; the windows are shuffled and grouped
by :func:`epoch_batches` into batches of batch_size / L, with the generator seeded by (seed, epoch, shard).
Global step s takes the s-th batch of every lane that still has one. A process of rank r among W reads lanes
r, r + W, ... and contributes their batches to every global step, so 1, 2 or 4 processes train on the same
global batches. A lane holds one shard's windows at a time, plus the next one read ahead by a thread, so memory
does not grow with the log. The position (epoch, step, and per lane the shard and batch reached) is a small
dict saved with a checkpoint; a resumed run continues at the exact batch.

With one shard and one lane the stream is the in-memory epoch itself: the shard's generator seed (seed, epoch, 0)
is numpy's (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from genrec.data.dataset import SequenceDataset, Vocab
from genrec.data.jagged import Jagged
from genrec.data.prepared import PreparedDataset, shard_of
from genrec.data.splits import EvalCases, Split, leave_one_out, temporal_split
from genrec.errors import ConfigError, GenrecError
from genrec.io import read_json


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


@dataclass(frozen=True)
class Shard:
    """One shard's users: global dense ids (increasing) and their chronological sequences."""

    user_ids: np.ndarray
    sequences: Jagged
    timestamps: Jagged | None = None


class ShardSource(Protocol):
    """What the stream reads: a prepared dataset (``genrec.data.prepared.PreparedDataset``) or
    :class:`MemoryShards`. ``read_shard(k)`` returns an object with ``user_ids``, ``sequences`` and
    ``timestamps``, like :class:`Shard`."""

    @property
    def n_shards(self) -> int: ...

    def read_shard(self, k: int) -> Any: ...


class MemoryShards:
    """An in-memory dataset seen through the prepared layout's shards (the same user hash), so a stream over it
    follows the same order as over the prepared folder with that many shards."""

    def __init__(self, ds: SequenceDataset, n_shards: int):
        if n_shards < 1:
            raise ConfigError(f"the number of shards must be at least 1, got {n_shards}")
        self.ds, self.n_shards = ds, n_shards
        self._shard = shard_of(np.arange(1, ds.n_users + 1), n_shards)

    def read_shard(self, k: int) -> Shard:
        rows = np.flatnonzero(self._shard == k)
        ts = self.ds.timestamps.take(rows) if self.ds.timestamps is not None else None
        return Shard(rows + 1, self.ds.sequences.take(rows), ts)


def prepared_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared dataset folder in the sharded layout (format_version 2), else None."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return None
    info = read_json(manifest)
    ok = isinstance(info, dict) and info.get("format") == "genrec-prepared" and info.get("format_version") == 2
    return info if ok else None


class PreparedHeader:
    """A prepared folder's vocabularies, catalog and statistics without its events: what a streamed run's
    evaluation, model files and reports read of the dataset. Each part loads on first use."""

    def __init__(self, prepared: PreparedDataset):
        self.prepared, self.manifest = prepared, prepared.manifest
        self.name, self.n_users, self.n_items = prepared.name, prepared.n_users, prepared.n_items
        self.meta = self.manifest.get("meta", {})

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.manifest.get("columns", [])

    @cached_property
    def users(self) -> Vocab:
        return self.prepared.users()

    @cached_property
    def items(self) -> Vocab:
        return self.prepared.items()

    @cached_property
    def item_table(self) -> pa.Table | None:
        return self.prepared.catalog()

    def stats(self) -> dict[str, Any]:
        m = self.manifest
        return {**m.get("stats", {}), "name": self.name, "users": self.n_users, "items": self.n_items,
                "interactions": m["interactions"], "shards": m["shards"], "format_version": m["format_version"]}


def split_shard(shard: Any, kind: str = "loo", cuts: dict[str, float] | None = None) -> Split:
    """A shard's users split on their own, with global dense user ids in ``train_users`` and the cases.
    ``kind``: ``loo`` (leave-one-out) or ``temporal`` (``cuts`` holds the global valid_start and test_start)."""
    ids = np.asarray(shard.user_ids, dtype=np.int64)
    ts = getattr(shard, "timestamps", None)
    ds = SequenceDataset(name="shard", users=Vocab(pa.array(ids)), items=Vocab(pa.array([], pa.int64())),
                         sequences=shard.sequences, timestamps=ts)
    if kind == "loo":
        split = leave_one_out(ds)
    elif kind == "temporal":
        if not cuts or cuts.get("valid_start") is None or cuts.get("test_start") is None:
            raise ConfigError("a streamed temporal split needs its global cut times (valid_start, test_start)")
        split = temporal_split(ds, valid_start=cuts["valid_start"], test_start=cuts["test_start"])
    else:
        raise ConfigError(f"streamed training supports split loo and temporal, got {kind!r}")

    def globalised(c: EvalCases) -> EvalCases:
        return EvalCases(ids[c.users - 1], c.history, c.targets, c.history_timestamps)

    return Split(split.kind, ids[split.train_users - 1], split.train, globalised(split.valid),
                 globalised(split.test), split.train_timestamps, split.info)


def concat_jagged(parts: list[Jagged]) -> Jagged:
    """Rows of every part, in order."""
    if not parts:
        return Jagged.from_lengths(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return Jagged.from_lengths(np.concatenate([p.values for p in parts]),
                               np.concatenate([p.lengths for p in parts]))


def concat_cases(parts: list[EvalCases]) -> EvalCases:
    """Cases of every part, in order (histories with timestamps only when every part has them)."""
    ts = [p.history_timestamps for p in parts]
    return EvalCases(np.concatenate([p.users for p in parts]) if parts else np.zeros(0, dtype=np.int64),
                     concat_jagged([p.history for p in parts]),
                     np.concatenate([p.targets for p in parts]) if parts else np.zeros(0, dtype=np.int64),
                     concat_jagged(ts) if parts and all(t is not None for t in ts) else None)


def sample_keys(users: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 key per dense user id (splitmix64): the validation sample is the users with
    the smallest keys, the same whatever the order or grouping the users are read in."""
    with np.errstate(over="ignore"):
        x = np.asarray(users, dtype=np.uint64) + np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_cases(cases: EvalCases, size: int | None, seed: int) -> EvalCases:
    """The cases of the ``size`` users with the smallest :func:`sample_keys` (all when ``size`` is None or not
    smaller), in their original order."""
    if size is None or size >= len(cases):
        return cases
    keys = sample_keys(cases.users, seed)
    rows = np.lexsort((cases.users, keys))[:size]
    return cases.take(np.sort(rows))


class CaseCollector:
    """Evaluation cases gathered shard by shard, each history capped at its last ``cap`` items so memory is
    users x cap: every case, or (``size``) the fixed seeded sample of :func:`sample_cases`. :meth:`cases`
    returns them in increasing user id."""

    def __init__(self, size: int | None = None, seed: int = 0, cap: int | None = None):
        self.size, self.seed, self.cap = size, seed, cap
        self._parts: list[EvalCases] = []
        self._held = 0
        self.seen = 0  # cases added, sampled or not

    def add(self, cases: EvalCases) -> None:
        if self.cap is not None:
            ts = cases.history_timestamps
            cases = EvalCases(cases.users, cases.history.tail(self.cap), cases.targets,
                              ts.tail(self.cap) if ts is not None else None)
        self._parts.append(cases)
        self._held += len(cases)
        self.seen += len(cases)
        if self.size is not None and self._held > 2 * self.size:  # prune now and then: at most 2 x size held
            self._parts = [sample_cases(concat_cases(self._parts), self.size, self.seed)]
            self._held = len(self._parts[0])

    def cases(self) -> EvalCases:
        both = sample_cases(concat_cases(self._parts), self.size, self.seed)
        return both.take(np.argsort(both.users, kind="stable"))


@dataclass
class ShardData:
    """One shard's training windows and what a run needs besides them."""

    windows: Jagged
    timestamps: Jagged | None
    split: Split | None


class WindowStream:
    """Batches of training windows over a shard source, in the lane order described in the module docstring.

    ``rank``/``world`` pick the lanes this process reads. Every process must see the same ``window_counts``
    (from :meth:`survey` on one of them), which fix the number of steps per epoch and every lane's position.
    """

    def __init__(self, source: ShardSource, *, lanes: int, batch_size: int, seed: int, max_len: int,
                 windows: str = "last", split: str = "loo", cuts: dict[str, float] | None = None, rank: int = 0,
                 world: int = 1, prefetch: bool = True):
        if batch_size % lanes:
            raise ConfigError(f"train.batch_size ({batch_size}) must be a multiple of train.stream.lanes ({lanes}): "
                              "every lane gives batch_size / lanes windows to each step")
        if world > lanes:
            raise ConfigError(f"train.stream.lanes ({lanes}) must be at least the number of processes ({world}): "
                              "each process reads whole lanes")
        self.source, self.lanes, self.lane_batch, self.seed = source, lanes, batch_size // lanes, seed
        self.max_len, self.windows, self.split, self.cuts = max_len, windows, split, cuts
        self.own = list(range(rank, lanes, world))
        self.prefetch = prefetch

    @property
    def n_shards(self) -> int:
        return int(self.source.n_shards)

    def shard(self, k: int) -> ShardData:
        """Shard ``k`` read, split per user and cut into windows."""
        split = split_shard(self.source.read_shard(k), self.split, self.cuts)
        windows, ts = training_windows(split, self.max_len, self.windows)
        return ShardData(windows, ts, split)

    def survey(self, visit=None, shards: list[int] | None = None) -> np.ndarray:
        """The number of training windows of every shard (a pass over ``shards``, default all; the others count
        0); ``visit(k, data)`` sees each shard's data on the way (evaluation cases, item counts)."""
        counts = np.zeros(self.n_shards, dtype=np.int64)
        for k in range(self.n_shards) if shards is None else shards:
            data = self.shard(k)
            counts[k] = len(data.windows)
            if visit is not None:
                visit(k, data)
        return counts

    def lane_order(self, lane: int, epoch: int) -> np.ndarray:
        """The shards of ``lane`` in the order ``epoch`` reads them."""
        mine = np.arange(lane, self.n_shards, self.lanes)
        return np.random.default_rng([self.seed, epoch, lane, 1]).permutation(mine)

    def _batches_per_shard(self, window_counts: np.ndarray) -> np.ndarray:
        return -(-np.asarray(window_counts, dtype=np.int64) // self.lane_batch)

    def steps_per_epoch(self, window_counts: np.ndarray) -> int:
        per_shard = self._batches_per_shard(window_counts)
        return max(int(per_shard[np.arange(j, self.n_shards, self.lanes)].sum()) for j in range(self.lanes))

    def position(self, epoch: int, step: int, window_counts: np.ndarray) -> dict[str, Any]:
        """Where every lane is after ``step`` global steps of ``epoch``: [shard index in its order, batch index]
        of its next batch (the index past its last shard once it is done)."""
        per_shard = self._batches_per_shard(window_counts)
        lanes = []
        for j in range(self.lanes):
            done = np.cumsum(per_shard[self.lane_order(j, epoch)])
            i = int(np.searchsorted(done, step, side="right"))
            lanes.append([i, int(step - (done[i - 1] if i else 0)) if i < len(done) else 0])
        return {"epoch": epoch, "step": step, "lanes": lanes}

    def epoch(self, epoch: int, window_counts: np.ndarray, start: dict[str, Any] | None = None
              ) -> Iterator[list[tuple[Jagged, Jagged | None]]]:
        """This process's part of every global step of ``epoch`` from ``start`` (a :meth:`position`): the batch
        (windows, their timestamps; jagged) of each of its lanes that still has one, in lane order (an empty
        list once all its lanes are done)."""
        step = 0 if start is None else int(start["step"])
        expected = self.position(epoch, step, window_counts)
        if start is not None and (start.get("epoch") != epoch or start.get("lanes") != expected["lanes"]):
            raise GenrecError(f"the saved data position {start} does not match this dataset and train.stream "
                              f"settings (expected {expected}); resume with the data and config the run started with")
        with ThreadPoolExecutor(max_workers=1) as pool:
            readers = [self._lane(j, epoch, *expected["lanes"][j], pool) for j in self.own]
            for _ in range(step, self.steps_per_epoch(window_counts)):
                yield [p for p in (next(r, None) for r in readers) if p is not None]

    def _lane(self, lane: int, epoch: int, shard_index: int, batch_index: int,
              pool: ThreadPoolExecutor) -> Iterator[tuple[Jagged, Jagged | None]]:
        order = self.lane_order(lane, epoch)
        pending: Future | None = None
        for i in range(shard_index, len(order)):
            data, batches = pending.result() if pending is not None else self._load(order[i], epoch)
            pending = pool.submit(self._load, order[i + 1], epoch) if self.prefetch and i + 1 < len(order) else None
            for rows in batches[batch_index if i == shard_index else 0:]:
                yield (data.windows.take(rows),
                       data.timestamps.take(rows) if data.timestamps is not None else None)
            data = batches = None  # one shard per lane in memory, plus the one read ahead

    def _load(self, k: int, epoch: int) -> tuple[ShardData, list[np.ndarray]]:
        data = self.shard(int(k))
        data.split = None  # training reads the windows only
        rng = np.random.default_rng([self.seed, epoch, int(k)])
        return data, epoch_batches(data.windows.lengths, self.lane_batch, rng)
