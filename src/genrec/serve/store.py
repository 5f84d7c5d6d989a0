"""Per-user interaction histories for serving: POST /v1/events appends, the next recommend reads them.

Two backends behind one small protocol:

- ``SQLiteStore`` (default): one WAL-mode file next to the bundle, ``synchronous=FULL``, so an append has been
  fsynced when it returns and the HTTP layer may answer 2xx. Exposures commit without their own fsync: written
  to the WAL before the answer leaves (a killed server loses none), fsynced with the next append or checkpoint.
- ``RedisStore`` (``--redis-url``): one list per user; durability is the server's (``appendfsync always``).

Beside the capped histories, both keep two append-only logs for experiments (never capped): the **exposures**
(what each ``/v1/recommend`` answer showed, :class:`Exposure`) and the **engagements** (every appended event with
the ``request_id`` of the answer it engaged with, when the client sent one), written in the same transaction as
the history append (SQLite tables; Redis streams ``{prefix}exposures`` / ``{prefix}engagements``).

Every history is capped at ``max_events``: appending drops the oldest events beyond the cap. Bad input raises
``ValueError`` naming the field (the HTTP layer answers 422) and never writes part of a batch.
"""

from __future__ import annotations

import json
import math
import operator
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from genrec.errors import GenrecError

DEFAULT_MAX_EVENTS = 200


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: the raw item id, an optional integer timestamp (in the dataset's unit), optional
    actions (signal name -> number >= 0, e.g. ``{"like": 1, "play_time_ms": 5300}``) and an optional context
    (where it was shown, name -> value kept as text, e.g. ``{"tab": "1"}``), which a bundle's ranking stage reads
    (see genrec.data.actions, genrec.serve.ranking)."""

    item_id: str
    timestamp: int | None = None
    actions: dict[str, float] | None = None
    context: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(f"item_id must be a non-empty string, got {self.item_id!r}")
        object.__setattr__(self, "timestamp", _as_timestamp(self.timestamp))
        object.__setattr__(self, "actions", _as_actions(self.actions))
        object.__setattr__(self, "context", _as_context(self.context))


@dataclass(frozen=True, slots=True)
class Exposure:
    """What one answer showed: ``items`` in shown order (position = index), the experiment and arm (None outside
    one), ``teams`` (interleaving: 0 or 1 per slot), ``propensities`` (exploring arms: each slot's probability),
    the model version, ``bundle`` (a checksum of the bundle's files) and ``fresh`` (arms with a fresh share: whether
    each slot was one reserved for a fresh item)."""

    request_id: str
    time: float
    user_id: str | None
    anonymous: bool
    experiment: str | None
    arm: str | None
    items: tuple[str, ...]
    teams: tuple[int, ...] | None = None
    propensities: tuple[float, ...] | None = None
    model_version: str | None = None
    bundle: str | None = None
    fresh: tuple[bool, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Exposure:
        lists = {k: tuple(row[k]) for k in ("items", "teams", "propensities", "fresh") if row.get(k) is not None}
        return cls(**{**row, **lists})


@dataclass(frozen=True, slots=True)
class Engagement:
    """One logged event: when the server stored it, the user, the answer it engaged with (or None) and the item."""

    time: float
    user_id: str
    request_id: str | None
    item_id: str
    actions: dict[str, float] | None = None


def _as_actions(value: object) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"actions must be an object of signal name -> number, got {value!r}")
    out = {}
    for key, v in value.items():
        if isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"actions.{key}: must be a finite number >= 0, got {v!r}")
        out[key] = v
    return out


def _as_context(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"context must be an object of name -> value, got {value!r}")
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError(f"context.{key}: must be text or an integer, got {v!r}")
    return {key: str(v) for key, v in value.items()}


def _as_timestamp(value: object) -> int | None:
    """None, or a 64-bit int (SQLite INTEGER); numpy integers from training histories are accepted."""
    if value is None:
        return None
    try:  # operator.index accepts integer types only: floats and strings raise TypeError
        ts = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        ts = None
    if ts is None or not -(2**63) <= ts < 2**63:
        raise ValueError(f"timestamp must be a 64-bit integer or null, got {value!r}")
    return ts


class HistoryStore(Protocol):
    """What the serving layer needs from a history backend; every method is safe to call from several threads."""

    max_events: int

    def append(self, user_id: str, events: Sequence[Event], request_id: str | None = None) -> int:
        """Append ``events`` (oldest first) atomically, and to the engagement log with ``request_id`` (the answer
        they engaged with); return the user's history length afterwards (capped)."""
        ...

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events, oldest first; only the most recent ``limit`` when given; [] for an unknown user."""
        ...

    def has_user(self, user_id: str) -> bool: ...

    def log_exposures(self, exposures: Sequence[Exposure]) -> list[None]:
        """Write exposures durably in one transaction (one result each: a :class:`BatchWorker` run)."""
        ...

    def exposures(self) -> list[Exposure]:
        """Every logged exposure, oldest first."""
        ...

    def engagements(self) -> list[Engagement]:
        """Every logged event, oldest first."""
        ...

    def seed(self, histories: Mapping[str, Sequence[Event]]) -> int:
        """Replace these users' histories in one transaction (e.g. training histories at startup); return users."""
        ...

    def close(self) -> None: ...


def _check_max_events(max_events: int) -> int:
    # A cap of 0 would silently discard every event: almost certainly a configuration mistake.
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"max_events must be a positive integer, got {max_events!r}")
    return max_events


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")


def _check_events(events: Sequence[Event]) -> list[Event]:
    events = list(events)
    for i, ev in enumerate(events):
        if not isinstance(ev, Event):
            raise ValueError(f"events[{i}] must be an Event, got {type(ev).__name__}")
    return events


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")


def _check_histories(histories: Mapping[str, Sequence[Event]], cap: int) -> dict[str, list[Event]]:
    """Validate everything before any write; keep only the newest ``cap`` events per user."""
    checked = {}
    for user_id, events in histories.items():
        _check_user(user_id)
        checked[user_id] = _check_events(events)[-cap:]
    return checked


class SQLiteStore:
    """Histories in one SQLite file (WAL, fsync on every commit); ``path=":memory:"`` for tests.

    Threads share one connection behind a lock: SQLite serialises writers anyway, per-user statements take
    microseconds, and a single connection means no SQLITE_BUSY retries between our own threads and a ``close()``
    that really closes everything. Other processes on the same file are handled by ``BEGIN IMMEDIATE`` and the
    busy timeout.
    """

    _SCHEMA = (
        # seq is the rowid: a new row always gets one above every live row, so ORDER BY seq is insertion order.
        "CREATE TABLE IF NOT EXISTS history ("
        " user_id TEXT NOT NULL, seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL, ts INTEGER)",
        "CREATE INDEX IF NOT EXISTS history_user_seq ON history (user_id, seq)",
        "CREATE TABLE IF NOT EXISTS exposures (request_id TEXT PRIMARY KEY, time REAL NOT NULL, user_id TEXT,"
        " anonymous INTEGER NOT NULL, experiment TEXT, arm TEXT, items TEXT NOT NULL, teams TEXT, propensities TEXT,"
        " model_version TEXT, bundle TEXT)",
        "CREATE TABLE IF NOT EXISTS engagements (seq INTEGER PRIMARY KEY, time REAL NOT NULL, user_id TEXT NOT NULL,"
        " request_id TEXT, item_id TEXT NOT NULL, actions TEXT)",
    )
    _EXPOSURE_COLUMNS = ("request_id", "time", "user_id", "anonymous", "experiment", "arm", "items", "teams",
                         "propensities", "model_version", "bundle", "fresh")
    # JSON columns added after the first release: files from before them lack them
    _ADDED_COLUMNS = {"actions": "ALTER TABLE history ADD COLUMN actions TEXT",
                      "context": "ALTER TABLE history ADD COLUMN context TEXT"}
    _ADDED_EXPOSURE_COLUMNS = {"fresh": "ALTER TABLE exposures ADD COLUMN fresh TEXT"}

    def __init__(self, path: str | Path, max_events: int = DEFAULT_MAX_EVENTS):
        self.max_events = _check_max_events(max_events)
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each append is exactly one transaction.
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on commit: durable before append returns
        with self._tx() as db:
            for sql in self._SCHEMA:
                db.execute(sql)
            have = {row[1] for row in db.execute("PRAGMA table_info(history)")}
            for column, sql in self._ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(sql)
            have = {row[1] for row in db.execute("PRAGMA table_info(exposures)")}
            for column, sql in self._ADDED_EXPOSURE_COLUMNS.items():
                if column not in have:
                    db.execute(sql)

    @contextmanager
    def _tx(self, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it commits or none of it does. ``fsync=False``: the commit is written to
        the WAL (it survives a killed process) without waiting for the disk, which the next fsynced commit covers."""
        with self._lock:
            if not fsync:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")  # take the write lock now, not on the first write
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed (e.g. disk full)
                    self._db.execute("ROLLBACK")
                raise
            finally:
                if not fsync:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _insert(self, db: sqlite3.Connection, user_id: str, events: list[Event]) -> None:
        db.executemany("INSERT INTO history (user_id, item_id, ts, actions, context) VALUES (?, ?, ?, ?, ?)",
                       [(user_id, ev.item_id, ev.timestamp, _json_or_null(ev.actions), _json_or_null(ev.context))
                        for ev in events])

    def append(self, user_id: str, events: Sequence[Event], request_id: str | None = None) -> int:
        _check_user(user_id)
        events = _check_events(events)
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT INTO engagements (time, user_id, request_id, item_id, actions)"
                           " VALUES (?, ?, ?, ?, ?)",
                           [(now, user_id, request_id, ev.item_id, _json_or_null(ev.actions)) for ev in events])
            events = events[-self.max_events:]
            self._insert(db, user_id, events)
            # Drop everything at or below the (cap+1)-th newest seq; NULL (short history) deletes nothing.
            db.execute("DELETE FROM history WHERE user_id = ? AND seq <= (SELECT seq FROM history WHERE user_id = ?"
                       " ORDER BY seq DESC LIMIT 1 OFFSET ?)", (user_id, user_id, self.max_events))
            (n,) = db.execute("SELECT COUNT(*) FROM history WHERE user_id = ?", (user_id,)).fetchone()
        return n

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        _check_limit(limit)
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, ts, actions, context FROM (SELECT seq, item_id, ts, actions, context FROM history"
                " WHERE user_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (user_id, -1 if limit is None else limit)).fetchall()
        return [Event(item, ts, *(None if v is None else json.loads(v) for v in extra)) for item, ts, *extra in rows]

    def has_user(self, user_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM history WHERE user_id = ? LIMIT 1", (user_id,)).fetchone()
        return row is not None

    def log_exposures(self, exposures: Sequence[Exposure]) -> list[None]:
        rows = [(e.request_id, e.time, e.user_id, int(e.anonymous), e.experiment, e.arm, json.dumps(e.items),
                 _json_or_null(e.teams), _json_or_null(e.propensities), e.model_version, e.bundle,
                 _json_or_null(e.fresh)) for e in exposures]
        with self._tx(fsync=False) as db:  # an exposure must survive a killed server, not a power cut
            db.executemany(f"INSERT INTO exposures ({', '.join(self._EXPOSURE_COLUMNS)}) VALUES "
                           f"({', '.join('?' * len(self._EXPOSURE_COLUMNS))})", rows)
        return [None] * len(rows)

    def exposures(self) -> list[Exposure]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(self._EXPOSURE_COLUMNS)} FROM exposures ORDER BY rowid"
                                    ).fetchall()
        return [Exposure.from_json({**dict(zip(self._EXPOSURE_COLUMNS, r, strict=True)), "anonymous": bool(r[3]),
                                    **{k: None if r[j] is None else json.loads(r[j]) for j, k in
                                       ((6, "items"), (7, "teams"), (8, "propensities"), (11, "fresh"))}})
                for r in rows]

    def engagements(self) -> list[Engagement]:
        with self._lock:
            rows = self._db.execute("SELECT time, user_id, request_id, item_id, actions FROM engagements ORDER BY seq"
                                    ).fetchall()
        return [Engagement(*r[:4], None if r[4] is None else json.loads(r[4])) for r in rows]

    def seed(self, histories: Mapping[str, Sequence[Event]]) -> int:
        checked = _check_histories(histories, self.max_events)
        with self._tx() as db:
            db.executemany("DELETE FROM history WHERE user_id = ?", [(u,) for u in checked])
            for user_id, events in checked.items():
                self._insert(db, user_id, events)
        return len(checked)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore:
    """Histories in Redis: one list per user (``{prefix}h:{user_id}``) of JSON ``[item_id, timestamp]`` pairs,
    ``[item_id, timestamp, actions]`` for events with actions, ``[item_id, timestamp, actions, context]`` for events
    with a context (actions may be null).

    Appends are RPUSH + LTRIM inside MULTI/EXEC, so other clients never see an uncapped or half-appended list.
    The redis-py client is thread-safe (connection pool), so no lock is needed here.
    """

    def __init__(self, url: str, max_events: int = DEFAULT_MAX_EVENTS, prefix: str = "genrec:"):
        self.max_events = _check_max_events(max_events)
        try:
            import redis
        except ImportError:
            raise GenrecError(f"{url}: a Redis history store needs the redis package: pip install redis") from None
        self.prefix = prefix
        self._r: Any = redis.Redis.from_url(url, decode_responses=True)
        try:
            self._r.ping()  # fail at startup, not on the first request
        except redis.RedisError as e:
            raise GenrecError(f"{url}: cannot reach Redis ({e})") from None

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    @staticmethod
    def _encode(events: list[Event]) -> list[str]:
        def fields(ev: Event) -> list[Any]:
            tail = [ev.actions, ev.context]
            while tail and tail[-1] is None:  # events without them keep the shorter forms
                tail.pop()
            return [ev.item_id, ev.timestamp, *tail]

        return [json.dumps(fields(ev)) for ev in events]

    def append(self, user_id: str, events: Sequence[Event], request_id: str | None = None) -> int:
        _check_user(user_id)
        events = _check_events(events)
        key = self._key(user_id)
        if not events:
            return self._r.llen(key)
        pipe = self._r.pipeline(transaction=True)
        now = time.time()
        for ev in events:
            pipe.xadd(f"{self.prefix}engagements", {"e": json.dumps([now, user_id, request_id, ev.item_id,
                                                                     ev.actions])})
        pipe.rpush(key, *self._encode(events[-self.max_events:]))
        pipe.ltrim(key, -self.max_events, -1)
        pipe.llen(key)
        return pipe.execute()[-1]

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        _check_limit(limit)
        if limit == 0:
            return []  # LRANGE -0 would mean "from the start"
        raw = self._r.lrange(self._key(user_id), 0 if limit is None else -limit, -1)
        return [Event(*json.loads(r)) for r in raw]

    def has_user(self, user_id: str) -> bool:
        return bool(self._r.exists(self._key(user_id)))

    def log_exposures(self, exposures: Sequence[Exposure]) -> list[None]:
        pipe = self._r.pipeline(transaction=True)
        for e in exposures:
            pipe.xadd(f"{self.prefix}exposures", {"e": json.dumps(e.to_json())})
        pipe.execute()
        return [None] * len(exposures)

    def _stream(self, name: str) -> list[Any]:
        return [json.loads(fields["e"]) for _, fields in self._r.xrange(f"{self.prefix}{name}")]

    def exposures(self) -> list[Exposure]:
        return [Exposure.from_json(row) for row in self._stream("exposures")]

    def engagements(self) -> list[Engagement]:
        return [Engagement(*row) for row in self._stream("engagements")]

    def seed(self, histories: Mapping[str, Sequence[Event]]) -> int:
        checked = _check_histories(histories, self.max_events)
        pipe = self._r.pipeline(transaction=True)
        for user_id, events in checked.items():
            pipe.delete(self._key(user_id))
            if events:  # RPUSH with no values is an error
                pipe.rpush(self._key(user_id), *self._encode(events))
        pipe.execute()
        return len(checked)

    def close(self) -> None:
        self._r.close()


def _json_or_null(value: dict | tuple | None) -> str | None:
    return None if value is None else json.dumps(value)


def open_store(spec: str | Path | None, default_path: Path, max_events: int = DEFAULT_MAX_EVENTS) -> HistoryStore:
    """``redis://`` or ``rediss://`` URL -> RedisStore; a file path -> SQLiteStore; None -> SQLite at default_path."""
    if isinstance(spec, str) and not spec.strip():
        raise ValueError("history store must be a file path or a redis:// URL, got an empty string")
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://")):
        return RedisStore(spec, max_events=max_events)
    return SQLiteStore(default_path if spec is None else spec, max_events=max_events)
