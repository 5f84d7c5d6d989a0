"""genrec data expand: the paper's reduction, event counts close to factor x source, every expanded event traced
back to a source event, chronological users, the source's popularity and history-length shapes, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from cli_run import run
from genrec.data import SequenceDataset, get_builtin, prepare
from genrec.data.expand import (
    _Source,
    block_probabilities,
    closest_orthonormal,
    expand,
    expand_config,
    interaction_matrix,
    rank_strata,
    reduced_matrix,
    resize_rows,
    stratified_permutation,
    top_singular,
)
from genrec.data.synth import synth, synth_config
from genrec.errors import ConfigError


def _read(folder: Path) -> dict[str, np.ndarray]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet")))
    return {c: table.column(c).to_numpy() for c in table.column_names}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SequenceDataset:
    """A generated log with power-law popularity and lognormal lengths, prepared in memory."""
    folder = tmp_path_factory.mktemp("src")
    synth(synth_config(events=60_000, items=1500, users=1000, seed=5, zipf=1.0), folder, show_progress=False)
    d = _read(folder)
    return prepare(pa.table({"user": d["user_id"], "item": d["item_id"], "timestamp": d["timestamp"]}), name="src")


def _without_time(ds: SequenceDataset) -> SequenceDataset:
    return SequenceDataset(name=ds.name, users=ds.users, items=ds.items, sequences=ds.sequences)


def _norm_slope(counts: np.ndarray, lo: float = 0.01, hi: float = 0.5) -> float:
    """Log-log slope of the rank-frequency curve, ranks and counts normalised (fraction of ranks, x mean)."""
    c = np.sort(counts[counts > 0])[::-1].astype(np.float64)
    r = np.arange(int(lo * len(c)), int(hi * len(c)))
    return float(np.polyfit(np.log((r + 1) / len(c)), np.log(c[r] / c.mean()), 1)[0])


def _gini(counts: np.ndarray) -> float:
    c = np.sort(counts).astype(np.float64)
    return float((2 * np.arange(1, len(c) + 1) - len(c) - 1) @ c / (len(c) * c.sum()))


def _counts(ids: np.ndarray) -> np.ndarray:
    return np.bincount(np.unique(ids, return_inverse=True)[1])


# --- the reduction --------------------------------------------------------------------------------------

def test_reduced_matrix_keeps_the_top_singular_values():
    rng = np.random.default_rng(0)
    ds_like = (rng.random((200, 150)) < 0.05).astype(np.float64)
    u, s, vt = np.linalg.svd(ds_like, full_matrices=False)
    reduced = reduced_matrix(u, s, vt.T, 3, 5)
    assert reduced.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.svd(reduced, compute_uv=False)[:3], s[:3], rtol=1e-9)


def test_resize_and_orthonormal():
    ramp = np.linspace(0, 1, 101)[:, None] * np.ones((1, 3))
    small = resize_rows(ramp, 11)
    assert small.shape == (11, 3)
    assert np.all(np.diff(small[:, 0]) > 0) and abs(small[5, 0] - 0.5) < 1e-9  # monotone, centred
    np.testing.assert_allclose(resize_rows(np.full((50, 2), 3.0), 7), 3.0)
    q = closest_orthonormal(np.random.default_rng(1).standard_normal((9, 4)))
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)


def test_top_singular_sparse_matches_dense():
    r = sp.random(300, 200, density=0.05, format="csr", rng=np.random.default_rng(4))
    _, s_sparse, _ = top_singular(r, 4, seed=0)
    s_dense = np.linalg.svd(r.toarray(), compute_uv=False)[:4]
    np.testing.assert_allclose(s_sparse, s_dense, rtol=1e-6)


def test_block_probabilities(source):
    r = interaction_matrix(source)
    for factor in (1.0, 2.5, 9.0):
        p, _ = block_probabilities(r, expand_config(factor=factor))
        assert p.sum() == pytest.approx(factor) and p.min() >= 0 and p.sum(axis=1).max() <= 1 + 1e-9
        assert p.shape[0] >= factor and p.shape[1] == np.ceil(np.sqrt(factor))
        p, _ = block_probabilities(r, expand_config(factor=factor, mode="kronecker"))
        assert p.sum() == pytest.approx(factor) and p.max() <= 1 + 1e-9 and p.size < 4 * factor + 4
    p, _ = block_probabilities(r, expand_config(factor=3, user_blocks=2, mode="kronecker"))
    assert p.shape[0] == 2 and p.shape[1] >= 2
    with pytest.raises(ConfigError, match="out of reach"):
        block_probabilities(r, expand_config(factor=3, user_blocks=1, item_blocks=2, mode="kronecker"))
    with pytest.raises(ConfigError, match="out of reach"):
        block_probabilities(r, expand_config(factor=3, user_blocks=2))  # timeline: a row's mass is at most 1


def test_stratified_permutation_stays_in_strata():
    counts = np.random.default_rng(2).zipf(1.5, 500)
    order, stratum = rank_strata(counts, 4)
    perm = stratified_permutation(order, stratum, np.random.default_rng(3))
    assert sorted(perm.tolist()) == list(range(500))
    rank = np.empty(500, dtype=np.int64)
    rank[order] = np.arange(500)
    np.testing.assert_array_equal(stratum[rank], stratum[rank[perm]])
    assert np.mean(perm != np.arange(500)) > 0.5
    order0, stratum0 = rank_strata(counts, 0)
    assert (stratum0 == 0).all()


# --- the expansion --------------------------------------------------------------------------------------

def test_events_factor_and_metadata(source, tmp_path):
    meta = expand(source, expand_config(factor=4, min_length=1, seed=1), tmp_path / "x", show_progress=False)
    d = _read(tmp_path / "x")
    assert len(d["user_id"]) == meta["events"]
    assert meta["events"] / source.n_interactions == pytest.approx(4, rel=0.03)
    assert meta["users"] == len(np.unique(d["user_id"])) and meta["items"] == len(np.unique(d["item_id"]))
    m, n = meta["blocks"]["users"], meta["blocks"]["items"]
    assert meta["factors"]["users"] == pytest.approx(meta["users"] / source.n_users)
    assert meta["factors"]["items"] <= n and meta["factors"]["users"] <= m
    assert d["user_id"].max() < source.n_users * m and d["item_id"].max() < source.n_items * n
    assert json.loads((tmp_path / "x" / "_expand.json").read_text())["events"] == meta["events"]


@pytest.mark.parametrize("mode", ["timeline", "kronecker"])
def test_every_event_comes_from_its_source_user(source, tmp_path, mode):
    cfg = expand_config(factor=3, seed=2, mode=mode)
    meta = expand(source, cfg, tmp_path / "x", show_progress=False)
    d = _read(tmp_path / "x")
    m, n = meta["blocks"]["users"], meta["blocks"]["items"]
    u, i = d["user_id"] // m, d["user_id"] % m
    x, j = d["item_id"] // n, d["item_id"] % n
    src = _Source(source, cfg, n)
    c = np.empty(len(x), dtype=np.int64)
    if mode == "timeline":  # item x of block j is source item x, in the block its row block assigns to x
        p, _ = block_probabilities(interaction_matrix(source), cfg)
        c[:] = x
        for bi in range(m):
            np.testing.assert_array_equal(j[i == bi], src.variants(bi, p)[x[i == bi]])
    for bi in range(m if mode != "timeline" else 0):
        for bj in range(n):
            sel = (i == bi) & (j == bj)
            inverse = np.argsort(src.perm("item", bi, bj))
            c[sel] = inverse[x[sel]]
    # the source event of user u at time t (timestamps are unique within a generated user)
    su = source.sequences.row_ids()
    key = su * 10**10 + (source.timestamps.values - source.timestamps.values.min())
    at = np.searchsorted(key, u * 10**10 + (d["timestamp"] - source.timestamps.values.min()))
    assert (key[np.minimum(at, len(key) - 1)] == u * 10**10 + d["timestamp"]
            - source.timestamps.values.min()).all()
    np.testing.assert_array_equal(source.sequences.values[at] - 1, c)
    # chronological within each expanded user, grouped, one copy per (event, item block)
    same = d["user_id"][1:] == d["user_id"][:-1]
    assert (np.diff(d["timestamp"])[same] >= 0).all()
    assert np.count_nonzero(~same) + 1 == meta["users"]
    copies = [d["user_id"], d["timestamp"]] + ([j] if mode == "kronecker" else [])  # timeline: no copies at all
    assert np.unique(np.stack(copies), axis=1).shape[1] == len(j)
    assert np.bincount(np.unique(d["user_id"], return_inverse=True)[1]).min() >= cfg.min_length


def test_positions_stand_in_for_missing_timestamps(source, tmp_path):
    plain = _without_time(source)
    cfg = expand_config(factor=2, seed=3)
    meta = expand(plain, cfg, tmp_path / "x", show_progress=False)
    assert "position" in meta["columns"]["timestamp"]
    d = _read(tmp_path / "x")
    m, n = meta["blocks"]["users"], meta["blocks"]["items"]
    u, i, x, j = d["user_id"] // m, d["user_id"] % m, d["item_id"] // n, d["item_id"] % n
    src = _Source(plain, cfg, n)
    source_item = plain.sequences.values[plain.sequences.offsets[u] + d["timestamp"]] - 1
    np.testing.assert_array_equal(source_item, x)
    p, _ = block_probabilities(interaction_matrix(plain), cfg)
    np.testing.assert_array_equal(j, np.array([src.variants(a, p)[s] for a, s in zip(i, x, strict=True)]))


def test_deterministic_and_independent_of_sharding(source, tmp_path):
    expand(source, expand_config(factor=2, seed=4), tmp_path / "a", show_progress=False)
    expand(source, expand_config(factor=2, seed=4, shard_events=500), tmp_path / "b", show_progress=False)
    expand(source, expand_config(factor=2, seed=5), tmp_path / "c", show_progress=False)
    a, b, c = _read(tmp_path / "a"), _read(tmp_path / "b"), _read(tmp_path / "c")
    for col in a:
        np.testing.assert_array_equal(a[col], b[col])
    assert len(list((tmp_path / "b").glob("part-*.parquet"))) > 50
    assert len(a["user_id"]) != len(c["user_id"]) or not np.array_equal(a["item_id"], c["item_id"])


def _shapes(ds: SequenceDataset, d: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    src_pop, exp_pop = np.bincount(ds.sequences.values), _counts(d["item_id"])
    src_len, exp_len = ds.sequences.lengths, _counts(d["user_id"])
    q = [0.1, 0.5, 0.9]
    return {"pop_slope": (_norm_slope(src_pop), _norm_slope(exp_pop)),
            "len_slope": (_norm_slope(src_len), _norm_slope(exp_len)),
            "len_q": (np.quantile(src_len / src_len.mean(), q), np.quantile(exp_len / exp_len.mean(), q))}


@pytest.mark.parametrize("mode", ["timeline", "kronecker", "shuffled"])
def test_shape_is_kept(source, tmp_path, mode):
    """The paper's claim: the expansion keeps the popularity and engagement power laws (normalised)."""
    expand(source, expand_config(factor=6, mode=mode, seed=6), tmp_path / "x", show_progress=False)
    s = _shapes(source, _read(tmp_path / "x"))
    assert s["pop_slope"][1] == pytest.approx(s["pop_slope"][0], abs=0.1)
    assert s["len_slope"][1] == pytest.approx(s["len_slope"][0], abs=0.1)
    np.testing.assert_allclose(s["len_q"][1], s["len_q"][0], rtol=0.15)


def test_uniform_shuffles_flatten_popularity(source, tmp_path):
    """Why shuffles (kronecker and shuffled modes) are stratified: with the paper's uniform ones an expanded
    item's count is a sum of unrelated items' counts, and the popularity curve flattens."""
    diffs = {}
    for strata in (0, 4):
        folder = tmp_path / f"s{strata}"
        expand(source, expand_config(factor=6, strata=strata, seed=7, mode="kronecker"), folder,
               show_progress=False)
        src_slope, exp_slope = _shapes(source, _read(folder))["pop_slope"]
        diffs[strata] = exp_slope - src_slope
    assert diffs[0] > 0.1 and abs(diffs[4]) < diffs[0] / 2


# --- the CLI ----------------------------------------------------------------------------------------------

def test_cli_expand_prepared_folder(source, tmp_path, capsys):
    source.save(tmp_path / "prepared")
    out = tmp_path / "big"
    code, stdout, err = run(["data", "expand", str(tmp_path / "prepared"), "--factor", "2", "--out", str(out),
                             "--seed", "1", "--json"], capsys)
    assert code == 0, err
    meta = json.loads(stdout)
    assert meta["events"] == len(_read(out)["user_id"]) and meta["source"]["events"] == source.n_interactions
    assert meta["factors"]["events"] == pytest.approx(2, rel=0.05)
    code, stdout, err = run(["data", "expand", str(tmp_path / "prepared"), "--factor", "2", "--out", str(out),
                             "--overwrite"], capsys)
    assert code == 0 and "events (x" in stdout, err


@pytest.mark.parametrize("args, message", [
    (["--factor", "0.5"], "--factor"),
    (["--factor", "3", "--user-blocks", "1", "--item-blocks", "1"], "out of reach"),
    (["--factor", "2", "--mode", "rows"], "--mode"),
])
def test_cli_expand_errors(source, tmp_path, capsys, args, message):
    source.save(tmp_path / "prepared")
    code, _, err = run(["data", "expand", str(tmp_path / "prepared"), *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_expand_unknown_and_existing(source, tmp_path, capsys):
    code, _, err = run(["data", "expand", "no-such-dataset", "--factor", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown dataset" in err
    source.save(tmp_path / "prepared")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    code, _, err = run(["data", "expand", str(tmp_path / "prepared"), "--factor", "2", "--out",
                        str(tmp_path / "full")], capsys)
    assert code == 2 and "not empty" in err


@pytest.mark.realdata
def test_movielens_expansion_keeps_its_shape(tmp_path):
    spec = get_builtin("movielens-1m")
    if not spec.available():
        pytest.skip("movielens-1m is not under GENREC_DATA_DIR")
    ds = spec.load()
    meta = expand(ds, expand_config(factor=2), tmp_path / "x", show_progress=False)
    assert meta["factors"]["events"] == pytest.approx(2, rel=0.02)
    d = _read(tmp_path / "x")
    s = _shapes(ds, d)
    # the Kronecker product multiplies popularity by the item blocks' unequal weights, which steepens
    # MovieLens' curved (not pure power-law) rank-frequency curve a little
    assert s["pop_slope"][1] == pytest.approx(s["pop_slope"][0], abs=0.12)
    assert _gini(_counts(d["item_id"])) == pytest.approx(_gini(np.bincount(ds.sequences.values)[1:]), abs=0.05)
    assert s["len_slope"][1] == pytest.approx(s["len_slope"][0], abs=0.05)
    np.testing.assert_allclose(s["len_q"][1], s["len_q"][0], rtol=0.1)
