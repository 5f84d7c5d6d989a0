"""The exposure log on Redis: answers and the events tied to them survive a SIGKILL of the server after its 2xx and
of Redis itself (appendfsync always), and export to Parquet. Needs $GENREC_TEST_REDIS_URL (.ci/run starts a
server) and the redis package; skipped otherwise."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pyarrow.parquet as pq
import pytest
from tests.serve.conftest import bundles  # noqa: F401 - the fixture
from tests.serve.test_store import redis_url
from typer.testing import CliRunner

from genrec.cli import app as cli
from genrec.errors import GenrecError
from genrec.serve.store import Event, Exposure, RedisStore

pytestmark = pytest.mark.skipif(redis_url() is None, reason="needs the redis package and $GENREC_TEST_REDIS_URL")


def _forget(url: str, experiment: str, users: list[str]) -> None:
    """Delete this test's entries from the shared server: its exposures, their engagements, its users' histories."""
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    ours = set()
    for sid, fields in r.xrange("genrec:exposures"):
        row = json.loads(fields["e"])
        if row["experiment"] == experiment:
            ours.add(row["request_id"])
            r.xdel("genrec:exposures", sid)
    for sid, fields in r.xrange("genrec:engagements"):
        if json.loads(fields["e"])[2] in ours:
            r.xdel("genrec:engagements", sid)
    if users:
        r.delete(*(f"genrec:h:{u}" for u in users))
    r.close()


def test_answers_logged_to_redis_survive_a_server_kill_and_export(bundles, tmp_path, monkeypatch):  # noqa: F811
    httpx = pytest.importorskip("httpx")
    from tests.experiment.test_exposure_log import experiment
    from tests.serve.test_durability import start

    url = redis_url()
    name = f"t-redis-{uuid.uuid4().hex[:8]}"
    path = experiment(tmp_path, [{"name": "a"}, {"name": "b", "serving": {"exploration": {"kind": "epsilon",
                                                                                           "epsilon": 0.5}}}])
    path.write_text(path.read_text().replace("name: t-ab", f"name: {name}"))
    monkeypatch.setenv("GENREC_SERVE_EXPERIMENT", str(path))
    users = [f"{name}-u{i}" for i in range(20)]
    try:
        with open(tmp_path / "server.log", "wb") as server_log:
            proc, base = start(bundles[0], url, server_log)
            try:
                answers = [httpx.post(f"{base}/v1/recommend", json={"user_id": u, "k": 3}, timeout=30).json()
                           for u in users]
                clicks = [(a["request_id"], a["items"][0]["item_id"], u) for a, u in zip(answers, users, strict=True)
                          ][::2]
                for rid, item, user in clicks:
                    r = httpx.post(f"{base}/v1/events", json={"user_id": user, "items": [item], "request_id": rid},
                                   timeout=30)
                    assert r.status_code == 200
            finally:
                proc.send_signal(signal.SIGKILL)  # no shutdown: only what was acknowledged and durable is there
                proc.wait(30)
        log = RedisStore(url)
        logged = {e.request_id: e for e in log.exposures() if e.experiment == name}
        assert set(logged) == {a["request_id"] for a in answers}
        for a in answers:
            e = logged[a["request_id"]]
            assert e.arm == a["arm"] and list(e.items) == [i["item_id"] for i in a["items"]]
            assert (e.propensities is not None) == (a["arm"] == "b")
        tied = {(g.request_id, g.item_id) for g in log.engagements() if g.request_id in logged}
        assert tied == {(rid, item) for rid, item, _ in clicks}
        log.close()
        out = tmp_path / "x.parquet"
        result = CliRunner().invoke(cli, ["experiment", "export-exposures", "--store", url, "--out", str(out),
                                          "--experiment", name])
        assert result.exit_code == 0, result.output
        table = pq.read_table(out).to_pylist()
        assert len(table) == 60 and {r["experiment"] for r in table} == {name}
        assert sum(r["engaged"] for r in table) == len(clicks)
        assert all((r["propensity"] is not None) == (r["arm"] == "b") for r in table)
    finally:
        _forget(url, name, users)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logged_exposures_survive_a_redis_kill(tmp_path):
    """A private Redis with appendfsync always (the production setting): what log_exposures and append returned
    from is on disk, so a SIGKILL of Redis itself loses none of it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary to start a private server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(tmp_path)]

    def launch() -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                RedisStore(f"redis://127.0.0.1:{port}/0").close()
                return proc
            except GenrecError:  # not up yet
                time.sleep(0.1)
        proc.kill()
        raise AssertionError("redis-server did not start")

    proc = launch()
    try:
        store = RedisStore(f"redis://127.0.0.1:{port}/0")
        shown = [Exposure(f"r{i}", 1000.0 + i, f"u{i}", False, "e", "a", ("1", "2"), None, (0.5, 0.25))
                 for i in range(50)]
        store.log_exposures(shown)
        store.append("u1", [Event("2")], request_id="r1")
        store.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc = launch()
        again = RedisStore(f"redis://127.0.0.1:{port}/0")
        assert again.exposures() == shown
        assert [(g.request_id, g.item_id) for g in again.engagements()] == [("r1", "2")]
        again.close()
    finally:
        proc.kill()
        proc.wait(30)
