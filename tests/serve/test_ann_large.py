"""Large-catalog serving on small data: the index kind chosen by size and memory budget, IVF-PQ with exact refine
through a bundle, memory-mapped loading, the Arrow catalog's raw id lookup, and clear errors for bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from genrec.errors import ConfigError, GenrecError
from genrec.io import write_json
from genrec.models import HSTU, HSTUConfig
from genrec.serve import Recommender, export_bundle, load_manifest
from genrec.serve.catalog import Catalog
from genrec.serve.model_io import load_model

faiss = pytest.importorskip("faiss")
from genrec.serve.ann import AnnConfig, AnnIndex, build_tuned, choose, index_bytes, recall  # noqa: E402

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def clustered(n: int, d: int = 16, centres: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def synthetic_run(root: Path, n: int = 4000, dim: int = 16, l2: bool = False) -> Path:
    """An untrained HSTU whose item embeddings are clustered, saved as a finished run."""
    torch.manual_seed(0)
    cfg = HSTUConfig(dim=dim, blocks=1, heads=1, max_len=20, dropout=0.0, l2_normalize=l2)
    model = HSTU(cfg, n, use_timestamps=False)
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(0.3 * clustered(n, dim))
    run = root / "run"
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    write_json(run / "model.json", {"name": "hstu", "config": cfg.model_dump(), "n_items": n, "use_timestamps": False})
    ids = np.arange(1, n + 1)
    raw = [f"it-{i}" if i % 3 else f"ünï-{i}" for i in ids]  # text ids of several lengths, some non-ASCII
    pq.write_table(pa.table({"item_idx": ids[::-1].copy(), "raw_id": raw[::-1], "title": [f"T{i}" for i in ids][::-1],
                             "train_count": (1000 // ids)[::-1].copy()}), run / "items.parquet")  # unsorted rows
    write_json(run / "metrics.json", {"dataset": {"name": "synth"}, "metrics": {}, "run": {}})
    return run


def test_kind_follows_size_and_memory_budget():
    assert choose(AnnConfig(), 100_000, 64)[0] == "flat"  # at the threshold: exact
    kind, sizes, why = choose(AnnConfig(), 1_000_000, 64)
    assert kind == "ivf" and sizes == [] and "fits" in why  # ~260 MB <= 1024 MB
    kind, sizes, why = choose(AnnConfig(), 10_000_000, 64)
    assert kind == "ivfpq" and sizes == [16, 32, 64] and "exceeds" in why  # IVF-flat ~2.6 GB > 1 GB
    # 4-bit codes (the default): 10M x (16 + 8) B fits 300 MB, 10M x (32 + 8) B not; 8-bit codes are twice as long
    assert choose(AnnConfig(memory_mb=300), 10_000_000, 64)[1] == [16, 32]
    assert choose(AnnConfig(memory_mb=300, nbits=8), 10_000_000, 64)[1] == [16]
    assert choose(AnnConfig(memory_mb=4000), 10_000_000, 64)[0] == "ivf"
    assert choose(AnnConfig(threshold=10), 1000, 64)[0] == "ivf"
    assert choose(AnnConfig.of("ivfpq", m=8), 50, 64)[:2] == ("ivfpq", [8])  # an explicit kind is obeyed
    assert choose(AnnConfig.of("off"), 10**8, 64)[0] == "flat" and choose(AnnConfig.of("on"), 10, 64)[0] == "ivf"


def test_size_estimate_matches_the_saved_index(tmp_path):
    items = clustered(6000)
    for index, kind, m, nbits in ((AnnIndex.build(items, nlist=32), "ivf", 0, 8),
                                  (AnnIndex.build_pq(items, m=8, nbits=8, nlist=32), "ivfpq", 8, 8),
                                  (AnnIndex.build_pq(items, m=8, nbits=4, nlist=32), "ivfpq", 8, 4)):
        index.save(tmp_path / "index.faiss")
        size = (tmp_path / "index.faiss").stat().st_size
        assert index_bytes(kind, 6000, 16, 32, m, nbits) == pytest.approx(size, rel=0.1), (kind, nbits)


def test_ivfpq_tuning_reaches_the_recall_it_reports():
    items, queries = clustered(8000), clustered(96, seed=3)
    index, report = build_tuned(items, queries, AnnConfig(kind="ivfpq", m=4, recall=0.9))
    assert report["kind"] == "ivf_pq_ip" and report["target_met"] and report["m"] == 4 and report["refine"] >= 10
    assert report["recall@10"] - 2 * report["recall@10_se"] >= 0.9  # the target is met with a margin
    exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10] + 1  # independent reference
    ids, scores = index.search(queries, 10)
    per_query = [len(set(f) & set(e)) / 10 for f, e in zip(ids.tolist(), exact.tolist(), strict=True)]
    assert report["recall@10_se"] == pytest.approx(np.std(per_query) / np.sqrt(len(per_query)))
    assert recall(ids, exact) == pytest.approx(report["recall@10"]) and report["recall@10"] >= 0.9
    # refine returns exact inner products, best first
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids - 1, 1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    codes_only = index.search(queries, 10, refine=0)[0]  # without the exact re-ranking, recall is lower
    assert recall(codes_only, exact) < report["recall@10"]


def test_ivfpq_bundle_round_trip_served_from_mapped_files(tmp_path):
    run = synthetic_run(tmp_path)
    exact = Recommender.load(export_bundle(run, tmp_path / "exact"))
    config = AnnConfig(kind="ivfpq", recall=0.9, queries=64)
    bundle = export_bundle(run, tmp_path / "pq", ann=config)
    m = load_manifest(bundle)
    assert {"ann.faiss", "catalog.arrow", "catalog_index.arrow"} <= set(m["files"])
    assert "item_table.npy" not in m["files"]  # the table is the stored embedding: served from the weights
    ann = m["ann"]
    assert ann["kind"] == "ivf_pq_ip" and ann["recall@10"] >= 0.9 and ann["m"] in (4, 8, 16) and ann["queries"] == 64
    rec = Recommender.load(bundle)
    mapped = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else None
    if mapped is not None:  # the big files are mapped, not copied into private memory
        for name in ("ann.faiss", "model.safetensors", "catalog.arrow", "catalog_index.arrow"):
            assert str((bundle / name).resolve()) in mapped, name
    overlap = []
    for h in (["it-1", "it-2"], ["ünï-3", "it-40", "it-41"], ["it-700"], ["ünï-999", "it-1000", "it-2000"]):
        got, ref = rec.recommend(h, k=10), exact.recommend(h, k=10)
        assert got.mode == "model+ann" and not got.fallback and not got.warnings and len(got.items) == 10
        ref_score = {r["item_id"]: r["score"] for r in ref.items}
        for r in got.items:  # scores are exact inner products; ids decode to their own rows
            if r["item_id"] in ref_score:
                assert r["score"] == pytest.approx(ref_score[r["item_id"]], abs=1e-5)
            dense = int(r["item_id"].split("-")[1])
            assert r["title"] == f"T{dense}"
        overlap.append(len({r["item_id"] for r in got.items} & set(ref_score)) / 10)
    assert np.mean(overlap) >= 0.8
    pop = rec.recommend([], k=3)
    assert pop.fallback and [r["item_id"] for r in pop.items] == ["it-1", "it-2", "ünï-3"]


def test_computed_item_table_is_shipped_and_mapped(tmp_path):
    run = synthetic_run(tmp_path, n=3000, l2=True)  # normalised output table: not a stored tensor
    bundle = export_bundle(run, tmp_path / "b", ann="ivf", ann_recall=0.9)
    assert "item_table.npy" in load_manifest(bundle)["files"]
    rec = Recommender.load(bundle)
    model = load_model(bundle)
    with torch.no_grad():
        np.testing.assert_allclose(rec._scorer.items.numpy(), model.item_table().numpy(), atol=1e-6)
    assert isinstance(rec._scorer.ann.table, np.ndarray) and rec.recommend(["it-5"], k=5).mode == "model+ann"


@pytest.mark.parametrize("meta", [False, True])
def test_mapped_weights_give_the_same_model(tmp_path, monkeypatch, meta):
    import genrec.serve.model_io as model_io

    if meta:  # as for a large catalog: built on the meta device, no random initial table
        monkeypatch.setattr(model_io, "META_MIN_BYTES", 1 << 20)
    run = synthetic_run(tmp_path, n=20_000)  # the item table (1.3 MB) is mapped, the rest read
    plain, mapped = load_model(run), load_model(run, mmap=True)
    assert not mapped.item_emb.weight.is_meta and isinstance(mapped.item_emb.weight, torch.nn.Parameter)
    from genrec.data.jagged import Jagged

    h = Jagged.from_lists([[1, 2, 3], [19_999, 5]])
    with torch.no_grad():
        assert torch.equal(plain.last_hidden(h), mapped.last_hidden(h))
        assert torch.equal(plain.item_table(), mapped.item_table())


@pytest.mark.parametrize("dict_max", [0, 1 << 17])  # the hash search, and the small catalog's dict
def test_catalog_lookup_and_rows_against_a_dict(monkeypatch, dict_max):
    import genrec.serve.catalog as catalog_mod

    monkeypatch.setattr(catalog_mod, "DICT_MAX_ITEMS", dict_max)
    raw = [f"id{i}" for i in range(500)] + [str(i) for i in range(300)] + ["", "ü", "a" * 300]
    items = pa.table({"item_idx": np.arange(1, len(raw) + 1), "raw_id": raw, "train_count": np.arange(len(raw)),
                      "title": [f"t{i}" for i in range(len(raw))]})
    cat = Catalog.from_items(items)
    ref = {r: i + 1 for i, r in enumerate(raw)}
    queries = raw[::7] + ["nope", "id5000", 17, "a" * 299]
    assert cat.lookup(queries).tolist() == [ref.get(str(q), 0) for q in queries]  # ints are read as their text
    assert cat.index["ü"] == ref["ü"] and "nope" not in cat.index and len(cat.index) == len(raw)
    assert cat.rows([3, 801]) == [{"item_id": "id2", "title": "t2"}, {"item_id": "", "title": "t800"}]
    assert cat.by_count[:3].tolist() == [803, 802, 801]  # most trained first


def test_catalog_lookup_survives_hash_collisions(monkeypatch, tmp_path):
    import genrec.serve.catalog as catalog_mod

    monkeypatch.setattr(catalog_mod, "hash_ids", lambda values: np.zeros(len(values), np.uint64))  # all collide
    monkeypatch.setattr(catalog_mod, "DICT_MAX_ITEMS", 0)  # the hash search, not the small catalog's dict
    raw = ["b", "a", "c", "d"]
    cat = Catalog.from_items(pa.table({"item_idx": [1, 2, 3, 4], "raw_id": raw, "train_count": [0, 0, 0, 0]}))
    cat.save(tmp_path)
    again = Catalog.load(tmp_path, ["catalog.arrow", "catalog_index.arrow"])
    for c in (cat, again):
        assert c.lookup(["d", "a", "x", "c", "b"]).tolist() == [4, 2, 0, 3, 1]


def test_bad_ann_settings_are_clear_errors(tmp_path):
    run = synthetic_run(tmp_path, n=500)
    with pytest.raises(GenrecError, match="ann must be auto, flat, ivf or ivfpq"):
        export_bundle(run, tmp_path / "a", ann="maybe")
    with pytest.raises(ConfigError, match="m=5 must divide the embedding size 16"):
        export_bundle(run, tmp_path / "b", ann={"kind": "ivfpq", "m": 5})
    with pytest.raises(ConfigError, match="memory_mb"):
        export_bundle(run, tmp_path / "c", ann={"kind": "ivfpq", "memory_mb": 0.001})
    with pytest.raises(ConfigError, match="ann recall"):
        export_bundle(run, tmp_path / "d", ann="ivfpq", ann_recall=1.5)
    with pytest.raises(ConfigError, match="ann nprobes"):
        AnnConfig.of({"kind": "ivf", "nprobes": 3})  # unknown field
    assert not any((tmp_path / x).exists() for x in "abcd")
