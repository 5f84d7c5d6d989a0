"""A parametric interaction log of any size, generated block by block and written as Parquet shards.

The generative story, each part set by a field of :class:`SynthConfig`:

- **Popularity.** Every item has a popularity rank ``r = 0..M-1``; a fresh draw picks rank ``r`` with probability
  close to ``(r + 1) ** -zipf`` (the inverse CDF of the continuous power law on ``[1, M + 1)``, so no per-item
  table is held and ``M`` can be 10^8). A keyed pseudo-random permutation (:func:`feistel_permute`) maps ranks to
  item ids, so an id says nothing about popularity.
- **History lengths.** User ``u`` gets ``min_length`` events plus a share of the rest proportional to a lognormal
  weight ``exp(length_sigma * z)``; lengths are differences of floored cumulative sums, so they total exactly
  ``events`` and each is at least ``min_length``.
- **Time.** A user's first event falls uniformly in ``period_days`` after 2020-01-01 UTC; the gaps between a
  user's consecutive events are lognormal (median ``gap_median`` seconds, log-spread ``gap_sigma``), at least 1 s.
- **Sequential structure.** With probability ``seq_prob`` an event is not a fresh draw but a step from the user's
  previous item to a neighbour in popularity-rank order (offset uniform in ``±1..seq_window``, reflected at the
  ends); chains of steps are summed. Nearby ranks are a latent order that ids hide, so a sequential model has
  something to learn that popularity alone does not give, while the popularity law is only smoothed locally.

All randomness is keyed by ``(seed, user block)`` with a fixed block size, so the output does not depend on
how it is sharded and memory does not grow with ``events``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genrec.errors import ConfigError, DataError
from genrec.io import write_json, write_parquet
from genrec.progress import progress_bar

BLOCK_USERS = 4096  # users generated together; part of the random stream's key, so fixed
EPOCH = 1577836800  # 2020-01-01T00:00:00Z
COLUMNS = ("user_id", "item_id", "timestamp")


class SynthConfig(BaseModel):
    """Parameters of a synthetic interaction log (see the module docstring for the generative story)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: int = Field(..., ge=1, description="Total number of interactions, exact.")
    items: int = Field(..., ge=1, description="Catalog size; item ids are 0..items-1.")
    users: int | None = Field(None, ge=1, description="Number of users; default events // 50 (at least 1).")
    seed: int = Field(0, ge=0, description="Seed of every random draw; the same config gives the same files.")
    zipf: float = Field(1.0, ge=0.0, le=5.0, description="Popularity exponent: rank r has weight (r + 1)^-zipf.")
    min_length: int = Field(3, ge=1, description="Minimum history length of every user.")
    length_sigma: float = Field(1.0, ge=0.0, le=3.0,
                                description="Log-spread of the lognormal weight behind history lengths (0: equal).")
    gap_median: float = Field(600.0, gt=0.0, description="Median gap between a user's consecutive events, seconds.")
    gap_sigma: float = Field(2.0, ge=0.0, le=5.0, description="Log-spread of the lognormal gaps (heavy tail).")
    period_days: float = Field(365.0, gt=0.0, description="Users' first events spread uniformly over this period.")
    seq_prob: float = Field(0.2, ge=0.0, le=1.0,
                            description="Probability that an event steps from the previous item in rank order.")
    seq_window: int = Field(5, ge=1, description="Largest rank offset of a sequential step.")
    shard_events: int = Field(1_000_000, ge=1,
                              description="Target events per Parquet shard (shards end at a user boundary).")

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        if self.items > self.events:
            raise ValueError(f"items ({self.items:,}) must not exceed events ({self.events:,})")
        if self.n_users * self.min_length > self.events:
            raise ValueError(f"events ({self.events:,}) must be at least users ({self.n_users:,}) x min_length "
                             f"({self.min_length})")
        return self

    @property
    def n_users(self) -> int:
        return self.users if self.users is not None else max(1, self.events // 50)


def synth_config(**fields: Any) -> SynthConfig:
    """:class:`SynthConfig` from keyword fields, with a :class:`ConfigError` naming the bad field (and its flag)."""
    try:
        return SynthConfig(**fields)
    except ValidationError as e:
        raise ConfigError(f"data synth: {validation_message(e)}") from None


def validation_message(e: ValidationError) -> str:
    """The first problem of a pydantic error as 'field (--flag): message'."""
    first = e.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return msg
    field = str(first["loc"][0])
    return f"{field} (--{field.replace('_', '-')}): {msg}"


# --- keyed permutation ------------------------------------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _feistel_keys(seed: int, *key: int, rounds: int = 4) -> np.ndarray:
    return np.random.default_rng([seed, *key]).integers(0, 2**62, size=rounds, dtype=np.uint64)


def feistel_permute(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A pseudo-random permutation of ``0..n-1`` applied to ``x``, without a table: a balanced Feistel network
    on the smallest even number of bits covering ``n``, walked until the value falls below ``n``."""
    bits = max(2, math.ceil(math.log2(max(n, 2))))
    bits += bits % 2
    half, mask = np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)

    def encrypt(v: np.ndarray) -> np.ndarray:
        left, right = v >> half, v & mask
        for k in keys:
            h = (right + k) * _MIX
            h ^= h >> np.uint64(29)
            left, right = right, left ^ (h & mask)
        return (left << half) | right

    out = encrypt(np.asarray(x, dtype=np.uint64))
    while (over := out >= n).any():  # cycle walking: the domain is at most 4n, so a few rounds
        out[over] = encrypt(out[over])
    return out.astype(np.int64)


# --- shards ------------------------------------------------------------------------------------------------

def prepare_out_dir(out: Path, overwrite: bool, meta_name: str) -> Path:
    """Create ``out``; an existing non-empty folder is an error unless ``overwrite``, which removes only the
    shards, the metadata file and a ``_SUCCESS`` marker that a previous run left there. Metadata names start
    with '_' so that Parquet readers of the folder (pyarrow datasets, Spark) skip them."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError("output folder exists and is not empty (pass --overwrite to replace its shards)",
                            path=out)
        for p in [*out.glob("part-*.parquet"), out / meta_name, out / "_SUCCESS"]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


class ShardWriter:
    """Buffers (user_id, item_id, timestamp) rows, grouped by user, and writes ``part-NNNNN.parquet`` files of
    about ``shard_events`` rows each, cut at the first user boundary at or after the target."""

    def __init__(self, out: Path, shard_events: int):
        self.out, self.target = Path(out), shard_events
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.buffered = 0
        self.shards = 0
        self.rows = 0

    def add(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> None:
        """Append rows; every user's rows must arrive in one call, in order."""
        if len(user) == 0:
            return
        self.parts.append((user, item, ts))
        self.buffered += len(user)
        while self.buffered >= self.target:
            user, item, ts = (np.concatenate(c) for c in zip(*self.parts, strict=True))
            boundaries = np.flatnonzero(user[1:] != user[:-1]) + 1
            later = boundaries[boundaries >= self.target]
            cut = int(later[0]) if len(later) else len(user)  # callers add whole users: the end is a boundary
            self._write(user[:cut], item[:cut], ts[:cut])
            self.parts = [(user[cut:], item[cut:], ts[cut:])] if cut < len(user) else []
            self.buffered = len(user) - cut

    def close(self) -> int:
        if self.buffered:
            user, item, ts = (np.concatenate(c) for c in zip(*self.parts, strict=True))
            self._write(user, item, ts)
        self.parts, self.buffered = [], 0
        return self.shards

    def _write(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> None:
        table = pa.table({"user_id": pa.array(user, pa.int64()), "item_id": pa.array(item, pa.int64()),
                          "timestamp": pa.array(ts, pa.int64() if ts.dtype.kind in "iu" else pa.float64())})
        write_parquet(self.out / f"part-{self.shards:05d}.parquet", table)
        self.shards += 1
        self.rows += len(user)


# --- generation --------------------------------------------------------------------------------------------

def _rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, block])


def _weights(cfg: SynthConfig, block: int) -> np.ndarray:
    n = min(BLOCK_USERS, cfg.n_users - block * BLOCK_USERS)
    z = np.clip(_rng(cfg.seed, 0, block).standard_normal(n), -4.0, 4.0)  # clipped: no single user dominates
    return np.exp(cfg.length_sigma * z)


def _block_lengths(cfg: SynthConfig) -> Callable[[int], np.ndarray]:
    """``lengths(block)``: history lengths of a block's users. Cumulative floors of
    ``min_length * (u + 1) + extra * S_u / W`` telescope to exactly ``events`` in total."""
    n_blocks = -(-cfg.n_users // BLOCK_USERS)
    extra = cfg.events - cfg.n_users * cfg.min_length
    running, starts = 0.0, []
    for b in range(n_blocks):  # pass 1: the total weight, summed exactly as pass 2 will
        starts.append(running)
        running = float((np.cumsum(_weights(cfg, b)) + running)[-1])
    total = running

    def lengths(b: int) -> np.ndarray:
        cum = np.cumsum(_weights(cfg, b)) + starts[b]
        u = np.arange(b * BLOCK_USERS, b * BLOCK_USERS + len(cum), dtype=np.float64)
        upper = np.floor(cfg.min_length * (u + 1) + extra * (cum / total)).astype(np.int64)
        prev_cum = np.concatenate([[starts[b]], cum[:-1]])
        lower = np.floor(cfg.min_length * u + extra * (prev_cum / total)).astype(np.int64)
        return upper - lower

    return lengths


def _zipf_ranks(u: np.ndarray, n_items: int, a: float) -> np.ndarray:
    """Inverse CDF of the density ``x^-a`` on ``[1, n_items + 1)``, floored to a 0-based rank."""
    top = math.log(n_items + 1)
    if abs(1.0 - a) < 1e-9:
        x = np.exp(u * top)
    else:
        b = 1.0 - a
        x = np.exp(np.log1p(u * math.expm1(b * top)) / b)
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, n_items - 1)


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarting at each segment start; ``seg`` is each entry's segment."""
    csum = np.cumsum(values)
    base = csum[starts] - values[starts]
    return csum - base[seg]


def generate_block(cfg: SynthConfig, block: int, lengths: np.ndarray,
                   rank_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_id, item_id, timestamp) of the users of one block, each user's rows chronological."""
    rng = _rng(cfg.seed, 1, block)
    n_users, n = len(lengths), int(lengths.sum())
    first_user = block * BLOCK_USERS
    user_of = np.repeat(np.arange(n_users), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # popularity draws, and sequential steps chained from the last fresh draw of the same user
    fresh = _zipf_ranks(rng.random(n), cfg.items, cfg.zipf)
    step = rng.random(n) < cfg.seq_prob
    step[starts] = False
    offset = rng.integers(1, cfg.seq_window + 1, size=n) * (2 * rng.integers(0, 2, size=n) - 1)
    offset[~step] = 0
    anchor = np.flatnonzero(~step)
    run = np.cumsum(~step) - 1
    rank = fresh[anchor][run] + _segment_cumsum(offset, anchor, run)
    if cfg.items > 1:  # reflect into [0, items - 1]
        period = 2 * (cfg.items - 1)
        rank = np.mod(rank, period)
        rank = np.where(rank > cfg.items - 1, period - rank, rank)
    else:
        rank[:] = 0
    item = feistel_permute(rank, cfg.items, rank_keys)
    # time: a start per user, lognormal gaps of at least one second
    start = EPOCH + np.floor(rng.random(n_users) * cfg.period_days * 86400).astype(np.int64)
    z = np.clip(rng.standard_normal(n), -6.0, 6.0)
    gaps = np.maximum(1, np.rint(cfg.gap_median * np.exp(cfg.gap_sigma * z))).astype(np.int64)
    gaps[starts] = 0
    ts = start[user_of] + _segment_cumsum(gaps, starts, user_of)
    return user_of.astype(np.int64) + first_user, item, ts


def synth(cfg: SynthConfig, out: str | Path, *, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Write the log described by ``cfg`` to ``out/part-*.parquet`` plus ``out/_synth.json``; returns the metadata.

    Columns: ``user_id`` int64 (0..users-1), ``item_id`` int64 (0..items-1), ``timestamp`` int64 (unix seconds);
    rows are grouped by user and chronological within a user; a user never spans two shards."""
    out = prepare_out_dir(Path(out), overwrite, "_synth.json")
    t0 = time.perf_counter()
    lengths = _block_lengths(cfg)
    rank_keys = _feistel_keys(cfg.seed, 2)
    writer = ShardWriter(out, cfg.shard_events)
    n_blocks = -(-cfg.n_users // BLOCK_USERS)
    seen = np.zeros(cfg.items, dtype=bool) if cfg.items <= 1 << 26 else None  # distinct-item count when cheap
    with progress_bar(cfg.events, "synth events", enabled=show_progress) as advance:
        for b in range(n_blocks):
            user, item, ts = generate_block(cfg, b, lengths(b), rank_keys)
            if seen is not None:
                seen[item] = True
            writer.add(user, item, ts)
            advance(len(user))
    shards = writer.close()
    meta = {
        "format": "genrec-synth", "format_version": 1, "generator": "genrec data synth",
        "columns": {"user_id": "int64", "item_id": "int64", "timestamp": "int64 unix seconds"},
        "config": cfg.model_dump(), "users": cfg.n_users, "items": cfg.items, "events": writer.rows,
        "items_seen": int(seen.sum()) if seen is not None else None, "shards": shards,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / "_synth.json", meta)
    return meta
