"""Collaborative semantic IDs: content fused with a trained ID model's item embeddings; untrained items get a
predicted embedding from their content, now and when new items are added later."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from genrec.content import ItemEmbeddings
from genrec.errors import DataError
from genrec.semantic_ids import Tokenizer, TokenizerConfig, tokenize
from genrec.semantic_ids.collaborative import CollaborativeConfig, collaborative_vectors, read_id_model
from genrec.semantic_ids.pipeline import extend_ids

N, DIM, D = 160, 10, 6


def _catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content [N + 1, DIM], an ID table [N + 1, D] that is a linear function of the normalised content, and
    training counts with every 8th item untrained (its row random noise)."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(N + 1, DIM)).astype(np.float32)
    content[0] = 0
    a = rng.normal(size=(DIM, D)).astype(np.float32)
    unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
    table = unit @ a
    counts = rng.integers(1, 20, N + 1)
    counts[0] = 0
    counts[::8] = 0
    table[counts == 0] = rng.normal(size=((counts == 0).sum(), D)) * 5  # never trained: noise
    return content, table.astype(np.float32), counts


def _run_folder(path: Path, table: np.ndarray, counts: np.ndarray) -> Path:
    path.mkdir(parents=True)
    save_file({"item_emb.weight": torch.from_numpy(table)}, path / "model.safetensors")
    pq.write_table(pa.table({"item_idx": np.arange(1, len(table), dtype=np.int64),
                             "train_count": counts[1:].astype(np.int64)}), path / "items.parquet")
    return path


def test_fused_vectors_keep_trained_rows_and_predict_the_rest(tmp_path):
    content, table, counts = _catalog()
    cfg = CollaborativeConfig(id_model=tmp_path, weight=2.0, ridge=1e-4)
    fused, w, summary = collaborative_vectors(content, table, counts, cfg)
    assert fused.shape == (N + 1, DIM + D) and not fused[0].any()
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    trained = np.flatnonzero(counts > 0)
    assert np.allclose(fused[trained, DIM:], 2.0 * unit[trained], atol=1e-5)  # own embedding, weighted
    assert np.allclose(np.linalg.norm(fused[trained, :DIM], axis=1), 1.0, atol=1e-5)
    cold = np.flatnonzero(counts == 0)[1:]
    truth = content[cold] / np.linalg.norm(content[cold], axis=1, keepdims=True) @ np.linalg.lstsq(
        content[trained] / np.linalg.norm(content[trained], axis=1, keepdims=True), table[trained], rcond=None)[0]
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    assert np.allclose(fused[cold, DIM:], 2.0 * truth, atol=1e-3)  # the exact linear map is recovered, not noise
    assert summary["predicted_items"] == len(cold) and summary["map_cosine_on_trained_mean"] > 0.999


def test_tokenize_with_an_id_model_and_extend_new_items_from_content(tmp_path):
    content, table, counts = _catalog()
    run = _run_folder(tmp_path / "run", table, counts)
    emb_dir = ItemEmbeddings(vectors=content, item_ids=[f"v{i}" for i in range(N)],
                             meta={"dataset": "toy"}).save(tmp_path / "content")
    emb = ItemEmbeddings.load(emb_dir)
    config = TokenizerConfig(levels=2, codebook_size=8, collaborative=CollaborativeConfig(id_model=run))
    ids, report = tokenize(emb, config=config, out=tmp_path / "sid")
    assert ids.is_unique() and report["collaborative"]["trained_items"] == int((counts[1:] > 0).sum())
    plain, _ = tokenize(emb, config=TokenizerConfig(levels=2, codebook_size=8))
    assert not np.array_equal(plain.codes, ids.codes)  # the ID embeddings change the codes
    tok = Tokenizer.load(tmp_path / "sid")
    assert tok.content_map is not None and tok.in_dim == DIM + D
    rng = np.random.default_rng(1)
    new = np.concatenate([np.zeros((1, DIM), np.float32), rng.normal(size=(5, DIM)).astype(np.float32)])
    ext, rep = extend_ids(tmp_path / "sid", ItemEmbeddings(vectors=new, item_ids=[f"n{i}" for i in range(5)],
                                                           meta={"dataset": "toy"}), out=tmp_path / "ext",
                        base_embeddings=emb_dir)
    assert rep["new_items"] == 5 and ext.is_unique()
    assert np.array_equal(ext.codes[N + 1:, :2], tok.encode(tok.content_vectors(new[1:])))
    with pytest.raises(DataError, match="dimensions"):
        tok.content_vectors(new[:, :4])


def test_id_model_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing model.safetensors"):
        read_id_model(tmp_path)
    content, table, counts = _catalog()
    run = _run_folder(tmp_path / "run", table, counts)
    save_file({"sid_emb.0.weight": torch.zeros(4, D)}, run / "model.safetensors")
    with pytest.raises(DataError, match="item_repr: id"):
        read_id_model(run)
    with pytest.raises(DataError, match="same catalog"):
        collaborative_vectors(content[:10], table, counts, CollaborativeConfig(id_model=run))
    with pytest.raises(DataError, match="fewer than 2"):
        collaborative_vectors(content, table, counts, CollaborativeConfig(id_model=run, min_count=10_000))
