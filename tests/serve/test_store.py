"""History stores: order, cap, limit, seed, validation, durability, thread safety, and a model-based property test.

Behaviour tests run on SQLite and, when ``redis`` is installed and $GENREC_TEST_REDIS_URL answers, on Redis too.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.errors import GenrecError
from genrec.serve.store import Event, HistoryStore, RedisStore, SQLiteStore, open_store


@functools.cache
def redis_url() -> str | None:
    """The test server's URL when the redis package is installed and the server answers, else None."""
    url = os.environ.get("GENREC_TEST_REDIS_URL")
    if not url:
        return None
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


def evs(*items: str) -> list[Event]:
    return [Event(i, n) for n, i in enumerate(items)]


def ids(events: list[Event]) -> list[str]:
    return [e.item_id for e in events]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path) -> Callable[..., HistoryStore]:
    """A factory of empty stores of one backend: ``make_store(max_events=...)``; all are closed afterwards."""
    made: list[HistoryStore] = []

    def make(max_events: int = 200) -> HistoryStore:
        if request.param == "sqlite":
            store: HistoryStore = SQLiteStore(tmp_path / f"h{len(made)}.db", max_events=max_events)
        else:
            url = redis_url()
            if url is None:
                pytest.skip("needs the redis package and a server at $GENREC_TEST_REDIS_URL")
            store = RedisStore(url, max_events=max_events, prefix=f"genrec-test-{uuid.uuid4().hex}:")
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, RedisStore):
            for key in store._r.scan_iter(f"{store.prefix}*"):
                store._r.delete(key)
        store.close()


def test_append_then_history_is_oldest_first(make_store):
    store = make_store()
    assert store.append("u1", evs("a", "b")) == 2
    assert store.append("u1", [Event("c", 1_700_000_000), Event("d")]) == 4
    assert store.append("u2", evs("z")) == 1
    assert store.history("u1") == [Event("a", 0), Event("b", 1), Event("c", 1_700_000_000), Event("d", None)]
    assert ids(store.history("u2")) == ["z"]
    assert store.append("u1", []) == 4  # an empty batch reports the length and writes nothing


def test_cap_drops_the_oldest(make_store):
    store = make_store(max_events=3)
    assert store.max_events == 3
    assert store.append("u", evs("a", "b")) == 2
    assert store.append("u", evs("c", "d")) == 3
    assert ids(store.history("u")) == ["b", "c", "d"]
    assert store.append("u", evs("e", "f", "g", "h", "i")) == 3  # a batch longer than the cap keeps its tail
    assert ids(store.history("u")) == ["g", "h", "i"]


def test_limit_returns_the_most_recent(make_store):
    store = make_store()
    store.append("u", evs("a", "b", "c", "d"))
    assert ids(store.history("u", limit=2)) == ["c", "d"]
    assert ids(store.history("u", limit=10)) == ["a", "b", "c", "d"]
    assert store.history("u", limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.history("u", limit=-1)


def test_unknown_user(make_store):
    store = make_store()
    store.append("known", evs("a"))
    assert store.history("nobody") == [] and store.history("nobody", limit=3) == []
    assert store.has_user("known") and not store.has_user("nobody")


def test_seed_replaces_and_caps(make_store):
    store = make_store(max_events=3)
    store.append("u1", evs("old"))
    store.append("u3", evs("untouched"))
    assert store.seed({"u1": evs("a", "b"), "u2": evs("p", "q", "r", "s"), "u4": []}) == 3
    assert ids(store.history("u1")) == ["a", "b"]
    assert ids(store.history("u2")) == ["q", "r", "s"]
    assert ids(store.history("u3")) == ["untouched"]
    assert not store.has_user("u4")
    assert store.append("u1", evs("c", "d")) == 3 and ids(store.history("u1")) == ["b", "c", "d"]


def test_invalid_input_names_the_field_and_writes_nothing(make_store):
    store = make_store()
    store.append("u", evs("a"))
    with pytest.raises(ValueError, match="user_id"):
        store.append("", evs("x"))
    with pytest.raises(ValueError, match=r"events\[1\]"):
        store.append("u", [Event("b"), "c"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="user_id"):
        store.seed({"u": evs("x", "y"), "": evs("z")})
    assert ids(store.history("u")) == ["a"]  # neither the half-valid batch nor the half-valid seed landed


def test_actions_and_context_round_trip(make_store):
    store = make_store()
    events = [Event("a", 1, {"like": 1}, {"tab": 2}), Event("b", 2, None, {"tab": "feed"}), Event("c", 3, {"like": 0}),
              Event("d")]
    store.append("u", events)
    assert store.history("u") == events
    assert store.history("u")[0].context == {"tab": "2"}  # values are kept as text: 2 and "2" are one surface


@pytest.mark.parametrize("kwargs, field", [
    ({"item_id": "a", "context": {"tab": 1.5}}, "context.tab"), ({"item_id": "a", "context": {"tab": True}}, "context"),
    ({"item_id": "a", "context": ["tab"]}, "context"), ({"item_id": "a", "context": {"": 1}}, "context"),
    ({"item_id": ""}, "item_id"), ({"item_id": 7}, "item_id"),
    ({"item_id": "a", "timestamp": 1.5}, "timestamp"), ({"item_id": "a", "timestamp": "12"}, "timestamp"),
    ({"item_id": "a", "timestamp": True}, "timestamp"), ({"item_id": "a", "timestamp": 2**63}, "timestamp"),
])
def test_event_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Event(**kwargs)


def test_event_accepts_numpy_integer_timestamps():
    ev = Event("a", np.int64(1_700_000_000))
    assert ev.timestamp == 1_700_000_000 and type(ev.timestamp) is int


@pytest.mark.parametrize("cap", [0, -1, 2.5, True])
def test_bad_cap(tmp_path, cap):
    with pytest.raises(ValueError, match="max_events"):
        SQLiteStore(tmp_path / "h.db", max_events=cap)


def test_sqlite_survives_close_and_reopen(tmp_path):
    path = tmp_path / "nested" / "dir" / "history.db"  # parent folders are created
    with closing(SQLiteStore(path, max_events=5)) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        store.append("u", evs("a", "b"))
        store.seed({"v": evs("x")})
    with closing(SQLiteStore(path, max_events=5)) as store:
        assert ids(store.history("u")) == ["a", "b"] and ids(store.history("v")) == ["x"]
        assert store.append("u", evs("c")) == 3


def test_sqlite_append_is_durable_when_it_returns(tmp_path):
    """A process that dies right after append (no close, no atexit) loses nothing."""
    store_py = Path(__file__).parents[2] / "src" / "genrec" / "serve" / "store.py"
    # Load store.py by path: importing the genrec.serve package would pull in torch and take seconds.
    script = textwrap.dedent(f"""
        import importlib.util, os, sys
        spec = importlib.util.spec_from_file_location("store", {str(store_py)!r})
        store = importlib.util.module_from_spec(spec); sys.modules["store"] = store; spec.loader.exec_module(store)
        s = store.SQLiteStore({str(tmp_path / "h.db")!r})
        s.append("u", [store.Event("a", 1), store.Event("b", 2)])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with closing(SQLiteStore(tmp_path / "h.db")) as store:
        assert store.history("u") == [Event("a", 1), Event("b", 2)]


@pytest.mark.parametrize("cap", [1000, 50])
def test_concurrent_appends_lose_and_duplicate_nothing(make_store, cap):
    store = make_store(max_events=cap)
    n_threads, n_batches, batch = 8, 10, 3
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for b in range(n_batches):
                n = store.append("shared", [Event(f"t{t}-{b * batch + i}") for i in range(batch)])
                assert 0 < n <= cap
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    kept = ids(store.history("shared"))
    total = n_threads * n_batches * batch
    assert len(kept) == min(total, cap) and len(set(kept)) == len(kept)
    for t in range(n_threads):  # each thread's surviving events are the newest ones it wrote, in order
        mine = [int(i.split("-")[1]) for i in kept if i.startswith(f"t{t}-")]
        assert mine == list(range(n_batches * batch - len(mine), n_batches * batch))


def test_redis_store_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` raise ImportError
    with pytest.raises(GenrecError, match="pip install redis"):
        RedisStore("redis://localhost:6379/0")


def test_open_store_dispatch(tmp_path, monkeypatch):
    default = tmp_path / "bundle" / "history.db"
    with closing(open_store(None, default, max_events=7)) as store:
        assert isinstance(store, SQLiteStore) and store.max_events == 7 and default.is_file()
    for spec in (tmp_path / "a.db", str(tmp_path / "b.db"), ":memory:"):
        with closing(open_store(spec, default)) as store:
            assert isinstance(store, SQLiteStore) and store.path == str(spec)
    monkeypatch.setitem(sys.modules, "redis", None)
    for url in ("redis://localhost:6379/0", "rediss://cache.example:6380"):
        with pytest.raises(GenrecError, match="pip install redis"):  # i.e. it went to RedisStore
            open_store(url, default)
    with pytest.raises(ValueError, match="empty"):
        open_store("", default)


appends = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]),
                             st.lists(st.tuples(st.text("abc", min_size=1, max_size=3),
                                                st.none() | st.integers(-(2**63), 2**63 - 1)), max_size=6)),
                   max_size=25)


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, 8), ops=appends)
def test_matches_a_list_model(cap, ops):
    model: dict[str, list[Event]] = {}
    with closing(SQLiteStore(":memory:", max_events=cap)) as store:
        for user, batch in ops:
            events = [Event(i, t) for i, t in batch]
            model[user] = (model.get(user, []) + events)[-cap:]
            assert store.append(user, events) == len(model[user])
        for user in ("u1", "u2", "u3"):
            assert store.history(user) == model.get(user, [])
            assert store.history(user, limit=2) == model.get(user, [])[-2:]
            assert store.has_user(user) == bool(model.get(user))


def test_redis_entries_keep_actions_and_context_without_a_server():
    events = [Event("a", 1, {"like": 1}, {"tab": 2}), Event("b", None, None, {"tab": "feed"}),
              Event("c", 3, {"like": 0}), Event("d")]
    entries = RedisStore._encode(events)
    assert [json.loads(e) for e in entries][1:] == [["b", None, None, {"tab": "feed"}], ["c", 3, {"like": 0}],
                                                   ["d", None]]
    assert [Event(*json.loads(e)) for e in entries] == events  # what RedisStore.history decodes
