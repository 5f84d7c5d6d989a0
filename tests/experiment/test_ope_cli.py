"""genrec ope: IPS, SNIPS and DR of a candidate bundle from an exploring arm's exposure log."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.serve.conftest import bundles  # noqa: E402,F401 - the fixture
from typer.testing import CliRunner  # noqa: E402

from genrec.cli import app as cli  # noqa: E402
from genrec.experiment.exposures import export_exposures  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402
from genrec.serve.store import Event, open_store  # noqa: E402


def test_ope_on_an_exploring_log(bundles, tmp_path):  # noqa: F811
    store = tmp_path / "h.sqlite"
    seed = open_store(str(store), store)
    seed.seed({"u": [Event(i) for i in ("3", "4", "5")]})
    seed.close()
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"name": "x", "salt": "s", "start": "2000-01-01", "end": "2100-01-01", "arms": [
        {"name": "eps", "serving": {"exploration": {"kind": "epsilon", "epsilon": 0.3}}},
        {"name": "pl", "serving": {"exploration": {"kind": "plackett_luce", "temperature": 0.5}}}]}))
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), experiment=exp)))
    deny = {}
    for n in range(40):
        body = {"user_id": "u", "k": 3} | ({"deny": ["6", "7"]} if n % 3 == 0 else {})
        answer = c.post("/v1/recommend", json=body).json()
        deny[answer["request_id"]] = body.get("deny", [])
        first = answer["items"][0]["item_id"]  # the user engages with the first slot every other time
        if n % 2 == 0:
            c.post("/v1/events", json={"user_id": "u", "items": [first], "request_id": answer["request_id"]})
    log = tmp_path / "x.parquet"
    assert export_exposures(str(store), log) == 120
    s = open_store(str(store), store)
    clicked = s.engagements()
    s.close()
    events, filters = tmp_path / "events.parquet", tmp_path / "filters.parquet"
    pq.write_table(pa.table({"user_id": ["u"] * (3 + len(clicked)), "item_id": ["3", "4", "5"] + [
        e.item_id for e in clicked], "time": [0.0, 1.0, 2.0] + [e.time for e in clicked]}), events)
    pq.write_table(pa.table({"request_id": list(deny), "deny": list(deny.values())}), filters)
    args = ["ope", "--exposures", str(log), "--bundle", str(bundles[0]), "--experiment", str(exp)]
    result = CliRunner().invoke(cli, [*args, "--events", str(events), "--filters", str(filters), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["slots"] == 120 and r["requests"] == 40 and r["reward_model"].startswith("constant")
    assert r["reproduced"] == 1.0 and r["candidate_mass_outside_log"] == pytest.approx(0.0, abs=1e-9)
    est = {e["estimator"]: e for e in r["estimates"]}
    assert set(est) == {"ips", "snips", "dr"}
    for e in est.values():
        assert 0 < e["ess"] <= 120 and e["low"] <= e["value"] <= e["high"]
    # without the requests' filters or the seeded history, the logged lists are not all reproduced: flagged
    loose = json.loads(CliRunner().invoke(cli, [*args, "--events", str(events), "--json"]).output)
    assert loose["reproduced"] < 1.0
    text = CliRunner().invoke(cli, args).output
    assert "effective sample size" in text and "DR reward model: constant" in text and "warning" in text
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"request_id": ["r"], "item_id": ["1"]}), plain)
    bad = CliRunner().invoke(cli, ["ope", "--exposures", str(plain), "--bundle", str(bundles[0]), "--experiment",
                                   str(exp)])
    assert bad.exit_code != 0 and "no propensity column" in str(bad.exception)
