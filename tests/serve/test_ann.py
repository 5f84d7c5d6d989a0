"""The FAISS path for large catalogs: index build/tune/search, export with ``ann``, serving through it."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from tests.serve.test_bundle import tiny

from genrec.errors import GenrecError
from genrec.serve import Recommender, export_bundle, load_manifest

pytest.importorskip("faiss")
from genrec.serve.ann import AnnIndex, exact_top, recall  # noqa: E402


def clustered(n: int, d: int = 16, centres: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_exact_top_matches_argsort_across_blocks():
    items, queries = clustered(1000), clustered(7, seed=1)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :25] + 1
    np.testing.assert_array_equal(exact_top(items, queries, 25, chunk=97), expected)
    assert recall(expected, expected) == 1.0 and recall(expected[:, :5], expected[:, 5:10]) == 0.0


def test_tuned_index_reaches_the_recall_it_reports():
    items, queries = clustered(20_000), clustered(64, seed=2)
    index = AnnIndex.build(items)
    report = index.tune(items, queries, k=10, target=0.9)
    assert report["recall@10"] >= 0.9 and report["nprobe"] < index.nlist  # approximate, yet good enough
    found = index.search(queries, 10)[0]
    assert recall(found, exact_top(items, queries, 10)) == pytest.approx(report["recall@10"])
    assert found.min() >= 1 and found.max() <= len(items)  # dense ids, never the padding row
    ids, scores = index.search(queries[:1], 10, nprobe=index.nlist)  # every list scanned: exact
    np.testing.assert_array_equal(ids[0], exact_top(items, queries[:1], 10)[0])
    assert np.all(np.diff(scores[0]) <= 0)


def test_missing_faiss_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(GenrecError, match=r"genrec\[ann\]"):
        AnnIndex.build(clustered(100))


def test_export_with_an_index_and_serve_through_it(tmp_path):
    _, run = tiny(tmp_path)
    exact = Recommender.load(export_bundle(run, tmp_path / "exact"))
    assert "ann.faiss" not in load_manifest(tmp_path / "exact")["files"]  # small catalog, ann=auto: none
    bundle = export_bundle(run, tmp_path / "ann", ann="on", ann_recall=1.0)
    manifest = load_manifest(bundle)
    assert "ann.faiss" in manifest["files"] and manifest["ann"]["recall@10"] == 1.0
    rec = Recommender.load(bundle)
    out, ref = rec.recommend(["3", "4", "5"], k=5), exact.recommend(["3", "4", "5"], k=5)
    assert out.mode == "model+ann" and not out.fallback
    assert [r["item_id"] for r in out.items] == [r["item_id"] for r in ref.items]
    assert [r["score"] for r in out.items] == pytest.approx([r["score"] for r in ref.items], abs=1e-5)
    allowed = rec.recommend(["3", "4", "5"], k=3, allow=["1", "2", "3"])  # scored exactly, seen 3 excluded
    assert {r["item_id"] for r in allowed.items} == {"1", "2"}
    denied = rec.recommend(["3"], k=5, deny=[r["item_id"] for r in ref.items[:2]])
    assert len(denied.items) == 5 and not {r["item_id"] for r in denied.items} & {r["item_id"] for r in ref.items[:2]}


def test_bad_ann_option(tmp_path):
    _, run = tiny(tmp_path)
    with pytest.raises(GenrecError, match="ann must be"):
        export_bundle(run, tmp_path / "b", ann="maybe")
    assert not (tmp_path / "b").exists()
