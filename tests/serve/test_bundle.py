"""Bundles: export from a run, checksum verification, immutability; the Recommender on top of them; and the
quickstart flow end to end on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from genrec.data import prepare
from genrec.errors import GenrecError
from genrec.serve import Recommender, export_bundle, load_manifest
from genrec.train.config import RunConfig
from genrec.train.trainer import Trainer


def tiny(tmp_path: Path):
    rows = [(u, (u + t) % 12 + 1) for u in range(20) for t in range(8)]
    items = pa.table({"item": list(range(1, 13)), "title": [f"Movie {i}" for i in range(1, 13)]})
    ds = prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="tiny", items=items)
    cfg = RunConfig.model_validate({"dataset": "tiny", "model": {"name": "sasrec", "dim": 8, "blocks": 1,
                                                                 "max_len": 6, "dropout": 0.0},
                                    "train": {"epochs": 2, "batch_size": 8, "warmup_steps": 1},
                                    "eval": {"n_boot": 20, "ks": [5, 10]}})
    Trainer(cfg, tmp_path / "run", dataset=ds, show_progress=False).fit()
    return ds, tmp_path / "run"


def test_export_load_recommend(tmp_path):
    ds, run = tiny(tmp_path)
    bundle = export_bundle(run, tmp_path / "bundle")
    manifest = load_manifest(bundle)
    assert manifest["model"] == "sasrec" and manifest["dataset"] == "tiny" and "hr@10" in manifest["metrics"]
    rec = Recommender.load(bundle)
    history = ["3", "4", "5"]
    out = rec.recommend(history, k=4)
    assert len(out.items) == 4 and not out.fallback and not out.warnings
    assert not {r["item_id"] for r in out.items} & set(history)
    assert all(r["title"].startswith("Movie ") for r in out.items)
    scores = [r["score"] for r in out.items]
    assert scores == sorted(scores, reverse=True)
    # Same answer as scoring the model directly.
    again = rec.recommend(["3", "4", "5"], k=4)
    assert [r["item_id"] for r in again.items] == [r["item_id"] for r in out.items]


def test_unknown_ids_and_cold_start(tmp_path):
    _, run = tiny(tmp_path)
    rec = Recommender.load(export_bundle(run, tmp_path / "b"))
    out = rec.recommend(["3", "nope"], k=3)
    assert out.warnings == ["unknown item id 'nope' ignored"] and len(out.items) == 3
    cold = rec.recommend([], k=3)
    assert cold.fallback and [r["score"] for r in cold.items] == [None] * 3


def test_bundles_are_immutable_and_verified(tmp_path):
    _, run = tiny(tmp_path)
    bundle = export_bundle(run, tmp_path / "b")
    with pytest.raises(GenrecError, match="already exists"):
        export_bundle(run, bundle)
    with open(bundle / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(GenrecError, match="checksum"):
        Recommender.load(bundle)
    with pytest.raises(GenrecError, match="not a finished training run"):
        export_bundle(tmp_path, tmp_path / "c")
    with pytest.raises(GenrecError, match="not a genrec bundle"):
        load_manifest(tmp_path)


def test_quickstart_flow_on_tiny_data(tmp_path, monkeypatch):
    import genrec.quickstart as qs

    ds, _ = tiny(tmp_path)
    monkeypatch.setattr(qs, "load_dataset", lambda name: ds)
    cfg = RunConfig.model_validate({**qs.DEFAULT_CONFIG, "dataset": "tiny",
                                    "model": {"name": "hstu", "dim": 8, "blocks": 1, "max_len": 6},
                                    "train": {"epochs": 2, "batch_size": 8, "warmup_steps": 1, "max_minutes": 1},
                                    "eval": {"n_boot": 20}})
    res = qs.run_quickstart(tmp_path / "qs", cfg, show_progress=False, n_samples=2)
    assert set(res.baselines) == {"popularity", "itemknn"}
    assert (res.bundle / "manifest.json").is_file()
    assert len(res.samples) == 2 and all(len(s["recommended"]) == 5 for s in res.samples)
    assert all(t.startswith("Movie ") for t in res.samples[0]["recommended"])
    manifest = json.loads((res.bundle / "manifest.json").read_text())
    assert manifest["model"] == "hstu"


def test_bundle_holds_popularity_and_the_semantic_id_table(tmp_path):
    import numpy as np

    from genrec.content import ItemEmbeddings
    from genrec.semantic_ids import tokenize
    from genrec.semantic_ids.codes import SemanticIds

    ds, run = tiny(tmp_path)
    plain = export_bundle(run, tmp_path / "plain")
    files = load_manifest(plain)["files"]
    assert "popularity.json" in files and not any(f.startswith("semantic_ids") for f in files)
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    vectors = np.concatenate([np.zeros((1, 6)), np.random.default_rng(0).normal(size=(len(raw), 6))])
    tokenize(ItemEmbeddings(vectors=vectors, item_ids=raw, meta={"dataset": "tiny"}), levels=2, codebook_size=4,
             out=tmp_path / "sid")
    cfg = RunConfig.model_validate({"dataset": "tiny", "model": {"name": "sasrec", "dim": 8, "blocks": 1,
                                                                 "max_len": 6, "dropout": 0.0},
                                    "train": {"epochs": 1, "batch_size": 8, "warmup_steps": 1},
                                    "eval": {"n_boot": 20}, "features": {"semantic_ids": str(tmp_path / "sid")}})
    Trainer(cfg, tmp_path / "sid_run", dataset=ds, show_progress=False).fit()
    bundle = export_bundle(tmp_path / "sid_run", tmp_path / "sid_bundle")
    files = load_manifest(bundle)["files"]
    assert {"semantic_ids.safetensors", "semantic_ids.json"} <= set(files)
    exported, made = SemanticIds.load(bundle), SemanticIds.load(tmp_path / "sid")
    assert np.array_equal(exported.codes, made.codes) and exported.sizes == made.sizes
    assert exported.meta["source"] == str(tmp_path / "sid")
    assert len(Recommender.load(bundle).recommend(["3", "4"], k=3).items) == 3
