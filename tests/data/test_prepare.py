"""prepare(): chronological order, dense ids, dedup, k-core; Vocab; save/load round trip."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import SequenceDataset, Vocab, load_dataset, prepare
from genrec.errors import DataError

SETTINGS = settings(max_examples=50, deadline=None)


def table(users, items, timestamps=None, **extra) -> pa.Table:
    cols = {"user": users, "item": items}
    if timestamps is not None:
        cols["timestamp"] = timestamps
    cols.update(extra)
    return pa.table(cols)


def ref_prepare(users, items, timestamps=None, dedup=False):
    """Plain-Python reference: (user vocab, item vocab, per-user raw item sequences, per-user timestamps)."""
    rows = list(range(len(users)))
    if timestamps is not None:
        rows.sort(key=lambda r: (timestamps[r], r))
    if dedup:
        seen, kept = set(), []
        for r in rows:
            if (users[r], items[r]) not in seen:
                seen.add((users[r], items[r]))
                kept.append(r)
        rows = kept
    survivors = sorted(rows)
    user_vocab = list(dict.fromkeys(users[r] for r in survivors))
    item_vocab = list(dict.fromkeys(items[r] for r in survivors))
    seqs = {u: [items[r] for r in rows if users[r] == u] for u in user_vocab}
    ts = {u: [timestamps[r] for r in rows if users[r] == u] for u in user_vocab} if timestamps is not None else None
    return user_vocab, item_vocab, seqs, ts


def check_against_reference(ds: SequenceDataset, users, items, timestamps=None, dedup=False):
    user_vocab, item_vocab, seqs, ts = ref_prepare(users, items, timestamps, dedup)
    assert ds.users.raw.to_pylist() == user_vocab
    assert ds.items.raw.to_pylist() == item_vocab
    assert len(ds.sequences) == len(user_vocab)
    for u_dense, u_raw in enumerate(user_vocab, start=1):
        row = ds.sequences.row(u_dense - 1)
        assert ds.items.decode(row) == seqs[u_raw]
        assert row.min() >= 1  # 0 is padding
        if ts is not None:
            assert ds.timestamps.row(u_dense - 1).tolist() == ts[u_raw]


# --- ordering and ids ----------------------------------------------------------------------------------

def test_chronological_with_stable_ties():
    users = ["u", "v", "u", "u", "u", "v"]
    items = ["a", "b", "c", "d", "e", "a"]
    ts = [5, 1, 3, 3, 1, 1]
    ds = prepare(table(users, items, ts), name="t")
    assert ds.users.raw.to_pylist() == ["u", "v"]
    assert ds.items.raw.to_pylist() == ["a", "b", "c", "d", "e"]
    # u: e(1) c(3) d(3, after c by row order) a(5); v: b(1) a(1)
    assert [ds.items.decode(r) for r in ds.sequences.to_lists()] == [["e", "c", "d", "a"], ["b", "a"]]
    assert ds.timestamps.to_lists() == [[1, 3, 3, 5], [1, 1]]
    check_against_reference(ds, users, items, ts)


def test_without_timestamps_keeps_row_order():
    users, items = [3, 1, 3, 2, 1], [30, 10, 20, 30, 40]
    ds = prepare(table(users, items), name="t")
    assert ds.timestamps is None
    assert ds.users.raw.to_pylist() == [3, 1, 2]
    assert ds.items.raw.to_pylist() == [30, 10, 20, 40]
    assert ds.sequences.to_lists() == [[1, 3], [2, 4], [1]]
    check_against_reference(ds, users, items)


def test_dense_ids_follow_first_appearance_not_time():
    ds = prepare(table(["late", "early"], ["x", "y"], [10, 1]), name="t")
    assert ds.users.raw.to_pylist() == ["late", "early"]
    assert ds.items.raw.to_pylist() == ["x", "y"]
    assert ds.sequences.to_lists() == [[1], [2]]


def test_dedup_keeps_first_occurrence():
    users = ["u", "u", "u", "v", "u"]
    items = ["a", "b", "a", "a", "b"]
    ts = [2, 1, 1, 0, 3]
    ds = prepare(table(users, items, ts), name="t", dedup=True)
    # chronologically u: b(1), a(1), a(2) dropped, b(3) dropped
    assert [ds.items.decode(r) for r in ds.sequences.to_lists()] == [["b", "a"], ["a"]]
    assert ds.timestamps.to_lists() == [[1, 1], [0]]
    assert ds.meta["dedup"] is True
    no_ts = prepare(table(users, items), name="t", dedup=True)
    assert [no_ts.items.decode(r) for r in no_ts.sequences.to_lists()] == [["a", "b"], ["a"]]


def test_side_columns_follow_their_rows():
    t = table([1, 2, 1], [7, 8, 9], [2, 0, 1], value=[0.5, 1.5, 2.5], event=["x", "y", "z"])
    ds = prepare(t, name="t")
    assert ds.sequences.to_lists() == [[3, 1], [2]]  # items 7->1, 8->2, 9->3
    assert ds.values.tolist() == [2.5, 0.5, 1.5]
    assert ds.events.to_pylist() == ["z", "x", "y"]


def test_empty_table_and_nothing_left():
    with pytest.raises(DataError, match="empty"):
        prepare(table(pa.array([], pa.int64()), pa.array([], pa.int64())), name="t")
    with pytest.raises(DataError, match="kcore=5"):
        prepare(table([1, 2], [1, 2]), name="t", kcore=5)


@SETTINGS
@given(st.data())
def test_prepare_matches_reference(data):
    n = data.draw(st.integers(1, 40))
    users = data.draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=n, max_size=n))
    items = data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    ts = data.draw(st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    dedup = data.draw(st.booleans())
    ds = prepare(table(users, items, ts), name="t", dedup=dedup)
    check_against_reference(ds, users, items, ts, dedup)
    assert ds.n_interactions == sum(len(r) for r in ds.sequences.to_lists())


# --- k-core --------------------------------------------------------------------------------------------

def test_kcore_example():
    # item 'z' has one interaction; dropping it leaves user 'w' with one, so 'w' goes too
    users = ["u", "u", "v", "v", "w", "w"]
    items = ["x", "y", "x", "y", "x", "z"]
    ds = prepare(table(users, items), name="t", kcore=2)
    assert ds.users.raw.to_pylist() == ["u", "v"]
    assert ds.items.raw.to_pylist() == ["x", "y"]
    assert ds.meta["kcore"] == 2


@SETTINGS
@given(st.data())
def test_kcore_property(data):
    n = data.draw(st.integers(1, 60))
    users = data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    items = data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    k = data.draw(st.integers(1, 4))
    try:
        ds = prepare(table(users, items), name="t", kcore=k)
    except DataError:
        ref_left = _ref_kcore(users, items, k)
        assert not ref_left
        return
    assert ds.sequences.lengths.min() >= k
    assert np.bincount(ds.sequences.values)[1:].min() >= k
    assert len(np.bincount(ds.sequences.values)) == ds.n_items + 1
    # and it is the maximal such subset: same survivors as the plain-Python fixed point
    left = _ref_kcore(users, items, k)
    assert sorted(left) == sorted(zip(ds.users.decode(ds.sequences.row_ids() + 1),
                                      ds.items.decode(ds.sequences.values), strict=True))


def _ref_kcore(users, items, k):
    pairs = list(zip(users, items, strict=True))
    while True:
        uc, ic = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        kept = [(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


# --- Vocab ---------------------------------------------------------------------------------------------

def test_vocab_encode_decode():
    v = Vocab(pa.array(["a", "b", "c"]))
    assert len(v) == 3
    assert v.encode(["c", "a", "zzz"]).tolist() == [3, 1, -1]
    assert v.encode(["zzz"], missing=0).tolist() == [0]
    assert v.decode(np.array([2, 3])) == ["b", "c"]
    ints = Vocab(pa.array([10, 20], pa.int64()))
    assert ints.encode([20, 10, 30]).tolist() == [2, 1, -1]
    assert ints.encode(pa.array(["x"])).tolist() == [-1]  # a raw id of another type is unknown
    assert ints.encode(pa.array([20], pa.int32())).tolist() == [2]


# --- catalog, stats, titles ----------------------------------------------------------------------------

def test_catalog_join_keeps_used_items_once():
    items = pa.table({"item": ["b", "zz", "a", "b"], "title": ["Bee", "unused", None, "dup"]})
    ds = prepare(table(["u", "u"], ["a", "b"]), name="t", items=items)
    assert ds.item_table.column("item_idx").to_pylist() == [2, 1]
    assert ds.item_table.column("title").to_pylist() == ["Bee", None]
    assert ds.item_titles() == ["", "", "Bee"]


def test_item_titles_none_without_title_column():
    ds = prepare(table(["u"], ["a"]), name="t", items=pa.table({"item": ["a"], "name": ["A"]}))
    assert ds.item_titles() is None
    assert prepare(table(["u"], ["a"]), name="t").item_titles() is None


def test_stats():
    ds = prepare(table(["u", "u", "u", "v"], ["a", "b", "c", "a"], [1, 2, 3, 4]), name="t")
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (2, 3, 4)
    assert s["density"] == pytest.approx(4 / 6)
    assert s["has_timestamps"] and not s["has_item_table"]
    assert s["sequence_length"]["min"] == 1 and s["sequence_length"]["max"] == 3
    json.dumps(s)


# --- save / load ---------------------------------------------------------------------------------------

def assert_same(a: SequenceDataset, b: SequenceDataset):
    assert a.name == b.name
    assert a.users.raw.equals(b.users.raw) and a.items.raw.equals(b.items.raw)
    assert a.sequences.to_lists() == b.sequences.to_lists()
    assert np.array_equal(a.sequences.offsets, b.sequences.offsets)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        assert a.timestamps.to_lists() == b.timestamps.to_lists()
    assert (a.values is None) == (b.values is None)
    if a.values is not None:
        assert a.values.tolist() == b.values.tolist()
    assert (a.events is None) == (b.events is None)
    if a.events is not None:
        assert a.events.to_pylist() == b.events.to_pylist()
    assert (a.item_table is None) == (b.item_table is None)
    if a.item_table is not None:
        assert a.item_table.equals(b.item_table)
    assert a.meta == b.meta


@pytest.mark.parametrize("full", [True, False])
def test_save_load_round_trip(tmp_path, full):
    if full:
        t = table(["u", "v", "u", "w"], [5, 6, 7, 5], [3, 1, 2, 9], value=[1.0, 2.0, 3.0, 4.0],
                  event=["a", "b", "c", "d"])
        items = pa.table({"item": [5, 6, 7], "title": ["five", "six", "seven"]})
    else:
        t, items = table([1, 2, 1], ["x", "y", "x"]), None
    ds = prepare(t, name="rt", items=items, meta={"source": "test"})
    folder = ds.save(tmp_path / "prepared")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["dataset.json", "interactions.parquet", "users.parquet", "items.parquet"] + (["catalog.parquet"] * full))
    back = SequenceDataset.load(folder)
    assert_same(ds, back)
    assert back.stats() == ds.stats()
    assert_same(ds, load_dataset(folder))  # a prepared folder is a valid load_dataset argument
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_load_rejects_non_dataset_and_wrong_version(tmp_path):
    with pytest.raises(DataError, match="dataset.json"):
        SequenceDataset.load(tmp_path)
    ds = prepare(table([1], [1]), name="t")
    folder = ds.save(tmp_path / "p")
    info = json.loads((folder / "dataset.json").read_text())
    info["format_version"] = 999
    (folder / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="999"):
        SequenceDataset.load(folder)
