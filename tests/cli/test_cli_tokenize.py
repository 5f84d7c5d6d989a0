"""``genrec tokenize`` on a tiny saved embedding table, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_run import run
from genrec.content import ItemEmbeddings
from genrec.semantic_ids import SemanticIds, Tokenizer


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 12)) * 3
    x = (centers[rng.integers(0, 6, 120)] + 0.2 * rng.normal(size=(120, 12))).astype(np.float32)
    vectors = np.concatenate([np.zeros((1, 12), np.float32), x])
    return ItemEmbeddings(vectors=vectors, item_ids=[f"v{i}" for i in range(120)], meta={"dataset": "toy"}).save(
        tmp_path / "runs" / "content" / "toy")


def test_tokenize_default_folders_and_table_output(table, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["tokenize", "--dataset", "toy", "--levels", "2", "--codebook-size", "8", "--quiet"],
                         capsys)
    assert code == 0, err
    folder = Path("runs/semantic_ids/toy/rqkmeans")
    assert "utilisation per level" in out and "collisions" in out and str(folder) in out
    ids = SemanticIds.load(folder)
    assert ids.n_items == 120 and ids.is_unique() and ids.sizes[:2] == [8, 8]
    assert Tokenizer.load(folder).config.levels == 2
    assert json.loads((folder / "report.json").read_text())["unique"] is True


def test_tokenize_rqvae_json(table, tmp_path, capsys):
    out_dir = tmp_path / "sid"
    code, out, err = run(["tokenize", "--embeddings", str(table), "--method", "rqvae", "--epochs", "3",
                          "--levels", "2", "--codebook-size", "4", "--out", str(out_dir), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["method"] == "rqvae" and report["out"] == str(out_dir) and report["training"]["epoch"] == 3
    assert SemanticIds.load(out_dir).is_unique()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nothing-here"], "no item embedding table"),
    (["--dataset", "toy", "--method", "pq"], "--method"),
    ([], "--dataset"),
])
def test_tokenize_bad_input_exits_2(table, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["tokenize", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
