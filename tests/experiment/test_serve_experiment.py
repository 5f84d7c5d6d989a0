"""genrec serve --experiment: arms by user (sticky), anonymous requests, exploring arms, interleaving, an arm whose
bundle does not load, and a bad experiment file."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.serve.conftest import bundles  # noqa: E402,F401 - the fixture

from genrec.errors import ConfigError  # noqa: E402
from genrec.experiment import assign, load_experiment  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402

WINDOW = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}


def write(tmp_path: Path, arms: list[dict], mode: str = "ab", name: str = "exp.yaml", **extra) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "trial", "salt": "s1", "mode": mode, **WINDOW, "arms": arms, **extra}))
    return path


def client(bundle: Path, tmp_path: Path, experiment: Path | None) -> TestClient:
    return TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite"), experiment=experiment)))


def test_without_an_experiment_answers_carry_a_request_id(bundles, tmp_path):  # noqa: F811
    c = client(bundles[0], tmp_path, None)
    a, b = (c.post("/v1/recommend", json={"history": ["3", "4"], "k": 3}).json() for _ in range(2))
    assert a["experiment"] is None and a["arm"] is None and a["anonymous"] is True
    assert len(a["request_id"]) == 32 and a["request_id"] != b["request_id"]


def test_ab_arms_are_sticky_and_anonymous_requests_flagged(bundles, tmp_path):  # noqa: F811
    path = write(tmp_path, [{"name": "control"}, {"name": "treatment", "serving": {"ranker_weight": 0.3}}])
    c = client(bundles[0], tmp_path, path)
    exp = load_experiment(path)
    seen = set()
    for user in [f"u{i}" for i in range(12)]:
        c.post("/v1/events", json={"user_id": user, "items": ["3", "4"]})
        answers = [c.post("/v1/recommend", json={"user_id": user, "k": 3}).json() for _ in range(2)]
        assert {a["arm"] for a in answers} == {assign(exp, user).arm}  # sticky, and the library's arm
        assert answers[0]["experiment"] == "trial" and answers[0]["anonymous"] is False
        seen.add(answers[0]["arm"])
    assert seen == {"control", "treatment"}
    anon = c.post("/v1/recommend", json={"history": ["3"], "k": 3}).json()
    assert anon["anonymous"] is True and anon["arm"] == assign(exp, None, anon["request_id"]).arm


def test_an_exploring_arm_samples_its_list(bundles, tmp_path, monkeypatch):  # noqa: F811
    path = write(tmp_path, [{"name": "greedy"},
                            {"name": "pl", "serving": {"exploration": {"kind": "plackett_luce", "temperature": 50.0}}}])
    ids = iter(range(10_000))  # request ids seed the draws: numbered, so the test draws the same lists every run
    monkeypatch.setattr(uuid, "uuid4", lambda: SimpleNamespace(hex=f"req{next(ids):05d}"))
    c = client(bundles[0], tmp_path, path)
    exp = load_experiment(path)
    users = {arm: next(f"u{i}" for i in range(1000) if assign(exp, f"u{i}").arm == arm) for arm in ("greedy", "pl")}

    def shown(arm: str) -> tuple[list[str], set[tuple[str, ...]]]:
        assert c.post("/v1/events", json={"user_id": users[arm], "items": ["3", "4"]}).status_code == 200
        answers = [c.post("/v1/recommend", json={"user_id": users[arm], "k": 4}).json() for _ in range(8)]
        return [a["arm"] for a in answers], {tuple(i["item_id"] for i in a["items"]) for a in answers}

    arms, lists = shown("pl")
    assert arms == ["pl"] * 8 and all(len(x) == 4 for x in lists)
    assert len(lists) > 1  # a high temperature reshuffles what is shown
    assert all(not set(x) & {"3", "4"} for x in lists)  # the filters still hold
    arms, greedy = shown("greedy")
    assert arms == ["greedy"] * 8 and len(greedy) == 1  # the same requests without exploration: one list


def test_an_arm_whose_bundle_does_not_load_falls_back(bundles, tmp_path, caplog):  # noqa: F811
    path = write(tmp_path, [{"name": "control"}, {"name": "broken", "bundle": "no/such/bundle"}])
    with caplog.at_level(logging.ERROR, logger="genrec.experiment.serving"):
        c = client(bundles[0], tmp_path, path)
    assert any("arm broken" in r.getMessage() and "default bundle" in r.getMessage() for r in caplog.records)
    arms = {c.post("/v1/recommend", json={"user_id": f"v{i}", "k": 2}).json()["arm"] for i in range(16)}
    assert arms == {"control", "broken"}  # both serve


def test_interleave_merges_both_lists(bundles, tmp_path):  # noqa: F811
    path = write(tmp_path, [{"name": "a"}, {"name": "b", "bundle": str(bundles[1])}], mode="interleave")
    c = client(bundles[0], tmp_path, path)
    body = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 5}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert body["experiment"] == "trial" and body["arm"] is None and len(ids) == len(set(ids)) == 5


def test_a_bad_experiment_file_is_a_clear_error(bundles, tmp_path):  # noqa: F811
    bad = write(tmp_path, [{"name": "a", "share": 0.7}, {"name": "b", "share": 0.7}])
    with pytest.raises(ConfigError, match="shares must sum to 1"):
        client(bundles[0], tmp_path, bad)
    from typer.testing import CliRunner

    from genrec.cli import app

    result = CliRunner().invoke(app, ["serve", str(bundles[0]), "--experiment", str(bad)])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert "arms.share" in str(result.exception)


def test_an_arms_ranker_weight_reorders_by_the_score_rule(tmp_path_factory):
    from tests.serve.test_ranking_stage import bundle as ranked_bundle
    from tests.serve.test_ranking_stage import runs

    from genrec.serve.recommender import Recommender

    rec = Recommender.load(ranked_bundle.__wrapped__(runs.__wrapped__(tmp_path_factory)))
    history = ["3", "4", "5"]
    ranked = rec.recommend(history, k=6, ranker_weight=1e6)  # the ranker's z-score dominates
    flat = rec.recommend(history, k=6, ranker_weight=0.0)  # retrieval alone
    assert flat.mode == "model+ranker"
    scores = [i["retrieval_score"] for i in flat.items]
    assert scores == sorted(scores, reverse=True)
    assert [i["item_id"] for i in ranked.items] != [i["item_id"] for i in flat.items]
