"""``genrec tokenize-new``: semantic IDs for new items with a saved tokenizer, nothing retrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_run import run
from genrec.content import ItemEmbeddings
from genrec.semantic_ids import SemanticIds, Tokenizer, items_digest
from genrec.semantic_ids.pipeline import extend_ids

DIM = 12
N = 120


def _table(vectors: np.ndarray, ids: list[str], missing: list[int] | None = None) -> ItemEmbeddings:
    padded = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors.astype(np.float32)])
    return ItemEmbeddings(vectors=padded, item_ids=ids, meta={"dataset": "toy", "text_model": "toy-model"},
                          missing=np.asarray(missing or [], np.int64))


@pytest.fixture
def base(tmp_path: Path) -> dict:
    """A 120-item catalog tokenized with 2 levels x 4 codes (many shared prefixes), and its vectors."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, DIM)) * 3
    x = (centers[rng.integers(0, 6, N)] + 0.2 * rng.normal(size=(N, DIM))).astype(np.float32)
    emb_dir = _table(x, [f"v{i}" for i in range(N)]).save(tmp_path / "content" / "toy")
    sid = tmp_path / "sid"
    return {"x": x, "centers": centers, "emb": emb_dir, "sid": sid, "rng": rng}


def _tokenize(base: dict, capsys) -> Path:
    code, _, err = run(["tokenize", "--embeddings", str(base["emb"]), "--levels", "2", "--codebook-size", "4",
                        "--out", str(base["sid"]), "--quiet", "--json"], capsys)
    assert code == 0, err
    return base["sid"]


@pytest.fixture
def new_items(base: dict, tmp_path: Path) -> Path:
    """Known v3, n0, n1 (same vector as n0), known v5, n2 (same vector as v0), n0 again, n3 (no content)."""
    rng = base["rng"]
    n0 = base["centers"][1] + 0.2 * rng.normal(size=DIM)
    rows = [base["x"][3], n0, n0, base["x"][5], base["x"][0], n0, np.zeros(DIM)]
    ids = ["v3", "n0", "n1", "v5", "n2", "n0", "n3"]
    return _table(np.stack(rows), ids, missing=[7]).save(tmp_path / "content" / "new")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_new_items_get_fresh_unique_ids(base, new_items, capsys):
    sid = _tokenize(base, capsys)
    before = _files(sid)
    code, out, err = run(["tokenize-new", "--ids", str(sid), "--embeddings", str(new_items), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    dest = sid.with_name("sid-extended")
    assert report["out"] == str(dest) and _files(sid) == before  # the source folder is left alone
    assert report["new_items"] == 4 and report["skipped_known"] == 2 and report["skipped_duplicates"] == 1
    assert report["skipped_known_examples"] == ["v3", "v5"] and report["new_dense_ids"] == [N + 1, N + 4]
    assert report["missing_content"] == 1 and report["unique"] is True

    old, ext = SemanticIds.load(sid), SemanticIds.load(dest)
    assert ext.n_items == N + 4 and ext.is_unique()
    np.testing.assert_array_equal(ext.codes[:N + 1], old.codes)  # existing IDs unchanged
    new = ext.codes[N + 1:]
    assert not {tuple(r) for r in new} & {tuple(r) for r in old.codes[1:]}
    n0, n1, n2 = new[0], new[1], new[2]
    assert (n0[:-1] == n1[:-1]).all() and n0[-1] != n1[-1]  # identical vectors: same prefix, distinct suffix
    same = old.codes[1:][(old.codes[1:, :-1] == old.codes[1, :-1]).all(1)]
    assert (n2[:-1] == old.codes[1, :-1]).all() and n2[-1] > same[:, -1].max()  # v0's prefix, next free code
    assert report["uniqueness_suffix_nonzero"] == int((new[:, -1] > 0).sum()) >= 2
    assert report["uniqueness_size"] == ext.sizes[-1] >= old.sizes[-1] == report["uniqueness_size_before"]

    tok = Tokenizer.load(dest)
    np.testing.assert_array_equal(tok.encode(base["x"][:10]), Tokenizer.load(sid).encode(base["x"][:10]))
    for name in ("tokenizer.json", "tokenizer.safetensors"):
        assert (dest / name).read_bytes() == before[name]
    raw = [f"v{i}" for i in range(N)] + ["n0", "n1", "n2", "n3"]
    items = pq.read_table(dest / "items.parquet").to_pydict()
    assert items["item"] == raw and items["item_idx"] == list(range(1, N + 5))
    assert ext.meta["items_sha256"] == items_digest(raw) != old.meta["items_sha256"]
    assert ext.meta["n_items"] == N + 4 and ext.meta["tokenizer"] == "." and N + 4 in ext.meta["missing"]
    assert json.loads((dest / "report.json").read_text())["new_items"] == 4


def test_text_output_and_rerun_refused(base, new_items, tmp_path, capsys):
    sid = _tokenize(base, capsys)
    dest = tmp_path / "ext"
    argv = ["tokenize-new", "--ids", str(sid), "--embeddings", str(new_items), "--out", str(dest)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "new items: 4" in out and "skipped: 2" in out and "uniqueness suffix > 0" in out
    assert "uniqueness code size" in out and str(dest) in out
    written = _files(dest)
    code, _, err = run(argv, capsys)
    assert code == 2 and "already exists" in err and str(dest) in err and "Traceback" not in err
    assert _files(dest) == written
    before = _files(sid)
    code, _, err = run([*argv[:-1], str(sid)], capsys)
    assert code == 2 and "is the folder of the semantic IDs" in err and _files(sid) == before


def test_empty_out_folder_is_used(base, new_items, tmp_path, capsys):
    sid = _tokenize(base, capsys)
    (tmp_path / "empty").mkdir()
    code, _, err = run(["tokenize-new", "--ids", str(sid), "--embeddings", str(new_items), "--out",
                        str(tmp_path / "empty")], capsys)
    assert code == 0, err
    assert SemanticIds.load(tmp_path / "empty").n_items == N + 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_extend_an_extension_and_moved_catalog(base, new_items, tmp_path, capsys):
    sid = _tokenize(base, capsys)
    first, _ = extend_ids(sid, new_items, out=tmp_path / "ext1")
    more = _table(np.stack([base["x"][7], base["x"][7] + 0.01]), ["n1", "m0"]).save(tmp_path / "content" / "more")
    shutil.move(base["emb"], tmp_path / "moved")  # the extension keeps its own item list: not needed any more
    second, report = extend_ids(tmp_path / "ext1", more, out=tmp_path / "ext2")
    assert report["new_items"] == 1 and report["skipped_known_examples"] == ["n1"]
    np.testing.assert_array_equal(second.codes[:N + 5], first.codes)
    assert second.is_unique() and SemanticIds.load(tmp_path / "ext2").n_items == N + 5

    code, _, err = run(["tokenize-new", "--ids", str(sid), "--embeddings", str(more)], capsys)
    assert code == 2 and "--base-embeddings" in err and str(sid) in err
    code, out, err = run(["tokenize-new", "--ids", str(sid), "--embeddings", str(more), "--base-embeddings",
                          str(tmp_path / "moved"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["new_items"] == 2


def test_python_api_with_a_table(base, tmp_path, capsys):
    sid = _tokenize(base, capsys)
    table = _table(base["x"][:3] * 2, ["a", "b", "c"])
    ids, report = extend_ids(sid, table, out=tmp_path / "ext")
    tok = Tokenizer.load(sid)
    direct = tok.extend(SemanticIds.load(sid), base["x"][:3] * 2)
    np.testing.assert_array_equal(ids.codes, direct.codes)
    assert report["embeddings"] is None and report["new_items"] == 3


def _bad(kind: str, base: dict, tmp_path: Path, new_items: Path) -> tuple[list[str], str]:
    sid = str(base["sid"])
    if kind == "dim":
        wrong = _table(np.ones((2, DIM + 1)), ["x0", "x1"]).save(tmp_path / "wrong")
        return ["--ids", sid, "--embeddings", str(wrong)], "13 dimensions"
    if kind == "no-ids":
        return ["--ids", str(tmp_path / "nowhere"), "--embeddings", str(new_items)], "no such folder"
    if kind == "no-embeddings":
        return ["--ids", sid, "--embeddings", str(tmp_path / "nowhere")], "no such folder"
    if kind == "not-tokenize":
        return ["--ids", str(base["emb"]), "--embeddings", str(new_items)], "not a 'genrec tokenize' output"
    if kind == "no-tokenizer":
        bare = tmp_path / "bare"
        SemanticIds.load(sid).save(bare)
        return ["--ids", str(bare), "--embeddings", str(new_items)], "no tokenizer"
    if kind == "not-embeddings":
        return ["--ids", sid, "--embeddings", sid], "not an embedding table"
    if kind == "all-known":
        known = _table(base["x"][:2], ["v0", "v1"]).save(tmp_path / "known")
        return ["--ids", sid, "--embeddings", str(known)], "no new items"
    if kind == "other-model":
        other = ItemEmbeddings(vectors=np.ones((2, DIM), np.float32), item_ids=["z"],
                               meta={"text_model": "another-model"}).save(tmp_path / "other")
        return ["--ids", sid, "--embeddings", str(other)], "another-model"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["dim", "no-ids", "no-embeddings", "not-tokenize", "no-tokenizer",
                                  "not-embeddings", "all-known", "other-model"])
def test_bad_input_exits_2_and_writes_nothing(base, new_items, tmp_path, capsys, kind):
    _tokenize(base, capsys)
    argv, message = _bad(kind, base, tmp_path, new_items)
    dest = tmp_path / "dest"
    code, _, err = run(["tokenize-new", *argv, "--out", str(dest)], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    path = argv[argv.index("--embeddings" if kind in ("dim", "no-embeddings", "not-embeddings", "all-known",
                                                      "other-model") else "--ids") + 1]
    assert path in err
    assert not dest.exists()
