"""A 2xx from POST /v1/events means the event is on disk: kill the server (SIGKILL, no shutdown), restart it on
the same store, and the event is there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle, store, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GENREC_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "genrec", "serve", str(bundle), "--port", str(port),
                             "--store", str(store)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"genrec serve exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("genrec serve was not ready within 120 s")


def test_an_acknowledged_event_survives_a_kill(bundles, tmp_path):
    store = tmp_path / "history.sqlite"
    with open(tmp_path / "server.log", "wb") as log:
        proc, url = start(bundles[0], store, log)
        try:
            r = httpx.post(f"{url}/v1/events", json={"user_id": "u1", "items": ["3", "4"]}, timeout=30)
            assert r.status_code == 200 and r.json()["stored"] == 2
        finally:
            proc.send_signal(signal.SIGKILL)  # no graceful shutdown, no close(): only what was durable survives
            proc.wait(30)
        proc, url = start(bundles[0], store, log)
        try:
            history = httpx.get(f"{url}/v1/users/u1/history", timeout=30).json()
            assert [e["item_id"] for e in history["items"]] == ["3", "4"]
            after = httpx.post(f"{url}/v1/recommend", json={"user_id": "u1", "k": 3}, timeout=30).json()
            assert not after["fallback"] and not {i["item_id"] for i in after["items"]} & {"3", "4"}
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
