"""The exposure log as a table: one row per shown slot, joined with the engagements that name its request.

Columns: ``request_id``, ``time`` (unix seconds), ``user_id`` (null: anonymous), ``anonymous``, ``experiment``,
``arm``, ``position`` (0-based), ``item_id``, ``team`` (interleaving: 0 or 1), ``propensity`` (exploring arms),
``model_version``, ``bundle`` (checksum), ``fresh`` (arms with a fresh share: a slot reserved for a fresh item)
and ``engaged``: how many logged events of the request's user named
this request and this item (``POST /v1/events`` with ``request_id``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
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
