"""genrec data synth: exact counts, determinism, sharding that does not change the data, the popularity law,
heavy-tailed lengths, the sequential structure, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_run import run
from genrec.data.synth import BLOCK_USERS, EPOCH, _feistel_keys, feistel_permute, synth, synth_config
from genrec.errors import ConfigError, DataError


def _read(folder: Path) -> dict[str, np.ndarray]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet")))
    return {c: table.column(c).to_numpy() for c in table.column_names}


def _slope(counts: np.ndarray, lo: int, hi: int) -> float:
    c = np.sort(counts)[::-1]
    r = np.arange(lo, hi)
    return float(np.polyfit(np.log(r + 1), np.log(np.maximum(c[r], 1)), 1)[0])


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_feistel_is_a_permutation(n):
    out = feistel_permute(np.arange(n), n, _feistel_keys(3, 1))
    assert sorted(out.tolist()) == list(range(n))
    if n >= 1000:
        assert np.mean(out == np.arange(n)) < 0.01  # ids do not equal ranks


def test_counts_lengths_and_time(tmp_path):
    # more users than one generation block, so lengths telescope across blocks
    cfg = synth_config(events=40_000, items=900, users=BLOCK_USERS + 1000, seed=1, min_length=4)
    meta = synth(cfg, tmp_path / "s", show_progress=False)
    d = _read(tmp_path / "s")
    assert len(d["user_id"]) == meta["events"] == 40_000
    assert d["item_id"].min() >= 0 and d["item_id"].max() < 900
    lengths = np.bincount(d["user_id"])
    assert len(lengths) == cfg.n_users and lengths.min() >= 4
    # grouped by user, strictly chronological within a user, starts inside the period
    first = np.r_[True, d["user_id"][1:] != d["user_id"][:-1]]
    assert first.sum() == cfg.n_users  # each user's rows are contiguous
    gaps = np.diff(d["timestamp"])[~first[1:]]
    assert gaps.min() >= 1
    starts = d["timestamp"][first]
    assert starts.min() >= EPOCH and starts.max() < EPOCH + 365 * 86400
    assert json.loads((tmp_path / "s" / "_synth.json").read_text())["events"] == 40_000


def test_equal_lengths_without_spread(tmp_path):
    synth(synth_config(events=10_007, items=100, users=100, length_sigma=0.0), tmp_path / "s", show_progress=False)
    lengths = np.bincount(_read(tmp_path / "s")["user_id"])
    assert lengths.sum() == 10_007 and lengths.max() - lengths.min() <= 1


def test_lengths_are_heavy_tailed(tmp_path):
    synth(synth_config(events=100_000, items=1000, users=2000, length_sigma=1.0), tmp_path / "s",
          show_progress=False)
    lengths = np.bincount(_read(tmp_path / "s")["user_id"])
    assert lengths.max() > 8 * np.median(lengths)
    assert lengths.mean() > 1.3 * np.median(lengths)  # right-skewed, as lognormal lengths are


def test_deterministic_and_independent_of_sharding(tmp_path):
    base = dict(events=12_000, items=500, users=300, seed=7)
    synth(synth_config(**base), tmp_path / "a", show_progress=False)
    meta = synth(synth_config(**base, shard_events=50), tmp_path / "b", show_progress=False)
    synth(synth_config(**{**base, "seed": 8}), tmp_path / "c", show_progress=False)
    a, b, c = _read(tmp_path / "a"), _read(tmp_path / "b"), _read(tmp_path / "c")
    for col in ("user_id", "item_id", "timestamp"):
        np.testing.assert_array_equal(a[col], b[col])
    assert not np.array_equal(a["item_id"], c["item_id"])
    shards = sorted((tmp_path / "b").glob("part-*.parquet"))
    assert meta["shards"] == len(shards) > 10
    owners = [set(pq.read_table(s).column("user_id").to_pylist()) for s in shards]
    assert sum(len(o) for o in owners) == len(set().union(*owners)) == 300  # no user spans two shards
    assert all(pq.read_table(s).num_rows >= 50 for s in shards[:-1])


def test_popularity_exponent_is_recovered(tmp_path):
    synth(synth_config(events=300_000, items=5000, users=3000, zipf=1.2, seq_prob=0.0), tmp_path / "a",
          show_progress=False)
    counts = np.bincount(_read(tmp_path / "a")["item_id"], minlength=5000)
    assert _slope(counts, 5, 500) == pytest.approx(-1.2, abs=0.08)
    # the most popular item is not id 0: ranks are hidden behind a permutation
    assert np.argmax(counts) != 0
    synth(synth_config(events=300_000, items=5000, users=3000, zipf=0.8), tmp_path / "b", show_progress=False)
    counts = np.bincount(_read(tmp_path / "b")["item_id"], minlength=5000)
    assert _slope(counts, 5, 500) == pytest.approx(-0.8, abs=0.1)  # sequential steps only smooth it locally


def test_sequential_steps_stay_near_in_the_latent_order(tmp_path):
    kw = dict(events=20_000, items=2000, users=400, seq_window=3, seed=2)
    rank_of = np.empty(2000, dtype=np.int64)
    rank_of[feistel_permute(np.arange(2000), 2000, _feistel_keys(2, 2))] = np.arange(2000)

    def near_fraction(seq_prob: float) -> float:
        folder = tmp_path / f"p{seq_prob}"
        synth(synth_config(**kw, seq_prob=seq_prob), folder, show_progress=False)
        d = _read(folder)
        same_user = d["user_id"][1:] == d["user_id"][:-1]
        step = np.abs(np.diff(rank_of[d["item_id"]]))[same_user]
        return float(np.mean(step <= 3))

    assert near_fraction(1.0) == 1.0
    assert near_fraction(0.0) < 0.2


@pytest.mark.parametrize("fields, flag", [
    (dict(events=10, items=20), "items"),
    (dict(events=10, items=2, users=5), "min_length"),
    (dict(events=100, items=10, zipf=-1), "--zipf"),
    (dict(events=100, items=10, seq_prob=2), "--seq-prob"),
])
def test_bad_config_names_the_field(fields, flag):
    with pytest.raises(ConfigError, match=flag):
        synth_config(**fields)


def test_non_empty_folder_needs_overwrite(tmp_path):
    cfg = synth_config(events=1000, items=50, users=20)
    synth(cfg, tmp_path / "s", show_progress=False)
    with pytest.raises(DataError, match="not empty"):
        synth(cfg, tmp_path / "s", show_progress=False)
    (tmp_path / "s" / "notes.txt").write_text("kept")
    synth(synth_config(events=1000, items=50, users=20, shard_events=100), tmp_path / "s", overwrite=True,
          show_progress=False)
    assert (tmp_path / "s" / "notes.txt").is_file()
    assert len(_read(tmp_path / "s")["user_id"]) == 1000


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "log"
    code, stdout, err = run(["data", "synth", "--events", "5000", "--items", "300", "--users", "100", "--out",
                             str(out), "--seed", "3", "--zipf", "0.9", "--json"], capsys)
    assert code == 0, err
    meta = json.loads(stdout)
    assert meta["events"] == 5000 and meta["config"]["zipf"] == 0.9
    assert len(_read(out)["item_id"]) == 5000
    code, _, err = run(["data", "synth", "--events", "5000", "--items", "300", "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err and "Traceback" not in err
    code, _, err = run(["data", "synth", "--events", "10", "--items", "300", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "must not exceed events" in err
    code, _, err = run(["data", "synth", "--events", "100", "--items", "10", "--min-length", "0", "--out",
                        str(tmp_path / "y")], capsys)
    assert code == 2 and "--min-length" in err
