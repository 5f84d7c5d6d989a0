"""genrec simulate: the response model on generated sequences, and a short run against the real server (uvicorn in
this process) whose logs agree with each other, with the assignment and with the fresh items' release times."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("uvicorn")
from tests.serve.test_bundle import tiny  # noqa: E402

from genrec.experiment import assign, load_experiment  # noqa: E402
from genrec.experiment.creators import gini  # noqa: E402
from genrec.experiment.report import build_report, read_catalog, read_creators  # noqa: E402
from genrec.experiment.response import ResponseConfig, ResponseModel, examine  # noqa: E402
from genrec.experiment.simulate import DAY, SimulateConfig, simulate  # noqa: E402
from genrec.serve import export_bundle  # noqa: E402
from genrec.serve.store import open_store  # noqa: E402


def clustered(users: int = 200, items: int = 60, length: int = 30, seed: int = 0) -> dict[str, list[str]]:
    """Two tastes: even users watch items 0..29, odd users items 30..59 (a few strays)."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(users):
        home = np.arange(30) + 30 * (u % 2)
        seq = rng.choice(home, length - 3, replace=False).tolist() + rng.choice(items, 3, replace=False).tolist()
        out[f"u{u}"] = [f"i{i}" for i in dict.fromkeys(seq)]
    return out


def test_the_response_model_learns_the_tastes_and_releases_fresh_items():
    seqs = clustered()
    catalog = [f"i{i}" for i in range(60)]
    m = ResponseModel.fit(seqs, catalog, ResponseConfig(rank=4, fresh_fraction=0.1))
    assert len(m.users) == 200 and m.ranks.shape == (200, 60)
    assert (np.diff(m.curve) <= 0).all() and m.curve[0] > 3 * m.curve[-1]  # the truth ranks the future high
    # an even user prefers unseen items of the even half
    u = m.row["u0"]
    unseen_home = [i for i in catalog[:30] if i not in m.histories[u]]
    unseen_away = [i for i in catalog[30:] if i not in m.histories[u]]
    assert m.click_probs("u0", unseen_home[:1] * 3)[0] > m.click_probs("u0", unseen_away[:1] * 3)[0]
    p = m.click_probs("u0", unseen_home[:5])
    assert p.shape == (5,) and ((p >= 0) & (p <= 1)).all()
    assert np.allclose(examine(3), [1, 1 / np.log2(3), 0.5])
    fresh = m.fresh()
    assert len(fresh) == 6 and m.unreleased(0.0) == sorted(fresh, key=catalog.index)
    assert m.unreleased(1.0) == [] and len(m.unreleased(0.5)) < 6


def test_a_short_simulation_drives_the_server_and_its_logs_agree(tmp_path):
    ds, run = tiny(tmp_path)
    bundle = export_bundle(run, tmp_path / "bundle")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump({"name": "sim", "salt": "s", "start": "2000-01-01T00:00:00Z",
                                        "end": "2100-01-01T00:00:00Z", "arms": [{"name": "a"}, {"name": "b"}]}))
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    s = ds.sequences
    seqs = {f"user{u}": [raw[i - 1] for i in s.values[s.offsets[u]:s.offsets[u + 1]]] for u in range(ds.n_users)}
    cfg = SimulateConfig(bundle=bundle, experiment=exp_file, out=tmp_path / "sim", requests=80, concurrency=4, k=3,
                         days=2, server="thread", response=ResponseConfig(rank=2, ctr_scale=20.0,
                                                                          fresh_fraction=0.25))
    summary = simulate(cfg, seqs)
    assert summary["answered"] == 80 and summary["errors"] == 0 and summary["requests_per_s"] > 0
    sim = pq.read_table(tmp_path / "sim" / "simulation.parquet").to_pydict()
    log = pq.read_table(tmp_path / "sim" / "exposures.parquet").to_pydict()
    assert len(sim["item_id"]) == len(log["item_id"]) == summary["shown_slots"] == summary["exposure_log_slots"]
    # every click was posted with its request_id and linked to the slot that showed it
    clicked = {(r, i) for r, i, c in zip(sim["request_id"], sim["item_id"], sim["clicked"], strict=True) if c}
    engaged = {(r, i) for r, i, e in zip(log["request_id"], log["item_id"], log["engaged"], strict=True) if e}
    assert clicked == engaged and summary["clicks"] == len(clicked) > 0
    # the server's arm is the library's assignment of the user
    exp = load_experiment(exp_file)
    assert all(a == assign(exp, u).arm for u, a in zip(sim["user_id"], sim["arm"], strict=True))
    # fresh items are never shown before their release
    model = ResponseModel.fit(seqs, [str(x) for x in pq.read_table(bundle / "items.parquet")["raw_id"].to_pylist()],
                              cfg.response)
    release = dict(zip(model.items, model.release, strict=True))
    shown_fresh = [(i, t) for i, t, f in zip(sim["item_id"], sim["sim_time"], sim["fresh"], strict=True) if f]
    assert all(t / (cfg.days * DAY) >= release[i] for i, t in shown_fresh)
    # the report reads the store the server wrote
    store = open_store(str(tmp_path / "sim" / "store.sqlite"), tmp_path / "sim" / "store.sqlite")
    try:
        report = build_report(exp, store.exposures(), store.engagements())
    finally:
        store.close()
    assert report["exposures"] == 80 and report["engagements"] == summary["clicks"]
    assert sum(a["users"] for a in report["arms"]) == len(set(sim["user_id"]))
    assert set(sim["creator"]) == {None} and summary["creators"] is None and report["creators"] is None


def test_creators_of_the_catalog_reach_the_simulation_log_and_the_report(tmp_path):
    ds, run = tiny(tmp_path)
    items = pq.read_table(run / "items.parquet")
    raw = [str(x) for x in items.column("raw_id").to_pylist()]
    creator = {i: f"c{j % 4}" if j < len(raw) // 2 else "c-big" for j, i in enumerate(raw)}  # one with half
    pq.write_table(items.append_column("author_id", pa.array([creator[i] for i in raw])), run / "items.parquet")
    bundle = export_bundle(run, tmp_path / "bundle")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump({"name": "c", "salt": "s", "start": "2000-01-01T00:00:00Z",
                                        "end": "2100-01-01T00:00:00Z", "arms": [{"name": "a"}, {"name": "b"}]}))
    s = ds.sequences
    seqs = {f"user{u}": [raw[i - 1] for i in s.values[s.offsets[u]:s.offsets[u + 1]]] for u in range(ds.n_users)}
    cfg = SimulateConfig(bundle=bundle, experiment=exp_file, out=tmp_path / "sim", requests=40, concurrency=4, k=3,
                         server="thread", response=ResponseConfig(rank=2, ctr_scale=20.0))
    summary = simulate(cfg, seqs)
    assert summary["creators"] == 5 and len(raw) >= 8
    sim = pq.read_table(tmp_path / "sim" / "simulation.parquet").to_pydict()
    assert sim["creator"] == [creator[i] for i in sim["item_id"]]
    store = open_store(str(tmp_path / "sim" / "store.sqlite"), tmp_path / "sim" / "store.sqlite")
    try:
        report = build_report(load_experiment(exp_file), store.exposures(), store.engagements(),
                              read_creators(bundle, "author_id"), read_catalog(bundle))
    finally:
        store.close()
    assert report["by_creator"]
    for arm in ("a", "b"):
        shown = Counter(c for c, a in zip(sim["creator"], sim["arm"], strict=True) if a == arm)
        rows = report["creators"][arm]["top"]
        assert report["creators"][arm]["creators"] == len(shown)
        assert {r["creator"]: r["exposures"] for r in rows} == dict(shown)  # 5 creators: all in the top 10
        assert [r["exposures"] for r in rows] == sorted(shown.values(), reverse=True)
        assert np.isclose(sum(r["share"] for r in rows), 1.0)
        # the Gini counts the catalog's 5 creators, shown or not
        counts = list(shown.values()) + [0] * (5 - len(shown))
        assert np.isclose(report["health"][arm]["creator_gini"], gini(counts))


def test_a_simulation_must_be_bounded_and_writes_a_fresh_folder(tmp_path):
    with pytest.raises(ValueError, match="bounded"):
        SimulateConfig(bundle=tmp_path, experiment=tmp_path / "e.yaml", out=tmp_path / "o")
    with pytest.raises(ValueError, match="workers > 1 needs server: process"):
        SimulateConfig(bundle=tmp_path, experiment=tmp_path / "e.yaml", out=tmp_path / "o", requests=10,
                       server="thread", workers=2)
    cfg = SimulateConfig(bundle=tmp_path, experiment=tmp_path / "e.yaml", out=tmp_path / "o", requests=10, workers=3)
    assert cfg.workers == 3
