"""The in-process serving API on a tiny trained model: filters (allow, deny, exclude_seen), warnings, the history
cap, query steering through content embeddings (with a fake text encoder: no model is loaded), fallbacks on
model errors and deadlines, similar items, thread safety, and the bundle's new files (verified; optional)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from tests.serve.test_bundle import tiny

import genrec.content.query as query_module
from genrec.content import ItemEmbeddings
from genrec.errors import GenrecError
from genrec.serve import DEADLINE, MODEL_ERROR, NO_HISTORY, Recommender, export_bundle, load_manifest

DIM = 16
TWIN = ("2", "9")  # two items with (almost) the same content vector
TARGET = "7"  # the fake query embeds onto this item's content vector


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run, its content table, and bundles with and without content."""
    root = tmp_path_factory.mktemp("rec")
    ds, _ = tiny(root)
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    rng = np.random.default_rng(0)
    vectors = np.zeros((len(raw) + 1, DIM), np.float32)
    for j, r in enumerate(raw, start=1):  # one direction per item (the twins share one), plus a little noise
        vectors[j, int(TWIN[0] if r == TWIN[1] else r) - 1] = 1.0
        vectors[j] += rng.normal(scale=0.01, size=DIM)
    emb = ItemEmbeddings(vectors=vectors, item_ids=raw, meta={"dataset": "tiny", "text_model": "fake-text",
                                                              "text_dim": DIM, "modalities": ["text"]})
    emb.save(root / "emb")
    export_bundle(root / "run", root / "plain")
    export_bundle(root / "run", root / "content", content=root / "emb")
    return {"root": root, "run": root / "run", "emb": root / "emb", "vectors": vectors, "raw": raw}


class FakeEncoder:
    key = "fake"
    dim = DIM
    made = 0

    def __init__(self, vector: np.ndarray):
        self.vector = vector
        FakeEncoder.made += 1

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.repeat(self.vector[None], len(texts), axis=0)


@pytest.fixture
def fake_text(monkeypatch, trained):
    FakeEncoder.made = 0
    target = trained["vectors"][trained["raw"].index(TARGET) + 1]
    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: FakeEncoder(target))


def ids(rec) -> list[str]:
    return [r["item_id"] for r in rec.items]


def test_allow_deny_exclude_seen_and_unknown_ids(trained):
    rec = Recommender.load(trained["root"] / "plain")
    out = rec.recommend(["3", "4"], k=5)
    assert len(out.items) == 5 and not {"3", "4"} & set(ids(out)) and out.mode == "model" and not out.fallback
    assert out.model_version == rec.version == load_manifest(trained["root"] / "plain")["version"]
    assert all(r["title"] == f"Movie {r['item_id']}" for r in out.items)
    denied = rec.recommend(["3", "4"], k=5, deny=[ids(out)[0], "ghost"])
    assert ids(out)[0] not in ids(denied) and ids(denied) == ids(out)[1:] + ids(denied)[4:]
    assert denied.warnings == ["unknown item id 'ghost' in deny ignored"]
    allowed = rec.recommend(["3", "nope"], k=5, allow=["1", "2", "3", "zzz"])
    assert set(ids(allowed)) == {"1", "2"}  # "3" was seen
    assert allowed.warnings == ["unknown item id 'nope' ignored", "unknown item id 'zzz' in allow ignored"]
    assert ids(rec.recommend(["3"], k=5, allow=["3"], exclude_seen=False)) == ["3"]
    assert rec.recommend(["3"], k=5, allow=["3"]).items == []
    many = rec.recommend(["3"], k=3, deny=[f"x{i}" for i in range(25)])
    assert len(many.warnings) == 11 and many.warnings[-1] == "... and 15 more unknown item ids in deny ignored"
    cold = rec.recommend(["nope"], k=3, deny=[rec.popular_ids(1)[0]])
    assert cold.fallback and cold.reason == NO_HISTORY and cold.mode == "popularity"
    assert ids(cold) == rec.popular_ids(4)[1:]
    for bad in ({"k": 0}, {"query_weight": 1.5}, {"deadline_ms": 0}, {"timestamps": [1]}):
        with pytest.raises(ValueError):
            rec.recommend(["3", "4"], **bad)
    with pytest.raises(ValueError, match="not one string"):
        rec.recommend("34")


def test_history_cap_truncates(trained):
    rec = Recommender.load(trained["root"] / "plain")
    assert rec.max_history == 6 and rec.knows("3") and not rec.knows("nope")
    long = [str(i) for i in range(1, 11)]
    out = rec.recommend(long, k=4, exclude_seen=False)
    short = rec.recommend(long[-6:], k=4, exclude_seen=False)
    assert out.truncated and not short.truncated and not out.warnings
    assert ids(out) == ids(short)
    assert [r["score"] for r in out.items] == pytest.approx([r["score"] for r in short.items])


def test_popularity_list_in_the_bundle(trained):
    bundle = trained["root"] / "plain"
    pop = json.loads((bundle / "popularity.json").read_text())
    counts = dict(zip(*(pq.read_table(bundle / "items.parquet").select(["raw_id", "train_count"])
                         .to_pydict().values()), strict=True))
    assert pop["counts"] == sorted(pop["counts"], reverse=True) and [counts[i] for i in pop["items"]] == pop["counts"]
    rec = Recommender.load(bundle)
    assert rec.popular_ids(3) == pop["items"][:3]
    assert ids(rec.recommend([], k=3)) == pop["items"][:3]


def test_query_steers_toward_matching_content(trained, fake_text):
    rec = Recommender.load(trained["root"] / "content")
    history = ["3", "4", "5"]
    plain = rec.recommend(history, k=12)
    assert ids(plain)[0] != TARGET
    steered = rec.recommend(history, k=12, query="something like seven", query_weight=0.9)
    assert ids(steered)[0] == TARGET and steered.mode == "model+query" and not steered.warnings
    assert not set(history) & set(ids(steered))
    # Weight 0: the model's order (z-scoring keeps it).
    assert ids(rec.recommend(history, k=12, query="x", query_weight=0.0)) == ids(plain)
    # No history: the query alone ranks, by cosine.
    content = rec.recommend([], k=3, query="seven")
    assert not content.fallback and content.mode == "content" and ids(content)[0] == TARGET
    assert content.items[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert ids(rec.recommend(["nope"], k=3, query="seven", deny=[TARGET])).count(TARGET) == 0
    assert FakeEncoder.made == 1  # loaded once, reused


def test_query_without_content_or_with_a_broken_encoder(trained, monkeypatch):
    rec = Recommender.load(trained["root"] / "plain")
    out = rec.recommend(["3", "4"], k=4, query="anything")
    assert out.warnings == ["query ignored: bundle has no content embeddings"] and out.mode == "model"
    assert ids(out) == ids(rec.recommend(["3", "4"], k=4))
    cold = rec.recommend([], k=4, query="anything")
    assert cold.fallback and cold.reason == NO_HISTORY and cold.warnings == [
        "query ignored: bundle has no content embeddings"]

    def broken(name, **kw):
        raise OSError("no such model")

    monkeypatch.setattr(query_module, "text_encoder", broken)
    rec = Recommender.load(trained["root"] / "content")
    out = rec.recommend(["3", "4"], k=4, query="anything")
    assert not out.fallback and out.mode == "model" and "query ignored" in out.warnings[0]
    only_query = rec.recommend([], k=4, query="anything")
    assert only_query.fallback and only_query.reason == MODEL_ERROR


def test_model_error_and_deadline_fall_back(trained, monkeypatch):
    rec = Recommender.load(trained["root"] / "plain")
    normal = rec.recommend(["3", "4"], k=4, deadline_ms=10_000)
    assert not normal.fallback and ids(normal) == ids(rec.recommend(["3", "4"], k=4))
    last_hidden = rec.model.last_hidden

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA exploded")

    monkeypatch.setattr(rec.model, "last_hidden", boom)
    out = rec.recommend(["3", "4"], k=4)
    assert out.fallback and out.reason == MODEL_ERROR and out.mode == "popularity"
    assert ids(out) == [i for i in rec.popular_ids(6) if i not in ("3", "4")][:4]
    assert any("RuntimeError" in w for w in out.warnings)
    assert rec.recommend(["3", "4"], k=4, deadline_ms=1000).reason == MODEL_ERROR

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return last_hidden(*args, **kwargs)

    monkeypatch.setattr(rec.model, "last_hidden", slow)
    t0 = time.perf_counter()
    late = rec.recommend(["3", "4"], k=4, deadline_ms=50)
    assert time.perf_counter() - t0 < 0.4
    assert late.fallback and late.reason == DEADLINE and len(late.items) == 4
    rec.close()


def test_similar_by_content_and_by_model(trained):
    with_content = Recommender.load(trained["root"] / "content")
    sim = with_content.similar(TWIN[0], k=3)
    assert sim[0]["item_id"] == TWIN[1] and sim[0]["score"] == pytest.approx(1.0, abs=1e-2)
    assert TWIN[0] not in [r["item_id"] for r in sim] and sim[0]["title"] == f"Movie {TWIN[1]}"
    plain = Recommender.load(trained["root"] / "plain")
    sim = plain.similar(3, k=4)  # ids are matched as strings
    table = F.normalize(plain.model.item_table().detach(), dim=-1)
    i = plain.index["3"]
    cos = table @ table[i]
    cos[[0, i]] = -torch.inf
    assert [r["item_id"] for r in sim] == [plain.raw_ids[j - 1] for j in torch.topk(cos, 4).indices.tolist()]
    assert [r["score"] for r in sim] == pytest.approx(torch.topk(cos, 4).values.tolist(), abs=1e-5)
    with pytest.raises(KeyError, match="unknown item id 'nope'"):
        plain.similar("nope")
    with pytest.raises(ValueError):
        plain.similar("3", k=0)


def test_concurrent_calls_agree_with_serial_ones(trained, fake_text):
    rec = Recommender.load(trained["root"] / "content")
    cases = [(["3", "4"], None), (["5"], "seven"), ([], "seven"), (["1", "2", "3"], None)]
    expected = [ids(rec.recommend(h, k=5, query=q)) for h, q in cases]
    similar = [r["item_id"] for r in rec.similar("2", k=5)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(6):
                h, q = cases[(n + j) % len(cases)]
                assert ids(rec.recommend(h, k=5, query=q, deadline_ms=10_000)) == expected[(n + j) % len(cases)]
                assert [r["item_id"] for r in rec.similar("2", k=5)] == similar
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    assert not errors, errors


def _flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-2, 2)
        last = f.read(1)
        f.seek(-2, 2)
        f.write(bytes([last[0] ^ 0x01]))


@pytest.mark.parametrize("name", ["popularity.json", "embeddings.safetensors", "embeddings.json"])
def test_tampered_new_files_are_refused(trained, tmp_path, name):
    bundle = export_bundle(trained["run"], tmp_path / "b", content=trained["emb"])
    assert name in load_manifest(bundle)["files"]
    _flip_last_byte(bundle / name)
    with pytest.raises(GenrecError, match="checksum"):
        Recommender.load(bundle)
    (bundle / name).unlink()
    with pytest.raises(GenrecError, match="missing"):
        Recommender.load(bundle)


def test_content_must_match_the_catalog(trained, tmp_path):
    emb = ItemEmbeddings.load(trained["emb"])
    ItemEmbeddings(vectors=emb.vectors, item_ids=emb.item_ids[::-1], meta=emb.meta).save(tmp_path / "shuffled")
    with pytest.raises(GenrecError, match="dense-id order"):
        export_bundle(trained["run"], tmp_path / "b", content=tmp_path / "shuffled")
    with pytest.raises(GenrecError, match="content"):
        export_bundle(trained["run"], tmp_path / "c", content=tmp_path / "nothing")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_an_older_bundle_without_the_new_files_still_loads(trained, tmp_path):
    bundle = export_bundle(trained["run"], tmp_path / "old")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "popularity.json").unlink()
    manifest["files"] = {k: v for k, v in manifest["files"].items()
                         if k in ("model.safetensors", "model.json", "items.parquet")}
    manifest.pop("content")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rec = Recommender.load(bundle)
    assert rec.content is None
    fresh = Recommender.load(trained["root"] / "plain")
    assert rec.popular_ids(12) == fresh.popular_ids(12)  # the same order, from items.parquet's counts
    assert ids(rec.recommend(["3", "4"], k=4)) == ids(fresh.recommend(["3", "4"], k=4))
    assert rec.similar("3", k=2) == fresh.similar("3", k=2)


def test_concurrent_requests_share_forward_passes(trained, monkeypatch):
    """The batcher runs queued histories through the model together; each request still gets its own answer."""
    rec = Recommender.load(trained["root"] / "plain")
    serial = {h: [r["item_id"] for r in rec.recommend([h], k=3).items] for h in ("1", "2", "3", "4")}
    sizes, real = [], rec.model.last_hidden

    def counting(history, *args, **kwargs):
        sizes.append(len(history))
        time.sleep(0.05)  # hold the model so that the other requests queue up
        return real(history, *args, **kwargs)

    monkeypatch.setattr(rec.model, "last_hidden", counting)
    histories = [*serial] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda h: [r["item_id"] for r in rec.recommend([h], k=3).items], histories))
    assert got == [serial[h] for h in histories] and max(sizes) > 1 and sum(sizes) == 16
