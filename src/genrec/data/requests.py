"""Ranking requests: a user's candidate rows grouped with the history they read, and their collation into batches.

Training and evaluation both cut a user's rows into *requests* (:func:`ranking_requests`): a group of candidate
rows with the history of up to ``max_len`` rows before the last of them. Candidate c may read only the history
rows strictly earlier in time than itself (``visible``), so no label reaches its own prediction, while every
earlier impression of the user, whatever its split, is an input (at serving time those labels are known).
:func:`collate` pads a batch of requests into the fields of ``genrec.models.ranking.RankBatch``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from genrec.data.impressions import ImpressionLog
from genrec.data.jagged import Jagged, _ranges
from genrec.errors import ConfigError


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
