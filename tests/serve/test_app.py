"""The HTTP API: the recommend/events/similar contract, every bad-input case, auth, body limit, fallbacks,
metrics, readiness, and reloads under concurrent requests with zero failures."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from genrec.serve.app import Settings, create_app  # noqa: E402


def client(bundle: Path, tmp_path: Path, **settings) -> TestClient:
    app = create_app(Settings(bundle=bundle, store=str(tmp_path / "history.sqlite"), **settings))
    return TestClient(app)


def test_recommend_by_history_and_by_user_after_events(bundles, tmp_path):
    c = client(bundles[0], tmp_path)
    r = c.post("/v1/recommend", json={"history": ["3", "4", "5"], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 4 and not body["fallback"] and body["model_version"]
    assert not {i["item_id"] for i in body["items"]} & {"3", "4", "5"}
    assert all(i["title"].startswith("Movie ") for i in body["items"])
    # an unknown user gets the cold-start answer, then reacts to its events at once
    cold = c.post("/v1/recommend", json={"user_id": "u1", "k": 4}).json()
    assert cold["fallback"] and any("unknown user" in w for w in cold["warnings"])
    e = c.post("/v1/events", json={"user_id": "u1", "items": ["3", "4", "5"]})
    assert e.status_code == 200 and e.json()["history_length"] == 3
    warm = c.post("/v1/recommend", json={"user_id": "u1", "k": 4}).json()
    assert not warm["fallback"]
    assert [i["item_id"] for i in warm["items"]] == [i["item_id"] for i in body["items"]]


def test_unknown_items_are_ignored_and_listed(bundles, tmp_path):
    c = client(bundles[0], tmp_path)
    body = c.post("/v1/recommend", json={"history": ["3", "nope", "4"], "k": 3}).json()
    assert any("nope" in w for w in body["warnings"]) and len(body["items"]) == 3
    ev = c.post("/v1/events", json={"user_id": "u2", "items": ["zzz"]}).json()
    assert ev["known"] == 0 and any("zzz" in w for w in ev["warnings"])


@pytest.mark.parametrize("payload, field", [
    ({"history": ["1"], "k": 0}, "k"),
    ({"history": ["1"], "k": 5000}, "k"),
    ({"history": ["1"], "k": "ten"}, "k"),
    ({"history": "1,2"}, "history"),
    ({"history": ["1"], "colour": "red"}, "colour"),
    ({"user_id": "a", "history": ["1"]}, "user_id or history"),
    ({"history": ["1", "2"], "timestamps": [1]}, "timestamps"),
    ({"history": [""]}, "history"),
])
def test_bad_recommend_bodies_are_422_naming_the_field(bundles, tmp_path, payload, field):
    r = client(bundles[0], tmp_path).post("/v1/recommend", json=payload)
    assert r.status_code == 422
    assert field in r.json()["detail"]


def test_malformed_json_and_bad_events_are_422(bundles, tmp_path):
    c = client(bundles[0], tmp_path)
    r = c.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    for payload in ({"user_id": "u", "items": []}, {"items": ["1"]}, {"user_id": "u", "items": ["1"],
                                                                       "timestamps": [1, 2]},
                    {"user_id": "u", "items": ["1"], "timestamps": [2**63]}):  # beyond int64: a 422, not a 500
        assert c.post("/v1/events", json=payload).status_code == 422
    assert c.post("/v1/recommend", json={"history": ["3"], "timestamps": [-(2**63)]}).status_code == 422
    assert c.get("/v1/items/3/similar", params={"k": 0}).status_code == 422


def test_body_over_the_limit_is_413_and_nothing_is_stored(bundles, tmp_path):
    c = client(bundles[0], tmp_path, max_body_bytes=200)
    r = c.post("/v1/events", json={"user_id": "big", "items": [str(i) for i in range(100)]})
    assert r.status_code == 413
    assert c.post("/v1/recommend", json={"user_id": "big"}).json()["fallback"]
    body = json.dumps({"user_id": "big", "items": [str(i) for i in range(100)]}).encode()
    chunked = c.post("/v1/events", content=iter([body[:100], body[100:]]),  # no content-length header
                     headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "200-byte limit" in chunked.text
    assert c.post("/v1/recommend", json={"user_id": "big"}).json()["fallback"]


def test_api_key_guards_everything_but_health(bundles, tmp_path):
    c = client(bundles[0], tmp_path, api_key="s3cret")
    assert c.get("/healthz").status_code == 200
    assert c.post("/v1/recommend", json={"history": ["3"]}).status_code == 401
    assert c.post("/v1/recommend", json={"history": ["3"]},
                  headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = c.post("/v1/recommend", json={"history": ["3"]}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert c.get("/metrics").status_code == 401


def test_similar_health_ready_and_metrics(bundles, tmp_path):
    c = client(bundles[0], tmp_path)
    sim = c.get("/v1/items/3/similar", params={"k": 3})
    assert sim.status_code == 200 and len(sim.json()["items"]) == 3
    assert all(i["item_id"] != "3" for i in sim.json()["items"])
    assert c.get("/v1/items/nope/similar").status_code == 404
    assert c.get("/readyz").json()["status"] == "ready"
    c.post("/v1/recommend", json={"user_id": "nobody"})
    text = c.get("/metrics").text
    assert 'genrec_requests_total{endpoint="/v1/recommend",status="200"}' in text
    assert "genrec_request_seconds_bucket" in text and "genrec_fallbacks_total" in text
    assert "genrec_model_info" in text
    assert c.get("/openapi.json").status_code == 200


def test_model_error_answers_from_the_fallback_and_keeps_serving(bundles, tmp_path, monkeypatch):
    c = client(bundles[0], tmp_path)
    rec = c.app.state.serving.current()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(rec.model, "last_hidden", broken)
    body = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 3}).json()
    assert body["fallback"] and len(body["items"]) == 3
    assert "genrec_fallbacks_total" in c.get("/metrics").text
    assert c.get("/healthz").status_code == 200


def test_reload_under_concurrent_requests_never_fails(bundles, tmp_path):
    c = client(bundles[0], tmp_path)
    before = c.post("/v1/recommend", json={"history": ["3"]}).json()["model_version"]
    failures, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            r = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 5})
            if r.status_code != 200 or len(r.json()["items"]) != 5:
                failures.append(r.text)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    bad = c.post("/admin/reload", json={"bundle": str(tmp_path / "missing")})
    assert bad.status_code == 409 and before in bad.json()["detail"]
    for target in (bundles[1], bundles[0], bundles[1]):
        assert c.post("/admin/reload", json={"bundle": str(target)}).status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert c.post("/v1/recommend", json={"history": ["3"]}).json()["model_version"] == \
        c.app.state.serving.current().version


def test_serve_cli_refuses_unsafe_or_broken_setups(bundles, tmp_path, capsys, monkeypatch):
    from cli_run import run

    monkeypatch.delenv("GENREC_API_KEY", raising=False)
    code, _, err = run(["serve", str(bundles[0]), "--host", "0.0.0.0"], capsys)
    assert code != 0 and "api-key" in err
    code, _, err = run(["serve", str(tmp_path / "missing")], capsys)
    assert code != 0 and "missing" in err
    code, _, err = run(["serve", str(bundles[0]), "--store", "x.sqlite", "--redis-url", "redis://h"], capsys)
    assert code != 0 and "not both" in err


def test_worker_socket_is_tcp_so_connections_get_nodelay():
    """Several workers share a socket genrec binds itself: with protocol IPPROTO_TCP (uvicorn's has 0), asyncio
    sets TCP_NODELAY on every accepted connection, so keep-alive answers do not wait for delayed ACKs."""
    import socket

    from genrec.cli.serve import listen_socket
    from genrec.errors import ConfigError

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
        sock.listen()
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.proto == socket.IPPROTO_TCP  # what asyncio checks before setting TCP_NODELAY
        with pytest.raises(ConfigError, match="cannot listen"):
            listen_socket("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_sighup_with_several_workers_reloads_in_place(monkeypatch):
    """The worker supervisor forwards SIGHUP to every live worker (each swaps its model in place) instead of
    restarting them, which would cut keep-alive connections mid-request."""
    import signal
    import types

    from genrec.cli import serve as serve_cli

    cls = serve_cli.in_place_reloads()
    sent = []
    monkeypatch.setattr(serve_cli.os, "kill", lambda pid, sig: sent.append((pid, sig)))

    def worker(pid, alive):
        return types.SimpleNamespace(process=types.SimpleNamespace(pid=pid, is_alive=lambda: alive))

    supervisor = cls.__new__(cls)  # no real processes: only the signal handling is under test
    supervisor.processes = [worker(11, True), worker(12, False), worker(13, True)]
    supervisor.handle_hup()
    assert sent == [(11, signal.SIGHUP), (13, signal.SIGHUP)]
