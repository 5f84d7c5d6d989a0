"""A bundle with retrieval + ranker: export, the two-stage answer with per-task predictions (checked against the
ranking model called directly), actions from events, bad input, and the fusion weight's extremes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import time
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tests.cli_run import run
from tests.serve.conftest import headless_page, live_server
from tests.serve.test_bundle import tiny
from tests.serve.test_web_page import chromium
from tests.train.test_ranking_trainer import config, learnable_log

from genrec.data.actions import SCHEMAS, encode_events, schema_for
from genrec.data.impression_readers import log_bucket
from genrec.data.impression_splits import temporal_split
from genrec.errors import GenrecError
from genrec.io import read_json, write_json
from genrec.models.ranking import RankBatch
from genrec.serve import Recommender, export_bundle, load_manifest
from genrec.serve.app import Settings, create_app
from genrec.serve.store import Event, SQLiteStore
from genrec.train.ranking import RankingTrainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny retrieval run (items '1'..'12') and a ranker trained on a log whose items are '0'..'29'."""
    root = tmp_path_factory.mktemp("two-stage")
    _, retrieval = tiny(root)
    log = learnable_log()
    days = np.unique(log.day)
    RankingTrainer(config("ranker", epochs=2), root / "ranker", log=log,
                   split=temporal_split(log, valid_day=int(days[7]), test_day=int(days[8])),
                   show_progress=False).fit()
    return retrieval, root / "ranker", root


@pytest.fixture(scope="module")
def bundle(runs):
    retrieval, ranker, root = runs
    return export_bundle(retrieval, root / "bundle", ranker=ranker, ranker_options={"weight": 0.5, "candidates": 8})


def test_export_writes_the_stage_and_checksums_it(bundle, runs):
    m = load_manifest(bundle)
    assert m["ranker"]["model"] == "ranker" and m["ranker"]["retrieval_items_known"] == 12
    assert m["ranker"]["blend"] == {"click": 1.0} and m["ranker"]["candidates"] == 8
    assert {"ranker.safetensors", "ranker.json", "ranker_items.parquet", "ranker_users.parquet"} <= set(m["files"])
    info = json.loads((bundle / "ranker.json").read_text())
    assert info["actions"] == schema_for("gen", {"signals": 5})  # a generated log: codes as given
    _, _, root = runs
    broken = root / "broken"
    broken.mkdir()
    for f in bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "ranker.json").write_text(json.dumps({**info, "weight": 3.0}))
    with pytest.raises(GenrecError, match="ranker.json does not match its checksum"):
        Recommender.load(broken)


def test_load_ranking_model_reads_a_run_or_a_bundle_alike(bundle, runs):
    from genrec.serve.model_io import load_ranking_model
    from genrec.train.checkpoint import load_tensors

    retrieval, ranker, root = runs
    from_run, from_bundle = load_ranking_model(ranker), load_ranking_model(bundle)
    saved = load_tensors(ranker / "model.safetensors")
    assert all(torch.equal(from_bundle.state_dict()[k], v) for k, v in saved.items())
    assert not from_run.training and from_run.spec == from_bundle.spec
    batch = RankBatch(user=torch.tensor([3, 0]), hist_items=torch.tensor([[4, 5], [0, 0]]),
                      hist_actions=torch.tensor([[[2], [1]], [[0], [0]]]), hist_time=torch.tensor([[1, 2], [0, 0]]),
                      hist_len=torch.tensor([2, 0]), cand_items=torch.tensor([[6, 7, 8], [9, 0, 0]]),
                      cand_time=torch.full((2, 3), 3), visible=torch.tensor([[2, 2, 2], [0, 0, 0]]))
    with torch.no_grad():
        a, b = from_run(batch), from_bundle(batch)
    assert all(torch.equal(a[t], b[t]) for t in a)
    for folder, match in ((retrieval, "'sasrec' is not a ranking model"), (root, "not a ranking run or a bundle")):
        with pytest.raises(GenrecError, match=match):
            load_ranking_model(folder)


def test_two_stage_answer_matches_the_ranking_model(bundle):
    rec = Recommender.load(bundle)
    history, times = ["3", "4", "5"], [1_650_000_000_000 + i * 60_000 for i in range(3)]
    actions = [{"signals": 2}, None, {"signals": 4}]
    out = rec.recommend(history, k=5, timestamps=times, actions=actions, user_id="7")
    assert out.mode == "model+ranker" and len(out.items) == 5 and not out.fallback
    scores = [r["score"] for r in out.items]
    assert scores == sorted(scores, reverse=True)
    tasks = {"click", "forward", "watch_time"}
    assert all(set(r["predictions"]) == tasks and 0 <= r["predictions"]["click"] <= 1 for r in out.items)

    # The ranking model called directly, with the ids, actions, user and times mapped by hand.
    stage = rec.ranker
    item = {str(i): i + 1 for i in range(30)}  # the log's raw ids 0..29 are dense ids 1..30
    ids = [r["item_id"] for r in out.items]
    batch = RankBatch(user=torch.tensor([8]), hist_items=torch.tensor([[item[h] for h in history]]),
                      hist_actions=torch.tensor([[[2], [1], [4]]]), hist_time=torch.tensor([times]),
                      hist_len=torch.tensor([3]), cand_items=torch.tensor([[item[i] for i in ids]]),
                      cand_time=torch.full((1, 5), times[-1]), visible=torch.full((1, 5), 3))
    with torch.no_grad():
        direct = stage.model(batch)
    a, b = stage.calibration["click"]
    expected = torch.sigmoid(a * direct["click"][0].double() + b).numpy()
    got = np.array([r["predictions"]["click"] for r in out.items])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([r["predictions"]["watch_time"] for r in out.items],
                               direct["watch_time"][0].numpy(), rtol=1e-5, atol=1e-6)


def test_requests_batched_together_score_as_alone(bundle):
    stage = Recommender.load(bundle).ranker
    rng = np.random.default_rng(0)
    requests = [{"user": u, "items": rng.integers(1, 31, n), "actions": rng.integers(1, 5, (n, 1)),
                 "time": np.sort(rng.integers(0, 10**9, n)), "cand": rng.integers(0, 31, m),
                 "context": np.zeros((n, 0), np.int64), "cand_context": np.zeros(0, np.int64)}
                for u, n, m in ((3, 5, 7), (0, 0, 4), (9, 12, 9))]
    together = stage._forward(requests)
    for request, batched in zip(requests, together, strict=True):
        alone = stage._forward([request])[0]
        for task in stage.tasks:
            np.testing.assert_allclose(batched[task], alone[task], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_share_ranker_passes_and_answer_as_alone(bundle, monkeypatch):
    """Requests queued together run one retrieval and one ranker pass (the model thread takes the queue), and each
    gets the answer it gets alone: the same items, scores and predictions."""
    rec = Recommender.load(bundle)
    cases = [(["3", "4", "5"], None), (["1"], "7"), (["2", "6", "9", "11"], None), (["7", "8"], "2")]
    alone = [rec.recommend(h, k=5, user_id=u) for h, u in cases]
    sizes, forward = [], rec.ranker._forward

    def counting(requests):
        sizes.append(len(requests))
        time.sleep(0.05)  # hold the model thread so that the other requests queue up
        return forward(requests)

    monkeypatch.setattr(rec.ranker, "_forward", counting)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda case: rec.recommend(case[0], k=5, user_id=case[1]), cases * 3))
    assert max(sizes) > 1 and sum(sizes) == len(together)
    for got, want in zip(together, alone * 3, strict=True):
        assert got.mode == "model+ranker" and [r["item_id"] for r in got.items] == [r["item_id"] for r in want.items]
        for a, b in zip(got.items, want.items, strict=True):
            assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)  # float32 passes of other widths
            assert a["predictions"] == pytest.approx(b["predictions"], rel=1e-5, abs=1e-6)
    rec.close()


@pytest.mark.parametrize("name", ["dcn", "din"])
def test_feature_rankers_serve_as_the_second_stage(runs, name):
    """DCN and DIN read every candidate's time, visible count and context repeated per candidate; their answer
    carries the model's own predictions."""
    retrieval, _, root = runs
    log = learnable_log()
    days = np.unique(log.day)
    RankingTrainer(config(name, epochs=1), root / name, log=log,
                   split=temporal_split(log, valid_day=int(days[7]), test_day=int(days[8])), show_progress=False).fit()
    rec = Recommender.load(export_bundle(retrieval, root / f"bundle-{name}", ranker=root / name,
                                         ranker_options={"candidates": 8}))
    history, times = ["3", "4", "5"], [1_650_000_000_000 + i * 60_000 for i in range(3)]
    out = rec.recommend(history, k=5, timestamps=times, user_id="7")
    assert out.mode == "model+ranker" and not out.warnings and len(out.items) == 5
    item = {str(i): i + 1 for i in range(30)}
    ids = [r["item_id"] for r in out.items]
    batch = RankBatch(user=torch.tensor([8]), hist_items=torch.tensor([[item[h] for h in history]]),
                      hist_actions=torch.from_numpy(rec.ranker.encode_actions([None] * 3)[None]),
                      hist_time=torch.tensor([times]), hist_len=torch.tensor([3]),
                      cand_items=torch.tensor([[item[i] for i in ids]]), cand_time=torch.full((1, 5), times[-1]),
                      visible=torch.full((1, 5), 3))
    with torch.no_grad():
        direct = rec.ranker.model(batch)
    np.testing.assert_allclose([r["predictions"]["watch_time"] for r in out.items], direct["watch_time"][0].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_fusion_weight_extremes(runs):
    retrieval, ranker, root = runs
    plain = Recommender.load(export_bundle(retrieval, root / "plain"))
    zero = Recommender.load(export_bundle(retrieval, root / "w0", ranker=ranker, ranker_options={"weight": 0.0}))
    alone = Recommender.load(export_bundle(retrieval, root / "wnone", ranker=ranker,
                                           ranker_options={"weight": None}))
    history = ["2", "6", "9"]
    base = [r["item_id"] for r in plain.recommend(history, k=9).items]
    assert [r["item_id"] for r in zero.recommend(history, k=9).items] == base  # w = 0: retrieval order
    by_ranker = alone.recommend(history, k=9).items
    logits = [np.log(r["predictions"]["click"] / (1 - r["predictions"]["click"])) for r in by_ranker]
    a, _ = alone.ranker.calibration["click"]
    assert np.all(np.diff(np.array(logits) * np.sign(a)) <= 1e-9)  # ranker alone: by its click logit
    assert {r["item_id"] for r in by_ranker} == set(base)  # the same retrieved pool


def test_events_with_actions_reach_the_ranker_and_bad_ones_are_422(bundle, tmp_path):
    c = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite"))))
    body = {"user_id": "7", "items": ["3", "4"], "timestamps": [1, 2], "actions": [{"signals": 4}, {"signals": 4}]}
    assert c.post("/v1/events", json=body).status_code == 200
    first = c.post("/v1/recommend", json={"user_id": "7", "k": 3}).json()
    assert all("predictions" in r for r in first["items"])
    c.post("/v1/events", json={"user_id": "8", "items": ["3", "4"], "timestamps": [1, 2],
                               "actions": [{"signals": 1}, {"signals": 1}]})
    other = c.post("/v1/recommend", json={"user_id": "8", "k": 3, "exclude_seen": True}).json()
    assert [r["predictions"] for r in other["items"]] != [r["predictions"] for r in first["items"]]

    bad = c.post("/v1/events", json={"user_id": "9", "items": ["3"], "actions": [{"likes": 1}]})
    assert bad.status_code == 422 and "unknown signal 'likes'" in bad.text
    assert c.post("/v1/recommend", json={"user_id": "9", "k": 2}).json()["fallback"]  # nothing was stored
    for actions, field in (([{"signals": -1}], "actions"), ([{"signals": 1}, None], "actions")):
        r = c.post("/v1/events", json={"user_id": "9", "items": ["3"], "actions": actions})
        assert r.status_code == 422 and field in r.text
    r = c.post("/v1/recommend", json={"history": ["3"], "actions": [{"signals": 9}]})
    assert r.status_code == 422 and "outside [1, 5)" in r.text


def test_export_refuses_what_cannot_be_a_ranking_stage(runs, capsys):
    retrieval, ranker, root = runs
    with pytest.raises(GenrecError, match="not a ranking model"):
        export_bundle(retrieval, root / "x1", ranker=retrieval)
    with pytest.raises(GenrecError, match="task_blend names"):
        export_bundle(retrieval, root / "x2", ranker=ranker, ranker_options={"blend": {"rate": 1.0}})
    assert not (root / "x1").exists() and not (root / "x2").exists()
    with_context = root / "ranker-with-context"
    shutil.copytree(ranker, with_context)
    info = read_json(with_context / "model.json")
    spec = {**info["spec"], "row_feature_sizes": {"tab": 3}}
    write_json(with_context / "model.json", {**info, "spec": spec, "config": {**info["config"], "row_context": ["tab"]},
                                             "row_values": {}})
    with pytest.raises(GenrecError, match="raw values of its 2 codes are unknown"):  # requests could not be mapped
        export_bundle(retrieval, root / "x5", ranker=with_context)
    assert not (root / "x5").exists()
    code, out, _ = run(["export", str(retrieval), "--out", str(root / "x3"), "--ranker", str(ranker),
                        "--ranker-weight", "none", "--ranker-blend", "click=1,forward=0.5"], capsys)
    assert code == 0 and "ranking stage: ranker" in out
    assert load_manifest(root / "x3")["ranker"]["weight"] is None
    code, _, err = run(["export", str(retrieval), "--out", str(root / "x4"), "--ranker", str(ranker),
                        "--ranker-weight", "lots"], capsys)
    assert code != 0 and "--ranker-weight" in err


def test_action_schemas_encode_like_the_readers():
    rng = np.random.default_rng(0)
    signals = SCHEMAS["kuairand-pure"]["fields"]["signals"]["inputs"]
    cols = {s: (rng.random(500) < 0.3).astype(np.int64) for s in signals}
    play = rng.integers(0, 10**7, 500)
    events = [{**{s: int(v[i]) for s, v in cols.items()}, "play_time_ms": int(play[i])} for i in range(500)]
    codes = encode_events(SCHEMAS["kuairand-pure"], {"signals": 129, "watch": 17}, events)
    bits = sum(v << b for b, v in enumerate(cols.values()))
    np.testing.assert_array_equal(codes, np.stack([1 + bits, 1 + log_bucket(play, 250.0, 16)], axis=1))
    assert encode_events(SCHEMAS["kuairand-pure"], {"signals": 129, "watch": 17}, [None]).tolist() == [[2, 1]]
    with pytest.raises(ValueError, match=r"actions\[0\]: unknown signal 'clicks'"):
        encode_events(SCHEMAS["kuairand-pure"], {"signals": 129, "watch": 17}, [{"clicks": 1}])
    assert encode_events(SCHEMAS["kuairand-pure"], {"signals": 129, "watch": 17}, [{"clicks": 1}],
                         strict=False).tolist() == [[1, 1]]


def test_sqlite_store_keeps_actions_and_upgrades_old_files(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the layout before actions existed
    db.execute("CREATE TABLE history (user_id TEXT NOT NULL, seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL, "
               "ts INTEGER)")
    db.execute("INSERT INTO history (user_id, item_id, ts) VALUES ('u', 'a', 1)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.append("u", [Event("b", 2, {"like": 1, "play_time_ms": 5300.5}, {"tab": 3})])
    assert store.history("u") == [Event("a", 1), Event("b", 2, {"like": 1, "play_time_ms": 5300.5}, {"tab": "3"})]
    with pytest.raises(ValueError, match="actions.like"):
        Event("c", None, {"like": -1})
    store.close()


def test_page_shows_the_rankers_predictions(bundle, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium binary (install chromium, or set GENREC_CHROMIUM)")
    app = create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite")))
    with live_server(app) as url, headless_page(sync_api, binary) as page:
        page.goto(url)
        page.fill("#ids", "3, 4")
        page.click("#add-ids")
        sync_api.expect(page.locator("#mode")).to_have_text("model + ranker")
        first = page.locator("#recs li .predictions").first
        sync_api.expect(first).to_contain_text("click 0.")
        sync_api.expect(first).to_contain_text("watch_time")


@pytest.fixture(scope="module")
def context_bundle(runs):
    """A bundle whose ranker reads a context ``tab`` ('home' / 'feed' / 'search'), with a per-tab offset."""
    retrieval, _, root = runs
    log = learnable_log()
    rng = np.random.default_rng(1)
    log = dataclasses.replace(log, row_features={"tab": rng.integers(1, 4, log.n_rows)},
                              row_feature_sizes={"tab": 4}, row_feature_values={"tab": ["feed", "home", "search"]})
    days = np.unique(log.day)
    cfg = config("ranker", epochs=1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"row_context": ("tab",), "row_bias": True})})
    RankingTrainer(cfg, root / "ranker-tab", log=log, split=temporal_split(log, valid_day=int(days[7]),
                                                                           test_day=int(days[8])),
                   show_progress=False).fit()
    return export_bundle(retrieval, root / "bundle-tab", ranker=root / "ranker-tab",
                         ranker_options={"weight": 0.5, "candidates": 8})


def test_context_reaches_the_ranker_as_the_codes_it_was_trained_on(context_bundle):
    assert load_manifest(context_bundle)["ranker"]["context"] == ["tab"]
    rec = Recommender.load(context_bundle)
    with torch.no_grad():  # a visible offset per tab, so every code changes the answer
        rec.ranker.model.row_bias[0].weight[1:, 0] = torch.tensor([-1.0, 0.0, 1.0])
    history, times = ["3", "4", "5"], [1_650_000_000_000 + i * 60_000 for i in range(3)]
    seen = [{"tab": "search"}, None, {"tab": "home"}]

    def clicks(context, history_context=seen) -> dict[str, float]:
        out = rec.recommend(history, k=8, timestamps=times, history_context=history_context, context=context)
        assert out.mode == "model+ranker"
        return {r["item_id"]: r["predictions"]["click"] for r in out.items}

    feed, home = clicks({"tab": "feed"}), clicks({"tab": "home"})
    assert feed.keys() == home.keys() and all(home[i] != feed[i] for i in feed)
    assert clicks(None) == clicks({"tab": "a tab it never saw"})  # unknown: code 0, as in training
    assert clicks(None, None) != clicks(None)  # the history's contexts are read too

    stage = rec.ranker  # the model called directly with the codes mapped by hand (feed 1, home 2, search 3)
    item = {str(i): i + 1 for i in range(30)}
    ids = list(feed)
    batch = RankBatch(user=torch.tensor([0]), hist_items=torch.tensor([[item[h] for h in history]]),
                      hist_actions=torch.ones((1, 3, 1), dtype=torch.int64), hist_time=torch.tensor([times]),
                      hist_len=torch.tensor([3]), cand_items=torch.tensor([[item[i] for i in ids]]),
                      cand_time=torch.full((1, len(ids)), times[-1]), visible=torch.full((1, len(ids)), 3),
                      hist_context=torch.tensor([[[3], [0], [2]]]), cand_context=torch.full((1, len(ids), 1), 1))
    with torch.no_grad():
        direct = stage.model(batch)["click"][0].double()
    a, b = stage.calibration["click"]
    np.testing.assert_allclose([feed[i] for i in ids], torch.sigmoid(a * direct + b).numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"history_context\[0\]: 'page' is not a context this ranker reads"):
        rec.recommend(history, history_context=[{"page": 1}, None, None])
    with pytest.raises(ValueError, match=r"context.tab: must be text or an integer"):
        rec.recommend(history, context={"tab": 1.5})


def test_events_and_requests_carry_context_over_http(context_bundle, tmp_path):
    c = TestClient(create_app(Settings(bundle=context_bundle, store=str(tmp_path / "h.sqlite"))))
    # a user the ranker never saw: the same (unknown) user as an explicit history
    body = {"user_id": "visitor", "items": ["3", "4"], "timestamps": [1, 2], "context": [{"tab": "search"}, None]}
    assert c.post("/v1/events", json=body).status_code == 200
    assert [e["context"] for e in c.get("/v1/users/visitor/history").json()["items"]] == [{"tab": "search"}, None]
    stored = c.post("/v1/recommend", json={"user_id": "visitor", "k": 4, "context": {"tab": "home"}}).json()
    explicit = c.post("/v1/recommend", json={"history": ["3", "4"], "timestamps": [1, 2], "k": 4,
                                             "history_context": [{"tab": "search"}, None],
                                             "context": {"tab": "home"}}).json()
    assert [r["predictions"] for r in stored["items"]] == [r["predictions"] for r in explicit["items"]]
    other = c.post("/v1/recommend", json={"user_id": "visitor", "k": 4, "context": {"tab": "feed"}}).json()
    assert [r["predictions"] for r in other["items"]] != [r["predictions"] for r in stored["items"]]

    for bad, field in (({"context": [{"page": 1}, None]}, "'page'"), ({"context": [{"tab": 1.5}, None]}, "tab"),
                       ({"context": [{"tab": "home"}]}, "one entry per item")):
        r = c.post("/v1/events", json={**body, "user_id": "9", **bad})
        assert r.status_code == 422 and field in r.text
    assert c.post("/v1/recommend", json={"user_id": "9", "k": 2}).json()["fallback"]  # nothing was stored
    for bad, field in (({"context": {"page": 1}}, "'page'"), ({"history_context": [None]}, "history_context")):
        r = c.post("/v1/recommend", json={"history": ["3", "4"], **bad})
        assert r.status_code == 422 and field in r.text
    r = c.post("/v1/recommend", json={"user_id": "visitor", "context": {"page": 1}})  # stored history: still checked
    assert r.status_code == 422 and "'page'" in r.text


def test_export_takes_row_values_from_the_log_for_runs_without_them(runs, context_bundle, monkeypatch):
    import genrec.data.impression_readers as impression_readers

    retrieval, _, root = runs
    old = root / "ranker-tab-old"  # a run from before model.json kept the raw values
    shutil.copytree(root / "ranker-tab", old)
    info = read_json(old / "model.json")
    del info["row_values"]
    write_json(old / "model.json", info)
    monkeypatch.setattr(impression_readers, "load_impressions",
                        lambda name: types.SimpleNamespace(row_feature_values={"tab": ["feed", "home", "search"]}))
    bundle = export_bundle(retrieval, root / "bundle-old", ranker=old)
    assert read_json(bundle / "ranker.json")["row_values"] == {"tab": ["feed", "home", "search"]}
