"""Splits of an impression log into training, validation and test rows: by day or time (a global temporal split,
the default of each built-in log), the source's own split, or per user leave-one-out (the ranker's side of the
sequence models' ``split: loo``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from genrec.data.impressions import SPLIT_NAMES, ImpressionLog, label_stats
from genrec.errors import ConfigError

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


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _make_split(log: ImpressionLog, masks: tuple[np.ndarray, ...], rule: dict[str, Any]) -> ImpressionSplit:
    info: dict[str, Any] = {"dataset": log.name, "rule": rule}
    for name, m in zip(SPLIT_NAMES, masks, strict=True):
        t = log.time[m]
        info[name] = {"rows": int(m.sum()), "users": len(np.unique(log.user[m])), "items": len(np.unique(log.item[m])),
                      "first_day": int(log.day[m].min()) if len(t) else None,
                      "last_day": int(log.day[m].max()) if len(t) else None,
                      "first_time": iso_time(int(t.min())) if len(t) else None,
                      "last_time": iso_time(int(t.max())) if len(t) else None, **label_stats(log, m)}
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
        end = (f" up to {iso_time(cut_end)} (the first row dated {end_day} or later)" if cut_end is not None else
               " from then on")
        rule["text"] = (f"train: time < {iso_time(cut_valid) if cut_valid is not None else 'end'} (the first row dated "
                        f"{valid_day} or later); valid: up to {iso_time(cut_test) if cut_test is not None else 'end'} "
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
