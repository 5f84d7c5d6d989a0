"""encode_catalog with fake encoders: alignment with dataset ids, caching, fusion, images, reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from genrec.content import EmbeddingCache, FusionConfig, ItemEmbeddings, encode_catalog, fuse, fusion_config
from genrec.data import prepare
from genrec.errors import ConfigError, DataError


def catalog(n: int = 6) -> pa.Table:
    return pa.table({"item_id": [f"v{i}" for i in range(n)],
                     "title": [f"video number {i}" if i != 2 else None for i in range(n)],
                     "genres": ["a|b" if i % 2 else "c" for i in range(n)]})


def test_catalog_alone_dense_ids_follow_rows(fake_text, tmp_path):
    emb = encode_catalog(catalog=catalog(), text_model=fake_text, out=tmp_path / "emb", show_progress=False)
    assert emb.item_ids == [f"v{i}" for i in range(6)]
    assert emb.vectors.shape == (7, 8) and emb.dim == 8
    assert np.all(emb.vectors[0] == 0)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors[1:], axis=1), 1.0, rtol=1e-5)
    assert len(emb.missing) == 0  # item v2 still has genres
    rep = emb.meta["report"]["text"]
    assert rep["missing_by_field"] == {"title": 1, "genres": 0} and rep["examples_by_field"] == {"title": ["v2"]}
    back = ItemEmbeddings.load(tmp_path / "emb")
    np.testing.assert_array_equal(back.vectors, emb.vectors)
    assert back.item_ids == emb.item_ids and back.meta["text_dim"] == 8


def test_dataset_alignment_and_items_without_a_row(fake_text):
    inter = pa.table({"user": [1, 1, 2, 2, 3], "item": ["v3", "v0", "v9", "v3", "v1"]})
    items = catalog().rename_columns(["item", "title", "genres"])
    ds = prepare(inter, name="toy", items=items)
    emb = encode_catalog(ds, text_model=fake_text, show_progress=False)
    assert emb.item_ids == ["v3", "v0", "v9", "v1"]  # the dataset's dense order
    assert emb.missing.tolist() == [3]  # v9 has no catalog row
    assert np.all(emb.vectors[3] == 0)
    rep = emb.meta["report"]
    assert rep["items_without_catalog_row"] == 1 and rep["items_without_content_examples"] == ["v9"]
    expected = fake_text.encode(["title: video number 3; genres: a, b"])[0]
    np.testing.assert_allclose(emb.vectors[1], expected / np.linalg.norm(expected), rtol=1e-5)
    # a separate catalog file joined onto the dataset's ids
    ext = pa.table({"vid": ["v1", "v9", "zz"], "name": ["one", "nine", "unused"]})
    emb2 = encode_catalog(ds, catalog=ext, item_col="vid", text_model=fake_text, show_progress=False)
    assert emb2.missing.tolist() == [1, 2]
    assert emb2.meta["report"]["text"]["fields"] == ["name"]


def test_cache_second_run_encodes_nothing_and_changes_reencode_only_that_item(fake_text, cache_dir):
    encode_catalog(catalog=catalog(), text_model=fake_text, show_progress=False)
    assert len(fake_text.seen) == 6
    fake_text.calls.clear()
    first = encode_catalog(catalog=catalog(), text_model=fake_text, show_progress=False)
    assert fake_text.calls == []
    assert first.meta["report"]["text"]["from_cache"] == 6
    changed = catalog().set_column(1, "title", pa.array([f"video number {i}" if i != 4 else "a new title"
                                                         for i in range(6)]))
    emb = encode_catalog(catalog=changed, text_model=fake_text, show_progress=False)
    assert sorted(fake_text.seen) == ["title: a new title; genres: c", "title: video number 2; genres: c"]
    assert emb.meta["report"]["text"]["encoded"] == 2
    np.testing.assert_array_equal(emb.vectors[[1, 2, 4, 6]], first.vectors[[1, 2, 4, 6]])
    assert not np.allclose(emb.vectors[5], first.vectors[5])
    assert (cache_dir / "embeddings" / "text-fake-v1").is_dir()


def test_no_cache_writes_nothing_and_duplicates_encode_once(fake_text, cache_dir):
    dup = pa.table({"item": [1, 2, 3], "title": ["same", "same", "other"]})
    emb = encode_catalog(catalog=dup, text_model=fake_text, cache=False, show_progress=False)
    assert sorted(fake_text.seen) == ["title: other", "title: same"]
    np.testing.assert_array_equal(emb.vectors[1], emb.vectors[2])
    assert not cache_dir.exists()


def test_cache_shards_survive_and_compact(tmp_path):
    from genrec.content import cache as cache_mod

    rng = np.random.default_rng(0)
    keys = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(40)]
    vecs = rng.standard_normal((40, 3)).astype(np.float32)
    c = EmbeddingCache("m", tmp_path)
    for i in range(0, 40, 2):
        c.put(keys[i:i + 2], vecs[i:i + 2])
    assert len(list((tmp_path / "m").glob("shard-*"))) == 20 > cache_mod.MAX_SHARDS
    c2 = EmbeddingCache("m", tmp_path)  # merges the shards on open
    assert len(list((tmp_path / "m").glob("shard-*"))) == 1
    rows, hit = EmbeddingCache("m", tmp_path).lookup([keys[5], b"x" * 32])
    assert hit.tolist() == [True, False]
    np.testing.assert_array_equal(c2.vectors(rows[:1])[0], vecs[5])
    (tmp_path / "m" / "shard-bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="corrupt embedding cache"):
        EmbeddingCache("m", tmp_path)


def test_fusion_normalises_concatenates_and_projects():
    rng = np.random.default_rng(1)
    text, image = rng.standard_normal((5, 6)) * 10, rng.standard_normal((5, 4))
    image[2] = 0  # item without an image
    x, proj = fuse({"text": text, "image": image}, FusionConfig(normalize=False))
    assert x.shape == (5, 10) and proj is None
    np.testing.assert_allclose(np.linalg.norm(x[:, :6], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x[[0, 1, 3, 4], 6:], axis=1), 1.0, rtol=1e-5)
    assert np.all(x[2, 6:] == 0)
    x, _ = fuse({"text": text, "image": image}, FusionConfig(weights={"image": 0.5}))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x[0, 6:]) / np.linalg.norm(x[0, :6]), 0.5, rtol=1e-5)
    for kind in ("random", "pca"):
        cfg = FusionConfig(projection=kind, dim=3)
        y, proj = fuse({"text": text, "image": image}, cfg, np.ones(5, bool))
        y2, _ = fuse({"text": text, "image": image}, cfg, np.ones(5, bool))
        assert y.shape == (5, 3)
        np.testing.assert_array_equal(y, y2)  # deterministic
        np.testing.assert_allclose(proj.components.T @ proj.components, np.eye(3), atol=1e-5)


def test_fusion_config_errors():
    with pytest.raises(ConfigError, match="needs dim"):
        fusion_config(projection="pca")
    with pytest.raises(ConfigError, match="dim"):
        fusion_config(dim=0, projection="random")
    with pytest.raises(ConfigError, match="larger"):
        fuse({"text": np.ones((3, 2))}, FusionConfig(projection="random", dim=5))


def test_pca_projection_written_and_missing_rows_stay_zero(fake_text, tmp_path):
    cat = pa.table({"item": list(range(8)), "title": [f"t{i}" if i != 3 else None for i in range(8)]})
    emb = encode_catalog(catalog=cat, text_model=fake_text, fusion=FusionConfig(projection="pca", dim=4),
                         out=tmp_path / "e", show_progress=False)
    assert emb.dim == 4 and emb.missing.tolist() == [4]
    assert np.all(emb.vectors[4] == 0)
    assert (tmp_path / "e" / "projection.safetensors").is_file()


def make_images(folder: Path) -> pa.Table:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (16 + i, 12), colour).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG this is not an image")
    return pa.table({"item": [0, 1, 2, 3, 4, 5], "title": ["red", "green", "blue", "broken", "gone", "none"],
                     "img": ["0.png", "1.png", "2.png", "broken.png", "gone.png", None]})


def test_images_with_unreadable_and_missing_files_are_reported_not_fatal(fake_text, fake_image, tmp_path):
    pytest.importorskip("PIL")
    cat = make_images(tmp_path / "imgs")
    emb = encode_catalog(catalog=cat, text_model=fake_text, image_model=fake_image, image_col="img",
                         image_root=tmp_path / "imgs", show_progress=False)
    assert emb.dim == 8 + 4 and fake_image.n == 3
    rep = emb.meta["report"]["image"]
    assert rep["images"] == 3 and rep["missing_path"] == 1 and rep["missing_path_examples"] == ["5"]
    assert rep["unreadable"] == 1 and rep["missing_file"] == 1
    assert rep["missing_file_examples"][0]["item"] == "4"
    assert rep["unreadable_examples"][0]["item"] == "3"
    assert "not a readable image" in rep["unreadable_examples"][0]["reason"]
    assert emb.meta["report"]["text"]["fields"] == ["title"]  # the path column is not text
    red = np.array([255, 0, 0, 16], np.float32)  # mean RGB and width of 0.png
    np.testing.assert_allclose(emb.vectors[1, 8:] * np.sqrt(2), red / np.linalg.norm(red), rtol=1e-5)
    assert np.all(emb.vectors[4, 8:] == 0) and np.linalg.norm(emb.vectors[4]) == pytest.approx(1.0)
    # a re-run decodes nothing new; the broken files are tried again (and still reported)
    fake_image.n = 0
    again = encode_catalog(catalog=cat, text_model=fake_text, image_model=fake_image, image_col="img",
                           image_root=tmp_path / "imgs", show_progress=False)
    assert fake_image.n == 0 and again.meta["report"]["image"]["unreadable"] == 1
    np.testing.assert_array_equal(again.vectors, emb.vectors)


def test_image_pattern_and_image_only(fake_image, tmp_path):
    pytest.importorskip("PIL")
    make_images(tmp_path / "imgs")
    cat = pa.table({"item": [0, 1, 2, 7]})
    emb = encode_catalog(catalog=cat, text_model=None, image_model=fake_image, image_pattern="{item}.png",
                         image_root=tmp_path / "imgs", show_progress=False)
    assert emb.dim == 4 and emb.missing.tolist() == [4]
    assert emb.meta["modalities"] == ["image"]
    with pytest.raises(ConfigError, match="must name catalog columns"):
        encode_catalog(catalog=cat, text_model=None, image_model=fake_image, image_pattern="{colour}.png",
                       show_progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"text_model": None}, "nothing to encode"),
    ({"image_model": "efficientnet-lite0"}, "no images"),
    ({"image_col": "img", "image_pattern": "{item}"}, "not both"),
    ({"image_col": "nope"}, "image column 'nope'"),
    ({"image_col": "title", "image_model": "resnet"}, "expected 'efficientnet-lite0'"),
    ({"image_col": "title", "image_root": "/no/such/folder"}, "image folder not found"),
    ({"item_col": "sku"}, "no item id column 'sku'"),
    ({"batch_size": 0}, "batch size"),
])
def test_bad_options_raise_clear_errors(fake_text, kwargs, match):
    with pytest.raises((ConfigError, DataError), match=match):
        encode_catalog(catalog=pa.table({"item": [1], "title": ["x"]}), **{"text_model": fake_text, **kwargs},
                       show_progress=False)


def test_missing_catalog_file_and_dataset_without_catalog(fake_text, tmp_path):
    with pytest.raises(DataError, match="not found"):
        encode_catalog(catalog=tmp_path / "nope.csv", text_model=fake_text)
    ds = prepare(pa.table({"user": [1, 2], "item": [5, 6]}), name="bare")
    with pytest.raises(DataError, match="no item catalog"):
        encode_catalog(ds, text_model=fake_text)


def test_image_model_specs():
    from genrec.content import EfficientNetLite0Encoder, OpenClipEncoder, TimmEncoder, image_encoder

    assert isinstance(image_encoder("efficientnet-lite0"), EfficientNetLite0Encoder)
    t = image_encoder("timm:resnet18@/w/r18.safetensors")
    assert isinstance(t, TimmEncoder) and t.name == "resnet18" and t.weights == "/w/r18.safetensors"
    o = image_encoder("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert isinstance(o, OpenClipEncoder) and o.arch == "ViT-B-32" and o.pretrained == "laion2b_s34b_b79k"
    assert t.key != image_encoder("timm:resnet18").key
    for bad in ("timm:", "clip:ViT", "resnet50"):
        with pytest.raises(ConfigError):
            image_encoder(bad)


def test_missing_optional_libraries_name_the_extra(monkeypatch):
    import sys

    from genrec.content import EfficientNetLite0Encoder, SentenceTransformerEncoder
    from genrec.errors import GenrecError

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(GenrecError, match=r"pip install 'genrec\[content\]'"):
        SentenceTransformerEncoder(model="some/other-model").load()
    with pytest.raises(GenrecError, match=r"pip install 'genrec\[content\]'"):
        EfficientNetLite0Encoder(device="meta-test").load()
