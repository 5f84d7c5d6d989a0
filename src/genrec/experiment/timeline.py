"""An experiment's metrics over time with always-valid bands: what the web page's experiment view
(``GET /v1/experiment/timeline``) and the report's plots (``genrec experiment report --plots``) draw.

At each of ``points`` looks, evenly spaced from the first logged answer to the last logged answer or event, every
number is computed from what had been logged by then (users as the unit, as in the report):

- **ab**: per arm, engagements per exposure (the delta-method ratio over the arm's identified users; an engagement
  counts from the time it was logged), and each arm against the first with its difference;
- **interleave**: the preference for the second arm (``(wins + ties / 2) / n - 1/2`` over engaged answers, users
  as the unit), each answer counted from its latest engagement.

The bands are always-valid: the normal-mixture boundary (:func:`~genrec.experiment.stats.confidence_sequence`)
applied to each look's estimate and standard error, ``tau`` set for the last look's standard error and the running
intersection kept, so a dashboard looked at every hour does not inflate false positives (an asymptotic confidence
sequence: the variance is estimated). A band is unbounded (null in JSON) until the series has BURN_IN users
(both arms, for a difference) and a positive standard error: a handful of users, or users without a single
engagement, give a standard error of 0, and the running intersection would lock onto that point.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from genrec.experiment.assign import credit
from genrec.experiment.config import Experiment
from genrec.experiment.stats import ALPHA, confidence_sequence, tau_for
from genrec.serve.store import Engagement, Exposure

DEFAULT_POINTS = 40
BURN_IN = 30  # users a series needs before its band is bounded (as genrec.experiment.stats.sequential_difference)


def looks(start: float, end: float, points: int) -> np.ndarray:
    """``points`` evenly spaced times from ``start`` to ``end`` (one look when they are equal)."""
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    return np.array([start]) if end <= start else np.linspace(start, end, points)


def ratio_path(units: np.ndarray, times: np.ndarray, num: np.ndarray, den: np.ndarray,
               at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ratio ``sum(num) / sum(den)`` over units with ``den > 0`` using the rows logged by each look ``at[j]``,
    its delta-method standard error (NaN under two units) and the number of units, per look. One pass over the
    rows: each look updates the running per-unit totals and the sums the estimate needs."""
    uniq, inv = np.unique(np.asarray(units).astype(str), return_inverse=True)
    bucket = np.searchsorted(at, times, side="left")  # a row counts from the first look at or after its time
    y, x = np.zeros(len(uniq)), np.zeros(len(uniq))
    s = dict.fromkeys(("n", "y", "x", "yy", "xx", "xy"), 0.0)
    out = np.full((3, len(at)), np.nan)
    for j in range(len(at)):
        rows = np.flatnonzero(bucket == j)
        if len(rows):
            affected, pos = np.unique(inv[rows], return_inverse=True)
            y0, x0 = y[affected], x[affected]
            y1, x1 = y0 + np.bincount(pos, num[rows]), x0 + np.bincount(pos, den[rows])
            for sign, yy, xx in ((-1.0, y0, x0), (1.0, y1, x1)):
                on = xx > 0  # only units with exposures are in the estimate
                s["n"] += sign * on.sum()
                s["y"] += sign * yy[on].sum()
                s["x"] += sign * xx[on].sum()
                s["yy"] += sign * (yy[on] ** 2).sum()
                s["xx"] += sign * (xx[on] ** 2).sum()
                s["xy"] += sign * (xx[on] * yy[on]).sum()
            y[affected], x[affected] = y1, x1
        n = s["n"]
        out[2, j] = n
        if n >= 1 and s["x"] > 0:
            r = s["y"] / s["x"]
            out[0, j] = r
            if n >= 2:
                resid = max(s["yy"] - 2 * r * s["xy"] + r * r * s["xx"], 0.0)
                out[1, j] = math.sqrt(resid / (n - 1) / n) / (s["x"] / n)
    return out[0], out[1], out[2].astype(np.int64)


def band(value: np.ndarray, se: np.ndarray, users: np.ndarray, alpha: float = ALPHA
         ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Always-valid (low, high) per look and the tau used (None while no look is past the burn-in); a look before
    BURN_IN ``users`` or without a positive standard error is unbounded."""
    ok = np.isfinite(se) & (se > 0) & (users >= BURN_IN)
    if not ok.any():
        return np.full(len(value), -np.inf), np.full(len(value), np.inf), None
    tau = tau_for(float(se[ok][-1]), alpha)
    low, high = confidence_sequence(value, np.where(ok, se, np.nan), tau, alpha)
    return low, high, tau


def _series(value: np.ndarray, se: np.ndarray, users: np.ndarray, alpha: float) -> dict[str, Any]:
    low, high, tau = band(value, se, users, alpha)
    return {"value": value.tolist(), "low": low.tolist(), "high": high.tolist(), "tau": tau}


def timeline(exp: Experiment, exposures: list[Exposure], engagements: list[Engagement], points: int = DEFAULT_POINTS,
             alpha: float = ALPHA) -> dict[str, Any]:
    """The experiment's metrics at ``points`` looks (module docstring), as plain values (NaN and infinities are
    left in: callers serialise them as null)."""
    rows = [e for e in exposures if e.experiment == exp.name]
    by_request = {e.request_id: e for e in rows}
    linked = [g for g in engagements if g.request_id in by_request]
    out: dict[str, Any] = {"experiment": exp.name, "mode": exp.mode, "alpha": alpha, "exposures": len(rows),
                           "engagements": len(linked), "times": [], "arms": [], "differences": []}
    if not rows:
        return out
    times = looks(min(e.time for e in rows), max([e.time for e in rows] + [g.time for g in linked]), points)
    out["times"] = times.tolist()
    if exp.mode == "interleave":
        out["metric"] = f"preference for {exp.arm_names[1]}"
        out["differences"].append({"arm": exp.arm_names[1], "control": exp.arm_names[0],
                                   **_interleave(rows, linked, times, alpha)})
        return out
    out["metric"] = "engagements per exposure"
    paths = {}
    for arm in exp.arm_names:
        shown = [e for e in rows if e.arm == arm and not e.anonymous]
        ids = {e.request_id for e in shown}
        hits = [g for g in linked if g.request_id in ids]
        units = np.array([e.user_id for e in shown] + [g.user_id for g in hits], dtype=object)
        when = np.array([e.time for e in shown] + [g.time for g in hits], dtype=np.float64)
        num = np.array([0.0] * len(shown) + [1.0] * len(hits))
        value, se, users = ratio_path(units, when, num, 1.0 - num, times)
        paths[arm] = value, se, users
        out["arms"].append({"arm": arm, "users": users.tolist(), **_series(value, se, users, alpha)})
    control = exp.arm_names[0]
    for arm in exp.arm_names[1:]:
        value = paths[arm][0] - paths[control][0]
        se = np.hypot(paths[arm][1], paths[control][1])
        users = np.minimum(paths[arm][2], paths[control][2])  # the burn-in holds for both arms
        out["differences"].append({"arm": arm, "control": control, **_series(value, se, users, alpha)})
    return out


def _interleave(rows: list[Exposure], linked: list[Engagement], times: np.ndarray, alpha: float) -> dict[str, Any]:
    """The preference path: each engaged answer scores +1/2 (a win for the second arm), -1/2 or 0 (a tie) from the
    time of its latest engagement; users (or the request, when anonymous) as the unit."""
    engaged: dict[str, list[Engagement]] = defaultdict(list)
    for g in linked:
        engaged[g.request_id].append(g)
    units, when, score = [], [], []
    for e in rows:
        hits = engaged.get(e.request_id)
        if e.teams is None or not hits:
            continue
        clicked = {g.item_id for g in hits}
        outcome = credit(e.teams, [j for j, item in enumerate(e.items) if item in clicked]).outcome
        if outcome == "none":
            continue
        units.append(e.user_id or e.request_id)
        when.append(max(g.time for g in hits))
        score.append({"win": 0.5, "loss": -0.5}.get(outcome, 0.0))
    value, se, n = ratio_path(np.array(units, dtype=object), np.array(when, dtype=np.float64),
                              np.array(score), np.ones(len(score)), times)
    return {"users": n.tolist(), **_series(value, se, n, alpha)}


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: null instead (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
