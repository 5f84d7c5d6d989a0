"""Fresh-content slots (serving.fresh_share): how many slots and where, which items are fresh (publish time, first
sighting, never seen), semantic-ID neighbours of the history first, and the marks in the answer and the log."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from genrec.data import prepare  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.experiment import assign, load_experiment, parse_experiment  # noqa: E402
from genrec.experiment.fresh import DAY, FreshCatalog, Sightings, place, positions, reserved  # noqa: E402
from genrec.semantic_ids.codes import SemanticIds  # noqa: E402
from genrec.serve import Recommender, export_bundle  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402
from genrec.serve.store import SQLiteStore  # noqa: E402
from genrec.train.config import RunConfig  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

NOW = time.time()
FRESH = {"10", "11", "12"}  # published a day ago; the others a year ago


def test_slot_count_and_positions():
    assert [reserved(10, f) for f in (0.0, 0.04, 0.05, 0.1, 0.25, 0.5, 0.96)] == [0, 0, 1, 1, 3, 5, 10]
    assert positions(10, 1) == [5] and positions(10, 2) == [3, 6] and positions(10, 3) == [2, 5, 7]
    assert positions(4, 4) == [0, 1, 2, 3]
    for k in range(1, 30):
        for r in range(k + 1):
            p = positions(k, r)
            assert len(set(p)) == r and all(0 <= x < k for x in p) and p == sorted(p)


def rows(*ids: str) -> list[dict]:
    return [{"item_id": i} for i in ids]


def test_place_spreads_picks_and_fills_from_the_main_list():
    shown, flags = place(rows("a", "b", "c", "d", "e"), rows("x", "c"), 5)
    assert [i["item_id"] for i in shown] == ["a", "x", "b", "c", "d"]  # c is a pick: not twice
    assert flags == [False, True, False, True, False] and shown[1]["fresh"] and "fresh" not in shown[0]
    shown, flags = place(rows("a"), rows("x", "y"), 5)  # a short main list: the picks fill in
    assert [i["item_id"] for i in shown] == ["a", "x", "y"] and flags == [False, True, True]


def fake_rec(train_count: list[int], table: dict | None = None) -> SimpleNamespace:
    n = len(train_count)
    raw = [str(i) for i in range(1, n + 1)]
    catalog = SimpleNamespace(raw_ids=raw, train_count=np.asarray(train_count),
                              table=pa.table({"raw_id": raw, "train_count": train_count, **(table or {})}))
    return SimpleNamespace(catalog=catalog, manifest={"files": {}}, path=None, n_items=n)


def test_which_items_are_fresh():
    now = 1_000 * DAY
    published = [None, now - 2 * DAY, now - 9 * DAY, None, None, None]
    rec = fake_rec([5, 5, 0, 5, 0, 0], {"published": pa.array(published, pa.float64())})
    sightings = Sightings()
    sightings.saw(["5", "3"], now - 8 * DAY)  # 3 has a publish time: that decides
    sightings.saw(["5", "6"], now - DAY)  # 5 was first seen 8 days ago: the later sighting does not count
    raw, ids = FreshCatalog(rec, "published", sightings).candidates(now, 7.0)
    # 1, 4: trained on, no publish time; 2: published 2 days ago; 3: 9 days ago; 5: seen 8 days ago; 6: 1 day ago
    assert set(raw) == {"2", "6"} and sorted(ids.tolist()) == [2, 6]
    assert raw == ["6", "2"]  # the most recently seen first
    untimed = FreshCatalog(rec, None, Sightings())  # no column, nothing logged: untrained items are fresh
    assert set(untimed.candidates(now, 7.0)[0]) == {"3", "5", "6"}
    stamps = pa.array([None, int((now - DAY) * 1e6), None, None, None, None], pa.timestamp("us", "UTC"))
    assert FreshCatalog(fake_rec([5] * 6, {"published": stamps}), "published", Sightings()).candidates(
        now, 7.0)[0] == ["2"]
    with pytest.raises(ConfigError, match="no column 'nope'"):
        FreshCatalog(rec, "nope", Sightings())
    with pytest.raises(ConfigError, match="must hold unix seconds"):
        FreshCatalog(fake_rec([1] * 6, {"published": ["x"] * 6}), "published", Sightings())


def test_fresh_fields_need_a_share():
    base = {"name": "f", "salt": "s", "start": "2024-01-01", "end": "2024-02-01"}
    with pytest.raises(ConfigError, match="fresh_days applies only with fresh_share > 0"):
        parse_experiment({**base, "arms": [{"name": "a"}, {"name": "b", "serving": {"fresh_days": 3}}]})
    with pytest.raises(ConfigError, match="arms.1.serving.fresh_share"):
        parse_experiment({**base, "arms": [{"name": "a"}, {"name": "b", "serving": {"fresh_share": 1.0}}]})


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, str]:
    """A tiny trained bundle whose catalog has a publish-time column and whose run carries semantic IDs, and its
    one fresh item that shares a first code with the history 1, 2: the fresh item the model likes least, so that
    only the neighbour rule puts it first."""
    root = tmp_path_factory.mktemp("fresh")
    events = [(u, (u + t) % 12 + 1) for u in range(20) for t in range(8)]
    items = pa.table({"item": list(range(1, 13)), "title": [f"Movie {i}" for i in range(1, 13)],
                      "published": [NOW - (DAY if str(i) in FRESH else 365 * DAY) for i in range(1, 13)]})
    ds = prepare(pa.table({"user": [e[0] for e in events], "item": [e[1] for e in events]}), name="tiny",
                 items=items)
    cfg = RunConfig.model_validate({"dataset": "tiny", "model": {"name": "sasrec", "dim": 8, "blocks": 1,
                                                                 "max_len": 6, "dropout": 0.0},
                                    "train": {"epochs": 1, "batch_size": 8, "warmup_steps": 1},
                                    "eval": {"n_boot": 10, "ks": [5]}})
    Trainer(cfg, root / "run", dataset=ds, show_progress=False).fit()
    order = Recommender.load(export_bundle(root / "run", root / "plain")).recommend(["1", "2"], k=3, allow=FRESH)
    neighbour = order.items[-1]["item_id"]
    first_code = {"1": 0, "2": 0, neighbour: 0} | {i: 1 for i in FRESH - {neighbour}}
    codes = np.full((13, 2), -1, dtype=np.int64)
    for dense, item in enumerate(map(str, ds.items.raw.to_pylist()), start=1):
        codes[dense] = [first_code.get(item, 2), dense - 1]
    SemanticIds(codes=codes, sizes=[3, 12]).save(root / "run")
    return export_bundle(root / "run", root / "bundle"), neighbour


@pytest.fixture
def bundle(served) -> Path:
    return served[0]


def experiment(tmp_path: Path, serving: dict) -> Path:
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump({"name": "fresh", "salt": "s", "start": "2000-01-01T00:00:00Z",
                                    "end": "2100-01-01T00:00:00Z",
                                    "arms": [{"name": "control"}, {"name": "fresh", "serving": serving}]}))
    return path


def user_of(path: Path, arm: str) -> str:
    exp = load_experiment(path)
    return next(u for u in (f"u{i}" for i in range(100)) if assign(exp, u).arm == arm)


def test_a_fresh_arm_shows_neighbours_of_the_history_in_marked_slots(served, tmp_path):
    bundle, neighbour = served
    path = experiment(tmp_path, {"fresh_share": 0.2, "fresh_column": "published"})
    store = tmp_path / "h.sqlite"
    c = TestClient(create_app(Settings(bundle=bundle, store=str(store), experiment=path)))
    treated, control = user_of(path, "fresh"), user_of(path, "control")
    for user in (treated, control):
        assert c.post("/v1/events", json={"user_id": user, "items": ["1", "2"]}).status_code == 200
    body = c.post("/v1/recommend", json={"user_id": treated, "k": 10}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert body["arm"] == "fresh" and len(ids) == len(set(ids)) == 10 and not {"1", "2"} & set(ids)
    marked = [j for j, i in enumerate(body["items"]) if i.get("fresh")]
    assert marked == [3, 6]  # round(0.2 * 10) slots, spread down the list
    assert ids[3] == neighbour  # the only fresh item sharing a first code with the history comes first
    assert ids[6] in FRESH - {neighbour}
    plain = c.post("/v1/recommend", json={"user_id": control, "k": 10}).json()
    assert plain["arm"] == "control" and not any(i.get("fresh") for i in plain["items"])
    # the request's own filters hold in the fresh slots too
    denied = c.post("/v1/recommend", json={"user_id": treated, "k": 10, "deny": [neighbour]}).json()["items"]
    assert neighbour not in [i["item_id"] for i in denied]
    assert [j for j, i in enumerate(denied) if i.get("fresh")] == [3, 6]
    logged = {e.request_id: e for e in SQLiteStore(store).exposures()}
    assert logged[body["request_id"]].fresh == tuple(j in (3, 6) for j in range(10))
    assert logged[plain["request_id"]].fresh is None


def test_an_exploring_fresh_arm_logs_propensity_one_on_its_fresh_slots(bundle, tmp_path):
    path = experiment(tmp_path, {"fresh_share": 0.3, "fresh_column": "published",
                                 "exploration": {"kind": "plackett_luce", "temperature": 2.0}})
    store = tmp_path / "h.sqlite"
    c = TestClient(create_app(Settings(bundle=bundle, store=str(store), experiment=path)))
    user = user_of(path, "fresh")
    c.post("/v1/events", json={"user_id": user, "items": ["1", "2"]})
    body = c.post("/v1/recommend", json={"user_id": user, "k": 6}).json()
    (e,) = [x for x in SQLiteStore(store).exposures() if x.request_id == body["request_id"]]
    assert e.fresh == (False, False, True, False, True, False)  # round(1.8) = 2 slots: 6 // 3, 12 // 3
    assert [p for p, f in zip(e.propensities, e.fresh, strict=True) if f] == [1.0, 1.0]
    assert all(0 < p < 1 for p, f in zip(e.propensities, e.fresh, strict=True) if not f)


def test_a_missing_fresh_column_stops_the_server_with_a_clear_error(bundle, tmp_path):
    path = experiment(tmp_path, {"fresh_share": 0.2, "fresh_column": "upload_time"})
    with pytest.raises(ConfigError, match="fresh_column: the catalog has no column 'upload_time'"):
        create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite"), experiment=path))
