"""Run folders (genrec.eval.report): evaluate -> write_run -> load_run / compare_runs on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.data import leave_one_out, prepare
from genrec.data.jagged import Jagged
from genrec.errors import GenrecError
from genrec.eval import compare_runs, evaluate, load_run, rank_cases, write_run

KS = (1, 5, 10)


class CountScorer:
    """Most-popular from training counts (written here so eval tests need no model code)."""

    def __init__(self, train: Jagged, n_items: int):
        self.counts = torch.from_numpy(np.bincount(train.values, minlength=n_items + 1).astype(np.float32))

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        return self.counts.expand(len(history), -1)


class RandomScorer:
    """Fixed random scores per dense user id."""

    def __init__(self, n_users: int, n_items: int, seed: int):
        self.table = torch.from_numpy(np.random.default_rng(seed).random((n_users + 1, n_items + 1)))

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        return self.table[torch.from_numpy(np.asarray(users, dtype=np.int64))]


def toy_table(seed: int = 0, n_users: int = 30, n_items: int = 20) -> pa.Table:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        length = int(rng.integers(2, 9))  # some users are too short to be evaluated
        p = np.arange(n_items, 0, -1, dtype=np.float64)
        for i in rng.choice(n_items, size=length, replace=False, p=p / p.sum()):
            users.append(f"user-{u}")
            items.append(f"item-{i}")
    return pa.table({"user": users, "item": items})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = prepare(toy_table(), name="toy")
    split = leave_one_out(ds)
    counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
    root = tmp_path_factory.mktemp("runs")
    pop = CountScorer(split.train, ds.n_items)
    ev_pop = evaluate(pop, split.test, ds, ks=KS, item_counts=counts, n_boot=100, show_progress=False)
    write_run(root / "pop", {"model": "popularity", "split": "loo"}, ev_pop, ds, wall_seconds=1.5)
    rnd = RandomScorer(ds.n_users, ds.n_items, seed=1)
    ev_rnd = evaluate(rnd, split.test, ds, ks=KS, item_counts=counts, n_boot=100, show_progress=False)
    write_run(root / "rnd", {"model": "random", "split": "loo"}, ev_rnd, ds)
    return {"ds": ds, "split": split, "root": root, "ev_pop": ev_pop, "pop": pop, "counts": counts}


def test_write_run_files(setup):
    root, cases = setup["root"], setup["split"].test
    folder = root / "pop"
    files = {p.name for p in folder.iterdir()}
    assert files == {"config.json", "metrics.json", "per_user.parquet", "report.md"}  # no temp files left
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "popularity" and config["split"] == "loo"
    assert config["run"]["wall_seconds"] == 1.5 and "machine" in config["run"] and "genrec" in config["run"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "toy" and metrics["part"] == "test"
    assert metrics["info"]["protocol"] == "full catalog" and metrics["info"]["cases"] == len(cases)
    for name in ("hr@1", "ndcg@5", "hr@10", "mrr", "popularity@10"):
        m = metrics["metrics"][name]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]
    assert set(metrics["aggregate"]) == {f"coverage@{k}" for k in KS}


def test_per_user_table(setup):
    ds, cases, ev = setup["ds"], setup["split"].test, setup["ev_pop"]
    table = pq.read_table(setup["root"] / "pop" / "per_user.parquet")
    assert table.num_rows == len(cases) and 0 < len(cases) < ds.n_users
    assert table.column("user").to_pylist() == [str(u) for u in ds.users.decode(cases.users)]
    assert all(u.startswith("user-") for u in table.column("user").to_pylist())
    assert table.column("target").to_pylist() == [str(i) for i in ds.items.decode(cases.targets)]
    expected = rank_cases(setup["pop"], cases, ds.n_items, ks=KS, show_progress=False)
    np.testing.assert_array_equal(table.column("rank").to_numpy(), expected.ranks)
    for name, values in expected.per_case.items():
        np.testing.assert_allclose(table.column(name).to_numpy(), values)
        assert ev.mean(name) == pytest.approx(values.mean())
    assert table.equals(ev.per_user)
    info, loaded = load_run(setup["root"] / "pop")
    assert loaded.equals(table) and info["part"] == "test"


def test_report_markdown(setup):
    text = (setup["root"] / "pop" / "report.md").read_text()
    assert text.startswith("# popularity on toy (test split)")
    assert "full catalog" in text and "seen items excluded" in text and "SAMPLED" not in text
    assert "| hr@10 |" in text and "| coverage@10 |" in text and "wall 1.5 s" in text


def test_compare_runs_paired(setup):
    root, cases = setup["root"], setup["split"].test
    out = compare_runs(root / "pop", root / "rnd", n_boot=100)
    assert out["users"] == len(cases) and out["part"] == "test" and out["sampled_runs"] == []
    a = pq.read_table(root / "pop" / "per_user.parquet")
    b = pq.read_table(root / "rnd" / "per_user.parquet")
    assert set(out["metrics"]) == set(a.column_names) - {"user", "target", "rank"}
    for name, row in out["metrics"].items():
        d = b.column(name).to_numpy() - a.column(name).to_numpy()
        assert row["diff"] == pytest.approx(d.mean()) and row["n"] == len(cases)
        assert row["diff"] == pytest.approx(row["mean_b"] - row["mean_a"])
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
        assert 0 <= row["p_value"] <= 1
    subset = compare_runs(root / "pop", root / "rnd", metrics=["hr@5", "mrr"], n_boot=50)
    assert list(subset["metrics"]) == ["hr@5", "mrr"]
    assert subset["metrics"]["mrr"]["diff"] == out["metrics"]["mrr"]["diff"]


def test_compare_run_with_itself(setup):
    out = compare_runs(setup["root"] / "pop", setup["root"] / "pop", n_boot=50)
    for row in out["metrics"].values():
        assert row["diff"] == 0 and row["p_value"] == 1


def test_compare_pairs_by_user(setup, tmp_path):
    ds, cases, pop = setup["ds"], setup["split"].test, setup["pop"]
    rows = np.arange(len(cases))[::-2]  # every other user, in reverse order
    ev = evaluate(pop, cases.take(rows), ds, ks=KS, n_boot=50, show_progress=False)
    write_run(tmp_path / "half", {"model": "popularity"}, ev, ds)
    out = compare_runs(setup["root"] / "pop", tmp_path / "half", metrics=["hr@10", "ndcg@10"], n_boot=50)
    assert out["users"] == len(rows)
    for row in out["metrics"].values():  # same scorer on the same users: no difference at all
        assert row["diff"] == 0 and row["n"] == len(rows)
    other = np.setdiff1d(np.arange(len(cases)), rows)
    ev2 = evaluate(pop, cases.take(other), ds, ks=KS, n_boot=50, show_progress=False)
    write_run(tmp_path / "other-half", {"model": "popularity"}, ev2, ds)
    with pytest.raises(GenrecError, match="share no"):
        compare_runs(tmp_path / "half", tmp_path / "other-half")


def test_compare_not_a_run(setup, tmp_path):
    with pytest.raises(GenrecError, match="not a genrec run"):
        compare_runs(tmp_path, setup["root"] / "pop")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(GenrecError, match="per_user.parquet"):
        compare_runs(setup["root"] / "pop", tmp_path)
    with pytest.raises(GenrecError):
        load_run(tmp_path / "missing")


def test_compare_different_datasets(setup, tmp_path):
    other = prepare(toy_table(), name="toy-copy")
    split = leave_one_out(other)
    scorer = CountScorer(split.train, other.n_items)
    ev = evaluate(scorer, split.test, other, ks=KS, n_boot=50, show_progress=False)
    write_run(tmp_path / "copy", {"model": "popularity"}, ev, other)
    with pytest.raises(GenrecError, match="different datasets"):
        compare_runs(setup["root"] / "pop", tmp_path / "copy")


def test_compare_different_parts(setup, tmp_path):
    ds, split = setup["ds"], setup["split"]
    ev = evaluate(setup["pop"], split.valid, ds, part="valid", ks=KS, n_boot=50, show_progress=False)
    write_run(tmp_path / "valid", {"model": "popularity"}, ev, ds)
    with pytest.raises(GenrecError, match="part"):
        compare_runs(setup["root"] / "pop", tmp_path / "valid")


def test_compare_unknown_metric(setup):
    with pytest.raises(GenrecError, match="unknown metric.*hr@3"):
        compare_runs(setup["root"] / "pop", setup["root"] / "rnd", metrics=["hr@10", "hr@3"])


def test_sampled_run_is_flagged(setup, tmp_path):
    ds, split = setup["ds"], setup["split"]
    with pytest.warns(UserWarning, match="sampled"):
        ev = evaluate(setup["pop"], split.test, ds, ks=KS, sampled_negatives=5, n_boot=50,
                      show_progress=False)
    assert "sampled" in ev.info["protocol"]
    assert ev.per_user.column("rank").to_numpy().max() <= ds.n_items
    write_run(tmp_path / "sampled", {"model": "popularity", "split": "loo"}, ev, ds)
    text = (tmp_path / "sampled" / "report.md").read_text()
    assert "SAMPLED" in text and "not comparable" in text
    out = compare_runs(setup["root"] / "pop", tmp_path / "sampled", metrics=["hr@10"], n_boot=50)
    assert out["sampled_runs"] == ["B"]


def test_evaluate_seen_kept_is_reported(setup, tmp_path):
    ds, split = setup["ds"], setup["split"]
    ev = evaluate(setup["pop"], split.test, ds, ks=KS, exclude_seen=False, n_boot=50, show_progress=False)
    assert ev.info["exclude_seen"] is False and ev.info["part"] == "test" and ev.info["n_boot"] == 50
    write_run(tmp_path / "kept", {"model": "popularity"}, ev, ds)
    assert "seen items kept" in (tmp_path / "kept" / "report.md").read_text()
