"""``features`` in a run config: semantic IDs and content vectors attached to an ID model, trained, saved,
exported and served with the same features; catalogs that do not match are clear config errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from genrec.content import ItemEmbeddings
from genrec.data import prepare
from genrec.data.jagged import Jagged
from genrec.errors import ConfigError
from genrec.semantic_ids import tokenize
from genrec.serve import Recommender, export_bundle
from genrec.train.config import RunConfig
from genrec.train.trainer import Trainer


def tiny_dataset():
    rows = [(u, (u + t) % 12 + 1) for u in range(20) for t in range(8)]
    return prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="tiny")


def embeddings(ds, n_items: int | None = None, shuffle: bool = False) -> ItemEmbeddings:
    rng = np.random.default_rng(0)
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    if n_items is not None:
        raw = raw[:n_items]
    if shuffle:
        raw = raw[::-1]
    vectors = np.concatenate([np.zeros((1, 6)), rng.normal(size=(len(raw), 6))]).astype(np.float32)
    return ItemEmbeddings(vectors=vectors, item_ids=raw, meta={"dataset": "tiny"})


def config(**features) -> RunConfig:
    return RunConfig.model_validate({"dataset": "tiny", "model": {"name": "sasrec", "dim": 8, "blocks": 1,
                                                                  "max_len": 6, "dropout": 0.0},
                                     "train": {"epochs": 2, "batch_size": 8, "warmup_steps": 1},
                                     "eval": {"n_boot": 20, "ks": [5, 10]}, "features": features})


def test_semantic_id_and_content_features_train_save_and_serve(tmp_path):
    ds = tiny_dataset()
    emb = embeddings(ds)
    emb.save(tmp_path / "emb")
    tokenize(emb, levels=2, codebook_size=4, out=tmp_path / "sid")
    cfg = config(semantic_ids=str(tmp_path / "sid"), content=str(tmp_path / "emb"))
    res = Trainer(cfg, tmp_path / "run", dataset=ds, show_progress=False).fit()
    assert res.model.sid_codes is not None and res.model.item_features is not None
    state = load_file(tmp_path / "run" / "model.safetensors")
    assert {"sid_codes", "sid_emb.0.weight", "sid_emb.2.weight", "item_features", "feature_proj.weight"} <= set(state)
    rec = Recommender.load(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    hist = Jagged.from_lists([[1, 2, 3]])
    torch.testing.assert_close(rec.model.score(hist), res.model.score(hist))
    assert len(rec.recommend(["1", "2"], k=3).items) == 3


def test_features_must_match_the_catalog(tmp_path):
    ds = tiny_dataset()
    tokenize(embeddings(ds, n_items=10), levels=2, codebook_size=4, out=tmp_path / "short")
    with pytest.raises(ConfigError, match="10 items"):
        Trainer(config(semantic_ids=str(tmp_path / "short")), tmp_path / "a", dataset=ds, show_progress=False).fit()
    tokenize(embeddings(ds, shuffle=True), levels=2, codebook_size=4, out=tmp_path / "other")
    with pytest.raises(ConfigError, match="another item catalog"):
        Trainer(config(semantic_ids=str(tmp_path / "other")), tmp_path / "b", dataset=ds, show_progress=False).fit()
    embeddings(ds, shuffle=True).save(tmp_path / "emb")
    with pytest.raises(ConfigError, match="dense-id order"):
        Trainer(config(content=str(tmp_path / "emb")), tmp_path / "c", dataset=ds, show_progress=False).fit()
    with pytest.raises(Exception, match="features"):
        RunConfig.model_validate({**config().model_dump(), "features": {"semantic_id": "x"}})
