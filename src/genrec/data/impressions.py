"""Impression logs for the multi-task ranking stage: every shown item with its feedback, per user, in time order.

An :class:`ImpressionLog` holds N impressions sorted user-major, by (user, time, original row), so the rows of
dense user ``u`` are ``user_offsets[u - 1]:user_offsets[u]``. Each row carries one label per task (binary tasks
and regression tasks), one code per action field (what the user did, as a history token sees it; 0 = padding,
real rows >= 1) and a day (the dataset's own calendar). Items and users carry categorical feature tables
(codes 0 = unknown / padding) indexed by dense id; users and items are those seen in the log. Row features are
per-impression context codes known when the impression is served (KuaiRand-Pure: ``tab``, the app surface;
no model reads them yet). A row is a
*context* row (the default) when it was a real interaction that a later request may read as history; rows that
are only candidates (sampled negatives, :func:`with_sampled_negatives`) have ``context`` False and never
appear in any history.

Training and evaluation both cut a user's rows into *requests* (:func:`ranking_requests`): a group of candidate
rows with the history of up to ``max_len`` rows before the last of them. Candidate c may read only the history
rows strictly earlier in time than itself (``visible``), so no label reaches its own prediction, while every
earlier impression of the user, whatever its split, is an input (at serving time those labels are known).
:func:`collate` pads a batch of requests into the fields of ``genrec.models.ranking.RankBatch``.

Built-in readers: ``kuairand-pure`` (the official KuaiRand-Pure layout, else the offline date window),
``movielens-1m-ratings`` and ``movielens-1m-ratings-neg`` (the same ratings plus 4 popularity-sampled unrated
items per rating, with a task ``rate``: 1 for the real rating, 0 for a sampled item). A prepared log is cached
as Parquet + JSON under ``$GENREC_CACHE_DIR/impressions`` (else ``~/.cache/genrec/impressions``), keyed by the
name, the format and reader versions and the size and mtime of every source file, so a re-run loads in well
under a second and a changed source file is re-read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data.actions import KUAIRAND_SIGNALS, KUAIRAND_WATCH, SCHEMAS, action_bits, encode_columns, schema_for
from genrec.data.builtin import data_home
from genrec.data.dataset import Vocab
from genrec.data.jagged import Jagged, _ranges
from genrec.errors import ConfigError, DataError, UnknownDatasetError
from genrec.io import read_prepared_info, write_json, write_parquet

FORMAT_VERSION = 1
READER_VERSION = 3  # part of the cache key: bumped when a reader's output changes (2: KuaiRand's row feature tab;
# 3: the raw values of row feature codes)
SPLIT_NAMES = ("train", "valid", "test")  # codes 0, 1, 2 of ImpressionLog.source_split


@dataclass(frozen=True, eq=False)
class ImpressionLog:
    """N impressions sorted by (user, time, original row); see the module docstring."""

    name: str
    users: Vocab
    items: Vocab
    user: np.ndarray  # int64 [N] dense user 1..n_users
    item: np.ndarray  # int64 [N] dense item 1..n_items
    time: np.ndarray  # int64 [N] unix ms
    day: np.ndarray  # int32 [N] YYYYMMDD in the dataset's own calendar
    labels: dict[str, np.ndarray]  # task -> float32 [N]
    binary_tasks: tuple[str, ...]
    regression_tasks: tuple[str, ...]
    actions: np.ndarray  # int64 [N, A], one code per field of action_sizes (in order), >= 1
    action_sizes: dict[str, int]
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_items + 1]
    item_feature_sizes: dict[str, int] = field(default_factory=dict)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_users + 1]
    user_feature_sizes: dict[str, int] = field(default_factory=dict)
    titles: list[str] | None = None  # per dense item (index 0 = '')
    source_split: np.ndarray | None = None  # int8 [N] index into SPLIT_NAMES, where the source has a split
    meta: dict[str, Any] = field(default_factory=dict)
    context: np.ndarray | None = None  # bool [N]: the row may be a history token (None: every row may)
    # Per-impression context known when the impression is served (KuaiRand: the app tab), name -> int64 [N]
    # codes in [0, size), 0 = unknown.
    row_features: dict[str, np.ndarray] = field(default_factory=dict)
    row_feature_sizes: dict[str, int] = field(default_factory=dict)
    # The raw value (as text) of each row feature's codes 1..size-1, where the reader knows them: what a served
    # request's context ({"tab": 1}) is mapped through.
    row_feature_values: dict[str, list[str]] = field(default_factory=dict)
    user_offsets: np.ndarray = field(init=False)  # int64 [n_users + 1]
    context_rows: np.ndarray | None = field(init=False)  # int64 row index of each context row (None: all rows)
    context_before: np.ndarray = field(init=False, repr=False)  # int64 [N + 1]: context rows among rows [0, i)

    def __post_init__(self) -> None:
        n, nu, ni = len(self.user), len(self.users), len(self.items)
        if self.context is None:
            object.__setattr__(self, "context", np.ones(n, dtype=bool))
        elif np.asarray(self.context).dtype != np.bool_:
            raise DataError(f"impression log '{self.name}': context must be boolean, got {self.context.dtype}")
        for key, arr in [("item", self.item), ("time", self.time), ("day", self.day), ("actions", self.actions),
                         ("context", self.context), *self.labels.items(),
                         *([("source_split", self.source_split)] if self.source_split is not None else [])]:
            if len(arr) != n:
                raise DataError(f"impression log '{self.name}': {key} has {len(arr)} rows, expected {n}")
        if set(self.labels) != set(self.binary_tasks + self.regression_tasks):
            raise DataError(f"impression log '{self.name}': labels {sorted(self.labels)} do not match the tasks")
        if self.actions.shape[1:] != (len(self.action_sizes),):
            raise DataError(f"impression log '{self.name}': actions have shape {self.actions.shape}, expected "
                            f"[{n}, {len(self.action_sizes)}] (one column per action field)")
        if n and (self.user.min() < 1 or self.user.max() > nu or self.item.min() < 1 or self.item.max() > ni):
            raise DataError(f"impression log '{self.name}': user/item indices outside 1..{nu} / 1..{ni}")
        sizes = np.array(list(self.action_sizes.values()), dtype=np.int64)
        if n and ((self.actions < 1).any() or (self.actions >= sizes).any()):
            raise DataError(f"impression log '{self.name}': action codes must be in [1, size) per field")
        for tables, sizes_, count, what in ((self.item_features, self.item_feature_sizes, ni, "item"),
                                            (self.user_features, self.user_feature_sizes, nu, "user")):
            if set(tables) != set(sizes_):
                raise DataError(f"impression log '{self.name}': {what} feature tables and sizes differ")
            for key, t in tables.items():
                if t.shape != (count + 1,) or t.min() < 0 or t.max() >= sizes_[key] or t[0] != 0:
                    raise DataError(f"impression log '{self.name}': {what} feature '{key}' must have shape "
                                    f"({count + 1},), codes in [0, {sizes_[key]}) and 0 at index 0")
        if set(self.row_features) != set(self.row_feature_sizes):
            raise DataError(f"impression log '{self.name}': row feature columns and sizes differ")
        for key, col in self.row_features.items():
            if col.shape != (n,) or (n and (col.min() < 0 or col.max() >= self.row_feature_sizes[key])):
                raise DataError(f"impression log '{self.name}': row feature '{key}' must have {n} rows with codes "
                                f"in [0, {self.row_feature_sizes[key]})")
        for key, values in self.row_feature_values.items():
            if key not in self.row_feature_sizes or len(values) != self.row_feature_sizes[key] - 1:
                raise DataError(f"impression log '{self.name}': row feature values of '{key}' must name codes "
                                f"1..{self.row_feature_sizes.get(key, 1) - 1} of a row feature")
        order_ok = (np.diff(self.user) >= 0) & ((np.diff(self.user) > 0) | (np.diff(self.time) >= 0))
        if not order_ok.all():
            raise DataError(f"impression log '{self.name}': rows are not sorted by (user, time)")
        offsets = np.zeros(nu + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user, minlength=nu + 1)[1:], out=offsets[1:])
        object.__setattr__(self, "user_offsets", offsets)
        before = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.context, out=before[1:])
        object.__setattr__(self, "context_before", before)
        object.__setattr__(self, "context_rows", None if before[-1] == n else np.flatnonzero(self.context))

    @classmethod
    def build(cls, *, user: np.ndarray, item: np.ndarray, time: np.ndarray,
              tiebreak: tuple[np.ndarray, ...] = (), **fields_: Any) -> ImpressionLog:
        """A log from rows in any order: sorts them by (user, time, *tiebreak, original row) and takes every
        per-row field (``day``, ``labels``, ``actions``, ``source_split``, ``row_features``) along. Other keyword
        arguments are the dataclass fields (``context`` is per row too)."""
        n = len(user)
        order = np.lexsort((np.arange(n), *reversed(tiebreak), time, user))
        per_row = {k: np.asarray(fields_.pop(k))[order] for k in ("day", "actions", "source_split", "context")
                   if fields_.get(k) is not None}
        per_row["labels"] = {k: np.asarray(v, dtype=np.float32)[order] for k, v in fields_.pop("labels").items()}
        per_row["row_features"] = {k: np.asarray(v, dtype=np.int64)[order]
                                   for k, v in (fields_.pop("row_features", None) or {}).items()}
        return cls(user=np.asarray(user, dtype=np.int64)[order], item=np.asarray(item, dtype=np.int64)[order],
                   time=np.asarray(time, dtype=np.int64)[order], **per_row, **fields_)

    @property
    def n_rows(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.binary_tasks + self.regression_tasks

    def spec_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``genrec.models.ranking.RankSpec`` for this log."""
        return {"n_items": self.n_items, "n_users": self.n_users, "binary_tasks": self.binary_tasks,
                "regression_tasks": self.regression_tasks, "item_feature_sizes": dict(self.item_feature_sizes),
                "user_feature_sizes": dict(self.user_feature_sizes), "action_sizes": dict(self.action_sizes),
                "row_feature_sizes": dict(self.row_feature_sizes),
                "action_bits": action_bits(schema_for(self.name, self.action_sizes))}

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.n_rows, "users": self.n_users, "items": self.n_items,
                "context_rows": int(self.context_before[-1]),
                "first_day": int(self.day.min()) if self.n_rows else None,
                "last_day": int(self.day.max()) if self.n_rows else None,
                **_label_stats(self, np.ones(self.n_rows, dtype=bool))}

    # --- Parquet + JSON ---------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """rows / users / items Parquet tables, then impressions.json (written last: it marks a complete copy)."""
        folder = Path(folder)
        rows = {"user": self.user, "item": self.item, "time": self.time, "day": self.day,
                **{f"label:{k}": v for k, v in self.labels.items()},
                **{f"action:{k}": np.ascontiguousarray(self.actions[:, a]) for a, k in enumerate(self.action_sizes)},
                **{f"row:{k}": v for k, v in self.row_features.items()}}
        if self.source_split is not None:
            rows["source_split"] = self.source_split
        if not self.context.all():  # absent: every row is a context row (logs saved before the column existed)
            rows["context"] = self.context
        write_parquet(folder / "rows.parquet", pa.table(rows))
        write_parquet(folder / "users.parquet", pa.table(
            {"raw_id": self.users.raw, **{f"feature:{k}": v[1:] for k, v in self.user_features.items()}}))
        items = {"raw_id": self.items.raw, **{f"feature:{k}": v[1:] for k, v in self.item_features.items()}}
        if self.titles is not None:
            items["title"] = pa.array(self.titles[1:], pa.string())
        write_parquet(folder / "items.parquet", pa.table(items))
        write_json(folder / "impressions.json", {
            "format_version": FORMAT_VERSION, "name": self.name, "binary_tasks": list(self.binary_tasks),
            "regression_tasks": list(self.regression_tasks), "action_sizes": self.action_sizes,
            "item_feature_sizes": self.item_feature_sizes, "user_feature_sizes": self.user_feature_sizes,
            "row_feature_sizes": self.row_feature_sizes, "row_feature_values": self.row_feature_values,
            "stats": self.stats(), "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ImpressionLog:
        folder = Path(folder)
        info = read_prepared_info(folder, "impressions.json", FORMAT_VERSION, "impression log")
        rows, users, items = (pq.read_table(folder / f"{p}.parquet") for p in ("rows", "users", "items"))

        def col(t: pa.Table, key: str, dtype: type = np.int64) -> np.ndarray:
            return t.column(key).to_numpy().astype(dtype, copy=False)

        def table(t: pa.Table, key: str) -> np.ndarray:
            return np.concatenate([[0], col(t, f"feature:{key}")])

        tasks = info["binary_tasks"] + info["regression_tasks"]
        return cls(
            name=info["name"], users=Vocab(users.column("raw_id").combine_chunks()),
            items=Vocab(items.column("raw_id").combine_chunks()), user=col(rows, "user"), item=col(rows, "item"),
            time=col(rows, "time"), day=col(rows, "day", np.int32),
            labels={k: col(rows, f"label:{k}", np.float32) for k in tasks},
            binary_tasks=tuple(info["binary_tasks"]), regression_tasks=tuple(info["regression_tasks"]),
            actions=np.stack([col(rows, f"action:{k}") for k in info["action_sizes"]], axis=1),
            action_sizes=info["action_sizes"],
            item_features={k: table(items, k) for k in info["item_feature_sizes"]},
            item_feature_sizes=info["item_feature_sizes"],
            user_features={k: table(users, k) for k in info["user_feature_sizes"]},
            user_feature_sizes=info["user_feature_sizes"],
            titles=["", *items.column("title").to_pylist()] if "title" in items.column_names else None,
            source_split=col(rows, "source_split", np.int8) if "source_split" in rows.column_names else None,
            meta=info.get("meta", {}),
            context=col(rows, "context", np.bool_) if "context" in rows.column_names else None,
            row_features={k: col(rows, f"row:{k}") for k in info.get("row_feature_sizes", {})},
            row_feature_sizes=info.get("row_feature_sizes", {}),
            row_feature_values=info.get("row_feature_values", {}))


def _label_stats(log: ImpressionLog, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    return {"positive_rate": {t: float(log.labels[t][mask].mean()) if n else None for t in log.binary_tasks},
            "mean": {t: float(log.labels[t][mask].mean()) if n else None for t in log.regression_tasks}}


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


# --- splits -------------------------------------------------------------------------------------------------

# kuairand-pure: train = days before 2022-05-06 (the window copy: 04-25..05-05; the official layout:
# 04-08..05-05), valid = 05-06, test = 05-07..05-08, cut at the first impression of each of those days (see
# temporal_split: KuaiRand's `date` runs up to ~1 h ahead of time_ms, so ~0.3 % of the rows dated 05-05 happened
# after the first row dated 05-06). movielens-1m-ratings(-neg): the source's global time split.
DEFAULT_CUTS: dict[str, dict[str, Any] | str] = {
    "kuairand-pure": {"valid_day": 20220506, "test_day": 20220507, "strict_time": True},
    "movielens-1m-ratings": "source",
    "movielens-1m-ratings-neg": "source",
    "movielens-1m-ratings-pool": "source",  # negatives from per-user pools (train.config.NegativesConfig)
    "movielens-1m-ratings-sampled": "source",  # popularity negatives of a run config's `negatives:`
}


@dataclass(frozen=True)
class ImpressionSplit:
    """Boolean row masks of ``log`` per part, and a description of the cuts."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    info: dict[str, Any]

    def part(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split part must be one of {', '.join(SPLIT_NAMES)}, got {name!r}")
        return getattr(self, name)

    def describe(self) -> dict[str, Any]:
        return self.info


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _make_split(log: ImpressionLog, masks: tuple[np.ndarray, ...], rule: dict[str, Any]) -> ImpressionSplit:
    info: dict[str, Any] = {"dataset": log.name, "rule": rule}
    for name, m in zip(SPLIT_NAMES, masks, strict=True):
        t = log.time[m]
        info[name] = {"rows": int(m.sum()), "users": len(np.unique(log.user[m])), "items": len(np.unique(log.item[m])),
                      "first_day": int(log.day[m].min()) if len(t) else None,
                      "last_day": int(log.day[m].max()) if len(t) else None,
                      "first_time": _iso(int(t.min())) if len(t) else None,
                      "last_time": _iso(int(t.max())) if len(t) else None, **_label_stats(log, m)}
    # A global temporal split has no row of an earlier part later than the first row of a later part.
    for early, late in (("train", "valid"), ("valid", "test"), ("train", "test")):
        me, ml = masks[SPLIT_NAMES.index(early)], masks[SPLIT_NAMES.index(late)]
        later = int((log.time[me] > log.time[ml].min()).sum()) if me.any() and ml.any() else 0
        info[f"{early}_rows_after_first_{late}"] = later
    return ImpressionSplit(*masks, info=info)


def temporal_split(log: ImpressionLog, valid_day: int, test_day: int, strict_time: bool = False,
                   end_day: int | None = None) -> ImpressionSplit:
    """train: day < valid_day; valid: valid_day <= day < test_day; test: day >= test_day (days YYYYMMDD), and
    before ``end_day`` when given (later rows are in no part: an earlier fold of a rolling evaluation).

    A dataset's day need not follow its times exactly (KuaiRand's `date` comes from an hour that runs ahead of
    time_ms), so rows of an earlier part can be later than the first row of the next; ``describe()`` counts them.
    ``strict_time`` cuts at times instead: valid starts at the first row dated ``valid_day`` or later, test at
    the first row dated ``test_day`` or later, so every part is a time interval (a global temporal split)."""
    if not valid_day <= test_day:
        raise ConfigError(f"valid_day ({valid_day}) must not be after test_day ({test_day})")
    if end_day is not None and not test_day < end_day:
        raise ConfigError(f"end_day ({end_day}) must be after test_day ({test_day})")
    after = log.day >= end_day if end_day is not None else np.zeros(log.n_rows, dtype=bool)
    train, test = log.day < valid_day, (log.day >= test_day) & ~after
    until = f" and day < {end_day}" if end_day is not None else ""
    rule: dict[str, Any] = {"kind": "days", "valid_day": valid_day, "test_day": test_day, "strict_time": strict_time,
                            "text": f"train: day < {valid_day}; valid: {valid_day} <= day < {test_day}; "
                                    f"test: day >= {test_day}{until}"}
    if end_day is not None:
        rule["end_day"] = end_day
    if strict_time:
        by_day = (train, test, after)
        cut_valid = _first_time(log, ~train)
        cut_test = _first_time(log, log.day >= test_day)
        cut_end = _first_time(log, after)
        train = log.time < cut_valid if cut_valid is not None else np.ones(log.n_rows, dtype=bool)
        after = log.time >= cut_end if cut_end is not None else np.zeros(log.n_rows, dtype=bool)
        test = (log.time >= cut_test if cut_test is not None else np.zeros(log.n_rows, dtype=bool)) & ~after
        end = (f" up to {_iso(cut_end)} (the first row dated {end_day} or later)" if cut_end is not None else
               " from then on")
        rule["text"] = (f"train: time < {_iso(cut_valid) if cut_valid is not None else 'end'} (the first row dated "
                        f"{valid_day} or later); valid: up to {_iso(cut_test) if cut_test is not None else 'end'} "
                        f"(the first row dated {test_day} or later); test:{end}")
        rule["moved_rows"] = int(sum((a != b).sum() for a, b in zip((train, test, after), by_day, strict=True)))
    return _make_split(log, (train, ~train & ~test & ~after, test), rule)


def _first_time(log: ImpressionLog, rows: np.ndarray) -> int | None:
    return int(log.time[rows].min()) if rows.any() else None


def source_split(log: ImpressionLog) -> ImpressionSplit:
    """The split shipped with the source (``log.source_split``)."""
    if log.source_split is None:
        raise ConfigError(f"impression log '{log.name}' has no source split; use temporal_split")
    return _make_split(log, tuple(log.source_split == k for k in range(3)),
                       {"kind": "source", "text": "the source's own split column"})


def leave_one_out_split(log: ImpressionLog) -> ImpressionSplit:
    """Per user, by time: test = rows at or after the user's last context row (their last rating, with its
    sampled candidates); valid = rows at or after the second-to-last context row's time and before that; train =
    the rest. The ranker's side of the sequence models' leave-one-out split (``split: loo``): the last two
    interactions of every user are held out, so a two-stage evaluation may use every user's target. Ties: every row
    sharing the held-out row's time is held out with it (never trained on; a user whose last two ratings share a
    time has no validation row). Users with fewer than three context rows keep everything in train."""
    ctx = log.context_rows if log.context_rows is not None else np.arange(log.n_rows)
    per_user = np.bincount(log.user[ctx], minlength=log.n_users + 1)
    last = np.cumsum(per_user) - 1  # index into ctx of each user's last context row (rows are user-major by time)
    eligible = per_user >= 3
    t_test = np.where(eligible, log.time[ctx[np.maximum(last, 0)]], np.iinfo(np.int64).max)
    t_valid = np.where(eligible, log.time[ctx[np.maximum(last - 1, 0)]], np.iinfo(np.int64).max)
    t = log.time
    test = t >= t_test[log.user]
    valid = ~test & (t >= t_valid[log.user])
    rule = {"kind": "leave-one-out", "text": "per user by time: test = rows from the user's last rating on, valid = "
            "from the second-to-last rating's time until then, train = earlier rows (users with >= 3 ratings; "
            "candidate rows go with the rating whose time they share)"}
    return _make_split(log, (~test & ~valid, valid, test), rule)


def ranking_split(log: ImpressionLog, kind: str = "temporal", days: dict[str, int] | None = None) -> ImpressionSplit:
    """The split a ranking run config names: ``temporal`` (the log's default cuts, or ``days``) or ``loo``."""
    if kind == "loo":
        if days:
            raise ConfigError("temporal.valid_day / test_day / end_day apply to split: temporal, not loo")
        return leave_one_out_split(log)
    if kind != "temporal":
        raise ConfigError(f"ranking logs split temporal or loo, not {kind!r}")
    return default_split(log, days)


def default_split(log: ImpressionLog, days: dict[str, int] | None = None) -> ImpressionSplit:
    """The log's default cuts; ``days`` (valid_day, test_day, end_day; YYYYMMDD) replace those given, e.g. an
    earlier fold of a rolling evaluation (``temporal: {valid_day: 20220504, test_day: 20220505, end_day:
    20220507}``), cut the same way (by time at the first row of each day where the default does)."""
    cuts = DEFAULT_CUTS.get(log.name)
    days = {k: v for k, v in (days or {}).items() if v is not None}
    if cuts is None and not {"valid_day", "test_day"} <= set(days):
        raise ConfigError(f"no default split for '{log.name}'; give temporal.valid_day and temporal.test_day")
    if cuts == "source":
        if days:
            raise ConfigError(f"'{log.name}' uses its source's split; temporal days do not apply to it")
        return source_split(log)
    return temporal_split(log, **{**(cuts or {}), **days})


# --- requests and batches -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requests:
    """R forward-pass units: a user's history [hist_start, hist_end) and candidate rows (jagged).

    History bounds count *context rows* (:attr:`ImpressionLog.context_rows`): the history is context rows
    hist_start..hist_end - 1. When every row is a context row (KuaiRand, the plain ratings log) they are row
    indices of the log."""

    user: np.ndarray  # [R] dense user
    hist_start: np.ndarray  # [R] context-row index (= row index when every row is a context row)
    hist_end: np.ndarray  # [R]
    candidates: Jagged  # row indices of each request's candidates, in time order
    visible: Jagged  # aligned with candidates.values: history tokens (a prefix) the candidate may read
    frozen: bool = False  # every candidate reads the history and time of its request's first (see freeze)

    def __len__(self) -> int:
        return len(self.user)


def freeze(requests: Requests) -> Requests:
    """Requests whose candidates all read what the first candidate reads, at its time (:func:`collate` sets
    every candidate's time to the first's): a served request, one history for all its candidates. No candidate's
    history then holds another candidate's outcome, which within-user metrics would otherwise reward."""
    offsets = requests.visible.offsets
    first = requests.visible.values[offsets[:-1]]
    return replace(requests, visible=Jagged(np.repeat(first, np.diff(offsets)), offsets), frozen=True)


def first_same_time(log: ImpressionLog) -> np.ndarray:
    """Per row, the first row of its user with the same time (rows before it are strictly earlier)."""
    n = log.n_rows
    start = np.ones(n, dtype=bool)
    start[1:] = (log.user[1:] != log.user[:-1]) | (log.time[1:] != log.time[:-1])
    return np.maximum.accumulate(np.where(start, np.arange(n), 0))


def ranking_requests(log: ImpressionLog, candidates: np.ndarray, max_len: int,
                     stride: int | None = None, frozen: bool = False) -> Requests:
    """Group each user's candidate rows into requests spanning at most ``stride`` (default ``max_len // 2``)
    consecutive rows of that user, with the user's last ``max_len`` context rows up to the group's end as history.

    Windows of ``stride`` rows start at each user's first candidate, so a contiguous block of candidates (a
    time split) is cut into equal groups; every candidate sees at least ``max_len - stride`` earlier context
    rows of history where the user has them. A candidate may be any row (a sampled negative too); its
    ``visible`` count is the number of the user's context rows in the history strictly earlier than it
    (``frozen``: the first candidate's count for all, see :func:`freeze`)."""
    cand = np.asarray(candidates)
    if cand.dtype != np.bool_ or cand.shape != (log.n_rows,):
        raise ConfigError(f"candidates must be a boolean mask of shape ({log.n_rows},), got {cand.dtype} "
                          f"{cand.shape}")
    stride = max(1, max_len // 2) if stride is None else stride
    if max_len < 1 or not 1 <= stride <= max_len:
        raise ConfigError(f"need max_len >= 1 and 1 <= stride <= max_len, got max_len={max_len}, stride={stride}")
    rows = np.flatnonzero(cand)
    users = log.user[rows]
    new_user = np.ones(len(rows), dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    first = np.maximum.accumulate(np.where(new_user, rows, 0))  # rows increase, so this is the user's first
    window = (rows - first) // stride
    new_group = new_user.copy()
    new_group[1:] |= window[1:] != window[:-1]
    starts = np.flatnonzero(new_group)
    offsets = np.append(starts, len(rows)).astype(np.int64)
    group_users = users[starts]
    before = log.context_before  # rows -> context-row indices
    hist_end = before[rows[offsets[1:] - 1] + 1]
    hist_start = np.maximum(before[log.user_offsets[group_users - 1]], hist_end - max_len)
    group = np.cumsum(new_group) - 1
    visible = np.maximum(before[first_same_time(log)[rows]] - hist_start[group], 0)
    requests = Requests(group_users, hist_start, hist_end, Jagged(rows, offsets), Jagged(visible, offsets))
    return freeze(requests) if frozen else requests


def _place(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) of every value of a jagged layout with these row lengths."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return rows, np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _pad(values: np.ndarray, rb: np.ndarray, rp: np.ndarray, b: int, width: int,
         dtype: type = np.int64) -> np.ndarray:
    out = np.zeros((b, width, *values.shape[1:]), dtype=dtype)
    out[rb, rp] = values
    return out


def history_fields(log: ImpressionLog, hist_start: np.ndarray, hist_end: np.ndarray) -> dict[str, np.ndarray]:
    """``hist_items``, ``hist_actions``, ``hist_time`` and ``hist_len`` of histories [hist_start, hist_end) in
    context-row indices (see :class:`Requests`), right-padded with 0 to the longest."""
    hs = np.asarray(hist_start, dtype=np.int64)
    hl = np.asarray(hist_end, dtype=np.int64) - hs
    b, width = len(hs), int(hl.max(initial=0))
    hb, hp = _place(hl)
    hrows = _ranges(hs, hl)
    if log.context_rows is not None:
        hrows = log.context_rows[hrows]
    out = {"hist_items": _pad(log.item[hrows], hb, hp, b, width),
           "hist_actions": _pad(log.actions[hrows], hb, hp, b, width),
           "hist_time": _pad(log.time[hrows], hb, hp, b, width),
           "hist_len": hl.astype(np.int64)}
    if log.row_features:
        out["hist_context"] = _pad(row_context(log, hrows), hb, hp, b, width)
    return out


def row_context(log: ImpressionLog, rows: np.ndarray) -> np.ndarray:
    """The row features of ``rows`` as one int64 matrix [len(rows), C], columns in ``row_feature_sizes`` order."""
    return np.stack([log.row_features[k][rows] for k in log.row_feature_sizes], axis=-1)


def histories_before(log: ImpressionLog, users: np.ndarray, times: np.ndarray,
                     max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(hist_start, hist_end) in context-row indices of the last ``max_len`` context rows of each dense user
    strictly earlier than its time: the history of a request served at that time (for :func:`history_fields`).
    A user outside 1..n_users gets an empty history."""
    users = np.asarray(users, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    known = (users >= 1) & (users <= log.n_users)
    u = np.where(known, users, 1)
    lo, hi = log.user_offsets[u - 1], log.user_offsets[u]
    # rows of the user strictly earlier than t: binary search per user segment, all cases at once
    left, right = lo.copy(), hi.copy()
    while (open_ := left < right).any():
        mid = (left + right) // 2
        earlier = open_ & (log.time[np.minimum(mid, max(log.n_rows - 1, 0))] < times)
        left = np.where(earlier, mid + 1, left)
        right = np.where(open_ & ~earlier, mid, right)
    end = np.where(known, log.context_before[left], 0)
    start = np.where(known, np.maximum(log.context_before[lo], end - max_len), 0)
    return start, end


def collate(log: ImpressionLog, requests: Requests, idx: np.ndarray) -> dict[str, Any]:
    """The RankBatch fields of requests ``idx`` as numpy arrays, right-padded with 0 to the batch's longest
    history (L) and candidate list (M). History tokens are context rows only."""
    idx = np.asarray(idx, dtype=np.int64)
    b = len(idx)
    cand, vis = requests.candidates.take(idx), requests.visible.take(idx)
    cl = cand.lengths
    width_m = int(cl.max(initial=0))
    cb, cp = _place(cl)
    crows = cand.values

    def pad(values: np.ndarray, rb: np.ndarray, rp: np.ndarray, width: int, dtype: type = np.int64) -> np.ndarray:
        return _pad(values, rb, rp, b, width, dtype)

    cand_items, cand_time = pad(log.item[crows], cb, cp, width_m), pad(log.time[crows], cb, cp, width_m)
    if requests.frozen:  # the request's time: its first candidate's
        cand_time = np.where(cand_items > 0, cand_time[:, :1], 0)
    out = {
        "user": requests.user[idx],
        **history_fields(log, requests.hist_start[idx], requests.hist_end[idx]),
        "cand_items": cand_items,
        "cand_time": cand_time,
        "visible": pad(vis.values, cb, cp, width_m),
        "labels": {t: pad(log.labels[t][crows], cb, cp, width_m, np.float32) for t in log.tasks},
    }
    if log.row_features:  # each candidate's own context: where that impression is shown
        out["cand_context"] = pad(row_context(log, crows), cb, cp, width_m)
    return out
