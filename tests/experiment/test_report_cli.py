"""genrec experiment report: per-arm numbers from a store, the difference and CUPED, the sample-ratio check (and
its loud flag), interleaving preference, creator health from a catalog."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from genrec.cli import app as cli
from genrec.experiment import assign, load_experiment
from genrec.serve.store import Event, Exposure, SQLiteStore

ITEMS = [str(i) for i in range(20)]


def write_experiment(tmp_path: Path, mode: str = "ab", start: float | None = None) -> Path:
    start = datetime.fromtimestamp(time.time() if start is None else start, UTC).isoformat()
    path = tmp_path / f"{mode}.yaml"
    arms = [{"name": "control"}, {"name": "better"}]
    path.write_text(yaml.safe_dump({"name": "exp", "salt": "r1", "mode": mode, "start": start,
                                    "end": "2100-01-01T00:00:00Z", "arms": arms}))
    return path


def fill(store: SQLiteStore, path: Path, users: list[str], rate: dict[str, float], seed: int = 0) -> None:
    """Three exposures per user, each item engaged with the arm's probability (interleave: team 1's slots)."""
    exp, rng = load_experiment(path), np.random.default_rng(seed)
    t0 = exp.start.timestamp() + 1
    for n, user in enumerate(users):
        arm = assign(exp, user).arm
        for j in range(3):
            rid = f"{user}-{j}"
            items = tuple(rng.choice(ITEMS, 4, replace=False).tolist())
            teams = (0, 1, 1, 0) if exp.mode == "interleave" else None
            store.log_exposures([Exposure(rid, t0 + n + j / 10, user, False, "exp", arm, items, teams)])
            p = [rate["control" if t == 0 else "better"] for t in teams] if teams else [rate[arm]] * 4
            clicked = [i for i, q in zip(items, p, strict=True) if rng.random() < q]
            if clicked:
                store.append(user, [Event(i) for i in clicked], request_id=rid)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["experiment", "report", *args])
    return result.exit_code, result.output


def test_ab_report(tmp_path):
    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    users = [f"u{i}" for i in range(160)]
    for u in users[::2]:  # pre-experiment activity of half the users: CUPED's covariate
        store.append(u, [Event("1")])
    path = write_experiment(tmp_path)
    fill(store, path, users, {"control": 0.1, "better": 0.5})
    store.log_exposures([Exposure("anon", time.time(), None, True, "exp", "control", ("1",))])
    store.close()
    catalog = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ITEMS, "author_id": [f"c{int(i) % 3}" for i in ITEMS]}), catalog)
    code, output = run(str(path), "--store", str(db), "--json", "--catalog", str(catalog))
    assert code == 0, output
    r = json.loads(output)
    arms = {a["arm"]: a for a in r["arms"]}
    exp = load_experiment(path)
    n_better = sum(assign(exp, u).arm == "better" for u in users)
    assert arms["better"]["users"] == n_better and arms["control"]["users"] == 160 - n_better
    assert arms["control"]["exposures"] == 3 * (160 - n_better) and arms["control"]["anonymous_exposures"] == 1
    rate = arms["better"]["engagements_per_exposure"]
    assert rate["value"] == arms["better"]["engagements"] / arms["better"]["exposures"]
    assert 1.5 < rate["value"] < 2.5 and rate["low"] < rate["value"] < rate["high"]  # 4 slots x 0.5
    (d,) = r["differences"]
    assert d["cuped"] and d["absolute"]["low"] > 0 and d["sequential"]["low"] > 0
    assert d["sequential"]["high"] - d["sequential"]["low"] > d["absolute"]["high"] - d["absolute"]["low"]
    assert not r["srm"]["mismatch"] and r["by_creator"]
    assert r["health"]["better"]["creator_gini"] is not None
    top = r["creators"]["better"]["top"]  # per creator, most exposed first, shares of the arm's exposures
    assert [t["exposures"] for t in top] == sorted((t["exposures"] for t in top), reverse=True)
    assert sum(t["exposures"] for t in top) == r["health"]["better"]["exposures"]
    code, text = run(str(path), "--store", str(db), "--catalog", str(catalog))
    assert code == 0 and "creators shown, the most exposed" in text
    code, text = run(str(path), "--store", str(db))
    assert code == 0 and "engagements / exposure" in text and "MISMATCH" not in text


def test_a_sample_ratio_mismatch_is_flagged(tmp_path):
    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    path = write_experiment(tmp_path)
    exp = load_experiment(path)
    users = [u for u in (f"u{i}" for i in range(400)) if assign(exp, u).arm == "control"][:150]
    users += [u for u in (f"w{i}" for i in range(400)) if assign(exp, u).arm == "better"][:50]  # logging lost 2/3
    fill(store, path, users, {"control": 0.2, "better": 0.2})
    store.close()
    code, text = run(str(path), "--store", str(db))
    assert code == 0 and "SAMPLE RATIO MISMATCH" in text
    assert json.loads(run(str(path), "--store", str(db), "--json")[1])["srm"]["mismatch"]


def test_interleave_report(tmp_path):
    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    path = write_experiment(tmp_path, "interleave", start=time.time() - 1)
    fill(store, path, [f"u{i}" for i in range(60)], {"control": 0.05, "better": 0.6})
    store.close()
    r = json.loads(run(str(path), "--store", str(db), "--json")[1])["interleave"]
    assert r["impressions"] == 180 and r["wins_b"] > r["losses_b"] and r["preference_b"]["low"] > 0


def test_a_missing_store_or_bad_file_is_an_error(tmp_path):
    path = write_experiment(tmp_path)
    result = CliRunner().invoke(cli, ["experiment", "report", str(path), "--store", str(tmp_path / "no.sqlite")])
    assert result.exit_code != 0 and "no such SQLite file" in str(result.exception)


def test_fresh_share_is_decided_as_serving_decides_it(tmp_path):
    """Items shown a month before the experiment are not fresh; items the model trained on never are; a catalog
    publish column decides when given."""
    db = tmp_path / "h.sqlite"
    store = SQLiteStore(db)
    path = write_experiment(tmp_path)
    start = load_experiment(path).start.timestamp()
    store.log_exposures([Exposure("old", start - 30 * 86_400, "x", False, None, None, tuple(ITEMS[:10]))])
    rng = np.random.default_rng(0)
    shown = {"control": [], "better": []}
    exp = load_experiment(path)
    for n in range(60):
        user, items = f"u{n}", tuple(rng.choice(ITEMS, 4, replace=False).tolist())
        arm = assign(exp, user).arm
        shown[arm] += items
        store.log_exposures([Exposure(f"r{n}", start + 1 + n, user, False, "exp", arm, items)])
    store.close()

    def share(arm: str, fresh: set[str]) -> float:
        return float(np.mean([i in fresh for i in shown[arm]]))

    code, output = run(str(path), "--store", str(db), "--json")
    assert code == 0, output
    r = json.loads(output)
    for arm in shown:  # first sightings from the whole store: items 0-9 were shown a month ago
        assert r["health"][arm]["fresh_share"] == pytest.approx(share(arm, set(ITEMS[10:])))
    assert r["health"]["control"]["unexposed_share"] == pytest.approx(share("control", set(ITEMS[10:])))
    catalog = tmp_path / "items.parquet"
    published = [start - 100 * 86_400] * 20
    published[3] = published[12] = start  # published at the start: fresh, though item 3 was shown before
    pq.write_table(pa.table({"raw_id": ITEMS, "train_count": [0] * 15 + [5] * 5, "published": published}), catalog)
    r = json.loads(run(str(path), "--store", str(db), "--json", "--catalog", str(catalog))[1])
    for arm in shown:  # items 15-19 were trained on: never fresh
        assert r["health"][arm]["fresh_share"] == pytest.approx(share(arm, set(ITEMS[10:15])))
    r = json.loads(run(str(path), "--store", str(db), "--json", "--catalog", str(catalog), "--fresh-column",
                       "published")[1])
    for arm in shown:
        assert r["health"][arm]["fresh_share"] == pytest.approx(share(arm, {"3", "12"}))
    code, output = run(str(path), "--store", str(db), "--fresh-column", "published")
    assert code != 0
