"""CLI smoke tests: each verb on generated data, and one-line errors with exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_run import run


@pytest.fixture
def log_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["uid,video,ts"]
    for u in range(30):
        for t in range(int(rng.integers(4, 12))):
            rows.append(f"u{u},v{int(rng.integers(0, 25))},{1000 * u + t}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


COLS = ["--user-col", "uid", "--item-col", "video", "--time-col", "ts"]


def test_data_stats_json(log_csv, capsys):
    code, out, _ = run(["data", "stats", str(log_csv), *COLS, "--json"], capsys)
    assert code == 0
    stats = json.loads(out)
    assert stats["users"] == 30 and stats["has_timestamps"]
    assert stats["interactions"] == len(log_csv.read_text().splitlines()) - 1


def test_data_list(capsys):
    code, out, _ = run(["data", "list", "--json"], capsys)
    names = [d["name"] for d in json.loads(out)["datasets"]]
    assert code == 0 and {"movielens-1m", "amazon-beauty", "microlens-50k", "amazon-sports"} <= set(names)


def test_eval_writes_run_and_compare(log_csv, tmp_path, capsys):
    runs = {}
    for model in ("popularity", "itemknn"):
        runs[model] = tmp_path / model
        code, out, err = run(["eval", "--model", model, "--dataset", str(log_csv), *COLS, "--out",
                              str(runs[model]), "--bootstrap", "50", "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["info"]["protocol"] == "full catalog"
        for name in ("config.json", "metrics.json", "per_user.parquet", "report.md"):
            assert (runs[model] / name).is_file()
    code, out, err = run(["compare", str(runs["popularity"]), str(runs["itemknn"]), "--metric", "ndcg@10",
                          "--json", "--bootstrap", "50"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["users"] == 30 and set(res["metrics"]) == {"ndcg@10"}
    code, out, _ = run(["compare", str(runs["popularity"]), str(runs["itemknn"]), "--bootstrap", "50"], capsys)
    assert code == 0 and "hr@10" in out


def test_eval_temporal_and_sampled(log_csv, tmp_path, capsys):
    code, out, err = run(["eval", "--model", "popularity", "--dataset", str(log_csv), *COLS, "--split", "temporal",
                          "--out", str(tmp_path / "t"), "--bootstrap", "20"], capsys)
    assert code == 0, err
    assert "popularity on events" in out
    code, out, err = run(["eval", "--model", "popularity", "--dataset", str(log_csv), *COLS, "--sampled-negatives",
                          "5", "--out", str(tmp_path / "s"), "--bootstrap", "20"], capsys)
    assert code == 0, err
    assert "SAMPLED" in out and "SAMPLED" in (tmp_path / "s" / "report.md").read_text()


def test_prepare_then_eval_on_folder(log_csv, tmp_path, capsys):
    folder = tmp_path / "prepared"
    code, _, err = run(["data", "prepare", str(log_csv), *COLS, "--out", str(folder), "--kcore", "2"], capsys)
    assert code == 0, err
    code, out, err = run(["data", "stats", str(folder), "--json"], capsys)
    assert code == 0, err
    assert 0 < json.loads(out)["users"] <= 30
    code, _, err = run(["eval", "--model", "popularity", "--dataset", str(folder), "--out", str(tmp_path / "r"),
                        "--bootstrap", "20"], capsys)
    assert code == 0, err


def test_schema_yaml(log_csv, tmp_path, capsys):
    schema = tmp_path / "schema.yaml"
    schema.write_text(f"interactions_path: {log_csv}\ninteractions: {{user: uid, item: video, timestamp: ts}}\n")
    code, out, err = run(["data", "stats", "-", "--schema", str(schema), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["users"] == 30
    schema.write_text("interactions: {user: uid, colour: red}\n")
    code, _, err = run(["data", "stats", "-", "--schema", str(schema)], capsys)
    assert code == 2 and "colour" in err and "unknown field" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["data", "stats", "nope-dataset"], "unknown dataset 'nope-dataset'"),
        (["data", "stats", "/no/such/file.csv"], "file not found"),
        (["data", "stats", "{csv}", "--user-col", "user"], "column 'user'"),
        (["data", "stats", "{csv}", "--user-col", "uid", "--item-col", "video", "--time-col", "video"], "timestamp"),
        (["eval", "--model", "nope", "--dataset", "{csv}", *COLS], "unknown model 'nope'"),
        (["eval", "--model", "itemknn", "--dataset", "{csv}", *COLS, "--param", "neighbors=-3"], "neighbors"),
        (["eval", "--model", "itemknn", "--dataset", "{csv}", *COLS, "--param", "oops"], "key=value"),
        (["eval", "--model", "popularity", "--dataset", "{csv}", *COLS, "--k", "ten"], "--k"),
        (["eval", "--model", "popularity", "--dataset", "{csv}", *COLS, "--on", "train"], "--on"),
        (["eval", "--model", "popularity", "--dataset", "{csv}", "--user-col", "uid", "--item-col", "video",
          "--split", "temporal"], "timestamps"),
        (["compare", "/no/run/a", "/no/run/b"], "not a genrec run folder"),
        (["data", "verify", "nope-dataset"], "unknown dataset"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, log_csv, capsys):
    argv = [str(log_csv) if a == "{csv}" else a for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3


def test_bad_rows_name_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\n1,2\n3,4,5\n")
    code, _, err = run(["data", "stats", str(bad)], capsys)
    assert code == 2 and "line 3" in err and str(bad) in err
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id\n")
    code, _, err = run(["data", "stats", str(empty)], capsys)
    assert code == 2 and "empty" in err


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genrec", "data", "stats", str(tmp_path / "missing.parquet")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing.parquet" in proc.stderr and "Traceback" not in proc.stderr
