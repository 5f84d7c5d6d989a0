"""The report of an experiment from the store genrec serve logged to (``genrec experiment report``).

The unit is the user: each identified user's exposures (answers shown) and engagements (events sent with one of
those answers' ``request_id``) are summed, and engagements per exposure is a ratio metric with a delta-method
interval (:mod:`genrec.experiment.stats`). Anonymous exposures (no user id) are counted apart and left out of
the statistics. Against the first arm: the difference with its interval (CUPED on each user's engagements logged
before the experiment's start, when there are any), the sample-ratio-mismatch check, and an always-valid interval
(users in order of their first exposure; the mixture's tau set for the current sample size, so the interval is
tightest now and stays valid at every earlier look). Interleave mode: team-draft credit per answer and the
preference for arm b with its interval, users as the unit. Creator and content health per arm
(:func:`~genrec.experiment.creators.health_by_arm`) over the shown slots, by creator when the catalog has a creator
column (the creator Gini then counts the catalog's never-shown creators as zeros, and each arm's most exposed
creators are listed: :func:`~genrec.experiment.creators.per_creator`). An item is fresh as serving decides it
(:mod:`genrec.experiment.fresh`): from its catalog publish time when a column holds one, else never if the model
trained on it, else from its first logged exposure or event in the whole store (before the experiment too, so items
shown long ago are not counted new).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.errors import ConfigError
from genrec.experiment.assign import credit, preference
from genrec.experiment.config import Experiment
from genrec.experiment.creators import Exposures, health_by_arm, per_creator
from genrec.experiment.fresh import Sightings, first_seen_times
from genrec.experiment.stats import Estimate, difference, ratio_estimate, sequential_difference, srm_check, tau_for
from genrec.serve.store import Engagement, Exposure

ID_COLUMNS = ("raw_id", "item_id", "item")
TOP_CREATORS = 10  # per-creator rows kept per arm in the report (the most exposed)


def _est(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "low": e.low, "high": e.high, "se": e.se, "n": e.n}


def _safe(fn, *args, **kwargs) -> Any:
    """A statistic, or None where the data are too few (fewer than 2 users, no exposures)."""
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


def read_creators(catalog: Path | None, creator_col: str) -> dict[str, str] | None:
    """item id -> creator from a catalog (a bundle folder's items.parquet, or a Parquet file); None without one
    or when it has no ``creator_col``."""
    if catalog is None:
        return None
    path = catalog / "items.parquet" if catalog.is_dir() else catalog
    if not path.is_file():
        raise ConfigError(f"--catalog {catalog}: no items.parquet there")
    names = pq.read_schema(path).names
    id_col = next((c for c in ID_COLUMNS if c in names), None)
    if id_col is None:
        raise ConfigError(f"--catalog {path}: no item id column ({', '.join(ID_COLUMNS)}); it has {names}")
    if creator_col not in names:
        return None
    t = pq.read_table(path, columns=[id_col, creator_col])
    return dict(zip(map(str, t.column(0).to_pylist()), map(str, t.column(1).to_pylist()), strict=True))


def _per_user(rows: list[Exposure], hits: Counter) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users (by first exposure), their exposures, engagements and first exposure times."""
    first: dict[str, float] = {}
    n, clicks = Counter(), Counter()
    for e in rows:
        first.setdefault(e.user_id, e.time)
        n[e.user_id] += 1
        clicks[e.user_id] += hits[e.request_id]
    users = sorted(first, key=first.get)
    return (np.array(users, dtype=object), np.array([n[u] for u in users], dtype=float),
            np.array([clicks[u] for u in users], dtype=float), np.array([first[u] for u in users]))


def _ab(exp: Experiment, rows: list[Exposure], hits: Counter, pre: Counter) -> dict[str, Any]:
    arms = {a: _per_user([e for e in rows if e.arm == a and not e.anonymous], hits) for a in exp.arm_names}
    out: dict[str, Any] = {"arms": [], "differences": []}
    for name, (users, n, c, _) in arms.items():
        anon = [e for e in rows if e.arm == name and e.anonymous]
        out["arms"].append({"arm": name, "users": len(users), "exposures": int(n.sum()),
                            "engagements": int(c.sum()), "anonymous_exposures": len(anon),
                            "engagements_per_exposure": _est(_safe(ratio_estimate, c, n))})
    srm = _safe(srm_check, [len(arms[a][0]) for a in exp.arm_names], exp.shares)
    out["srm"] = None if srm is None else asdict(srm)
    control = exp.arm_names[0]
    ua, na, ca, ta = arms[control]
    for name in exp.arm_names[1:]:
        ub, nb, cb, tb = arms[name]
        xa, xb = (np.array([pre[u] for u in us], dtype=float) for us in (ua, ub))
        cuped = bool(xa.sum() + xb.sum() > 0)
        d = _safe(difference, ca, cb, den_a=na, den_b=nb, pre_a=xa if cuped else None, pre_b=xb if cuped else None)
        row = {"arm": name, "control": control, "cuped": cuped, "absolute": _est(d.absolute) if d else None,
               "relative": _est(d.relative) if d else None,
               "variance_reduction": d.variance_reduction if d else None, "sequential": None}
        if d is not None and d.absolute.se > 0:
            order = np.argsort(np.concatenate([ta, tb]), kind="stable")
            num, den = np.concatenate([ca, cb])[order], np.concatenate([na, nb])[order]
            treated = np.concatenate([np.zeros(len(ua), bool), np.ones(len(ub), bool)])[order]
            path = sequential_difference(num, treated, den, tau=tau_for(d.absolute.se), burn_in=2)
            row["sequential"] = {"low": float(path.low[-1]), "high": float(path.high[-1]), "tau": path.tau}
        out["differences"].append(row)
    return out


def _interleave(exp: Experiment, rows: list[Exposure], engaged: dict[str, list[str]]) -> dict[str, Any]:
    credits, units = [], []
    for e in rows:
        if e.teams is None:
            continue
        clicked = set(engaged.get(e.request_id, []))
        credits.append(credit(e.teams, [j for j, item in enumerate(e.items) if item in clicked]))
        units.append(e.user_id or e.request_id)
    a, b = exp.arm_names
    if not credits:
        return {"arms": [a, b], "impressions": 0, "preference": None}
    p = preference(credits, units)
    return {"arms": [a, b], "impressions": len(credits), "users": len(set(units)), "wins_b": p.wins,
            "losses_b": p.losses, "ties": p.ties, "no_engagement": p.none, "preference_b": _est(p.delta)}


def read_catalog(catalog: Path | None) -> pa.Table | None:
    """The catalog's items table (a bundle folder's items.parquet, or a Parquet file) with ``raw_id``; None
    without one."""
    if catalog is None:
        return None
    path = catalog / "items.parquet" if catalog.is_dir() else catalog
    if not path.is_file():
        raise ConfigError(f"--catalog {catalog}: no items.parquet there")
    t = pq.read_table(path)
    id_col = next((c for c in ID_COLUMNS if c in t.column_names), None)
    if id_col is None:
        raise ConfigError(f"--catalog {path}: no item id column ({', '.join(ID_COLUMNS)}); it has {t.column_names}")
    return t.rename_columns(["raw_id" if c == id_col else c for c in t.column_names])


def _shown(rows: list[Exposure], creators: dict[str, str] | None, interleave: bool
           ) -> tuple[Exposures, list[str]] | None:
    """One row per shown slot of ``rows`` (creator "?" for an item the catalog lacks) and each slot's arm (the
    slot's team in interleave mode); None when nothing was shown."""
    items, times, arms = [], [], []
    for e in rows:
        for j, item in enumerate(e.items):
            items.append(item)
            times.append(e.time)
            arms.append(e.arm if not interleave else ("ab"[e.teams[j]] if e.teams else "?"))
    if not items:
        return None
    creator = None if creators is None else [creators.get(i, "?") for i in items]
    return Exposures.of(items, times, creator), arms


def _health(shown: tuple[Exposures, list[str]] | None, **options: Any) -> dict[str, Any]:
    if shown is None:
        return {}
    return {arm: asdict(h) for arm, h in health_by_arm(*shown, **options).items()}


def _creator_count(shown: tuple[Exposures, list[str]] | None, creators: dict[str, str] | None) -> int | None:
    """The creators of the catalog and of the shown slots (``?``: an item the catalog lacks): the population of
    the creator Gini, so creators never shown count as zeros as never-shown items do in the item Gini."""
    if creators is None or shown is None:
        return None
    return len(set(creators.values()) | set(shown[0].creator.tolist()))


def _by_creator(shown: tuple[Exposures, list[str]] | None, top: int, **options: Any) -> dict[str, Any] | None:
    """Per arm: how many creators it showed and its ``top`` most exposed ones (exposures, distinct items, fresh
    exposures, share of the arm's exposures); None without creators."""
    if shown is None or shown[0].creator is None:
        return None
    ex, arms = shown[0], np.asarray(shown[1])
    out = {}
    for arm in np.unique(arms):
        table = per_creator(ex.subset(arms == arm), **options)
        out[str(arm)] = {"creators": len(table.creator), "top": table.rows()[:top]}
    return out


def _fresh_days(exp: Experiment) -> float:
    """The window of freshness: the arms' ``fresh_days`` where one reserves fresh slots, else 7 days."""
    days = {a.serving.fresh_days for a in exp.arms if a.serving.fresh_share > 0}
    return min(days) if days else 7.0


def build_report(exp: Experiment, exposures: list[Exposure], engagements: list[Engagement],
                 creators: dict[str, str] | None = None, catalog: pa.Table | None = None,
                 fresh_column: str | None = None) -> dict[str, Any]:
    """The report as plain values (module docstring). ``exposures`` and ``engagements``: the whole store's, from
    before the experiment too (first sightings and pre-experiment activity); ``catalog`` (items table with
    ``raw_id``, and ``train_count`` or ``fresh_column``): freshness as serving decides it."""
    rows = [e for e in exposures if e.experiment == exp.name]
    start = exp.start.timestamp()
    hits: Counter = Counter(g.request_id for g in engagements if g.request_id is not None)
    pre: Counter = Counter(g.user_id for g in engagements if g.time < start)
    engaged: dict[str, list[str]] = defaultdict(list)
    for g in engagements:
        if g.request_id is not None:
            engaged[g.request_id].append(g.item_id)
    report: dict[str, Any] = {"experiment": exp.name, "mode": exp.mode, "exposures": len(rows),
                              "anonymous_exposures": sum(e.anonymous for e in rows),
                              "engagements": sum(hits[e.request_id] for e in rows)}
    if exp.mode == "interleave":
        report["interleave"] = _interleave(exp, rows, engaged)
    else:
        report.update(_ab(exp, rows, hits, pre))
    start_items = {i for e in exposures if e.time < start for i in e.items}
    start_items |= {g.item_id for g in engagements if g.time < start}
    first_seen = first_seen_times(Sightings.from_logs(exposures, engagements), catalog, fresh_column)
    shown = _shown(rows, creators, exp.mode == "interleave")
    report["health"] = _health(shown, first_seen=first_seen, prior_items=start_items, fresh_days=_fresh_days(exp),
                               catalog_size=None if catalog is None else catalog.num_rows,
                               creator_count=_creator_count(shown, creators))
    report["creators"] = _by_creator(shown, TOP_CREATORS, first_seen=first_seen, fresh_days=_fresh_days(exp))
    report["fresh_definition"] = ("catalog column " + fresh_column if fresh_column else "") or (
        "trained items never fresh; others from their first logged exposure or event" if catalog is not None
        and "train_count" in catalog.column_names else "first logged exposure or event (the whole store)")
    report["by_creator"] = creators is not None
    return report
