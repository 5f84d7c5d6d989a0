"""Serving the decoder-only semantic-ID generator (hstu-gen) exactly where TIGER serves: a tiny trained run exported
as a bundle's model (same top-k after the round trip) and as the second retriever next to an ID model, answering
over HTTP with retriever=generator (catalog items only, never a seen item, deterministic); a query re-weights its
beams (it is not query-conditioned, and the answer's mode says so)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.serve.test_bundle import tiny
from tests.serve.test_retriever_switch import FakeEncoder
from tests.train.test_generator import config as tiger_config
from tests.train.test_hstu_generator import config, follow_dataset, semantic_ids

import genrec.content.query as query_module
from genrec.content import ItemEmbeddings
from genrec.errors import GenrecError
from genrec.models.generators import is_generator
from genrec.models.hstu_generator import HSTUGenerator
from genrec.serve import Recommender, export_bundle, load_manifest
from genrec.serve.model_io import load_model
from genrec.serve.scorers import GeneratorScorer
from genrec.train.generator import GeneratorTrainer
from genrec.train.hstu_generator import HSTUGeneratorTrainer, load_hstu_generator

DIM = 8


def train(ds, folder, epochs: int = 2):
    torch.set_num_threads(1)
    cfg = config(epochs=epochs)
    cfg = cfg.model_copy(update={"dataset": ds.name})
    HSTUGeneratorTrainer(cfg, folder, dataset=ds, semantic_ids=semantic_ids(ds.n_items), show_progress=False).fit()
    return folder


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """An hstu-gen run and its bundle (the bundle's own model)."""
    root = tmp_path_factory.mktemp("hstu_gen_alone")
    run = train(follow_dataset(80), root / "run")
    return run, export_bundle(run, root / "bundle")


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    """An ID model with hstu-gen as its second retriever, and a content table for queries."""
    root = tmp_path_factory.mktemp("hstu_gen_beside")
    ds, id_run = tiny(root)
    vectors = np.random.default_rng(0).normal(size=(ds.n_items + 1, DIM)).astype(np.float32)
    vectors[0] = 0
    raw = [str(i) for i in ds.items.decode(np.arange(1, ds.n_items + 1))]
    ItemEmbeddings(vectors, raw, {"dataset": "tiny", "text_model": "fake", "text_dim": DIM,
                                  "modalities": ["text"]}).save(root / "emb")
    gen = train(ds, root / "gen")
    return root, vectors, export_bundle(id_run, root / "bundle", content=root / "emb", generator=gen)


def ids(answer) -> list[str]:
    return [r["item_id"] for r in answer.items]


def test_bundle_round_trip_keeps_the_top_k(alone):
    run, bundle = alone
    manifest = load_manifest(bundle)
    assert manifest["model"] == "hstu-gen" and manifest["ann"] is None and "hr@10" in manifest["metrics"]
    assert "semantic_ids.safetensors" in manifest["files"]  # the codes the weights carry
    trained, served = load_hstu_generator(run), load_model(bundle, mmap=True)
    assert isinstance(served, HSTUGenerator) and is_generator(served) and not served.training
    history = torch.tensor([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10], [0, 0, 0, 0, 11]])
    a, b = trained.recommend(history, k=10), served.recommend(history, k=10)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert bool((a[0] > 0).all())
    real = a[0].reshape(-1)
    assert torch.equal(served.trie().lookup(served.codes[real]), real)  # every item a valid ID


def test_recommend_from_an_hstu_gen_bundle(alone):
    _, bundle = alone
    rec = Recommender.load(bundle)
    assert rec.retrievers == ["generator"] and isinstance(rec._scorer, GeneratorScorer) and rec.max_history == 5
    history = [rec.raw_ids[i] for i in (2, 5, 9)]
    out = rec.recommend(history, k=5)
    assert out.mode == "generator" and not out.fallback and not out.warnings and len(out.items) == 5
    assert all(rec.knows(i) for i in ids(out)) and not set(history) & set(ids(out))
    scores = [r["score"] for r in out.items]
    assert all(s <= 0 for s in scores) and scores == sorted(scores, reverse=True)  # log-probabilities
    dense = [rec.index[h] for h in history]
    top, _ = rec.model.recommend(torch.tensor([dense]), k=10)  # the config's 10 beams, as served
    assert ids(out) == [rec.raw_ids[i - 1] for i in top[0].tolist() if i not in dense][:5]
    assert ids(rec.recommend(history, k=5)) == ids(out)  # deterministic
    denied = rec.recommend(history, k=5, deny=[ids(out)[0]])
    assert ids(denied)[:4] == ids(out)[1:]
    sim = rec.similar(rec.raw_ids[3], k=4)  # over the generator's item table
    table = torch.nn.functional.normalize(rec.model.item_vectors().detach(), dim=-1)
    cos = table @ table[4]
    cos[[0, 4]] = -torch.inf
    assert [r["item_id"] for r in sim] == [rec.raw_ids[j - 1] for j in torch.topk(cos, 4).indices.tolist()]


def test_http_serves_hstu_gen_as_the_second_retriever(beside, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrec.serve.app import Settings, create_app

    root, vectors, bundle = beside
    manifest = load_manifest(bundle)
    assert manifest["model"] == "sasrec" and manifest["generator"]["model"] == "hstu-gen"
    assert manifest["generator"]["query"] is False
    rec = Recommender.load(bundle)
    assert isinstance(rec.generator, HSTUGenerator) and rec.retrievers == ["model", "generator"]
    c = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite"))))
    history = ["3", "4", "5"]
    body = {"history": history, "k": 4, "retriever": "generator"}
    r = c.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["mode"] == "generator" and not answer["fallback"] and answer["retrievers"] == ["model", "generator"]
    got = [i["item_id"] for i in answer["items"]]
    assert len(got) == 4 and all(rec.knows(i) for i in got) and not set(history) & set(got)
    assert [i["item_id"] for i in c.post("/v1/recommend", json=body).json()["items"]] == got  # deterministic
    dense = torch.tensor([[rec.index[h] for h in history]])
    beam = max(4 + len(history), rec.generator.config.beam_width)  # k + the excluded items, as served
    beams, _ = rec.generator.recommend(dense, k=beam, beam=beam)
    assert got == [rec.raw_ids[i - 1] for i in beams[0].tolist() if i and rec.raw_ids[i - 1] not in history][:4]
    assert c.post("/v1/recommend", json={"history": history, "k": 4}).json()["mode"] == "model"
    # hstu-gen reads no query: the query re-weights its beams (+query), it never claims to have shaped them
    target = got[-1]
    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: FakeEncoder(vectors[rec.index[target]]))
    q = c.post("/v1/recommend", json={**body, "query": "anything"}).json()
    assert q["mode"] == "generator+query" and {i["item_id"] for i in q["items"]} <= {
        rec.raw_ids[i - 1] for i in beams[0].tolist() if i}
    steered = rec.recommend(history, k=4, retriever="generator", query="anything", query_weight=0.9)
    assert steered.mode == "generator+query" and ids(steered)[0] == target


def test_export_checks_the_generator_pair(alone, beside, tmp_path):
    run, _ = alone
    root, _, _ = beside
    with pytest.raises(GenrecError, match="generator already"):
        export_bundle(run, tmp_path / "two-generators", generator=root / "gen")
    with pytest.raises(GenrecError, match="not the ID model's"):  # hstu-gen over other items
        export_bundle(root / "run", tmp_path / "other-items", generator=run)
    ds = follow_dataset(80)
    GeneratorTrainer(tiger_config(epochs=1), tmp_path / "tiger", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                     show_progress=False).fit()
    with pytest.raises(GenrecError, match="generator already"):  # a tiger bundle cannot take hstu-gen either
        export_bundle(tmp_path / "tiger", tmp_path / "tiger-and-hstu", generator=run)
