"""Serving the semantic-ID generator (tiger): a tiny trained run exported as a bundle answers through the same
Recommender (beam items only, filters, fallback, similar items) and through the HTTP app."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.train.test_generator import config, follow_dataset, semantic_ids

import genrec.content.query as query_module
from genrec.content import ItemEmbeddings
from genrec.serve import MODEL_ERROR, Recommender, export_bundle
from genrec.train.generator import GeneratorTrainer


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiger_serving")
    ds = follow_dataset(80)
    GeneratorTrainer(config(epochs=3), root / "run", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                     show_progress=False).fit()
    return export_bundle(root / "run", root / "bundle")


def test_query_reorders_the_beam_items_only(bundle, tmp_path, monkeypatch):
    rec = Recommender.load(bundle)
    history = [rec.raw_ids[i] for i in (2, 5, 9)]
    plain = rec.recommend(history, k=10)
    target = ids(plain)[-1]  # the query points at the last beam item
    vectors = np.random.default_rng(0).normal(size=(rec.n_items + 1, 8)).astype(np.float32)
    vectors[0] = 0
    ItemEmbeddings(vectors=vectors, item_ids=rec.raw_ids, meta={"dataset": "follow", "text_model": "fake",
                                                                "text_dim": 8, "modalities": ["text"]}).save(
        tmp_path / "emb")
    with_content = Recommender.load(export_bundle(bundle.parent / "run", tmp_path / "b", content=tmp_path / "emb"))

    class Fake:
        dim = 8

        def encode(self, texts):
            return np.repeat(vectors[rec.index[target]][None], len(texts), axis=0)

    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: Fake())
    steered = with_content.recommend(history, k=10, query="x", query_weight=0.9)
    assert steered.mode == "generator+query" and ids(steered)[0] == target
    dense = [rec.index[h] for h in history]
    beams, _ = rec.model.recommend(torch.tensor([dense]), k=13, beam=13)  # k + 3 seen items
    assert set(ids(steered)) <= {rec.raw_ids[i - 1] for i in beams[0].tolist() if i not in dense}


def ids(rec) -> list[str]:
    return [r["item_id"] for r in rec.items]


def test_recommend_from_a_generator_bundle(bundle):
    rec = Recommender.load(bundle)
    assert rec.manifest["model"] == "tiger" and rec.max_history == 5
    history = [rec.raw_ids[i] for i in (2, 5, 9)]
    out = rec.recommend(history, k=5)
    assert out.mode == "generator" and not out.fallback and len(out.items) == 5
    assert all(rec.knows(i) for i in ids(out)) and not set(history) & set(ids(out))
    scores = [r["score"] for r in out.items]
    assert all(s <= 0 for s in scores) and scores == sorted(scores, reverse=True)  # log-probabilities
    # The top item is TIGER.recommend's best one that was not seen (same beam count: the config's 10).
    dense = [rec.index[h] for h in history]
    top, _ = rec.model.recommend(torch.tensor([dense]), k=10)
    first = next(i for i in top[0].tolist() if i not in dense)
    assert ids(out)[0] == rec.raw_ids[first - 1]
    # deny and allow
    denied = rec.recommend(history, k=5, deny=[ids(out)[0]])
    assert ids(out)[0] not in ids(denied) and ids(denied)[:4] == ids(out)[1:]
    allowed = rec.recommend(history, k=3, allow=ids(out)[1:3] + [history[0]])
    assert ids(allowed) == ids(out)[1:3] and not allowed.warnings  # every allowed unseen item is in the beams
    outside = [r for r in rec.raw_ids if r not in ids(rec.recommend(history, k=10, exclude_seen=False))][:3]
    none = rec.recommend(history, k=3, allow=outside)  # nothing allowed is in the beams: an empty list, said so
    assert none.items == [] and not none.fallback and any("beams" in w for w in none.warnings)
    seen = rec.recommend(history, k=5, exclude_seen=False)
    assert len(seen.items) == 5


def test_model_error_falls_back_and_similar_items(bundle, monkeypatch):
    rec = Recommender.load(bundle)
    history = [rec.raw_ids[0], rec.raw_ids[1]]

    def boom(*args, **kwargs):
        raise RuntimeError("beam search exploded")

    monkeypatch.setattr(rec.model, "recommend", boom)
    out = rec.recommend(history, k=4)
    assert out.fallback and out.reason == MODEL_ERROR and out.mode == "popularity" and len(out.items) == 4
    sim = rec.similar(rec.raw_ids[3], k=4)
    m = rec.model
    table = F.normalize(m.tok_emb(m.code_tokens(m.codes.clamp(min=0))).mean(dim=1).detach(), dim=-1)
    cos = table @ table[4]
    cos[[0, 4]] = -torch.inf
    assert [r["item_id"] for r in sim] == [rec.raw_ids[j - 1] for j in torch.topk(cos, 4).indices.tolist()]


def test_http_app_serves_the_generator(bundle, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrec.serve.app import Settings, create_app

    c = TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "history.sqlite"))))
    rec = Recommender.load(bundle)
    history = [rec.raw_ids[i] for i in (2, 5, 9)]
    r = c.post("/v1/recommend", json={"history": history, "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["fallback"] and len(body["items"]) == 4
    assert [i["item_id"] for i in body["items"]] == ids(rec.recommend(history, k=4))
    s = c.get(f"/v1/items/{history[0]}/similar", params={"k": 3})
    assert s.status_code == 200 and len(s.json()["items"]) == 3
