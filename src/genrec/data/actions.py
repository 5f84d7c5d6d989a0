"""How a ranking model's history tokens encode what the user did with an item: one code per action field.

An *action schema* names, per action field of an impression log (``ImpressionLog.action_sizes``, in order), how
its code is computed from named signals, and which signals an interaction without any stated signal has:

- ``bits``: code = 1 + sum over ``inputs`` of (signal > 0) << position (KuaiRand's click / like / ... bits);
- ``log_bucket``: code = 1 + :func:`genrec.data.impression_readers.log_bucket` of ``input`` (``unit``, ``n``);
- ``flag``: code = 1 + (``input`` > 0);
- ``code``: the code itself, read from the signal named like the field (a log without a named schema).

The built-in readers and serving encode through :func:`encode_columns`, so an event posted to a served ranker
becomes exactly the code the same impression had in training. ``default`` is what an event without actions
means (KuaiRand: a click; MovieLens ratings: a liked movie, which is what a retrieval history holds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KUAIRAND_SIGNALS = ("click", "long_view", "like", "follow", "comment", "forward", "hate")
KUAIRAND_WATCH = {"kind": "log_bucket", "input": "play_time_ms", "unit": 250.0, "n": 16}

SCHEMAS: dict[str, dict[str, Any]] = {
    "kuairand-pure": {"fields": {"signals": {"kind": "bits", "inputs": list(KUAIRAND_SIGNALS)},
                                 "watch": KUAIRAND_WATCH},
                      "default": {"click": 1}},
    "movielens-1m-ratings": {"fields": {"like": {"kind": "flag", "input": "like"}}, "default": {"like": 1}},
}
SCHEMAS["movielens-1m-ratings-neg"] = SCHEMAS["movielens-1m-ratings"]


def schema_for(log_name: str, action_sizes: Mapping[str, int]) -> dict[str, Any]:
    """The built-in log's schema, else one ``code`` field per action field (default code 1)."""
    if log_name in SCHEMAS and list(SCHEMAS[log_name]["fields"]) == list(action_sizes):
        return SCHEMAS[log_name]
    return {"fields": {name: {"kind": "code"} for name in action_sizes}, "default": dict.fromkeys(action_sizes, 1)}


def inputs(schema: Mapping[str, Any]) -> list[str]:
    """Every signal name the schema reads."""
    out: list[str] = []
    for name, spec in schema["fields"].items():
        out += spec.get("inputs") or [spec.get("input", name)]
    return out


def action_bits(schema: Mapping[str, Any]) -> dict[str, int]:
    """Action field -> number of signals, for the fields whose code - 1 is a bit set (kind ``bits``)."""
    return {name: len(spec["inputs"]) for name, spec in schema["fields"].items() if spec["kind"] == "bits"}


def encode_columns(schema: Mapping[str, Any], columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """int64 [n, A] codes from per-signal arrays of length n (a signal not given counts as 0)."""
    from genrec.data.impression_readers import log_bucket

    def col(name: str) -> np.ndarray:
        return np.asarray(columns.get(name, np.zeros(n)), dtype=np.float64)

    out = []
    for name, spec in schema["fields"].items():
        kind = spec["kind"]
        if kind == "bits":
            code = sum((col(s) > 0).astype(np.int64) << b for b, s in enumerate(spec["inputs"]))
        elif kind == "log_bucket":
            code = log_bucket(col(spec["input"]), float(spec["unit"]), int(spec["n"]))
        elif kind == "flag":
            code = (col(spec["input"]) > 0).astype(np.int64)
        elif kind == "code":
            code = col(name).astype(np.int64) - 1
        else:
            raise ValueError(f"action field {name!r}: unknown kind {kind!r}")
        out.append(1 + np.broadcast_to(np.asarray(code, dtype=np.int64), (n,)))
    return np.stack(out, axis=1) if out else np.zeros((n, 0), dtype=np.int64)


def encode_events(schema: Mapping[str, Any], sizes: Mapping[str, int],
                  actions: Sequence[Mapping[str, Any] | None], strict: bool = True) -> np.ndarray:
    """Codes [n, A] of n events' actions (signal name -> number >= 0; None: the schema's default). Raises
    ValueError naming the event and the signal for an unknown name (ignored with ``strict=False``), a bad value
    or a code out of range."""
    known = inputs(schema)
    columns = {s: np.zeros(len(actions)) for s in known}
    for i, given in enumerate(actions):
        for key, value in (schema.get("default") or {} if given is None else given).items():
            if key not in columns:
                if not strict:
                    continue
                raise ValueError(f"actions[{i}]: unknown signal {key!r}; this ranker reads {', '.join(known)}")
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"actions[{i}].{key}: must be a finite number >= 0, got {value!r}")
            columns[key][i] = value
    codes = encode_columns(schema, columns, len(actions))
    for a, (name, size) in enumerate(sizes.items()):
        bad = np.flatnonzero((codes[:, a] < 1) | (codes[:, a] >= size))
        if len(bad):
            raise ValueError(f"actions[{int(bad[0])}].{name}: code {int(codes[bad[0], a])} outside [1, {size})")
    return codes
