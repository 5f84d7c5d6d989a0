"""A bundle with an ID model and the semantic-ID generator: each request chooses its retriever, a query-conditioned
generator decodes with the request's query (not a re-weighting of its beams), and the HTTP API and export check
what they are given."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests.serve.test_bundle import tiny
from tests.train.test_generator import config, semantic_ids

import genrec.content.query as query_module
from genrec.content import ItemEmbeddings
from genrec.errors import GenrecError
from genrec.models.tiger_query import QueryConditioning
from genrec.serve import Recommender, export_bundle, load_manifest
from genrec.train.generator import GeneratorTrainer

DIM = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("switch")
    ds, id_run = tiny(root)
    raw = [str(i) for i in ds.items.decode(np.arange(1, ds.n_items + 1))]
    vectors = np.random.default_rng(0).normal(size=(ds.n_items + 1, DIM)).astype(np.float32)
    vectors[0] = 0
    ItemEmbeddings(vectors, raw, {"dataset": "tiny", "text_model": "fake", "text_dim": DIM,
                                  "modalities": ["text"]}).save(root / "emb")
    cfg = config(epochs=2)
    cfg = cfg.model_copy(update={"dataset": "tiny", "model": cfg.model.model_copy(
        update={"query": QueryConditioning(content=str(root / "emb"), prob=0.5)})})
    GeneratorTrainer(cfg, root / "gen", dataset=ds, semantic_ids=semantic_ids(ds.n_items), show_progress=False).fit()
    bundle = export_bundle(id_run, root / "bundle", content=root / "emb", generator=root / "gen")
    return root, ds, vectors, bundle


class FakeEncoder:
    """Every text is the content vector of one item (``target``)."""

    dim = DIM

    def __init__(self, vector: np.ndarray):
        self.vector = vector

    def encode(self, texts):
        return np.repeat(self.vector[None], len(texts), axis=0)


def test_a_request_chooses_its_retriever(built):
    _, _, _, bundle = built
    rec = Recommender.load(bundle)
    assert rec.retrievers == ["model", "generator"]
    assert load_manifest(bundle)["generator"]["query"] is True
    history = ["3", "4", "5"]
    plain = rec.recommend(history, k=4)
    gen = rec.recommend(history, k=4, retriever="generator")
    assert plain.mode == "model" and rec.recommend(history, k=4, retriever="model").items == plain.items
    assert gen.mode == "generator" and not gen.fallback and len(gen.items) == 4
    dense = torch.tensor([[rec.index[h] for h in history]])
    beams, _ = rec.generator.recommend(dense, k=20, beam=20)
    expected = [rec.raw_ids[i - 1] for i in beams[0].tolist() if i and rec.raw_ids[i - 1] not in history][:4]
    assert [r["item_id"] for r in gen.items] == expected
    with pytest.raises(ValueError, match="retriever 'ranker'"):
        rec.recommend(history, retriever="ranker")
    alone = Recommender.load(export_bundle(built[0] / "gen", built[0] / "only-gen"))
    answer = alone.recommend(history, k=4, retriever="model")
    assert answer.mode == "generator" and answer.warnings == ["retriever 'model' ignored: this bundle serves "
                                                              "'generator' only"]


def test_the_query_conditions_the_generator_and_blends_the_id_model(built, monkeypatch):
    _, _, vectors, bundle = built
    rec = Recommender.load(bundle)
    target = rec.index["9"]
    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: FakeEncoder(vectors[target]))
    history = ["3", "4", "5"]
    asked = rec.recommend(history, k=4, query="anything", retriever="generator")
    assert asked.mode == "generator+prompt" and not asked.warnings
    q = torch.nn.functional.normalize(torch.from_numpy(vectors[target]), dim=0)[None]
    dense = torch.tensor([[rec.index[h] for h in history]])
    beam = max(4 + len(history), rec.generator.config.beam_width)  # k + the excluded items, as served
    beams, logp = rec.generator.recommend(dense, k=beam, beam=beam, query=q)
    found = torch.isfinite(logp[0])
    ids, values = beams[0][found], logp[0][found]
    plain_beams, plain_logp = rec.generator.recommend(dense, k=beam, beam=beam)
    assert not torch.allclose(plain_logp, logp)  # the query changed the decoding itself
    sim = rec.content.vectors @ q[0]
    mixed = query_module.blend_with_query(values, sim, 0.5, ids)  # then blended like any candidates
    expected = {rec.raw_ids[i - 1]: v for i, v in zip(ids.tolist(), mixed.tolist(), strict=True)
                if rec.raw_ids[i - 1] not in history}
    got = {r["item_id"]: r["score"] for r in asked.items}
    assert got == pytest.approx({i: expected[i] for i in got}, abs=1e-5)  # blended scores of decoded items
    assert list(got.values()) == sorted(got.values(), reverse=True)
    assert min(got.values()) >= max(v for i, v in expected.items() if i not in got) - 1e-6  # the best of them
    assert rec.recommend(history, k=4, query="anything").mode == "model+query"


def test_http_retriever_field(built, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrec.serve.app import Settings, create_app

    root, ds, _, bundle = built
    c = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite"))))
    r = c.post("/v1/recommend", json={"history": ["3", "4"], "k": 3, "retriever": "generator"})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "generator" and r.json()["retrievers"] == ["model", "generator"]
    assert c.post("/v1/recommend", json={"history": ["3"], "retriever": "ranker"}).status_code == 422
    plain = export_bundle(root / "gen", tmp_path / "only-generator")
    c2 = TestClient(create_app(Settings(bundle=plain, store=str(tmp_path / "h2.sqlite"))))
    r2 = c2.post("/v1/recommend", json={"history": ["3"], "retriever": "model"})
    assert r2.status_code == 200 and r2.json()["mode"] == "generator" and "retriever 'model' ignored" in str(r2.json())
    assert c2.post("/v1/recommend", json={"history": ["3"]}).json()["retrievers"] == ["generator"]


def test_export_checks_the_generator(built, tmp_path):
    root, ds, _, _ = built
    with pytest.raises(GenrecError, match="a generator already"):
        export_bundle(root / "gen", tmp_path / "b1", generator=root / "gen")
    with pytest.raises(GenrecError, match="not the semantic-ID generator"):
        export_bundle(root / "run", tmp_path / "b2", generator=root / "run")
    other = root / "gen-other"
    other.mkdir()
    for name in ("model.safetensors", "model.json", "metrics.json"):
        (other / name).write_bytes((root / "gen" / name).read_bytes())
    items = pq.read_table(root / "gen" / "items.parquet")
    pq.write_table(items.set_column(items.schema.get_field_index("raw_id"), "raw_id",
                                    pa.array([f"x{i}" for i in range(items.num_rows)])), other / "items.parquet")
    with pytest.raises(GenrecError, match="not the ID model's"):
        export_bundle(root / "run", tmp_path / "b3", generator=other)
