"""Leave-one-out and temporal splits: exact contents, and no leakage from evaluated interactions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import EvalCases, Jagged, SequenceDataset, leave_one_out, make_split, prepare, temporal_split
from genrec.errors import ConfigError

SETTINGS = settings(max_examples=50, deadline=None)


def random_dataset(seed: int, n_users: int = 30, n_items: int = 25, max_len: int = 12,
                   unique_ts: bool = True) -> SequenceDataset:
    """Users with 1..max_len interactions; with ``unique_ts`` every interaction has its own timestamp, so a
    (user, timestamp) pair identifies one interaction."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n_users)
    users = np.repeat(np.arange(n_users) * 7 + 3, lengths)
    items = rng.integers(0, n_items, size=len(users))
    ts = rng.permutation(len(users)) if unique_ts else rng.integers(0, 20, size=len(users))
    perm = rng.permutation(len(users))  # rows in no particular order; prepare sorts by time
    return prepare(pa.table({"user": users[perm], "item": items[perm], "timestamp": ts[perm]}), name=f"r{seed}")


def dataset_from_draw(data) -> SequenceDataset:
    n_users = data.draw(st.integers(1, 8))
    rows = [data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=7)) for _ in range(n_users)]
    users = [u for u, r in enumerate(rows) for _ in r]
    items = [i for r in rows for i in r]
    ts = data.draw(st.lists(st.integers(0, 30), min_size=len(items), max_size=len(items)))
    return prepare(pa.table({"user": users, "item": items, "timestamp": ts}), name="drawn")


# --- leave-one-out -------------------------------------------------------------------------------------

def check_loo(ds: SequenceDataset, min_length: int = 3) -> None:
    split = leave_one_out(ds, min_length=min_length)
    assert split.kind == "loo"
    seqs = ds.sequences.to_lists()
    tss = ds.timestamps.to_lists() if ds.timestamps is not None else None
    train = dict(zip(split.train_users.tolist(), split.train.to_lists(), strict=True))
    train_ts = (dict(zip(split.train_users.tolist(), split.train_timestamps.to_lists(), strict=True))
                if tss is not None else None)
    evaluated = [u for u in range(1, ds.n_users + 1) if len(seqs[u - 1]) >= min_length]
    assert split.valid.users.tolist() == evaluated and split.test.users.tolist() == evaluated
    assert split.info["evaluated_users"] == len(evaluated)
    for u in range(1, ds.n_users + 1):
        seq = seqs[u - 1]
        expected_train = seq[:-2] if len(seq) >= min_length else seq
        assert train.get(u, []) == expected_train
        if tss is not None and expected_train:
            assert train_ts[u] == (tss[u - 1][:-2] if len(seq) >= min_length else tss[u - 1])
    assert (split.train.lengths > 0).all()  # no empty training rows
    for part, k in ((split.valid, 2), (split.test, 1)):
        assert len(part) == len(evaluated)
        for row, u in enumerate(part.users.tolist()):
            seq = seqs[u - 1]
            assert part.targets[row] == seq[-k]
            assert part.history.row(row).tolist() == seq[:-k]
            if tss is not None:
                assert part.history_timestamps.row(row).tolist() == tss[u - 1][:-k]


@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_random(seed):
    check_loo(random_dataset(seed))


@SETTINGS
@given(st.data(), st.integers(2, 5))
def test_leave_one_out_property(data, min_length):
    check_loo(dataset_from_draw(data), min_length)


def test_leave_one_out_example_and_short_users_only_train():
    ds = prepare(pa.table({"user": [1, 1, 1, 1, 2, 2, 3], "item": [10, 11, 12, 13, 10, 14, 15]}), name="t")
    split = leave_one_out(ds)
    assert split.train_users.tolist() == [1, 2, 3]
    assert split.train.to_lists() == [[1, 2], [1, 5], [6]]
    assert split.valid.users.tolist() == [1] and split.valid.targets.tolist() == [3]
    assert split.valid.history.to_lists() == [[1, 2]]
    assert split.test.targets.tolist() == [4] and split.test.history.to_lists() == [[1, 2, 3]]
    assert split.train_timestamps is None and split.valid.history_timestamps is None


@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_no_leakage(seed):
    ds = random_dataset(seed)  # unique timestamps: (user, timestamp) identifies an interaction
    split = leave_one_out(ds)
    train_inputs = {(u, t) for u, row in zip(split.train_users.tolist(), split.train_timestamps.to_lists(),
                                             strict=True) for t in row}
    train_max = {u: max(row) for u, row in zip(split.train_users.tolist(), split.train_timestamps.to_lists(),
                                               strict=True)}
    positions = {}
    for part, k in (("valid", 2), ("test", 1)):
        cases = split.cases(part)
        for row, u in enumerate(cases.users.tolist()):
            target_ts = ds.timestamps.row(u - 1)[-k]
            assert (u, target_ts) not in train_inputs, f"{part} target of user {u} is a training input"
            assert target_ts not in cases.history_timestamps.row(row).tolist()
            assert all(t < target_ts for t in cases.history_timestamps.row(row).tolist())
            positions.setdefault(u, {})[part] = ds.sequences.lengths[u - 1] - k
    for u, pos in positions.items():
        # every training interaction of an evaluated user precedes its validation target
        assert train_max[u] < ds.timestamps.row(u - 1)[pos["valid"]]
        assert pos["valid"] < pos["test"]
    assert split.valid.history_timestamps is not None


# --- temporal ------------------------------------------------------------------------------------------

def check_temporal(ds: SequenceDataset, valid_start=None, test_start=None, **kw) -> None:
    split = temporal_split(ds, valid_start=valid_start, test_start=test_start, **kw)
    assert split.kind == "temporal"
    vs, te = split.info["valid_start"], split.info["test_start"]
    assert vs <= te
    seqs, tss = ds.sequences.to_lists(), ds.timestamps.to_lists()
    # training: exactly each user's interactions before valid_start, nothing at or after it
    expected_train = {u: [i for i, t in zip(seqs[u - 1], tss[u - 1], strict=True) if t < vs]
                      for u in range(1, ds.n_users + 1)}
    got_train = dict(zip(split.train_users.tolist(), split.train.to_lists(), strict=True))
    assert got_train == {u: r for u, r in expected_train.items() if r}
    for row in split.train_timestamps.to_lists():
        assert all(t < vs for t in row)
    for part, lo, hi in ((split.valid, vs, te), (split.test, te, np.inf)):
        expected_users = []
        for u in range(1, ds.n_users + 1):
            before = [t for t in tss[u - 1] if t < lo]
            inside = [t for t in tss[u - 1] if lo <= t < hi]
            if before and inside:
                expected_users.append(u)
        assert part.users.tolist() == expected_users
        for row, u in enumerate(part.users.tolist()):
            n_before = sum(t < lo for t in tss[u - 1])
            target_ts = tss[u - 1][n_before]
            assert lo <= target_ts < hi
            assert part.targets[row] == seqs[u - 1][n_before]  # first interaction at/after the cut
            assert part.history.row(row).tolist() == seqs[u - 1][:n_before]
            hist_ts = part.history_timestamps.row(row).tolist()
            assert hist_ts == tss[u - 1][:n_before] and all(t < lo for t in hist_ts)


@pytest.mark.parametrize("seed", range(3))
def test_temporal_split_random_default_cuts(seed):
    ds = random_dataset(seed, unique_ts=seed != 1)
    check_temporal(ds)
    split = temporal_split(ds, valid_fraction=0.2, test_fraction=0.1)
    ts = ds.timestamps.values
    assert np.mean(ts >= split.info["test_start"]) == pytest.approx(0.1, abs=0.05)
    assert np.mean(ts >= split.info["valid_start"]) == pytest.approx(0.3, abs=0.05)


@SETTINGS
@given(st.data())
def test_temporal_split_property(data):
    ds = dataset_from_draw(data)
    vs = data.draw(st.integers(0, 31))
    te = data.draw(st.integers(vs, 32))
    check_temporal(ds, valid_start=vs, test_start=te)


def test_temporal_example():
    t = pa.table({"user": ["a", "a", "a", "a", "b", "b", "c"], "item": [1, 2, 3, 4, 1, 5, 6],
                  "timestamp": [1, 5, 7, 9, 8, 2, 1]})
    split = temporal_split(prepare(t, name="t"), valid_start=5, test_start=8)
    assert split.train_users.tolist() == [1, 2, 3] and split.train.to_lists() == [[1], [5], [6]]
    assert split.valid.users.tolist() == [1] and split.valid.targets.tolist() == [2]  # a's item 2 at t=5
    assert split.valid.history.to_lists() == [[1]]
    assert split.test.users.tolist() == [1, 2] and split.test.targets.tolist() == [4, 1]
    assert split.test.history.to_lists() == [[1, 2, 3], [5]]
    assert split.test.history_timestamps.to_lists() == [[1, 5, 7], [2]]


def test_temporal_without_timestamps_is_config_error():
    ds = prepare(pa.table({"user": [1, 1, 1], "item": [1, 2, 3]}), name="nots")
    with pytest.raises(ConfigError, match="nots.*timestamps"):
        temporal_split(ds)
    with pytest.raises(ConfigError, match="timestamps"):
        make_split(ds, "temporal")


def test_temporal_cut_order_is_checked():
    with pytest.raises(ConfigError, match="valid_start"):
        temporal_split(random_dataset(0), valid_start=10, test_start=5)


# --- make_split, cases, EvalCases.take -------------------------------------------------------------------

def test_make_split_dispatch():
    ds = random_dataset(0)
    assert make_split(ds).kind == "loo"
    assert make_split(ds, "loo", min_length=4).info["min_length"] == 4
    assert make_split(ds, "temporal", valid_fraction=0.2).kind == "temporal"
    with pytest.raises(ConfigError, match="'random'"):
        make_split(ds, "random")
    with pytest.raises(ConfigError, match="'train'"):
        make_split(ds).cases("train")


def test_eval_cases_take():
    cases = EvalCases(np.array([1, 2, 3]), Jagged.from_lists([[1], [2, 3], []]), np.array([4, 5, 6]),
                      Jagged.from_lists([[10], [20, 30], []]))
    sub = cases.take(np.array([2, 0]))
    assert len(sub) == 2
    assert sub.users.tolist() == [3, 1] and sub.targets.tolist() == [6, 4]
    assert sub.history.to_lists() == [[], [1]] and sub.history_timestamps.to_lists() == [[], [10]]
    no_ts = EvalCases(cases.users, cases.history, cases.targets).take(np.array([1]))
    assert no_ts.history_timestamps is None and no_ts.history.to_lists() == [[2, 3]]


def test_run_config_cut_times_reach_the_split():
    from genrec.train.config import RunConfig
    from genrec.train.loop import run_split

    ds = random_dataset(3)
    ts = ds.timestamps.values
    cuts = {"valid_start": float(np.quantile(ts, 0.5)), "test_start": float(np.quantile(ts, 0.7))}
    cfg = RunConfig.model_validate({"dataset": "x", "split": "temporal", "model": {"name": "sasrec"},
                                    "temporal": cuts})
    split = run_split(cfg, ds)
    assert split.info == cuts
    default = run_split(RunConfig.model_validate({"dataset": "x", "split": "temporal", "model": {"name": "sasrec"}}),
                        ds)
    assert default.info["test_start"] == pytest.approx(float(np.quantile(ts, 0.9)))
