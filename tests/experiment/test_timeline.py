"""The experiment over time (genrec.experiment.timeline, GET /v1/experiment/timeline): each look's estimate is the
report's estimate on what was logged by then, the bands are always-valid (running intersection, wider than the
fixed-horizon interval), and the endpoint answers only while an experiment runs."""

from __future__ import annotations

import numpy as np
import pytest
from tests.experiment.test_report_cli import fill, write_experiment

from genrec.experiment import load_experiment, ratio_estimate
from genrec.experiment.report import build_report
from genrec.experiment.timeline import finite, looks, ratio_path, timeline
from genrec.serve.store import SQLiteStore


def test_each_look_is_the_ratio_of_what_was_logged_by_then():
    rng = np.random.default_rng(3)
    n = 400
    units = rng.integers(0, 60, n).astype(str)
    times = rng.uniform(0, 100, n)
    den = (rng.random(n) < 0.7).astype(float)  # exposures
    num = (1 - den) * (rng.random(n) < 0.8)  # engagements (rows without an exposure)
    at = looks(0, 100, 7)
    value, se, users = ratio_path(units, times, num, den, at)
    for j, t in enumerate(at):
        keep = times <= t
        uniq, inv = np.unique(units[keep], return_inverse=True)
        y = np.bincount(inv, num[keep], len(uniq))
        x = np.bincount(inv, den[keep], len(uniq))
        on = x > 0
        assert users[j] == on.sum()
        if on.sum() >= 2:
            want = ratio_estimate(y[on], x[on])
            assert value[j] == pytest.approx(want.value) and se[j] == pytest.approx(want.se)
    with pytest.raises(ValueError, match="points must be >= 2"):
        looks(0, 1, 1)


def test_ab_timeline_ends_at_the_report_and_its_bands_are_always_valid(tmp_path):
    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    path = write_experiment(tmp_path)
    fill(store, path, [f"u{i}" for i in range(200)], {"control": 0.1, "better": 0.4})
    exp = load_experiment(path)
    t = timeline(exp, store.exposures(), store.engagements(), points=12)
    report = build_report(exp, store.exposures(), store.engagements())
    assert len(t["times"]) == 12 and t["metric"] == "engagements per exposure"
    for arm, want in zip(t["arms"], report["arms"], strict=True):
        assert arm["arm"] == want["arm"] and arm["users"][-1] == want["users"]
        assert arm["value"][-1] == pytest.approx(want["engagements_per_exposure"]["value"])
    (d,) = t["differences"]
    fixed = report["differences"][0]["absolute"]
    assert d["value"][-1] == pytest.approx(fixed["value"])
    low, high = np.array(d["low"]), np.array(d["high"])
    assert (np.maximum.accumulate(low) == low).all() and (np.minimum.accumulate(high) == high).all()  # intersection
    assert low[-1] <= d["value"][-1] <= high[-1] and low[-1] > 0  # a large effect is detected
    assert high[-1] - low[-1] > fixed["high"] - fixed["low"]  # the price of looking at every point
    assert np.isinf(low[0]) and finite(d)["low"][0] is None  # a look with too few users: unbounded, null in JSON


def test_interleave_timeline_ends_at_the_reports_preference(tmp_path):
    store = SQLiteStore(tmp_path / "h.sqlite")
    path = write_experiment(tmp_path, mode="interleave")
    fill(store, path, [f"u{i}" for i in range(120)], {"control": 0.1, "better": 0.5})
    exp = load_experiment(path)
    t = timeline(exp, store.exposures(), store.engagements(), points=5)
    report = build_report(exp, store.exposures(), store.engagements())["interleave"]
    (d,) = t["differences"]
    assert t["arms"] == [] and (d["arm"], d["control"]) == ("better", "control")
    assert d["value"][-1] == pytest.approx(report["preference_b"]["value"])
    assert 0 < d["low"][-1] <= d["value"][-1] <= d["high"][-1]  # the second arm wins, visibly


def test_the_endpoint_answers_only_under_an_experiment(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from tests.experiment.test_serve_experiment import write
    from tests.serve.test_bundle import tiny

    from genrec.serve import export_bundle
    from genrec.serve.app import Settings, create_app

    _, run = tiny(tmp_path)
    bundle = export_bundle(run, tmp_path / "bundle")
    plain = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "a.sqlite"))))
    r = plain.get("/v1/experiment/timeline")
    assert r.status_code == 404 and "no experiment" in r.json()["detail"]
    path = write(tmp_path, [{"name": "control"}, {"name": "treatment", "serving": {"ranker_weight": 0.3}}])
    c = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "b.sqlite"), experiment=path)))
    empty = c.get("/v1/experiment/timeline").json()
    assert empty["experiment"] == "trial" and empty["exposures"] == 0 and empty["times"] == []
    for i in range(12):
        user = f"u{i}"
        c.post("/v1/events", json={"user_id": user, "items": ["3", "4"]})
        answer = c.post("/v1/recommend", json={"user_id": user, "k": 3}).json()
        c.post("/v1/events", json={"user_id": user, "items": [answer["items"][0]["item_id"]],
                                   "request_id": answer["request_id"]})
    body = c.get("/v1/experiment/timeline", params={"points": 5}).json()
    assert body["exposures"] == 12 and body["engagements"] == 12 and len(body["times"]) == 5
    assert [a["arm"] for a in body["arms"]] == ["control", "treatment"]
    assert sum(a["users"][-1] for a in body["arms"]) == 12
    assert all(a["value"][-1] == 1 / 1 for a in body["arms"] if a["users"][-1])  # every answer was engaged once
    assert c.get("/v1/experiment/timeline", params={"points": 1}).status_code == 422


def test_the_report_writes_svg_plots(tmp_path):
    from xml.etree import ElementTree

    from tests.experiment.test_report_cli import run

    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    path = write_experiment(tmp_path)
    fill(store, path, [f"u{i}" for i in range(120)], {"control": 0.1, "better": 0.4})
    store.close()
    code, output = run(str(path), "--store", str(db), "--plots", str(tmp_path / "plots"), "--points", "9")
    assert code == 0, output
    files = sorted((tmp_path / "plots").glob("*.svg"))
    assert [f.name for f in files] == ["exp-arms.svg", "exp-difference.svg"]
    assert all(f"plot: {f}" in output.replace("\n", "") for f in files)
    ns = "{http://www.w3.org/2000/svg}"
    arms, diff = (ElementTree.parse(f).getroot() for f in files)
    lines = list(arms.iter(f"{ns}polyline"))
    counts = sorted(len(e.get("points").split()) for e in lines)
    assert counts in ([8, 9], [9, 9])  # a point per look (an arm without users at the first look: none there)
    assert len(list(arms.iter(f"{ns}polygon"))) == 2 and len(list(diff.iter(f"{ns}polygon"))) == 1
    assert "always-valid" in "".join(diff.itertext())
    code, output = run(str(path), "--store", str(db), "--json", "--plots", str(tmp_path / "again"))
    assert code == 0 and len(__import__("json").loads(output)["plots"]) == 2
