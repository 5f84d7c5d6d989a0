"""The exposure log: what every answer showed is in the store (arm, propensities, teams, bundle), engagements link
to it by request_id, the Parquet export, and durability: a server killed (SIGKILL) after its 2xx answers lost none."""

from __future__ import annotations

import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.serve.conftest import bundles  # noqa: E402,F401 - the fixture
from typer.testing import CliRunner  # noqa: E402

from genrec.cli import app as cli  # noqa: E402
from genrec.experiment import team_draft  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402
from genrec.serve.store import SQLiteStore  # noqa: E402

WINDOW = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}


def experiment(tmp_path: Path, arms: list[dict], mode: str = "ab") -> Path:
    path = tmp_path / f"{mode}.yaml"
    path.write_text(yaml.safe_dump({"name": f"t-{mode}", "salt": "s", "mode": mode, **WINDOW, "arms": arms}))
    return path


def test_every_answer_is_logged_with_its_arm_and_propensities(bundles, tmp_path):  # noqa: F811
    store = tmp_path / "h.sqlite"
    path = experiment(tmp_path, [{"name": "control"}, {"name": "explore", "serving": {
        "exploration": {"kind": "epsilon", "epsilon": 0.5}}}])
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), experiment=path)))
    answers = [c.post("/v1/recommend", json={"history": ["3", "4"], "k": 4}).json() for _ in range(10)]
    clicked = answers[0]["items"][1]["item_id"]
    r = c.post("/v1/events", json={"user_id": "u1", "items": [clicked], "request_id": answers[0]["request_id"]})
    assert r.status_code == 200
    assert c.post("/v1/events", json={"user_id": "u1", "items": ["3"], "request_id": ""}).status_code == 422
    log = SQLiteStore(store)
    logged = {e.request_id: e for e in log.exposures()}
    assert set(logged) == {a["request_id"] for a in answers}
    for a in answers:
        e = logged[a["request_id"]]
        assert e.experiment == "t-ab"
        assert e.arm == a["arm"] and list(e.items) == [i["item_id"] for i in a["items"]] and e.anonymous
        assert e.model_version == a["model_version"] and len(e.bundle) == 16
        if a["arm"] == "explore":
            assert len(e.propensities) == 4 and all(0 < p <= 1 for p in e.propensities)
        else:
            assert e.propensities is None
    assert {a["arm"] for a in answers} == {"control", "explore"}
    assert [(g.request_id, g.item_id) for g in log.engagements()] == [(answers[0]["request_id"], clicked)]
    log.close()
    out = tmp_path / "x.parquet"
    result = CliRunner().invoke(cli, ["experiment", "export-exposures", "--store", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    assert len(table) == 40 and sum(r["engaged"] for r in table) == 1
    hit = next(r for r in table if r["engaged"])
    assert (hit["request_id"], hit["position"], hit["item_id"]) == (answers[0]["request_id"], 1, clicked)


def test_interleaved_answers_log_their_teams(bundles, tmp_path):  # noqa: F811
    store = tmp_path / "h.sqlite"
    path = experiment(tmp_path, [{"name": "a"}, {"name": "b", "bundle": str(bundles[1])}], mode="interleave")
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), experiment=path)))
    body = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 5}).json()
    alone = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 5}).json()  # same model: same lists
    (e, _) = sorted(SQLiteStore(store).exposures(), key=lambda x: x.request_id != body["request_id"])
    ids = [i["item_id"] for i in alone["items"]]
    want = team_draft(ids, ids, 5, seed=body["request_id"])
    assert e.arm is None and e.teams == want.teams and e.items == want.items and set(e.teams) == {0, 1}


def test_a_missing_store_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["experiment", "export-exposures", "--store", str(tmp_path / "none.sqlite"),
                                      "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code != 0 and "no such SQLite file" in str(result.exception)


def test_logged_exposures_survive_a_kill(bundles, tmp_path, monkeypatch):  # noqa: F811
    httpx = pytest.importorskip("httpx")
    from tests.serve.test_durability import start

    store = tmp_path / "history.sqlite"
    monkeypatch.setenv("GENREC_SERVE_EXPERIMENT", str(experiment(tmp_path, [{"name": "a"}, {"name": "b"}])))
    with open(tmp_path / "server.log", "wb") as server_log:
        proc, url = start(bundles[0], store, server_log)
        try:
            ids = [httpx.post(f"{url}/v1/recommend", json={"user_id": f"u{i}", "k": 3}, timeout=30).json()
                   ["request_id"] for i in range(20)]
        finally:
            proc.send_signal(signal.SIGKILL)  # no shutdown: only what was durable survives
            proc.wait(30)
    logged = {e.request_id: e for e in SQLiteStore(store).exposures()}
    assert set(ids) <= set(logged) and {logged[i].arm for i in ids} == {"a", "b"}


@pytest.mark.parametrize(("exposure_log", "logged"), [(None, False), (True, True), (False, False)])
def test_without_an_experiment_answers_are_logged_only_when_asked(bundles, tmp_path, exposure_log,  # noqa: F811
                                                                  logged):
    store = tmp_path / "h.sqlite"
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), exposure_log=exposure_log)))
    body = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 3}).json()
    assert body["request_id"] and body["experiment"] is None
    assert [e.request_id for e in SQLiteStore(store).exposures()] == ([body["request_id"]] if logged else [])


def test_an_experiment_logs_unless_turned_off(bundles, tmp_path):  # noqa: F811
    store = tmp_path / "h.sqlite"
    path = experiment(tmp_path, [{"name": "a"}, {"name": "b"}])
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), experiment=path, exposure_log=False)))
    assert c.post("/v1/recommend", json={"history": ["3", "4"], "k": 3}).json()["arm"] in ("a", "b")
    assert SQLiteStore(store).exposures() == []
