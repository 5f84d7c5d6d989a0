"""The built-in impression logs (:class:`genrec.data.impressions.ImpressionLog`) and their cache.

Readers: ``kuairand-pure`` (the official KuaiRand-Pure layout, else the offline date window),
``movielens-1m-ratings`` and ``movielens-1m-ratings-neg`` (the same ratings plus 4 popularity-sampled unrated
items per rating, with a task ``rate``: 1 for the real rating, 0 for a sampled item; :func:`with_sampled_negatives`).
A prepared log is cached as Parquet + JSON under ``$GENREC_CACHE_DIR/impressions`` (else
``~/.cache/genrec/impressions``), keyed by the name, the format and reader versions and the size and mtime of every
source file, so a re-run loads in well under a second and a changed source file is re-read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data.actions import KUAIRAND_SIGNALS, KUAIRAND_WATCH, SCHEMAS, encode_columns
from genrec.data.builtin import data_home
from genrec.data.dataset import Vocab
from genrec.data.impressions import FORMAT_VERSION, ImpressionLog
from genrec.errors import ConfigError, DataError, UnknownDatasetError

READER_VERSION = 3  # part of the cache key: bumped when a reader's output changes (2: KuaiRand's row feature tab;
# 3: the raw values of row feature codes)


# --- small encoders ---------------------------------------------------------------------------------------

def categorical(values: pa.Array | np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 1..K over the sorted distinct non-null values, 0 for null; returns (codes, K + 1)."""
    codes, values_ = categorical_values(values)
    return codes, len(values_) + 1


def categorical_values(values: pa.Array | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """:func:`categorical`'s codes and the K distinct values they stand for, as text (code k: values[k - 1])."""
    arr = pa.array(values) if isinstance(values, np.ndarray) else values
    uniq = pc.unique(pc.drop_null(arr))
    uniq = uniq.take(pc.sort_indices(uniq))
    idx = pc.index_in(arr, value_set=uniq)
    codes = pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(v) for v in uniq.to_pylist()]


def log_bucket(x: np.ndarray, unit: float, n: int, per_octave: int = 1) -> np.ndarray:
    """Bucket 0..n-1 of floor(per_octave * log2(1 + x / unit)), x >= 0 (x < 0 counts as 0)."""
    b = np.floor(per_octave * np.log2(1.0 + np.maximum(np.asarray(x, dtype=np.float64), 0.0) / unit))
    return np.clip(b, 0, n - 1).astype(np.int64)


def _align(vocab: Vocab, keys: pa.Array, table: pa.Table) -> pa.Table:
    """Rows of ``table`` (keyed by ``keys``) in dense-id order of ``vocab``; ids missing from it get nulls."""
    pos = pc.index_in(vocab.raw, value_set=pc.cast(keys, vocab.raw.type))
    return table.take(pos)


def _with_padding(codes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], codes]).astype(np.int64)


def utc_day(time_ms: np.ndarray) -> np.ndarray:
    """YYYYMMDD (int32) of the UTC date of unix-ms times."""
    d = (np.asarray(time_ms, dtype=np.int64) // 86_400_000).astype("datetime64[D]")
    month_start = d.astype("datetime64[M]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    return (year * 10000 + month * 100 + (d - month_start).astype(np.int64) + 1).astype(np.int32)


# --- KuaiRand-Pure ----------------------------------------------------------------------------------------

KUAIRAND_URL = "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz"
_KR_OFFICIAL = ("KuaiRand-Pure/data", ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"),
                "user_features_pure.csv", "video_features_basic_pure.csv")
_KR_WINDOW = ("kuairand-pure-window", ("log/log_standard_20220425_20220430.parquet",
                                       "log/log_standard_20220501_20220508.parquet"),
              "features/user_features_pure.csv", "features/video_features_basic_pure.csv")
_KR_LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
                   "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
                   "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
_KR_BINARY = {"click": "is_click", "long_view": "long_view", "like": "is_like", "follow": "is_follow",
              "comment": "is_comment", "forward": "is_forward"}
_KR_SIGNAL_BITS = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward", "is_hate")
_KR_USER_FEATURES = ("user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                     "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
                     *(f"onehot_feat{i}" for i in range(18)))
RARE_AUTHOR_MIN = 5  # authors with fewer impressions share one code
WATCH_BUCKETS = KUAIRAND_WATCH["n"]  # octaves of play time from 0.25 s (bucket 15: > ~2.3 h)
DURATION_BUCKETS = 24  # half-octaves of video duration from 1 s


def _kuairand_files(root: Path) -> tuple[Path, list[Path], Path, Path] | None:
    """(folder, logs, user features, video features) of the first complete layout under ``root``."""
    for folder, logs, users, videos in (_KR_OFFICIAL, _KR_WINDOW):
        base = root / folder
        paths = [base / p for p in (*logs, users, videos)]
        if all(p.is_file() for p in paths):
            return base, paths[:-2], paths[-2], paths[-1]
    return None


def _read_kuairand(root: Path) -> ImpressionLog:
    found = _kuairand_files(root)
    if found is None:
        raise DataError(
            f"KuaiRand-Pure is not on this machine: expected {root / _KR_OFFICIAL[0]}/ (official layout: "
            f"{', '.join(_KR_OFFICIAL[1])}, {_KR_OFFICIAL[2]}, {_KR_OFFICIAL[3]}; from {KUAIRAND_URL}) or "
            f"{root / _KR_WINDOW[0]}/ (offline window copy); set GENREC_DATA_DIR to the folder holding either",
            path=root)
    base, log_paths, user_path, video_path = found
    parts = []
    for p in log_paths:
        try:
            t = (pq.read_table(p, columns=_KR_LOG_COLUMNS) if p.suffix == ".parquet" else
                 pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(include_columns=_KR_LOG_COLUMNS)))
            parts.append(t.select(_KR_LOG_COLUMNS).cast(pa.schema([(c, pa.int64()) for c in _KR_LOG_COLUMNS])))
        except (pa.ArrowInvalid, KeyError) as e:
            raise DataError(f"not a KuaiRand standard log of integer columns {_KR_LOG_COLUMNS} ({e})", path=p) from None
        if any(t.column(c).null_count for c in _KR_LOG_COLUMNS):
            raise DataError("empty values in the log (every KuaiRand log field is required)", path=p)
    log = pa.concat_tables(parts)
    cols = {c: log.column(c).to_numpy() for c in _KR_LOG_COLUMNS}
    # The official log has fully identical duplicate rows; they are kept (the log is as published), and counted.
    dup = np.lexsort([cols[c] for c in reversed(_KR_LOG_COLUMNS)])
    same = np.ones(max(len(dup) - 1, 0), dtype=bool)
    for c in _KR_LOG_COLUMNS:
        same &= np.diff(cols[c][dup]) == 0
    duplicates = int(same.sum())

    users = Vocab(pa.array(np.unique(cols["user_id"])))
    items = Vocab(pa.array(np.unique(cols["video_id"])))
    u, i = users.encode(log.column("user_id").combine_chunks()), items.encode(log.column("video_id").combine_chunks())
    play = cols["play_time_ms"]
    labels = {k: cols[c].astype(np.float32) for k, c in _KR_BINARY.items()}
    labels["watch_time"] = np.log1p(play / 1000.0).astype(np.float32)
    signals = {name: cols[c] for name, c in zip(KUAIRAND_SIGNALS, _KR_SIGNAL_BITS, strict=True)}
    actions = encode_columns(SCHEMAS["kuairand-pure"], {**signals, "play_time_ms": play}, len(play))

    # Item features: the basic video table only. The statistic table (counts of plays, likes, ... aggregated
    # over the whole period, test days included) would leak the evaluated labels, so it is not read.
    videos = _align(items, *_csv_keyed(video_path, "video_id", {"tag": pa.string(), "video_type": pa.string(),
                                                                 "upload_type": pa.string()}))
    item_features: dict[str, np.ndarray] = {}
    item_sizes: dict[str, int] = {}
    for name in ("video_type", "upload_type", "music_type"):
        item_features[name], item_sizes[name] = categorical(videos.column(name).combine_chunks())
    first_tag = pc.list_element(pc.split_pattern(videos.column("tag").combine_chunks(), ","), 0)
    item_features["tag"], item_sizes["tag"] = categorical(pc.utf8_trim_whitespace(first_tag))
    author, n_authors = categorical(videos.column("author_id").combine_chunks())
    # Exposure counts over the whole log (not labels): they only decide which authors get their own code.
    seen = np.bincount(author[i - 1], minlength=n_authors)
    frequent = np.flatnonzero(seen >= RARE_AUTHOR_MIN)
    frequent = frequent[frequent > 0]
    remap = np.ones(n_authors, dtype=np.int64)  # 1 = rare author
    remap[0] = 0
    remap[frequent] = 2 + np.arange(len(frequent))
    item_features["author"], item_sizes["author"] = remap[author], 2 + len(frequent)
    duration = videos.column("video_duration").to_numpy(zero_copy_only=False).astype(np.float64)
    log_duration = np.zeros(len(items), dtype=np.float64)
    np.maximum.at(log_duration, i - 1, cols["duration_ms"].astype(np.float64))
    duration = np.where(np.isnan(duration), log_duration, duration)  # the video table misses a few durations
    # A duration of 0 ms is a missing value, not a very short video.
    item_features["duration"] = np.where(duration > 0, 1 + log_bucket(duration, 1000.0, DURATION_BUCKETS, 2), 0)
    item_sizes["duration"] = DURATION_BUCKETS + 1

    # The app tab an impression was shown on: known when the request is served, and click rates differ by tab
    # from 4% to 60% (benchmarks/kuairand_tab.py).
    tab, tabs = categorical_values(pc.cast(log.column("tab").combine_chunks(), pa.int64()))  # "1", not "1.0"
    people = _align(users, *_csv_keyed(user_path, "user_id", {c: pa.string() for c in _KR_USER_FEATURES}))
    user_features, user_sizes = {}, {}
    for name in _KR_USER_FEATURES:
        # Read as text so '1' and '1.0' (float columns with nulls) are the same category across layouts.
        raw = pc.replace_substring_regex(people.column(name).combine_chunks(), r"\.0$", "")
        user_features[name], user_sizes[name] = categorical(raw)

    return ImpressionLog.build(
        name="kuairand-pure", users=users, items=items, user=u, item=i, time=cols["time_ms"],
        day=cols["date"].astype(np.int32), labels=labels, binary_tasks=tuple(_KR_BINARY),
        regression_tasks=("watch_time",), actions=actions,
        action_sizes={"signals": 1 + 2 ** len(_KR_SIGNAL_BITS), "watch": 1 + WATCH_BUCKETS},
        item_features={k: _with_padding(v) for k, v in item_features.items()}, item_feature_sizes=item_sizes,
        user_features={k: _with_padding(v) for k, v in user_features.items()}, user_feature_sizes=user_sizes,
        row_features={"tab": tab}, row_feature_sizes={"tab": len(tabs) + 1}, row_feature_values={"tab": tabs},
        meta={"source": str(base), "layout": "official" if base.name == "data" else "window",
              "files": [str(p) for p in log_paths], "duplicate_rows": duplicates,
              "signal_bits": list(_KR_SIGNAL_BITS), "rare_author_min": RARE_AUTHOR_MIN})


def _csv_keyed(path: Path, key: str, types: dict[str, pa.DataType]) -> tuple[pa.Array, pa.Table]:
    try:
        t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
        return t.column(key).combine_chunks(), t
    except (pa.ArrowInvalid, KeyError) as e:
        raise DataError(f"cannot read the '{key}' table ({e})", path=path) from None


# --- MovieLens-1M with ratings ------------------------------------------------------------------------------

_ML_MERGED = "movielens-1m-ratings/derived/ml-1m_ratings_merged.parquet"
_ML_META = ("movielens-1m/raw_bigdataguide", "movielens-1m/ml-1m", "movielens-1m")  # movies.dat / users.dat


def _read_dat(path: Path) -> list[list[str]]:
    with open(path, encoding="latin-1") as f:
        return [line.rstrip("\n").split("::") for line in f if line.strip()]


def _read_movielens_ratings(root: Path) -> ImpressionLog:
    path = root / _ML_MERGED
    if not path.is_file():
        raise DataError("movielens-1m-ratings is not on this machine; set GENREC_DATA_DIR to the folder holding "
                        "'movielens-1m-ratings/' (see its SOURCE.md)", path=path)
    t = pq.read_table(path, columns=["row", "user_id", "movie_id", "rating", "rating_ge4", "timestamp", "ts_lo",
                                     "seq_pos", "split"])
    users = Vocab(pa.array(np.unique(t.column("user_id").to_numpy()).astype(np.int64)))
    items = Vocab(pa.array(np.unique(t.column("movie_id").to_numpy()).astype(np.int64)))
    u = users.encode(pc.cast(t.column("user_id").combine_chunks(), pa.int64()))
    i = items.encode(pc.cast(t.column("movie_id").combine_chunks(), pa.int64()))
    # Exact timestamp where known, else the lower end of its bracket (which the source orders by).
    ts = pc.coalesce(t.column("timestamp"), t.column("ts_lo")).to_numpy().astype(np.int64) * 1000
    # The copy's rating_ge4 is True for every val/test row, ratings 1-3 included; where the exact rating is
    # known it decides (rating_ge4 is right where the rating is null: those are train ratings 1-3).
    rating = t.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)
    given = t.column("rating_ge4").to_numpy(zero_copy_only=False).astype(bool)
    like = np.where(np.isnan(rating), given, rating >= 4).astype(np.float32)
    split = pc.dictionary_encode(t.column("split").combine_chunks().cast(pa.string()))
    codes = {"train": 0, "val": 1, "valid": 1, "test": 2}
    if unknown := set(split.dictionary.to_pylist()) - set(codes):
        raise DataError(f"unknown values {sorted(unknown)} (expected train / val / test)", path=path, column="split")
    source_split = np.array([codes[s] for s in split.dictionary.to_pylist()], dtype=np.int8)[
        split.indices.to_numpy(zero_copy_only=False)]

    item_features, item_sizes, user_features, user_sizes, titles, meta_dir = {}, {}, {}, {}, None, None
    for folder in _ML_META:
        movies, people = root / folder / "movies.dat", root / folder / "users.dat"
        if movies.is_file():
            meta_dir = movies.parent
            rows = _read_dat(movies)
            raw = pa.array([int(r[0]) for r in rows], pa.int64())
            table = _align(items, raw, pa.table({
                "title": [r[1] for r in rows],
                "genre": [r[2].split("|")[0] if len(r) > 2 and r[2] else None for r in rows],
                "decade": [f"{m.group(1)[:3]}0s" if (m := re.search(r"\((\d{4})\)\s*$", r[1])) else None
                           for r in rows]}))
            titles = ["", *(x or "" for x in table.column("title").to_pylist())]
            for name in ("genre", "decade"):
                codes_, item_sizes[name] = categorical(table.column(name).combine_chunks())
                item_features[name] = _with_padding(codes_)
            if people.is_file():
                rows = _read_dat(people)
                table = _align(users, pa.array([int(r[0]) for r in rows], pa.int64()), pa.table(
                    {"gender": [r[1] for r in rows], "age": [r[2] for r in rows], "occupation": [r[3] for r in rows]}))
                for name in table.column_names:
                    codes_, user_sizes[name] = categorical(table.column(name).combine_chunks())
                    user_features[name] = _with_padding(codes_)
            break

    return ImpressionLog.build(
        name="movielens-1m-ratings", users=users, items=items, user=u, item=i, time=ts, day=utc_day(ts),
        tiebreak=(t.column("seq_pos").to_numpy().astype(np.int64), t.column("row").to_numpy().astype(np.int64)),
        labels={"like": like}, binary_tasks=("like",), regression_tasks=(),
        actions=encode_columns(SCHEMAS["movielens-1m-ratings"], {"like": like}, len(like)), action_sizes={"like": 3},
        item_features=item_features, item_feature_sizes=item_sizes, user_features=user_features,
        user_feature_sizes=user_sizes, titles=titles, source_split=source_split,
        meta={"source": str(path), "movielens_meta": str(meta_dir) if meta_dir else None,
              "time": "timestamp where known, else ts_lo (unix s * 1000)",
              "like": "rating >= 4 where the rating is known, else rating_ge4",
              "rating_ge4_disagrees_with_rating": int((given != (like > 0)).sum())})


# --- sampled negative impressions ----------------------------------------------------------------------------

ML_NEGATIVES = 4  # sampled unrated items per real rating in movielens-1m-ratings-neg
NEGATIVE_SEED = 0


def with_sampled_negatives(log: ImpressionLog, n_negatives: int = ML_NEGATIVES, seed: int = NEGATIVE_SEED, *,
                           task: str = "rate", popularity_rows: np.ndarray | None = None,
                           name: str | None = None, max_rounds: int = 1000, pools: np.ndarray | None = None,
                           rated_until: int | np.ndarray | None = None) -> ImpressionLog:
    """``log`` plus ``n_negatives`` sampled impressions per context row, for a log that holds only what users
    chose (ratings): an engagement task for a ranker that reorders retrieved candidates.

    Each sampled row copies its real row's user, time, day, source split and row features; its item is drawn with
    probability proportional to its popularity in ``popularity_rows`` (a boolean row mask; default: the source's
    training part, else every row; context rows only) among items the user never interacted with in the whole log
    (rejection sampling with ``numpy.random.default_rng(seed)``). A new binary task ``task`` is 1 on the real
    (context) rows and 0 on the sampled ones (and on rows of ``log`` that were not context rows already); every
    other binary task is 0 and every regression task missing (NaN) on the sampled rows. Sampled rows are not context
    rows: they are candidates only, never history tokens (their action codes are the lowest valid ones, never read).

    ``pools`` (int64 [n_users + 1, K], the log's item indices, 0 = empty slot) draws each negative uniformly from
    its user's pool instead (e.g. what a retrieval model proposes to that user: hard negatives for a ranker that
    reorders retrieval's candidates); an empty slot, or a user whose pool is used up after half the rounds,
    falls back to popularity. ``rated_until`` (unix ms): only items the user interacted with at or before that
    time are excluded, so an item first rated later (in validation or test) can be a training negative; an int64
    [n_users + 1] array gives each user their own time (a leave-one-out split's held-out ratings). Excluding every
    item the user ever rates would leave a later target as an item never labelled negative for that user, which
    a model with user ids can learn."""
    if n_negatives < 1:
        raise ConfigError(f"n_negatives must be >= 1, got {n_negatives}")
    if task in log.labels:
        raise ConfigError(f"impression log '{log.name}' already has a task named {task!r}")
    real = np.flatnonzero(log.context)
    if popularity_rows is None:
        popularity_rows = log.source_split == 0 if log.source_split is not None else np.ones(log.n_rows, bool)
    counts = np.bincount(log.item[np.asarray(popularity_rows, dtype=bool) & log.context],
                         minlength=log.n_items + 1).astype(np.float64)
    counts[0] = 0.0
    if counts.sum() <= 0:
        raise DataError(f"impression log '{log.name}': no item to sample negatives from (empty popularity rows)")
    cdf = np.cumsum(counts) / counts.sum()
    width = np.int64(log.n_items + 1)
    if rated_until is None:
        seen = real
    else:
        until = np.asarray(rated_until, dtype=np.int64)
        if until.ndim and until.shape != (log.n_users + 1,):
            raise ConfigError(f"rated_until must be one time or one per user ({log.n_users + 1}), got {until.shape}")
        seen = real[log.time[real] <= (until[log.user[real]] if until.ndim else until)]
    rated = np.unique(log.user[seen] * width + log.item[seen])
    if pools is not None:
        pools = np.asarray(pools, dtype=np.int64)
        if pools.ndim != 2 or pools.shape[0] != log.n_users + 1 or pools.min(initial=0) < 0 \
                or pools.max(initial=0) > log.n_items:
            raise DataError(f"pools must be item indices of shape ({log.n_users + 1}, K), got {pools.shape}")
    src = np.repeat(real, n_negatives)
    users = log.user[src]
    item = np.zeros(len(src), dtype=np.int64)
    rng = np.random.default_rng(seed)
    todo = np.arange(len(src))
    for round_ in range(max_rounds):
        if not len(todo):
            break
        draw = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), log.n_items)
        if pools is not None and pools.shape[1] and round_ < max_rounds // 2:
            pooled = pools[users[todo], rng.integers(0, pools.shape[1], len(todo))]
            draw = np.where(pooled > 0, pooled, draw)
        key = users[todo] * width + draw
        pos = np.minimum(np.searchsorted(rated, key), len(rated) - 1)
        bad = rated[pos] == key
        item[todo[~bad]] = draw[~bad]
        todo = todo[bad]
    if len(todo):
        raise DataError(f"impression log '{log.name}': could not sample unrated items for {len(todo)} rows in "
                        f"{max_rounds} rounds (users who rated almost every popular item)")
    k = len(src)
    labels = {t: np.concatenate([v, np.zeros(k, np.float32) if t in log.binary_tasks else
                                 np.full(k, np.nan, np.float32)]) for t, v in log.labels.items()}
    labels[task] = np.concatenate([log.context.astype(np.float32), np.zeros(k, np.float32)])
    return ImpressionLog.build(
        name=name or f"{log.name}-neg", users=log.users, items=log.items,
        user=np.concatenate([log.user, users]), item=np.concatenate([log.item, item]),
        time=np.concatenate([log.time, log.time[src]]), day=np.concatenate([log.day, log.day[src]]),
        labels=labels, binary_tasks=(*log.binary_tasks, task), regression_tasks=log.regression_tasks,
        actions=np.concatenate([log.actions, np.ones((k, log.actions.shape[1]), np.int64)]),
        action_sizes=log.action_sizes, item_features=log.item_features,
        item_feature_sizes=log.item_feature_sizes, user_features=log.user_features,
        user_feature_sizes=log.user_feature_sizes, titles=log.titles,
        source_split=np.concatenate([log.source_split, log.source_split[src]]) if log.source_split is not None
        else None,
        context=np.concatenate([log.context, np.zeros(k, dtype=bool)]),
        row_features={n: np.concatenate([v, v[src]]) for n, v in log.row_features.items()},
        row_feature_sizes=log.row_feature_sizes, row_feature_values=log.row_feature_values,
        meta={**log.meta, "negatives": {
            "per_real_row": n_negatives, "seed": seed, "task": task, "rows": k,
            "distribution": ("uniform over the user's pool (popularity where it is empty or used up)"
                             if pools is not None else "popularity over the training part's context rows")
                            + (", items the user never interacted with" if rated_until is None else
                               ", items the user had not interacted with by their own cut" if np.ndim(rated_until)
                               else f", items the user had not interacted with by {rated_until} ms")
                            + "; same time as the real row; not history tokens"}})


def _read_movielens_negatives(root: Path) -> ImpressionLog:
    return with_sampled_negatives(_read_movielens_ratings(root), name="movielens-1m-ratings-neg")


# --- loading, with a cache ----------------------------------------------------------------------------------

READERS = {"kuairand-pure": _read_kuairand, "movielens-1m-ratings": _read_movielens_ratings,
           "movielens-1m-ratings-neg": _read_movielens_negatives}


def _sources(name: str, root: Path) -> list[Path]:
    if name == "kuairand-pure":
        found = _kuairand_files(root)
        return [] if found is None else [*found[1], found[2], found[3]]
    files = [root / _ML_MERGED]
    return files + [root / d / f for d in _ML_META for f in ("movies.dat", "users.dat") if (root / d / f).is_file()]


def cache_root() -> Path:
    base = os.environ.get("GENREC_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "genrec") / "impressions"


def load_impressions(name: str, data_dir: str | Path | None = None, cache: bool = True) -> ImpressionLog:
    """A built-in impression log by name, read from ``data_dir`` (default: GENREC_DATA_DIR, see data_home).

    With ``cache`` the prepared log is reused from (or saved to) :func:`cache_root`, keyed by the name, the
    format version and the size and mtime of every source file."""
    if name not in READERS:
        raise UnknownDatasetError(f"unknown impression dataset '{name}'; built-in ones are {', '.join(READERS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else data_home()
    sources = [p for p in _sources(name, root) if p.is_file()]
    if not cache or not sources:
        return READERS[name](root)  # raises a DataError naming what is missing
    h = hashlib.sha256(f"{name}:{FORMAT_VERSION}:{READER_VERSION}".encode())
    if name == "movielens-1m-ratings-neg":
        h.update(f":{ML_NEGATIVES}:{NEGATIVE_SEED}".encode())
    for p in sources:
        st = p.stat()
        h.update(f"|{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    folder = cache_root() / f"{name}-{h.hexdigest()[:16]}"
    if (folder / "impressions.json").is_file():
        try:
            return ImpressionLog.load(folder)
        except (DataError, OSError, pa.ArrowInvalid, KeyError):
            pass  # a damaged cache is rebuilt below
    log = READERS[name](root)
    with contextlib.suppress(OSError):  # a read-only cache location only costs the next run a re-read
        log.save(folder)
    return log
