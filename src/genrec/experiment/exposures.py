"""The exposure log as a table: one row per shown slot, joined with the engagements that name its request.

Columns: ``request_id``, ``time`` (unix seconds), ``user_id`` (null: anonymous), ``anonymous``, ``experiment``,
``arm``, ``position`` (0-based), ``item_id``, ``team`` (interleaving: 0 or 1), ``propensity`` (exploring arms),
``model_version``, ``bundle`` (checksum), ``fresh`` (arms with a fresh share: a slot reserved for a fresh item)
and ``engaged``: how many logged events of the request's user named
this request and this item (``POST /v1/events`` with ``request_id``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.errors import ConfigError
from genrec.serve.store import Engagement, Exposure, HistoryStore, open_store

SCHEMA = pa.schema([("request_id", pa.string()), ("time", pa.float64()), ("user_id", pa.string()),
                    ("anonymous", pa.bool_()), ("experiment", pa.string()), ("arm", pa.string()),
                    ("position", pa.int32()), ("item_id", pa.string()), ("team", pa.int8()),
                    ("propensity", pa.float64()), ("model_version", pa.string()), ("bundle", pa.string()),
                    ("fresh", pa.bool_()), ("engaged", pa.int32())])


def open_log(spec: str) -> HistoryStore:
    """The store holding the logs: a redis:// URL or an existing SQLite file (a missing one is an error, not a
    new empty store)."""
    if not spec.startswith(("redis://", "rediss://")) and not Path(spec).is_file():
        raise ConfigError(f"--store {spec}: no such SQLite file (give the store genrec serve wrote to)")
    return open_store(spec, Path(spec))


def linked(engagements: list[Engagement]) -> Counter:
    """Engagement counts per (request_id, item_id) of the events that named a request."""
    return Counter((e.request_id, e.item_id) for e in engagements if e.request_id is not None)


def exposure_table(exposures: list[Exposure], engagements: list[Engagement]) -> pa.Table:
    """One row per shown slot (module docstring)."""
    hits = linked(engagements)
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for e in exposures:
        for j, item in enumerate(e.items):
            for name in ("request_id", "time", "user_id", "anonymous", "experiment", "arm", "model_version",
                         "bundle"):
                cols[name].append(getattr(e, name))
            cols["position"].append(j)
            cols["item_id"].append(item)
            cols["team"].append(e.teams[j] if e.teams is not None else None)
            cols["propensity"].append(e.propensities[j] if e.propensities is not None else None)
            cols["fresh"].append(e.fresh[j] if e.fresh is not None else None)
            cols["engaged"].append(hits.get((e.request_id, item), 0))
    return pa.table(cols, schema=SCHEMA)


def export_exposures(store: str, out: Path, experiment: str | None = None) -> int:
    """Write the store's exposure log (only ``experiment``'s rows when given) to Parquet; returns the rows."""
    log = open_log(store)
    try:
        exposures = [e for e in log.exposures() if experiment is None or e.experiment == experiment]
        table = exposure_table(exposures, log.engagements())
    finally:
        log.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table.num_rows


def candidate_probs(scores: dict[str, float], shown: tuple[str, ...], temperature: float) -> list[dict[str, float]]:
    """Per logged slot, the candidate's probability of each item it could show there: its pool (``scores``) less
    the items the logged list already showed above; ``temperature`` 0: its best item (greedy), else
    Plackett-Luce with that temperature."""
    out, above = [], set()
    for item in shown:
        left = {i: s for i, s in scores.items() if i not in above}
        if not left:
            out.append({})
        elif temperature == 0:
            out.append({max(left, key=left.get): 1.0})
        else:
            z = np.array(list(left.values())) / temperature
            p = np.exp(z - z.max())
            out.append(dict(zip(left, (p / p.sum()).tolist(), strict=True)))
        above.add(item)
    return out


def _histories(table: pa.Table, events: Path | None) -> dict[str, list[tuple[float, str]]]:
    """user -> (time, item) of what the user engaged with: ``events`` (Parquet: user_id, item_id, time) or, without
    it, the engaged slots of the log itself."""
    if events is not None:
        t = pq.read_table(events, columns=["user_id", "item_id", "time"]).to_pydict()
        rows = zip(t["user_id"], t["time"], t["item_id"], strict=True)
    else:
        d = table.to_pydict()
        rows = ((u, tm, i) for u, tm, i, e in zip(d["user_id"], d["time"], d["item_id"], d["engaged"], strict=True)
                if e)
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for user, tm, item in rows:
        if user is not None:
            out[str(user)].append((float(tm), str(item)))
    return {u: sorted(v) for u, v in out.items()}


def evaluate_candidate(exposures: Path, rec, temperature: float = 0.0, events: Path | None = None) -> dict:
    """IPS, SNIPS and doubly robust estimates of engagements per shown slot had ``rec`` (a loaded candidate
    Recommender) chosen the slots of the logged answers that carry propensities (module :mod:`genrec.experiment.ope`;
    rows are slots, grouped by request). The reward model of DR: the candidate ranker's first task's predictions
    when the bundle has a ranker, else the log's mean engagement (a constant)."""
    from genrec.experiment.ope import doubly_robust, ips, snips
    from genrec.experiment.serving import exploration_pool

    table = pq.read_table(exposures)
    if "propensity" not in table.column_names:
        raise ConfigError(f"{exposures}: no propensity column (export it with genrec experiment export-exposures)")
    table = table.filter(pc.is_valid(table.column("propensity")))
    if table.num_rows == 0:
        raise ConfigError(f"{exposures}: no logged slot has a propensity (no arm explored)")
    histories = _histories(table, events)
    d = table.to_pydict()
    reward = (np.array(d["engaged"], dtype=float) > 0).astype(float)
    base = float(reward.mean())
    by_request: dict[str, list[int]] = defaultdict(list)
    for j, rid in enumerate(d["request_id"]):
        by_request[rid].append(j)
    pi, q, q_target = np.zeros(len(reward)), np.full(len(reward), base), np.full(len(reward), base)
    task = rec.ranker.tasks[0] if rec.ranker is not None else None
    for rows in by_request.values():
        rows.sort(key=lambda j: d["position"][j])
        first = rows[0]
        past = [i for tm, i in histories.get(str(d["user_id"][first]), []) if tm < d["time"][first]]
        answer = rec.recommend(past, k=exploration_pool(len(rows)))
        n = len(answer.items)
        scores = {i["item_id"]: (i["score"] if i["score"] is not None else float(n - r))
                  for r, i in enumerate(answer.items)}
        model = {i["item_id"]: (i.get("predictions") or {}).get(task) for i in answer.items} if task else {}
        shown = tuple(d["item_id"][j] for j in rows)
        for j, probs, item in zip(rows, candidate_probs(scores, shown, temperature), shown, strict=True):
            pi[j] = probs.get(item, 0.0)
            if task:
                q[j] = model.get(item) if model.get(item) is not None else base
                q_target[j] = sum(p * (model.get(a) if model.get(a) is not None else base) for a, p in probs.items())
    p, groups = np.array(d["propensity"], dtype=float), d["request_id"]
    estimates = [ips(reward, pi, p, groups=groups), snips(reward, pi, p, groups=groups)
                 if pi.sum() > 0 else None, doubly_robust(reward, pi, p, q, q_target, groups=groups)]
    return {"slots": len(reward), "requests": len(by_request), "logged_value": base,
            "reward_model": f"ranker predictions ({task})" if task else "constant (the log's mean engagement; "
            "the bundle has no ranker)",
            "estimates": [{"estimator": e.estimator, "value": e.value, "low": e.estimate.low,
                           "high": e.estimate.high, "ess": e.ess} for e in estimates if e is not None]}
