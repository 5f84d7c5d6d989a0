"""The prepared layout (format version 2): what the in-memory engine writes, PreparedDataset reading it whole
and shard by shard, per-shard splits equal to the global ones, and numpy-exact statistics from order statistics."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import (
    PreparedDataset,
    SequenceDataset,
    Split,
    leave_one_out,
    load_dataset,
    prepare,
    temporal_split,
)
from genrec.data.jagged import Jagged
from genrec.data.order_stats import length_stats, linear_quantile
from genrec.data.prepared import shard_of, write_sequence_dataset
from genrec.errors import ConfigError, DataError


def sample_dataset(n: int = 400, seed: int = 0, string_users: bool = True) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    cols = {"user": pa.array([f"u{u}" for u in users]) if string_users else pa.array(users),
            "item": pa.array(rng.integers(0, 60, n)),
            "timestamp": pa.array(rng.integers(0, 50, n)),  # many ties
            "value": pa.array(rng.random(n)),
            "event": pa.array(rng.choice(["click", "like"], n))}
    return prepare(pa.table(cols), name="sample", meta={"source": "generated"})


def write(ds: SequenceDataset, tmp_path, shards: int = 3) -> PreparedDataset:
    write_sequence_dataset(ds, tmp_path / "p", shards=shards, source="generated")
    return PreparedDataset.open(tmp_path / "p")


def assert_jagged_equal(a: Jagged | None, b: Jagged | None) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.values, b.values)


def assert_splits_equal(a: Split, b: Split) -> None:
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.train_users, b.train_users)
    assert_jagged_equal(a.train, b.train)
    assert_jagged_equal(a.train_timestamps, b.train_timestamps)
    for x, y in ((a.valid, b.valid), (a.test, b.test)):
        np.testing.assert_array_equal(x.users, y.users)
        np.testing.assert_array_equal(x.targets, y.targets)
        assert_jagged_equal(x.history, y.history)
        assert_jagged_equal(x.history_timestamps, y.history_timestamps)


def merge_shard_splits(splits: list[Split]) -> Split:
    """Shards' splits as one, rows by increasing user id (the global split's order)."""

    def jagged(parts: list[Jagged | None], order: np.ndarray) -> Jagged | None:
        if parts[0] is None:
            return None
        both = Jagged.from_lengths(np.concatenate([p.values for p in parts]),
                                   np.concatenate([p.lengths for p in parts]))
        return both.take(order)

    def cases(which: str):
        parts = [s.cases(which) for s in splits]
        users = np.concatenate([c.users for c in parts])
        order = np.argsort(users)
        return type(parts[0])(users[order], jagged([c.history for c in parts], order),
                              np.concatenate([c.targets for c in parts])[order],
                              jagged([c.history_timestamps for c in parts], order))

    users = np.concatenate([s.train_users for s in splits])
    order = np.argsort(users)
    return Split(splits[0].kind, users[order], jagged([s.train for s in splits], order), cases("valid"),
                 cases("test"), jagged([s.train_timestamps for s in splits], order))


def test_layout_and_manifest(tmp_path):
    ds = sample_dataset()
    p = write(ds, tmp_path)
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["format"] == "genrec-prepared" and m["format_version"] == 2 and m["engine"] == "memory"
    assert (m["users"], m["items"], m["interactions"], m["shards"]) == (ds.n_users, ds.n_items, ds.n_interactions, 3)
    assert m["columns"] == ["user_idx", "pos", "item_idx", "timestamp", "value", "event"]
    assert m["stats"] == json.loads(json.dumps(ds.stats()))
    ts = ds.timestamps.values
    assert m["temporal"] == {"valid_start": float(np.quantile(ts, 0.8)), "test_start": float(np.quantile(ts, 0.9))}
    users = pq.read_table(tmp_path / "p" / "users.parquet")
    assert users.schema.types == [pa.int64(), pa.string()]
    assert users.column("raw_id").to_pylist() == ds.users.raw.to_pylist()
    items = pq.read_table(tmp_path / "p" / "items.parquet")
    np.testing.assert_array_equal(items.column("count").to_numpy(),
                                  np.bincount(ds.sequences.values, minlength=ds.n_items + 1)[1:])
    assert p.item_counts()[0] == 0 and p.item_counts().sum() == ds.n_interactions
    # Every user's events sit in the shard its hash names, with positions 0..n-1.
    for k in range(3):
        for f in (tmp_path / "p" / "events" / f"shard={k}").glob("*.parquet"):
            t = pq.read_table(f)
            assert t.schema.field("pos").type == pa.int32()
            assert set(shard_of(t.column("user_idx").to_numpy(), 3).tolist()) == {k}


def test_shard_hash_is_the_documented_expression():
    u = np.array([1, 2, 3, 1000, 2**31], dtype=np.int64)
    expected = [((int(x) * 2654435761) % 2**32) % 7 for x in u]
    assert shard_of(u, 7).tolist() == expected


def test_to_memory_round_trip(tmp_path):
    ds = sample_dataset()
    back = write(ds, tmp_path).to_memory()
    assert back.users.raw.equals(ds.users.raw) and back.items.raw.equals(ds.items.raw)
    assert_jagged_equal(back.sequences, ds.sequences)
    assert_jagged_equal(back.timestamps, ds.timestamps)
    np.testing.assert_array_equal(back.values, ds.values)
    assert back.events.equals(ds.events)
    assert back.stats() == ds.stats()
    # Every loader reads the new layout.
    assert load_dataset(tmp_path / "p").sequences.values.tolist() == ds.sequences.values.tolist()
    assert SequenceDataset.load(tmp_path / "p").n_interactions == ds.n_interactions


def test_old_layout_still_loads(tmp_path):
    ds = sample_dataset(string_users=False)
    ds.save(tmp_path / "v1")
    back = load_dataset(tmp_path / "v1")
    assert_jagged_equal(back.sequences, ds.sequences)
    with pytest.raises(DataError, match="manifest.json"):
        PreparedDataset.open(tmp_path / "v1")


def test_shards_hold_their_users_and_split_like_the_whole(tmp_path):
    ds = sample_dataset(n=600, seed=3)
    p = write(ds, tmp_path, shards=4)
    shards = list(p.iter_shards())
    ids = np.concatenate([s.user_ids for s in shards])
    assert sorted(ids.tolist()) == list(range(1, ds.n_users + 1))
    for s in shards:
        assert np.all(np.diff(s.user_ids) > 0) and s.n_items == ds.n_items
        for row, u in enumerate(s.user_ids):
            np.testing.assert_array_equal(s.sequences.row(row), ds.sequences.row(u - 1))
            np.testing.assert_array_equal(s.timestamps.row(row), ds.timestamps.row(u - 1))
    assert_splits_equal(merge_shard_splits([s.split("loo") for s in shards]), leave_one_out(ds))
    assert_splits_equal(merge_shard_splits([s.split("temporal") for s in shards]), temporal_split(ds))
    with pytest.raises(ConfigError, match="out of range"):
        p.read_shard(4)


def test_corrupt_positions_are_reported(tmp_path):
    p = write(sample_dataset(), tmp_path, shards=1)
    f = next((tmp_path / "p" / "events" / "shard=0").glob("*.parquet"))
    t = pq.read_table(f)
    pos = t.column("pos").to_numpy().copy()
    pos[0] += 5
    pq.write_table(t.set_column(1, "pos", pa.array(pos, pa.int32())), f)
    with pytest.raises(DataError, match="positions"):
        p.read_shard(0)


def test_unsupported_version(tmp_path):
    write(sample_dataset(), tmp_path)
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    (tmp_path / "p" / "manifest.json").write_text(json.dumps({**m, "format_version": 3}))
    with pytest.raises(DataError, match="version 3"):
        PreparedDataset.open(tmp_path / "p")


# --- statistics from order statistics equal numpy's, bit for bit --------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-10**12, 10**12), min_size=1, max_size=60), st.floats(0, 1))
def test_linear_quantile_matches_numpy_ints(values, q):
    x = np.sort(np.array(values, dtype=np.int64))
    assert linear_quantile(len(x), q, lambda k: x[k], np.int64) == float(np.quantile(x, q))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=60),
       st.sampled_from([0.8, 1 - 0.1 - 0.1, 0.9, 0.5, 0.99, 0.0, 1.0]))
def test_linear_quantile_matches_numpy_floats(values, q):
    x = np.sort(np.array(values, dtype=np.float64))
    assert linear_quantile(len(x), q, lambda k: x[k], np.float64) == float(np.quantile(x, q))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=80))
def test_length_stats_match_dataset_stats(lengths):
    lengths = np.array(lengths, dtype=np.int64)
    hist = list(zip(*np.unique(lengths, return_counts=True), strict=True))
    # the expressions of SequenceDataset.stats()
    assert length_stats(hist) == {
        "min": int(lengths.min()), "mean": float(lengths.mean()), "median": float(np.median(lengths)),
        "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)), "max": int(lengths.max())}
