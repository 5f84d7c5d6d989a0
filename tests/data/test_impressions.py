"""Impression logs: sorting, storage, readers on generated files, splits, and leak-free ranking requests."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import Vocab
from genrec.data import impression_readers as imp
from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import DEFAULT_CUTS, default_split, ranking_split, source_split, temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.data.requests import collate, ranking_requests
from genrec.errors import ConfigError, DataError, UnknownDatasetError

SETTINGS = settings(max_examples=40, deadline=None)
DAY_MS = 86_400_000


def make_log(seed: int = 0, n_users: int = 6, n_items: int = 9, max_rows: int = 25, n_times: int = 40,
             splits: bool = False) -> ImpressionLog:
    """Rows in random order with many equal times (so 'strictly earlier' matters), two tasks, two action fields."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_rows + 1, size=n_users)
    user = np.repeat(np.arange(1, n_users + 1), lengths)
    perm = rng.permutation(len(user))
    user = user[perm]
    n = len(user)
    time = 1_650_000_000_000 + rng.integers(0, n_times, size=n) * (DAY_MS // 4)
    click = rng.integers(0, 2, size=n)
    return ImpressionLog.build(
        name=f"gen{seed}", users=Vocab(pa.array(np.arange(n_users) * 10)), items=Vocab(pa.array(np.arange(n_items))),
        user=user, item=rng.integers(1, n_items + 1, size=n), time=time, day=imp.utc_day(time),
        labels={"click": click, "watch_time": rng.random(n)}, binary_tasks=("click",),
        regression_tasks=("watch_time",), actions=np.stack([1 + click, rng.integers(1, 5, size=n)], axis=1),
        action_sizes={"signals": 3, "watch": 5},
        item_features={"tag": np.r_[0, rng.integers(0, 4, size=n_items)]}, item_feature_sizes={"tag": 4},
        user_features={"age": np.r_[0, rng.integers(1, 3, size=n_users)]}, user_feature_sizes={"age": 3},
        titles=["", *(f"item {i}" for i in range(n_items))],
        source_split=rng.integers(0, 3, size=n).astype(np.int8) if splits else None,
        row_features={"tab": rng.integers(0, 3, size=n)}, row_feature_sizes={"tab": 3})


# --- the log ----------------------------------------------------------------------------------------------

def test_build_sorts_user_major_and_stable():
    user = np.array([2, 1, 2, 1, 2])
    time = np.array([5, 9, 5, 3, 1])
    log = ImpressionLog.build(
        name="t", users=Vocab(pa.array([7, 8])), items=Vocab(pa.array([1, 2, 3, 4, 5])), user=user,
        item=np.array([1, 2, 3, 4, 5]), time=time, day=np.zeros(5, np.int32), labels={"y": np.arange(5)},
        binary_tasks=("y",), regression_tasks=(), actions=np.ones((5, 1), np.int64), action_sizes={"a": 2},
        row_features={"tab": np.array([1, 2, 3, 4, 5])}, row_feature_sizes={"tab": 6})
    assert log.user.tolist() == [1, 1, 2, 2, 2]
    assert log.item.tolist() == [4, 2, 5, 1, 3]  # equal (user, time): original row order (1 before 3)
    assert log.row_features["tab"].tolist() == [4, 2, 5, 1, 3]  # row features move with their rows
    assert log.labels["y"].tolist() == [3, 1, 4, 0, 2] and log.labels["y"].dtype == np.float32
    assert log.user_offsets.tolist() == [0, 2, 5]


def test_tiebreak_orders_equal_times():
    log = ImpressionLog.build(
        name="t", users=Vocab(pa.array([1])), items=Vocab(pa.array([1, 2, 3])), user=np.ones(3, np.int64),
        item=np.array([1, 2, 3]), time=np.zeros(3, np.int64), day=np.zeros(3, np.int32), labels={},
        binary_tasks=(), regression_tasks=(), actions=np.ones((3, 0), np.int64), action_sizes={},
        tiebreak=(np.array([2, 0, 1]),))
    assert log.item.tolist() == [2, 3, 1]


def test_validation_names_the_problem():
    log = make_log()
    with pytest.raises(DataError, match="action codes"):
        dataclasses.replace(log, actions=np.zeros_like(log.actions))
    with pytest.raises(DataError, match="item feature 'tag'"):
        dataclasses.replace(log, item_features={"tag": np.full(log.n_items + 1, 9)})
    with pytest.raises(DataError, match="not sorted"):
        dataclasses.replace(log, time=log.time[::-1].copy())
    with pytest.raises(DataError, match="labels"):
        dataclasses.replace(log, labels={"click": log.labels["click"]})
    with pytest.raises(DataError, match="row feature 'tab'"):
        dataclasses.replace(log, row_features={"tab": np.full(log.n_rows, 3)})
    with pytest.raises(DataError, match="row feature 'tab'"):
        dataclasses.replace(log, row_features={"tab": np.zeros(log.n_rows - 1, np.int64)})
    with pytest.raises(DataError, match="row feature columns and sizes"):
        dataclasses.replace(log, row_feature_sizes={})
    with pytest.raises(DataError, match="row feature values of 'tab' must name codes 1..2"):
        dataclasses.replace(log, row_feature_values={"tab": ["a", "b", "c"]})


def test_spec_fields_are_rankspec_arguments():
    from genrec.models.ranking import RankSpec

    log = make_log()
    spec = log.spec_fields()
    assert set(spec) == {f.name for f in dataclasses.fields(RankSpec)}
    rs = RankSpec(**spec)
    assert rs.tasks == ("click", "watch_time") and rs.n_items == log.n_items and rs.n_users == log.n_users
    assert rs.action_bits == {}  # a generated log's action fields are plain codes
    kuairand = dataclasses.replace(log, name="kuairand-pure", action_sizes={"signals": 129, "watch": 17},
                                   actions=np.ones((log.n_rows, 2), dtype=np.int64))
    assert kuairand.spec_fields()["action_bits"] == {"signals": 7}  # click, long_view, like, ... one bit each
    tree = ast.parse(inspect.getsource(imp))
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(tree)
                if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names]
    assert not [m for m in imported if m and m.startswith("genrec.models")]  # data never imports models


def test_save_load_roundtrip(tmp_path):
    log = make_log(3, splits=True)
    back = ImpressionLog.load(log.save(tmp_path / "log"))
    for f in dataclasses.fields(ImpressionLog):
        a, b = getattr(log, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif isinstance(a, dict) and a and isinstance(next(iter(a.values())), np.ndarray):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), f.name
        elif isinstance(a, Vocab):
            assert a.raw.equals(b.raw)
        else:
            assert a == b, f.name
    assert not list(tmp_path.glob("log/*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(UnknownDatasetError, match="kuairand-pure"):
        load_impressions("nope", tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_impressions("kuairand-pure", tmp_path)
    with pytest.raises(DataError, match="ml-1m_ratings_merged.parquet"):
        load_impressions("movielens-1m-ratings", tmp_path)
    with pytest.raises(DataError, match="impressions.json"):
        ImpressionLog.load(tmp_path)


def test_helpers():
    assert imp.log_bucket(np.array([-1, 0, 249, 250, 750, 1e12]), 250.0, 16).tolist() == [0, 0, 0, 1, 2, 15]
    codes, size = imp.categorical(pa.array(["b", None, "a", "b"]))
    assert codes.tolist() == [2, 0, 1, 2] and size == 3
    assert imp.utc_day(np.array([0, 951782400000 - 1, 951782400000])).tolist() == [19700101, 20000228, 20000229]


# --- readers on generated files ---------------------------------------------------------------------------

def write_kuairand(root: Path, official: bool = False) -> None:
    """A tiny KuaiRand-Pure copy in the window layout (or the official CSV layout)."""
    rows = {c: [0] * 8 for c in imp._KR_LOG_COLUMNS}
    rows.update(user_id=[5, 5, 3, 5, 3, 5, 5, 5], video_id=[10, 11, 10, 12, 11, 10, 10, 10],
                date=[20220425, 20220425, 20220425, 20220426, 20220426, 20220427, 20220427, 20220427],
                time_ms=[3000, 1000, 2000, 90_000_000, 90_000_001, 180_000_000, 180_000_000, 180_000_000],
                is_click=[1, 0, 1, 1, 0, 1, 1, 1], is_like=[1, 0, 0, 0, 0, 0, 0, 0], is_hate=[0, 1, 0, 0, 0, 0, 0, 0],
                long_view=[1, 0, 0, 0, 0, 1, 1, 1], play_time_ms=[4000, 0, 300, 10, 0, 99, 99, 99],
                duration_ms=[5000, 7000, 5000, 3000, 7000, 5000, 5000, 5000], tab=[1, 0, 4, 4, 1, 6, 6, 6])
    table = pa.table(rows)  # the last two rows are identical duplicates of the one before
    videos = ("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
              "server_height,music_id,music_type,tag\n"
              "10,77,NORMAL,2022-04-10,Kmovie,0.0,5000.0,720.0,1280.0,1,9.0,\"39,2\"\n"
              "11,88,AD,2022-04-10,Web,0.0,,720.0,1280.0,2,,2\n"
              "12,77,NORMAL,2022-04-10,Web,0.0,0.0,720.0,1280.0,3,4.0,\n"
              "13,99,NORMAL,2022-04-10,Web,0.0,1000.0,720.0,1280.0,3,4.0,1\n")
    cols = ",".join(["user_id", *imp._KR_USER_FEATURES])
    people = f"{cols}\n" + "".join(f"{u},full_active,0,-124,1,500+,0,0,730+," + ",".join(["1.0"] * 18) + "\n"
                                   for u in (3, 5))
    if official:
        base = root / "KuaiRand-Pure/data"
        base.mkdir(parents=True)
        import pyarrow.csv as pacsv

        pacsv.write_csv(table.slice(0, 3), base / "log_standard_4_08_to_4_21_pure.csv")
        pacsv.write_csv(table.slice(3), base / "log_standard_4_22_to_5_08_pure.csv")
        (base / "video_features_basic_pure.csv").write_text(videos)
        (base / "user_features_pure.csv").write_text(people)
    else:
        base = root / "kuairand-pure-window"
        (base / "log").mkdir(parents=True)
        (base / "features").mkdir()
        pq.write_table(table.slice(0, 3), base / "log/log_standard_20220425_20220430.parquet")
        pq.write_table(table.slice(3), base / "log/log_standard_20220501_20220508.parquet")
        (base / "features/video_features_basic_pure.csv").write_text(videos)
        (base / "features/user_features_pure.csv").write_text(people)


@pytest.mark.parametrize("official", [False, True])
def test_kuairand_reader(tmp_path, monkeypatch, official):
    monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "cache"))
    write_kuairand(tmp_path / "data", official)
    log = load_impressions("kuairand-pure", tmp_path / "data")
    assert log.meta["layout"] == ("official" if official else "window") and log.meta["duplicate_rows"] == 2
    assert log.users.raw.to_pylist() == [3, 5] and log.items.raw.to_pylist() == [10, 11, 12]
    assert log.user.tolist() == [1, 1, 2, 2, 2, 2, 2, 2]
    assert log.time[2:].tolist() == [1000, 3000, 90_000_000, 180_000_000, 180_000_000, 180_000_000]
    assert log.day.dtype == np.int32 and log.day[2] == 20220425
    assert log.binary_tasks == ("click", "long_view", "like", "follow", "comment", "forward")
    assert log.regression_tasks == ("watch_time",)
    np.testing.assert_allclose(log.labels["watch_time"][3], np.log1p(4.0), rtol=1e-6)
    # signals = 1 + bitmask(click, long_view, like, follow, comment, forward, hate); row 2 is hate only
    assert log.actions[2, 0] == 1 + 64 and log.actions[3, 0] == 1 + 1 + 2 + 4
    assert log.actions[2, 1] == 1 and log.actions[3, 1] == 1 + imp.log_bucket(np.array([4000]), 250.0, 16)[0]
    assert log.action_sizes == {"signals": 129, "watch": 17}
    f = log.item_features
    assert f["tag"].tolist() == [0, 2, 1, 0]  # first tag of "39,2" -> '39'; codes over sorted '2' < '39'
    assert f["author"].tolist() == [0, 2, 1, 2]  # author 77: 5 impressions of 10 + 1 of 12 >= 5; 88 is rare
    assert log.item_feature_sizes["author"] == 3
    # video 11 has no duration in the table: the log's 7000 ms; video 12 has 0 ms: unknown
    assert f["duration"].tolist() == [0, 1 + imp.log_bucket(np.array([5000]), 1000.0, 24, 2)[0],
                                      1 + imp.log_bucket(np.array([7000]), 1000.0, 24, 2)[0], 0]
    assert f["music_type"][2] == 0 and f["video_type"].tolist() == [0, 2, 1, 2]
    assert log.user_features["onehot_feat4"].tolist() == [0, 1, 1]
    assert log.user_features["is_live_streamer"].tolist() == [0, 1, 1]
    assert set(log.user_features) == set(imp._KR_USER_FEATURES)
    # tabs 0 / 1 / 4 / 6 -> codes 1..4 (0 = unknown); user 3's rows first
    assert log.row_features["tab"].tolist() == [3, 2, 1, 2, 3, 4, 4, 4] and log.row_feature_sizes == {"tab": 5}
    assert log.row_feature_values == {"tab": ["0", "1", "4", "6"]}  # what a served request's {"tab": 4} maps to
    assert len(list((tmp_path / "cache/impressions").iterdir())) == 1
    again = load_impressions("kuairand-pure", tmp_path / "data")  # from the cache
    assert np.array_equal(again.actions, log.actions) and again.meta == log.meta
    assert np.array_equal(again.row_features["tab"], log.row_features["tab"])
    assert again.row_feature_values == log.row_feature_values


def test_movielens_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "cache"))
    ml = tmp_path / "movielens-1m-ratings/derived"
    ml.mkdir(parents=True)
    split = pa.array(["train", "train", "train", "val", "test"]).dictionary_encode()
    pq.write_table(pa.table({
        "row": pa.array([3, 0, 1, 2, 4], pa.int32()), "user_id": pa.array([1, 1, 1, 2, 2], pa.int32()),
        "movie_id": pa.array([20, 10, 30, 10, 20], pa.int32()), "rating": pa.array([None, 5, 4, 2, 4], pa.int8()),
        "rating_ge4": [False, True, True, True, True],  # the copy's val/test quirk: True for a 2
        "timestamp": pa.array([None, 100, 100, 200, 300], pa.int32()), "ts_lo": pa.array([100, 100, 100, 200, 300],
                                                                                       pa.int32()),
        "ts_hi": pa.array([100, 100, 100, 200, 300], pa.int32()), "seq_pos": pa.array([2, 0, 1, 0, 1], pa.int16()),
        "split": split}), ml / "ml-1m_ratings_merged.parquet")
    meta = tmp_path / "movielens-1m/raw_bigdataguide"
    meta.mkdir(parents=True)
    (meta / "movies.dat").write_text("10::A (1995)::Comedy|Drama\n20::B (1972)::Drama\n30::C::\n", encoding="latin-1")
    (meta / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    log = load_impressions("movielens-1m-ratings", tmp_path)
    assert log.item.tolist() == [1, 3, 2, 1, 2]  # user 1 ordered by (ts_lo, seq_pos)
    assert log.time.tolist() == [100_000, 100_000, 100_000, 200_000, 300_000]
    assert log.labels["like"].tolist() == [1, 1, 0, 0, 1] and log.meta["rating_ge4_disagrees_with_rating"] == 1
    assert log.actions[:, 0].tolist() == [2, 2, 1, 1, 2] and log.action_sizes == {"like": 3}
    assert log.source_split.tolist() == [0, 0, 0, 1, 2]
    assert log.titles == ["", "A (1995)", "B (1972)", "C"]
    assert log.item_features["genre"].tolist() == [0, 1, 2, 0]
    assert log.item_features["decade"].tolist() == [0, 2, 1, 0]
    assert log.user_features["gender"].tolist() == [0, 1, 2] and log.day[0] == 19700101
    parts = source_split(log)
    assert parts.train.sum() == 3 and parts.describe()["test"]["rows"] == 1


# --- splits -------------------------------------------------------------------------------------------------

def test_temporal_split_by_day():
    log = make_log(1, n_users=12, max_rows=40)
    days = np.unique(log.day)
    sp = temporal_split(log, int(days[3]), int(days[6]))
    assert (sp.train == (log.day < days[3])).all() and (sp.test == (log.day >= days[6])).all()
    assert (sp.train.astype(int) + sp.valid + sp.test == 1).all()
    d = sp.describe()
    assert d["train"]["rows"] == sp.train.sum() and d["valid"]["last_day"] == days[5]
    assert d["train"]["users"] == len(np.unique(log.user[sp.train]))
    assert d["train_rows_after_first_valid"] == 0
    with pytest.raises(ConfigError):
        temporal_split(log, 20220510, 20220501)
    with pytest.raises(ConfigError):
        sp.part("dev")


def test_strict_time_split_is_global():
    # Day labels that run ahead of time for one row: a row dated day 2 happens before the last row of day 1.
    log = ImpressionLog.build(
        name="t", users=Vocab(pa.array([1, 2])), items=Vocab(pa.array([1])), user=np.array([1, 1, 2, 2]),
        item=np.ones(4, np.int64), time=np.array([10, 50, 40, 60]), day=np.array([1, 1, 2, 3], np.int32),
        labels={}, binary_tasks=(), regression_tasks=(), actions=np.ones((4, 0), np.int64), action_sizes={})
    loose = temporal_split(log, 2, 3)
    assert loose.describe()["train_rows_after_first_valid"] == 1
    strict = temporal_split(log, 2, 3, strict_time=True)
    assert strict.train.tolist() == [True, False, False, False] and strict.test.tolist() == [False, False, False, True]
    d = strict.describe()
    assert d["train_rows_after_first_valid"] == d["valid_rows_after_first_test"] == 0
    assert d["rule"]["moved_rows"] == 1 and strict.valid.sum() == 2


def test_end_day_leaves_later_rows_out_of_every_part():
    # An earlier fold of a rolling evaluation: rows from end_day on are neither train, valid nor test.
    log = ImpressionLog.build(
        name="t", users=Vocab(pa.array([1, 2])), items=Vocab(pa.array([1])), user=np.array([1, 1, 1, 2, 2, 2]),
        item=np.ones(6, np.int64), time=np.array([10, 20, 40, 30, 45, 60]), day=np.array([1, 2, 4, 3, 4, 5], np.int32),
        labels={}, binary_tasks=(), regression_tasks=(), actions=np.ones((6, 0), np.int64), action_sizes={})
    for strict in (False, True):
        sp = temporal_split(log, 2, 3, strict_time=strict, end_day=4)
        assert sp.train.tolist() == [True] + [False] * 5
        assert sp.valid.tolist() == [False, True] + [False] * 4
        assert sp.test.tolist() == [False, False, False, True, False, False]
        assert sp.describe()["rule"]["end_day"] == 4
    # by time, the test ends at the first row dated end_day (time 40), so the day-4 row at time 45 is out too
    assert temporal_split(log, 2, 3, strict_time=True, end_day=5).test.tolist() == [False, False, True, True, True,
                                                                                     False]
    with pytest.raises(ConfigError, match="end_day"):
        temporal_split(log, 2, 3, end_day=3)
    days = {"valid_day": 2, "test_day": 3, "end_day": 4}
    assert ranking_split(log, "temporal", days).test.tolist() == temporal_split(log, 2, 3, end_day=4).test.tolist()
    with pytest.raises(ConfigError, match="loo"):
        ranking_split(log, "loo", days)


def test_default_and_source_split():
    assert DEFAULT_CUTS["kuairand-pure"]["valid_day"] == 20220506
    log = make_log(2, splits=True)
    with pytest.raises(ConfigError):
        default_split(log)
    sp = source_split(log)
    assert (sp.valid == (log.source_split == 1)).all()
    with pytest.raises(ConfigError):
        source_split(make_log(2))


# --- requests and batches -----------------------------------------------------------------------------------

def check_requests(log: ImpressionLog, cand: np.ndarray, max_len: int, stride: int | None) -> None:
    req = ranking_requests(log, cand, max_len, stride)
    stride = stride or max(1, max_len // 2)
    rows = req.candidates.values
    assert np.array_equal(np.sort(rows), np.flatnonzero(cand))  # every candidate exactly once
    assert np.array_equal(rows, np.flatnonzero(cand))  # in row order
    for r in range(len(req)):
        c, vis = req.candidates.row(r), req.visible.row(r)
        hs, he = req.hist_start[r], req.hist_end[r]
        u = req.user[r]
        lo, hi = log.user_offsets[u - 1], log.user_offsets[u]
        assert len(c) >= 1 and (log.user[c] == u).all() and c[-1] - c[0] < stride
        assert he == c[-1] + 1 and hs == max(lo, he - max_len) and he - hs <= max_len and lo <= hs < he <= hi
        for row, v in zip(c, vis, strict=True):
            seen = np.arange(hs, hs + v)
            assert (log.user[seen] == u).all() and (log.time[seen] < log.time[row]).all()  # no leakage
            assert hs + v <= row  # never its own row
            if hs + v < he:
                assert log.time[hs + v] >= log.time[row]  # and every earlier row in the window is visible

    idx = np.arange(len(req))[::-1]
    batch = collate(log, req, idx)
    assert set(batch) == {"user", "hist_items", "hist_actions", "hist_time", "hist_len", "cand_items", "cand_time",
                          "visible", "labels", "hist_context", "cand_context"}
    b = len(idx)
    lengths, counts = req.hist_end[idx] - req.hist_start[idx], req.candidates.lengths[idx]
    assert batch["hist_items"].shape == (b, lengths.max(initial=0))
    assert batch["hist_actions"].shape == (*batch["hist_items"].shape, 2)
    assert batch["cand_items"].shape == batch["visible"].shape == (b, counts.max(initial=0))
    assert np.array_equal(batch["hist_len"], lengths) and np.array_equal(batch["user"], req.user[idx])
    for k, r in enumerate(idx):
        hist = np.arange(req.hist_start[r], req.hist_end[r])
        n, c = len(hist), req.candidates.row(r)
        assert np.array_equal(batch["hist_items"][k, :n], log.item[hist]) and (batch["hist_items"][k, n:] == 0).all()
        assert np.array_equal(batch["hist_actions"][k, :n], log.actions[hist])
        assert (batch["hist_actions"][k, n:] == 0).all() and np.array_equal(batch["hist_time"][k, :n], log.time[hist])
        assert np.array_equal(batch["hist_context"][k, :n, 0], log.row_features["tab"][hist])
        assert (batch["hist_context"][k, n:] == 0).all()
        m = len(c)
        assert np.array_equal(batch["cand_items"][k, :m], log.item[c]) and (batch["cand_items"][k, m:] == 0).all()
        assert np.array_equal(batch["cand_time"][k, :m], log.time[c])
        assert np.array_equal(batch["cand_context"][k, :m, 0], log.row_features["tab"][c])
        assert np.array_equal(batch["visible"][k, :m], req.visible.row(r)) and (batch["visible"][k, m:] == 0).all()
        for t in log.tasks:
            assert batch["labels"][t].dtype == np.float32
            lab = batch["labels"][t]
            assert np.array_equal(lab[k, :m], log.labels[t][c]) and (lab[k, m:] == 0).all()
    assert (batch["visible"] <= batch["hist_len"][:, None]).all()
    again = collate(log, ranking_requests(log, cand, max_len, stride), idx)  # deterministic
    assert all(np.array_equal(batch[k], again[k]) for k in batch if k != "labels")


@given(seed=st.integers(0, 10_000), max_len=st.integers(1, 12), stride_frac=st.floats(0, 1),
       p=st.sampled_from([0.0, 0.3, 1.0]), default_stride=st.booleans())
@SETTINGS
def test_requests_properties(seed, max_len, stride_frac, p, default_stride):
    log = make_log(seed, n_times=int(seed % 3) * 20 + 3)
    cand = np.random.default_rng(seed + 1).random(log.n_rows) < p
    stride = None if default_stride else 1 + int(stride_frac * (max_len - 1))
    check_requests(log, cand, max_len, stride)


def test_requests_for_a_time_split_tail():
    log = make_log(7, n_users=10, max_rows=60)
    sp = temporal_split(log, int(np.quantile(log.day, 0.6)), int(np.quantile(log.day, 0.8)))
    for part in ("train", "valid", "test"):
        check_requests(log, sp.part(part), 16, None)
    req = ranking_requests(log, sp.test, 16)
    # a test candidate's visible history includes earlier valid and train impressions of the user
    assert any(sp.train[req.hist_start[r]] for r in range(len(req)))


@given(seed=st.integers(0, 10_000), max_len=st.integers(1, 12))
@SETTINGS
def test_frozen_requests_read_one_history_at_one_time(seed, max_len):
    log = make_log(seed, n_times=int(seed % 3) * 20 + 3)
    cand = np.random.default_rng(seed + 1).random(log.n_rows) < 0.5
    streaming, frozen = ranking_requests(log, cand, max_len), ranking_requests(log, cand, max_len, frozen=True)
    assert frozen.frozen and not streaming.frozen
    assert np.array_equal(frozen.candidates.values, streaming.candidates.values)
    assert np.array_equal(frozen.hist_start, streaming.hist_start) and np.array_equal(frozen.hist_end,
                                                                                      streaming.hist_end)
    idx = np.arange(len(frozen))
    a, b = collate(log, streaming, idx), collate(log, frozen, idx)
    for r in idx:
        m = len(frozen.candidates.row(r))
        # every candidate reads the first candidate's history (no other candidate's outcome) at its time
        assert (b["visible"][r, :m] == a["visible"][r, 0]).all()
        assert (b["cand_time"][r, :m] == a["cand_time"][r, 0]).all()
        assert (b["visible"][r, :m] <= a["visible"][r, :m]).all() and (b["cand_time"][r, m:] == 0).all()
    assert all(np.array_equal(a[k], b[k]) for k in ("user", "hist_items", "cand_items"))


def test_requests_reject_bad_arguments():
    log = make_log()
    with pytest.raises(ConfigError):
        ranking_requests(log, np.ones(3, bool), 8)
    with pytest.raises(ConfigError):
        ranking_requests(log, np.ones(log.n_rows, bool), 8, stride=9)
    with pytest.raises(ConfigError):
        ranking_requests(log, np.ones(log.n_rows, int), 8)
    empty = ranking_requests(log, np.zeros(log.n_rows, bool), 8)
    assert len(empty) == 0 and collate(log, empty, np.arange(0))["cand_items"].shape == (0, 0)


# --- real data (skipped without a copy) ----------------------------------------------------------------------

def real(name: str) -> ImpressionLog:
    env = os.environ.get("GENREC_DATA_DIR", "").strip()
    if not env:
        pytest.skip("GENREC_DATA_DIR is not set")
    root = Path(env).expanduser()
    sources = imp._sources(name, root)
    if not sources or not sources[0].is_file():
        pytest.skip(f"no copy of {name} under GENREC_DATA_DIR={env}")
    return load_impressions(name, root, cache=False)


@pytest.mark.realdata
def test_kuairand_real():
    log = real("kuairand-pure")
    if log.meta["layout"] == "window":
        assert (log.n_rows, log.n_users, log.n_items, log.meta["duplicate_rows"]) == (228329, 25156, 6361, 5460)
        assert (log.day.min(), log.day.max()) == (20220425, 20220508)
    else:
        assert log.n_rows == 1436609 and log.n_users == 27077 and log.n_items == 7551
    assert abs(log.labels["click"].mean() - 0.44) < 0.01 and abs(log.labels["long_view"].mean() - 0.31) < 0.01
    sp = default_split(log)
    d = sp.describe()
    assert d["train_rows_after_first_valid"] == d["valid_rows_after_first_test"] == 0  # a global time split
    assert d["train"]["last_day"] == 20220505 and d["test"]["last_day"] == 20220508
    assert d["valid"]["first_time"] == "2022-05-05T15:04:01.659Z" and d["test"]["first_time"].startswith("2022-05-06")
    if log.meta["layout"] == "window":
        assert (d["train"]["rows"], d["valid"]["rows"], d["test"]["rows"]) == (184470, 13694, 30165)
    by_day = temporal_split(log, 20220506, 20220507).describe()
    assert by_day["train"]["last_day"] == 20220505 and by_day["valid"]["first_day"] == by_day["valid"]["last_day"]
    req = ranking_requests(log, sp.test, 128)
    assert req.candidates.lengths.sum() == sp.test.sum() and (req.hist_end - req.hist_start).max() <= 128


@pytest.mark.realdata
def test_movielens_ratings_real():
    log = real("movielens-1m-ratings")
    assert (log.n_rows, log.n_users, log.n_items) == (1000209, 6040, 3706)
    assert log.meta["rating_ge4_disagrees_with_rating"] == 87781
    assert int(log.labels["like"].sum()) == 348971 + 226310  # every 4 and 5 of ML-1M
    d = default_split(log).describe()
    assert (d["train"]["rows"], d["valid"]["rows"], d["test"]["rows"]) == (800167, 100021, 100021)
    assert d["train_rows_after_first_valid"] == d["valid_rows_after_first_test"] == 0
    if log.titles is not None:
        assert len(log.titles) == log.n_items + 1 and log.titles[log.items.encode([1])[0]] == "Toy Story (1995)"
