"""A gradient-boosted-trees ranking baseline (LightGBM): one tree ensemble per task over hand-made features.

Every feature of an impression is computed only from impressions strictly EARLIER in time than itself (rows
of the same user, item or group at the same timestamp are excluded too), in every part of the split, the same
rule the torch rankers' histories follow: at serving time those outcomes are known, later ones are not. Only
context rows (real interactions, :attr:`ImpressionLog.context`) count as earlier impressions; sampled negatives
are scored but never counted. Feature groups (``GBDTConfig.features``):

- ``categorical``: the item's and the user's feature codes (LightGBM categorical features; codes of the
  ``ordinal`` tables, e.g. duration buckets, are ordered numbers instead).
- ``context``: hour of day (UTC) and seconds since the user's previous impression.
- ``user``: the user's count of earlier impressions and earlier rate of every signal (binary tasks; mean of
  the regression tasks), smoothed toward the log's earlier global rate with ``prior`` pseudo-impressions.
- ``item``: the same for the item over all users, and the seconds since its first impression in the log.
- ``match`` (target-aware history): for each item table in ``match`` (author, tag), how many of the user's
  earlier impressions share the candidate's code, their share of the user's history, and the user's earlier
  rate of every signal on that code, smoothed toward the user's own earlier rate.
- ``row`` (not in the default): the impression's own row features (per-impression context known when it is
  served, e.g. KuaiRand's ``tab``) as categorical features, plus the ``match`` statistics of each (the user's
  earlier impressions with the same code), as the generative ranker's ``row_context`` reads them.

The user and match statistics read, by default (``user_history: day``), only the user's impressions of earlier
UTC days. Within the evaluated days a user's running rate moves only with that user's own labels, so a clicked
impression always has a lower running click rate than the impressions right after it: a within-user metric
(GAUC) reads that as a strong negative signal while the trees learn the positive between-user one (on
KuaiRand-Pure the running click rate alone has a test click GAUC of 0.14, and at a fixed 100 rounds the model's
click GAUC was 0.58 with running statistics against 0.60 with daily ones). Statistics frozen per day keep them
nearly constant within a user's test days.

With ``requests: frozen`` (the run config) every impression is featured as of its request's first impression
(:func:`genrec.train.gbdt.request_query_times`, the torch rankers' frozen requests): hour, gap, user, item and
match statistics then read nothing at or after the request's start, as a served request cannot.

Everything is a few sorts and cumulative sums over the whole log (KuaiRand-Pure's 228k rows: about a second).
The trainer is :mod:`genrec.train.gbdt`; models are saved in LightGBM's own text format, never pickled. Serving a
GBDT is not implemented: it is a baseline to measure the torch rankers against.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.impressions import ImpressionLog
from genrec.errors import GenrecError

FeatureGroup = Literal["categorical", "context", "user", "item", "match", "row"]
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


class GBDTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["gbdt"] = "gbdt"
    num_leaves: int = Field(63, ge=2, description="Leaves per tree.")
    learning_rate: float = Field(0.05, gt=0, le=1, description="Shrinkage of every tree.")
    n_estimators: int = Field(1000, ge=1, description="Maximum boosting rounds per task.")
    early_stopping_rounds: int = Field(50, ge=1, description="Stop a task after this many rounds without a better "
                                       "validation score (GAUC or AUC, per eval.select_metric; l2 for "
                                       "regression tasks); its best round is kept.")
    min_child_samples: int = Field(100, ge=1, description="Minimum impressions in a leaf.")
    feature_fraction: float = Field(0.8, gt=0, le=1, description="Share of features drawn for each tree.")
    bagging: float = Field(0.8, gt=0, le=1, description="Share of training rows drawn for each tree (1 = off).")
    lambda_l2: float = Field(1.0, ge=0, description="L2 penalty on leaf values.")
    num_threads: int | None = Field(None, ge=1, description="LightGBM threads (default: train.threads, else 1).")
    features: tuple[FeatureGroup, ...] = Field(
        ("categorical", "context", "user", "item", "match"), min_length=1,
        description="Feature groups to build (see genrec.models.gbdt; 'row', off by default, adds the log's "
        "per-impression context).")
    ordinal: tuple[str, ...] = Field(("duration", "decade"), description="Item or user feature tables whose codes "
                                     "are ordered buckets: numbers to the trees, not categories (0 = missing).")
    match: tuple[str, ...] = Field(("author", "tag", "genre"), description="Item feature tables for the "
                                   "target-aware history features; names the log lacks are skipped.")
    prior: float = Field(20.0, gt=0, description="Pseudo-impressions at the prior rate in every smoothed rate.")
    max_len: int = Field(128, ge=2, description="requests: frozen: impressions per validation / test request (the "
                         "torch rankers' max_len; training requests hold half), all featured as of its first.")
    user_history: Literal["day", "impression"] = Field(
        "day", description="The user and match statistics read the user's impressions of earlier days (UTC) only, "
        "or every strictly earlier impression (see genrec.models.gbdt).")


def import_lightgbm() -> ModuleType:
    """LightGBM, imported only when a GBDT is trained (an optional extra)."""
    try:
        import lightgbm
    except ImportError:
        raise GenrecError("model gbdt needs LightGBM: pip install 'genrec[gbdt]' (lightgbm>=4)") from None
    return lightgbm


@dataclass(frozen=True)
class Features:
    """One row per impression of the log (its row order), one column per feature."""

    names: list[str]
    values: np.ndarray  # float32 [N, F]; NaN = missing
    categorical: list[str]  # the names LightGBM treats as categories (non-negative integer codes)


def earlier_sums(keys: list[np.ndarray], time: np.ndarray, values: np.ndarray, weight: np.ndarray,
                 query_time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the weighted count and sums of ``values`` [N, K] over the rows of its group (equal ``keys``)
    strictly earlier than the row's ``query_time`` (default: its own time), and the time of the group's first
    weighted row (-1 where none is earlier).

    Events (every row at its own time) and queries (every row at its query time) share one stable sort by (keys,
    time), a query before the events of its time; a query reads the cumulative sums of its group's events before
    it, so neither the row itself nor anything at its query time or later reaches it."""
    n = len(time)
    q = time if query_time is None else np.asarray(query_time)
    both = np.r_[np.zeros(n, np.int8), np.ones(n, np.int8)]  # 0: the row's query, 1: the row as an event
    order = np.lexsort((both, np.r_[q, time], *(np.r_[k, k] for k in reversed(keys))))
    new_group = np.zeros(2 * n, dtype=bool)
    new_group[:1] = True
    for k in keys:
        ks = np.r_[k, k][order]
        new_group[1:] |= ks[1:] != ks[:-1]
    is_event = order >= n
    w = np.where(is_event, weight[order % n], 0).astype(np.float64)
    cum = np.zeros((2 * n + 1, 1 + values.shape[1]))
    np.cumsum(np.column_stack([w, values[order % n] * w[:, None]]), axis=0, out=cum[1:])
    pos = np.arange(2 * n)
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    queries = ~is_event
    earlier = np.empty((n, cum.shape[1]))
    earlier[order[queries]] = cum[pos[queries]] - cum[group_start[queries]]
    # events sort by time within a group, so its first weighted event is its earliest counted impression
    nxt = np.full(2 * n + 1, 2 * n, dtype=np.int64)
    counted = np.flatnonzero(w > 0)
    nxt[counted] = counted
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    first = np.empty(n, dtype=np.int64)
    first[order[queries]] = time[order[np.minimum(nxt[group_start[queries]], 2 * n - 1)] % n]
    return earlier[:, 0], earlier[:, 1:], np.where(earlier[:, 0] > 0, first, -1)


def build_features(log: ImpressionLog, cfg: GBDTConfig, query_time: np.ndarray | None = None) -> Features:
    """The features of every impression of ``log`` (see the module docstring), each as of its ``query_time``
    (default: its own time; a frozen request's first impression time for all its impressions, so none of them
    reads another's outcome, as in a served request)."""
    q = log.time if query_time is None else np.asarray(query_time, dtype=np.int64)
    if q.shape != log.time.shape or (q > log.time).any():
        raise GenrecError("query_time must give every row a time at or before its own")
    groups = set(cfg.features)
    cols: dict[str, np.ndarray] = {}
    categorical: list[str] = []
    if "categorical" in groups:
        for side, tables, index in (("item", log.item_features, log.item), ("user", log.user_features, log.user)):
            for name, codes in tables.items():
                v = codes[index]
                key = f"{side}_{name}"
                cols[key] = np.where(v > 0, v, np.nan) if name in cfg.ordinal else v
                if name not in cfg.ordinal:
                    categorical.append(key)
    if "context" in groups:
        cols["hour"] = (q // HOUR_MS) % 24
        cols["since_previous_s"] = _since_previous(log, q)
    signals = log.tasks
    values = np.column_stack([log.labels[t] for t in signals]).astype(np.float64)
    ctx, p = log.context, cfg.prior
    g_n, g_sum, _ = earlier_sums([], log.time, values, ctx, q)
    prior = g_sum / np.maximum(g_n, 1)[:, None]  # the log's rate of each signal before the row
    by_day = cfg.user_history == "day"
    u_time, u_q = (log.time // DAY_MS, q // DAY_MS) if by_day else (log.time, q)
    u_n, u_sum, _ = earlier_sums([log.user], u_time, values, ctx, u_q)
    u_rate = (u_sum + p * prior) / (u_n + p)[:, None]
    if "user" in groups:
        cols["user_n"] = u_n
        cols |= {f"user_{s}": u_rate[:, k] for k, s in enumerate(signals)}
    if "item" in groups:
        i_n, i_sum, i_first = earlier_sums([log.item], log.time, values, ctx, q)
        cols["item_n"] = i_n
        cols |= {f"item_{s}": (i_sum[:, k] + p * prior[:, k]) / (i_n + p) for k, s in enumerate(signals)}
        cols["item_age_s"] = np.where(i_first >= 0, (q - i_first) / 1000.0, np.nan)
    if "row" in groups:  # the impression's own context: not an earlier outcome, so no time rule applies
        for name, codes in log.row_features.items():
            cols[f"row_{name}"] = codes
            categorical.append(f"row_{name}")
    matched = [(m, log.item_features[m][log.item]) for m in cfg.match if m in log.item_features] \
        if "match" in groups else []
    matched += [(f"row_{m}", codes) for m, codes in log.row_features.items()] if "row" in groups else []
    for name, code in matched:
        m_n, m_sum, _ = earlier_sums([log.user, code], u_time, values, ctx, u_q)
        known = code > 0  # 0 = unknown: sharing it says nothing
        cols[f"match_{name}_n"] = np.where(known, m_n, np.nan)
        cols[f"match_{name}_share"] = np.where(known, m_n / np.maximum(u_n, 1), np.nan)
        for k, s in enumerate(signals):  # smoothed toward the user's own rate: a new author starts there
            cols[f"match_{name}_{s}"] = np.where(known, (m_sum[:, k] + p * u_rate[:, k]) / (m_n + p), np.nan)
    names = list(cols)
    matrix = np.column_stack([np.asarray(cols[k], dtype=np.float32) for k in names]) if names else \
        np.zeros((log.n_rows, 0), np.float32)
    return Features(names, matrix, categorical)


def _since_previous(log: ImpressionLog, query_time: np.ndarray) -> np.ndarray:
    """Seconds from the user's latest context row strictly earlier than the row's query time to that time (NaN
    where there is none): the user's k earlier context rows end at their k-th context row."""
    k, _, _ = earlier_sums([log.user], log.time, np.zeros((log.n_rows, 0)), log.context, query_time)
    k = k.astype(np.int64)
    ctx_rows = log.context_rows if log.context_rows is not None else np.arange(log.n_rows)
    if not len(ctx_rows):
        return np.full(log.n_rows, np.nan)
    start = log.context_before[log.user_offsets[log.user - 1]]  # the user's first context row, among context rows
    prev = ctx_rows[np.clip(start + k - 1, 0, len(ctx_rows) - 1)]
    return np.where(k > 0, (query_time - log.time[prev]) / 1000.0, np.nan)
