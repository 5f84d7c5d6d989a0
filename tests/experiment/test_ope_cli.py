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
from genrec.experiment.exposures import candidate_probs, export_exposures  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402


def test_candidate_probs_by_hand():
    scores = {"a": 2.0, "b": 1.0, "c": 0.0}
    assert candidate_probs(scores, ("b", "a", "c"), 0.0) == [{"a": 1.0}, {"a": 1.0}, {"c": 1.0}]
    pl = candidate_probs(scores, ("a", "c"), 1.0)
    assert pl[0]["a"] == pytest.approx(7.389 / (7.389 + 2.718 + 1), rel=1e-3)
    assert set(pl[1]) == {"b", "c"} and pl[1]["b"] == pytest.approx(2.718 / 3.718, rel=1e-3)


def test_ope_on_an_exploring_log(bundles, tmp_path):  # noqa: F811
    store = tmp_path / "h.sqlite"
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"name": "x", "salt": "s", "start": "2000-01-01", "end": "2100-01-01", "arms": [
        {"name": "eps", "share": 0.999, "serving": {"exploration": {"kind": "epsilon", "epsilon": 0.3}}},
        {"name": "c", "share": 0.001}]}))
    c = TestClient(create_app(Settings(bundle=bundles[0], store=str(store), experiment=exp)))
    for n in range(40):
        body = c.post("/v1/recommend", json={"history": ["3", "4", "5"], "k": 3}).json()
        first = body["items"][0]["item_id"]  # the user engages with the first slot every other time
        if n % 2 == 0:
            c.post("/v1/events", json={"user_id": "u", "items": [first], "request_id": body["request_id"]})
    log = tmp_path / "x.parquet"
    assert export_exposures(str(store), log) == 120
    result = CliRunner().invoke(cli, ["ope", "--exposures", str(log), "--bundle", str(bundles[0]), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["slots"] == 120 and r["requests"] == 40 and r["reward_model"].startswith("constant")
    est = {e["estimator"]: e for e in r["estimates"]}
    assert set(est) == {"ips", "snips", "dr"}
    for e in est.values():
        assert 0 < e["ess"] <= 120 and e["low"] <= e["value"] <= e["high"]
    text = CliRunner().invoke(cli, ["ope", "--exposures", str(log), "--bundle", str(bundles[0])]).output
    assert "effective sample size" in text and "DR reward model: constant" in text
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"request_id": ["r"], "item_id": ["1"]}), plain)
    bad = CliRunner().invoke(cli, ["ope", "--exposures", str(plain), "--bundle", str(bundles[0])])
    assert bad.exit_code != 0 and "no propensity column" in str(bad.exception)
