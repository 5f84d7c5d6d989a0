"""Context rows and sampled negatives in impression logs (movielens-1m-ratings-neg), request histories drawn from
context rows only, histories at a given time, and the kuairand-pure-clicks sequence view."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import Vocab, get_builtin, load_dataset
from genrec.data import impression_readers as imp
from genrec.data.impression_readers import load_impressions, with_sampled_negatives
from genrec.data.impression_splits import default_split, leave_one_out_split, ranking_split
from genrec.data.impressions import ImpressionLog
from genrec.data.requests import collate, histories_before, history_fields, ranking_requests
from genrec.errors import ConfigError, DataError

DAY_MS = 86_400_000


def ratings_log(seed: int = 0, n_users: int = 8, n_items: int = 30, max_rows: int = 12, n_times: int = 15,
                context: bool = True) -> ImpressionLog:
    """A ratings-like log: each user rates distinct items, many equal times, a source split by time."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(1, n_users + 1):
        k = int(rng.integers(1, max_rows + 1))
        users += [u] * k
        items += rng.choice(np.arange(1, n_items + 1), size=k, replace=False).tolist()
    user, item = np.array(users), np.array(items)
    n = len(user)
    time = 1_000_000 + rng.integers(0, n_times, size=n) * 1000
    like = rng.integers(0, 2, size=n)
    split = np.digitize(time, np.quantile(time, [0.6, 0.8])).astype(np.int8)
    return ImpressionLog.build(
        name=f"ratings{seed}", users=Vocab(pa.array(np.arange(n_users) + 100)),
        items=Vocab(pa.array(np.arange(n_items) + 1000)), user=user, item=item, time=time,
        day=imp.utc_day(time), labels={"like": like}, binary_tasks=("like",), regression_tasks=(),
        actions=(1 + like)[:, None], action_sizes={"like": 3}, source_split=split,
        context=None if context else rng.random(n) < 0.7)


# --- the per-user leave-one-out split ------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_times=st.sampled_from([3, 15, 1000]))
def test_leave_one_out_split_holds_out_each_users_last_two_ratings(seed, n_times):
    log = with_sampled_negatives(ratings_log(seed, n_times=n_times), 3, seed=seed)
    sp = leave_one_out_split(log)
    assert (sp.train.astype(int) + sp.valid + sp.test == 1).all()
    for u in range(1, log.n_users + 1):
        rows = np.flatnonzero(log.user == u)
        real = rows[log.context[rows]]
        t = log.time
        if len(real) < 3:
            assert sp.train[rows].all()
            continue
        last, second = t[real[-1]], t[real[-2]]
        assert sp.test[real[-1]] and (sp.test[rows] == (t[rows] >= last)).all()
        assert (sp.valid[rows] == ((t[rows] >= second) & (t[rows] < last))).all()
        # nothing trained on is as late as a held-out row of the user; candidates go with their rating's time
        held = rows[~sp.train[rows]]
        assert t[rows[sp.train[rows]]].max(initial=0) < t[held].min()
    assert sp.describe()["rule"]["kind"] == "leave-one-out"
    assert ranking_split(log, "loo").test.tolist() == sp.test.tolist()
    with pytest.raises(ConfigError, match="temporal or loo"):
        ranking_split(log, "cold")


# --- the context column -------------------------------------------------------------------------------------

def test_context_defaults_to_every_row_and_roundtrips(tmp_path):
    log = ratings_log()
    assert log.context.dtype == np.bool_ and log.context.all() and log.context_rows is None
    assert np.array_equal(log.context_before, np.arange(log.n_rows + 1))
    assert not pq.read_table(log.save(tmp_path / "a") / "rows.parquet").schema.get_field_index("context") >= 0
    neg = with_sampled_negatives(log, 2)
    back = ImpressionLog.load(neg.save(tmp_path / "b"))
    assert np.array_equal(back.context, neg.context) and np.array_equal(back.context_rows, neg.context_rows)
    assert back.stats()["context_rows"] == log.n_rows
    with pytest.raises(DataError, match="context"):
        dataclasses.replace(log, context=np.ones(3, bool))
    with pytest.raises(DataError, match="boolean"):
        dataclasses.replace(log, context=np.ones(log.n_rows, np.int64))


# --- sampled negatives -----------------------------------------------------------------------------------------

def test_sampled_negatives():
    log = ratings_log(1, n_users=10)
    log = dataclasses.replace(log, row_features={"tab": 1 + log.time // 1000 % 3}, row_feature_sizes={"tab": 4},
                              row_feature_values={"tab": ["a", "b", "c"]})
    neg = with_sampled_negatives(log, 4, seed=3)
    assert neg.row_feature_values == log.row_feature_values
    assert neg.n_rows == 5 * log.n_rows and neg.name == f"{log.name}-neg"
    assert np.array_equal(neg.row_features["tab"], 1 + neg.time // 1000 % 3)  # a negative copies its row's
    assert neg.binary_tasks == ("like", "rate") and neg.context.sum() == log.n_rows
    real, fake = neg.context, ~neg.context
    assert (neg.labels["rate"][real] == 1).all() and (neg.labels["rate"][fake] == 0).all()
    assert (neg.labels["like"][fake] == 0).all()
    # the real rows are the original log, in its order
    assert np.array_equal(neg.item[real], log.item) and np.array_equal(neg.time[real], log.time)
    assert np.array_equal(neg.labels["like"][real], log.labels["like"])
    rated = set(zip(log.user.tolist(), log.item.tolist(), strict=True))
    assert not {(u, i) for u, i in zip(neg.user[fake].tolist(), neg.item[fake].tolist(), strict=True)} & rated
    train_items = set(log.item[log.source_split == 0].tolist())
    assert set(neg.item[fake].tolist()) <= train_items  # drawn by training popularity
    # every real row has 4 negatives at its time, in its split
    def key(m):
        return np.unique(np.stack([neg.user[m], neg.time[m], neg.source_split[m]], 1), axis=0, return_counts=True)

    (kr, cr), (kf, cf) = key(real), key(fake)
    assert np.array_equal(kr, kf) and np.array_equal(cf, 4 * cr)
    again = with_sampled_negatives(log, 4, seed=3)
    assert np.array_equal(again.item, neg.item)  # fixed seed
    assert not np.array_equal(with_sampled_negatives(log, 4, seed=4).item, neg.item)
    with pytest.raises(ConfigError):
        with_sampled_negatives(log, 0)
    with pytest.raises(ConfigError, match="already"):
        with_sampled_negatives(neg, 1)


def test_negatives_follow_popularity():
    log = ratings_log(2, n_users=40, n_items=60, max_rows=10)
    neg = with_sampled_negatives(log, 20, popularity_rows=np.ones(log.n_rows, bool))
    counts = np.bincount(log.item, minlength=log.n_items + 1)
    drawn = np.bincount(neg.item[~neg.context], minlength=log.n_items + 1)
    assert np.corrcoef(counts[1:], drawn[1:])[0, 1] > 0.5
    assert drawn[counts == 0].sum() == 0


# --- requests read context rows only ----------------------------------------------------------------------------

def check_context_requests(log: ImpressionLog, cand: np.ndarray, max_len: int, stride: int | None) -> None:
    req = ranking_requests(log, cand, max_len, stride)
    ctx = np.flatnonzero(log.context)
    assert np.array_equal(req.candidates.values, np.flatnonzero(cand))  # every candidate once, in row order
    batch = collate(log, req, np.arange(len(req)))
    for r in range(len(req)):
        u = req.user[r]
        hist = ctx[req.hist_start[r]:req.hist_end[r]]
        assert len(hist) <= max_len and log.context[hist].all() and (log.user[hist] == u).all()
        n = len(hist)
        assert batch["hist_len"][r] == n
        assert np.array_equal(batch["hist_items"][r, :n], log.item[hist])
        assert np.array_equal(batch["hist_time"][r, :n], log.time[hist])
        user_ctx = ctx[log.user[ctx] == u]
        c = req.candidates.row(r)
        # the history ends at the last context row up to the group's last candidate, capped to max_len
        expected_end = user_ctx[user_ctx <= c[-1]]
        assert np.array_equal(hist, expected_end[-max_len:]) if len(expected_end) else n == 0
        for row, v in zip(c, req.visible.row(r), strict=True):
            seen = hist[:v]
            assert (log.time[seen] < log.time[row]).all() and row not in seen
            # every context row of the window strictly earlier than the candidate is visible
            assert v == int((log.time[hist] < log.time[row]).sum())


@given(seed=st.integers(0, 10_000), max_len=st.integers(1, 10), n_neg=st.integers(1, 3),
       p=st.sampled_from([0.3, 1.0]), default_stride=st.booleans())
@settings(max_examples=30, deadline=None)
def test_negatives_never_in_history(seed, max_len, n_neg, p, default_stride):
    base = ratings_log(seed, n_times=int(seed % 3) * 5 + 2)
    log = with_sampled_negatives(base, n_neg, seed=seed, popularity_rows=np.ones(base.n_rows, bool))
    cand = np.random.default_rng(seed).random(log.n_rows) < p
    check_context_requests(log, cand, max_len, None if default_stride else max(1, max_len // 3))
    req = ranking_requests(log, np.ones(log.n_rows, bool), max_len)
    batch = collate(log, req, np.arange(len(req)))
    fake_items = set(zip(log.user[~log.context].tolist(), log.item[~log.context].tolist(), strict=True))
    hist = {(int(batch["user"][b]), int(i)) for b in range(len(req)) for i in batch["hist_items"][b] if i}
    assert not hist & fake_items  # a sampled (user, item) pair is never a history token


def test_plain_logs_keep_row_indices():
    log = ratings_log(5)
    assert log.context_rows is None
    req = ranking_requests(log, log.source_split == 2, 6)
    for r in range(len(req)):
        assert req.hist_end[r] == req.candidates.row(r)[-1] + 1  # row indices, as before


def test_histories_before_matches_brute_force():
    log = with_sampled_negatives(ratings_log(7, n_users=12), 2)
    rng = np.random.default_rng(0)
    users = rng.integers(0, log.n_users + 2, size=60)  # 0 and n_users + 1: unknown users
    times = rng.integers(log.time.min() - 2000, log.time.max() + 2000, size=60)
    for max_len in (1, 3, 50):
        hs, he = histories_before(log, users, times, max_len)
        fields = history_fields(log, hs, he)
        ctx = np.flatnonzero(log.context)
        for k, (u, t) in enumerate(zip(users, times, strict=True)):
            want = ctx[(log.user[ctx] == u) & (log.time[ctx] < t)][-max_len:]
            assert np.array_equal(ctx[hs[k]:he[k]], want)
            assert fields["hist_len"][k] == len(want)
            assert np.array_equal(fields["hist_items"][k, :len(want)], log.item[want])
    with pytest.raises(ConfigError):
        histories_before(log, users, times, 0)


# --- the built-in negatives log --------------------------------------------------------------------------------

def write_ratings(root: Path) -> None:
    ml = root / "movielens-1m-ratings/derived"
    ml.mkdir(parents=True)
    n = 40
    rng = np.random.default_rng(0)
    user = np.repeat([1, 2, 3, 4], 10)
    movie = np.concatenate([rng.choice(np.arange(10, 40), 10, replace=False) for _ in range(4)])
    ts = np.tile(np.arange(10) * 100, 4) + 1000
    split = np.where(ts < 1700, "train", np.where(ts < 1900, "val", "test"))
    pq.write_table(pa.table({
        "row": pa.array(np.arange(n), pa.int32()), "user_id": pa.array(user, pa.int32()),
        "movie_id": pa.array(movie, pa.int32()), "rating": pa.array(rng.integers(1, 6, n), pa.int8()),
        "rating_ge4": rng.random(n) < 0.5, "timestamp": pa.array(ts, pa.int32()), "ts_lo": pa.array(ts, pa.int32()),
        "ts_hi": pa.array(ts, pa.int32()), "seq_pos": pa.array(np.tile(np.arange(10), 4), pa.int16()),
        "split": pa.array(split).dictionary_encode()}), ml / "ml-1m_ratings_merged.parquet")


def test_movielens_negatives_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "cache"))
    write_ratings(tmp_path)
    base = load_impressions("movielens-1m-ratings", tmp_path)
    log = load_impressions("movielens-1m-ratings-neg", tmp_path)
    assert log.name == "movielens-1m-ratings-neg" and log.n_rows == 5 * base.n_rows
    assert log.meta["negatives"]["per_real_row"] == imp.ML_NEGATIVES == 4
    sp = default_split(log)
    assert sp.train.sum() == 5 * default_split(base).train.sum()
    cached = load_impressions("movielens-1m-ratings-neg", tmp_path)  # from the cache
    assert np.array_equal(cached.item, log.item) and np.array_equal(cached.context, log.context)
    assert len(list((tmp_path / "cache/impressions").iterdir())) == 2


# --- kuairand-pure-clicks ------------------------------------------------------------------------------------

def write_kuairand_window(root: Path) -> None:
    rows = {c: [0] * 7 for c in imp._KR_LOG_COLUMNS}
    rows.update(user_id=[5, 5, 3, 5, 3, 5, 5], video_id=[10, 11, 10, 12, 11, 12, 12],
                date=[20220425] * 3 + [20220426] * 2 + [20220427] * 2,
                time_ms=[3000, 1000, 2000, 90_000_000, 90_000_001, 180_000_000, 180_000_000],
                is_click=[1, 0, 1, 1, 1, 1, 1], duration_ms=[5000] * 7)
    base = root / "kuairand-pure-window"
    (base / "log").mkdir(parents=True)
    (base / "features").mkdir()
    table = pa.table(rows)  # the last row duplicates the one before
    pq.write_table(table.slice(0, 3), base / "log/log_standard_20220425_20220430.parquet")
    pq.write_table(table.slice(3), base / "log/log_standard_20220501_20220508.parquet")
    (base / "features/video_features_basic_pure.csv").write_text(
        "video_id,author_id,video_type,upload_type,music_type,video_duration,tag\n"
        "10,1,NORMAL,Web,1,5000,1\n11,1,NORMAL,Web,1,5000,1\n12,2,AD,Web,1,5000,2\n")
    cols = ",".join(["user_id", *imp._KR_USER_FEATURES])
    (base / "features/user_features_pure.csv").write_text(
        f"{cols}\n" + "".join(f"{u}," + ",".join(["1"] * len(imp._KR_USER_FEATURES)) + "\n" for u in (3, 5)))


def test_kuairand_clicks_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "cache"))
    builtin = get_builtin("kuairand-pure-clicks")
    assert not builtin.available()
    with pytest.raises(DataError, match="KuaiRand-Pure"):
        load_dataset("kuairand-pure-clicks")
    write_kuairand_window(tmp_path / "data")
    assert builtin.available() and builtin.root() == tmp_path / "data"
    ds = load_dataset("kuairand-pure-clicks")
    log = load_impressions("kuairand-pure", tmp_path / "data")
    # user 5 clicked 10 (t=3000), 12 (t=9e7), 12 (t=1.8e8, twice: counted once); user 3 clicked 10 and 11
    assert ds.n_interactions == 5 and ds.users.raw.to_pylist() == [3, 5]
    assert [ds.items.decode(r) for r in ds.sequences.to_lists()] == [[10, 11], [10, 12, 12]]
    assert ds.timestamps.to_lists() == [[2000, 90_000_001], [3000, 90_000_000, 180_000_000]]
    # every raw id maps onto the impression log's vocabulary
    assert set(ds.items.raw.to_pylist()) <= set(log.items.raw.to_pylist())
    assert set(ds.users.raw.to_pylist()) <= set(log.users.raw.to_pylist())


@pytest.mark.realdata
def test_kuairand_clicks_real():
    env = os.environ.get("GENREC_DATA_DIR", "").strip()
    if not env or not get_builtin("kuairand-pure-clicks").available():
        pytest.skip("no copy of KuaiRand-Pure under GENREC_DATA_DIR")
    ds = load_dataset("kuairand-pure-clicks")
    log = load_impressions("kuairand-pure")
    if log.meta["layout"] == "window":
        assert (ds.n_users, ds.n_items, ds.n_interactions) == (21811, 5085, 100008)
    assert ds.n_interactions <= int(log.labels["click"].sum())
    assert (np.diff(ds.timestamps.values)[np.diff(ds.sequences.row_ids()) == 0] >= 0).all()


def test_sampled_negatives_with_a_cut_per_user():
    log = ratings_log(4, n_users=12, n_items=40, max_rows=20, n_times=1000)
    held = ~leave_one_out_split(log).train
    until = np.full(log.n_users + 1, np.iinfo(np.int64).max)
    np.minimum.at(until, log.user[held], log.time[held] - 1)
    neg = with_sampled_negatives(log, 8, seed=2, rated_until=until)
    fake = ~neg.context
    train_pairs = set(zip(log.user[~held].tolist(), log.item[~held].tolist(), strict=True))
    held_pairs = set(zip(log.user[held].tolist(), log.item[held].tolist(), strict=True)) - train_pairs
    pairs = set(zip(neg.user[fake].tolist(), neg.item[fake].tolist(), strict=True))
    assert not pairs & train_pairs and pairs & held_pairs  # a held-out rating may be an earlier negative
    assert "their own cut" in neg.meta["negatives"]["distribution"]
    with pytest.raises(ConfigError, match="one per user"):
        with_sampled_negatives(log, 2, rated_until=np.zeros(3, dtype=np.int64))


def test_sampled_negatives_from_pools_exclude_only_what_was_rated_by_the_cut():
    log = ratings_log(2, n_users=10)
    cut = int(np.quantile(log.time, 0.6))
    pools = np.zeros((log.n_users + 1, 6), dtype=np.int64)
    rng = np.random.default_rng(0)
    for u in range(1, log.n_users + 1):
        later = log.item[(log.user == u) & (log.time > cut)]
        pools[u, :3] = rng.choice(np.arange(1, log.n_items + 1), 3, replace=False)
        pools[u, 3:3 + min(3, len(later))] = later[:3]  # items this user rates only after the cut
    neg = with_sampled_negatives(log, 4, seed=1, pools=pools, rated_until=cut)
    fake = ~neg.context
    in_pool = (pools[neg.user[fake]] == neg.item[fake][:, None]).any(1)
    # drawn from the user's pool; popularity only for an empty slot (users with fewer than 3 later items)
    full = (pools[neg.user[fake]] > 0).all(1)
    assert in_pool[full].mean() > 0.95 and in_pool[~full].mean() < 1
    before = set(zip(log.user[log.time <= cut].tolist(), log.item[log.time <= cut].tolist(), strict=True))
    pairs = set(zip(neg.user[fake].tolist(), neg.item[fake].tolist(), strict=True))
    assert not pairs & before  # nothing the user had rated by the cut
    after = set(zip(log.user[log.time > cut].tolist(), log.item[log.time > cut].tolist(), strict=True)) - before
    assert pairs & after  # an item rated only later can be a negative: a later target is not singled out
    assert "pool" in neg.meta["negatives"]["distribution"]
    whole_log = with_sampled_negatives(log, 4, seed=1, pools=pools)
    rated = set(zip(log.user.tolist(), log.item.tolist(), strict=True))
    assert not set(zip(whole_log.user[fake].tolist(), whole_log.item[fake].tolist(), strict=True)) & rated
    with pytest.raises(DataError, match="pools"):
        with_sampled_negatives(log, 4, pools=np.zeros((3, 2), dtype=np.int64))
