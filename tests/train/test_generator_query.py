"""Training the generator with query conditioning (model.query): the content table is read and checked, the
query width is filled in and saved, and where the history says nothing about the next item the trained generator
learns to write the item its query describes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from tests.train.test_generator import config, follow_dataset, semantic_ids

from genrec.content.store import ItemEmbeddings
from genrec.data import prepare
from genrec.errors import DataError
from genrec.models.tiger_query import QueryConditioning
from genrec.train.generator import GeneratorTrainer, load_generator

DIM = 8


def random_dataset(n_users: int = 200, n_items: int = 40):
    """Every next item drawn uniformly: only a query can tell which one comes."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i)) for u in range(n_users) for i in rng.integers(1, n_items + 1, int(rng.integers(5, 10)))]
    return prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="random")


def content(ds, folder, shuffle: bool = False) -> ItemEmbeddings:
    ids = [str(i) for i in ds.items.decode(np.arange(1, ds.n_items + 1))]
    if shuffle:
        ids = ids[::-1]
    vectors = np.random.default_rng(3).normal(size=(ds.n_items + 1, DIM)).astype(np.float32)
    vectors[0] = 0
    return ItemEmbeddings(vectors, ids, {"modalities": ["text"]}).save(folder)


def query_config(folder, **query):
    cfg = config(epochs=15)
    q = QueryConditioning(content=str(folder), prob=0.5, noise=0.2, **query)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"query": q})})


def test_trains_with_queries_and_follows_them(tmp_path):
    ds = random_dataset()
    folder = content(ds, tmp_path / "content")
    run = tmp_path / "run"
    result = GeneratorTrainer(query_config(folder), run, dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                              show_progress=False).fit()
    assert result.test.info["invalid_ids"] == 0
    saved = json.loads((run / "model.json").read_text())["config"]["query"]
    assert saved["dim"] == DIM and saved["content"] == str(folder)
    model = load_generator(run)
    table = torch.nn.functional.normalize(torch.from_numpy(ItemEmbeddings.load(folder).vectors), dim=1)
    hist = torch.tensor([[1, 2, 3]] * ds.n_items)
    plain, _ = model.recommend(hist[:1], k=1)
    asked, _ = model.recommend(hist, k=1, query=table[1:])
    hits = (asked[:, 0] == torch.arange(1, ds.n_items + 1)).float().mean()
    assert float(hits) > 0.5  # the query's own item comes first for most items
    assert float(hits) > float((plain[0, 0] == torch.arange(1, ds.n_items + 1)).float().mean()) + 0.4


def test_a_content_table_of_other_items_is_refused(tmp_path):
    ds = follow_dataset()
    folder = content(ds, tmp_path / "content", shuffle=True)
    cfg = query_config(folder)
    with pytest.raises(DataError, match="dense-id order"):
        GeneratorTrainer(cfg, tmp_path / "run", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                         show_progress=False).fit()
