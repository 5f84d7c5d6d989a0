"""Splits without leakage: leave-one-out and a global temporal split.

Training inputs only ever hold interactions that happened before the evaluated ones. Evaluation cases
carry each user's full history up to (not including) the target; the test history of leave-one-out
includes the validation item, which is an input, never a training label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from genrec.data.dataset import SequenceDataset
from genrec.data.jagged import Jagged
from genrec.errors import ConfigError

SplitKind = Literal["loo", "temporal"]


@dataclass(frozen=True)
class EvalCases:
    """One next-item prediction per row: ``history`` (oldest first) -> ``targets``."""

    users: np.ndarray  # dense user ids
    history: Jagged
    targets: np.ndarray
    history_timestamps: Jagged | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, rows: np.ndarray) -> EvalCases:
        ts = self.history_timestamps.take(rows) if self.history_timestamps is not None else None
        return EvalCases(self.users[rows], self.history.take(rows), self.targets[rows], ts)

    def subset(self, mask: np.ndarray) -> EvalCases:
        """The cases where boolean ``mask`` (one entry per case) is true, in their order, e.g.
        ``split.test.subset(split.test_cold)`` to rank only cold-target cases with ``rank_cases``/``evaluate``."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (len(self),):
            raise ConfigError(f"subset mask must be a boolean array of shape ({len(self)},) (one entry per case), "
                              f"got dtype {mask.dtype} and shape {mask.shape}")
        return self.take(np.flatnonzero(mask))


@dataclass(frozen=True)
class Split:
    kind: str
    train_users: np.ndarray  # dense user ids of the rows of ``train``
    train: Jagged  # training sequences (only interactions before every evaluated one)
    valid: EvalCases
    test: EvalCases
    train_timestamps: Jagged | None = None
    info: dict | None = None

    def cases(self, which: str) -> EvalCases:
        if which not in ("valid", "test"):
            raise ConfigError(f"split part must be 'valid' or 'test', got {which!r}")
        return self.valid if which == "valid" else self.test


def leave_one_out(ds: SequenceDataset, min_length: int = 3) -> Split:
    """Last item test, second-to-last validation, the rest train (users shorter than ``min_length``
    only train, as in SASRec)."""
    seq, lengths = ds.sequences, ds.sequences.lengths
    users = np.arange(1, ds.n_users + 1, dtype=np.int64)
    evaluated = lengths >= min_length
    drop = np.where(evaluated, 2, 0)
    train = seq.head(drop)
    train_ts = ds.timestamps.head(drop) if ds.timestamps is not None else None
    ev = np.flatnonzero(evaluated)
    sub = seq.take(ev)
    sub_ts = ds.timestamps.take(ev) if ds.timestamps is not None else None
    valid = EvalCases(users[ev], sub.head(2), sub.at(2), sub_ts.head(2) if sub_ts is not None else None)
    test = EvalCases(users[ev], sub.head(1), sub.at(1), sub_ts.head(1) if sub_ts is not None else None)
    keep = train.lengths > 0
    return Split("loo", users[keep], train.take(np.flatnonzero(keep)), valid, test,
                 train_ts.take(np.flatnonzero(keep)) if train_ts is not None else None,
                 {"min_length": min_length, "evaluated_users": int(evaluated.sum())})


def with_validation_in_train(split: Split) -> Split:
    """The split a refit trains on (``train.refit``): each evaluated user's training sequence gains their
    validation item (it becomes their test history, everything but the test item); other users' rows are
    unchanged, and so are the validation and test cases."""
    keep = np.flatnonzero(~np.isin(split.train_users, split.test.users))
    users = np.concatenate([split.test.users, split.train_users[keep]])
    order = np.argsort(users, kind="stable")

    def joined(tested: Jagged | None, train: Jagged | None) -> Jagged | None:
        if tested is None or train is None:
            return None
        rest = train.take(keep)
        both = Jagged.from_lengths(np.concatenate([tested.values, rest.values]),
                                   np.concatenate([tested.lengths, rest.lengths]))
        return both.take(order)

    return Split(split.kind, users[order], joined(split.test.history, split.train), split.valid, split.test,
                 joined(split.test.history_timestamps, split.train_timestamps),
                 {**(split.info or {}), "validation_in_train": True})


@dataclass(frozen=True, kw_only=True)
class ColdStartSplit(Split):
    """A leave-one-out split with some items held out of training entirely (see :func:`cold_start_split`)."""

    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted dense ids
    valid_cold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # valid target is held out
    test_cold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # test target is held out


def cold_start_split(ds: SequenceDataset, fraction: float = 0.05, seed: int = 0, *,
                     min_length: int = 3) -> ColdStartSplit:
    """Leave-one-out with ``round(fraction * n_items)`` items held out of training entirely.

    The held-out ("cold") items are drawn uniformly at random (not by popularity) from the dense ids 1..n_items
    with ``numpy.random.default_rng(seed)``, so the same dataset and seed always give the same items. They are
    removed from every training sequence (rows left empty are dropped) and from the histories of every
    validation and test case (timestamps stay aligned), so a model fit on ``train`` never sees one, as input
    or as target. Every evaluation case of :func:`leave_one_out` is kept with its target, cold or not;
    ``valid_cold`` / ``test_cold`` mark the cases whose target is held out (rank those with
    ``split.test.subset(split.test_cold)``). A case's history may become empty when all of it was cold.
    """
    n_items = ds.n_items
    if not 0 < fraction <= 0.5:
        raise ConfigError(f"cold-start fraction must be in (0, 0.5], got {fraction}")
    n_cold = round(fraction * n_items)
    if n_cold < 1:
        raise ConfigError(f"cold-start fraction {fraction} of {n_items} items holds out no item; use a larger "
                          "fraction")
    rng = np.random.default_rng(seed)
    cold_items = np.sort(rng.choice(np.arange(1, n_items + 1, dtype=np.int64), size=n_cold, replace=False))
    base = leave_one_out(ds, min_length=min_length)
    is_cold = np.zeros(n_items + 1, dtype=bool)
    is_cold[cold_items] = True
    valid_cold, test_cold = is_cold[base.valid.targets], is_cold[base.test.targets]
    if not test_cold.any():
        raise ConfigError(f"no test case has a held-out target (fraction={fraction}, seed={seed}, {n_cold} of "
                          f"{n_items} items held out, {len(base.test)} test cases); use a larger fraction or "
                          "another seed")
    train_keep = ~is_cold[base.train.values]
    train = _filter_values(base.train, train_keep)
    train_ts = _filter_values(base.train_timestamps, train_keep) if base.train_timestamps is not None else None
    rows = np.flatnonzero(train.lengths > 0)

    def strip(cases: EvalCases) -> EvalCases:
        keep = ~is_cold[cases.history.values]
        ts = _filter_values(cases.history_timestamps, keep) if cases.history_timestamps is not None else None
        return EvalCases(cases.users, _filter_values(cases.history, keep), cases.targets, ts)

    valid, test = strip(base.valid), strip(base.test)
    info = {**(base.info or {}), "fraction": fraction, "seed": seed, "cold_items": n_cold, "choice": "uniform",
            "valid_cold_cases": int(valid_cold.sum()), "test_cold_cases": int(test_cold.sum()),
            "train_interactions_removed": int((~train_keep).sum()),
            "empty_test_histories": int((test.history.lengths == 0).sum())}
    return ColdStartSplit("cold_start", base.train_users[rows], train.take(rows), valid, test,
                          train_ts.take(rows) if train_ts is not None else None, info,
                          cold_items=cold_items, valid_cold=valid_cold, test_cold=test_cold)


def _filter_values(j: Jagged, keep: np.ndarray) -> Jagged:
    """Every row of ``j`` with only the values where ``keep`` (aligned with ``j.values``) is true."""
    return Jagged.from_lengths(j.values[keep], np.bincount(j.row_ids()[keep], minlength=len(j)).astype(np.int64))


def temporal_split(ds: SequenceDataset, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                   valid_start: float | None = None, test_start: float | None = None) -> Split:
    """A global time cut: train before ``valid_start``; each user's first interaction in
    [valid_start, test_start) is a validation target and first at/after ``test_start`` a test target.

    Cut times default to the quantiles that leave ``valid_fraction`` and ``test_fraction`` of all
    interactions after them.
    """
    if ds.timestamps is None:
        raise ConfigError(f"dataset '{ds.name}' has no timestamps; the temporal split needs them (use 'loo')")
    ts = ds.timestamps.values
    if test_start is None:
        test_start = float(np.quantile(ts, 1 - test_fraction))
    if valid_start is None:
        valid_start = float(np.quantile(ts, 1 - test_fraction - valid_fraction))
    if not valid_start <= test_start:
        raise ConfigError(f"valid_start ({valid_start}) must not be after test_start ({test_start})")
    seq, tsj = ds.sequences, ds.timestamps
    users = np.arange(1, ds.n_users + 1, dtype=np.int64)
    # Sequences are time-sorted, so the count of earlier interactions is a position per row.
    n_before_valid = _count_before(tsj, valid_start)
    n_before_test = _count_before(tsj, test_start)
    train = seq.head(seq.lengths - n_before_valid)
    train_ts = tsj.head(seq.lengths - n_before_valid)

    def cases(start_pos: np.ndarray, end_pos: np.ndarray) -> EvalCases:
        rows = np.flatnonzero((end_pos > start_pos) & (start_pos > 0))
        pos = start_pos[rows]
        return EvalCases(users[rows], seq.take(rows).head(seq.lengths[rows] - pos),
                         seq.values[seq.offsets[rows] + pos], tsj.take(rows).head(seq.lengths[rows] - pos))

    keep = np.flatnonzero(train.lengths > 0)
    return Split("temporal", users[keep], train.take(keep),
                 cases(n_before_valid, n_before_test), cases(n_before_test, seq.lengths), train_ts.take(keep),
                 {"valid_start": valid_start, "test_start": test_start})


def _count_before(ts: Jagged, cut: float) -> np.ndarray:
    return np.bincount(ts.row_ids()[ts.values < cut], minlength=len(ts)).astype(np.int64)


def make_split(ds: SequenceDataset, kind: str = "loo", **kwargs) -> Split:
    if kind == "loo":
        return leave_one_out(ds, **kwargs)
    if kind == "temporal":
        return temporal_split(ds, **kwargs)
    if kind == "cold":
        return cold_start_split(ds, **kwargs)
    raise ConfigError(f"unknown split {kind!r}; expected 'loo', 'temporal' or 'cold'")
