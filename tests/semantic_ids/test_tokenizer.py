"""Tokenizer invariants: shapes and code ranges, every ID unique (also for exact duplicates), determinism,
and new items encoded by a saved-and-loaded tokenizer without retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.content import ItemEmbeddings
from genrec.errors import ConfigError, DataError
from genrec.semantic_ids import RQVAEConfig, SemanticIds, Tokenizer, TokenizerConfig, assign_unique, tokenize

SMALL_VAE = RQVAEConfig(hidden=[32], latent_dim=8, epochs=15, batch_size=128, lr=3e-3)
METHODS = {"rqkmeans": TokenizerConfig(levels=3, codebook_size=8),
           "rqvae": TokenizerConfig(method="rqvae", levels=3, codebook_size=8, rqvae=SMALL_VAE)}


def padded(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((1, x.shape[1]), np.float32), x])


@pytest.fixture(scope="module", params=list(METHODS))
def fitted(request):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16)) * 3
    x = (centers[rng.integers(0, 8, 400)] + 0.3 * rng.normal(size=(400, 16))).astype(np.float32)
    return Tokenizer(METHODS[request.param]).fit(x), x


def test_shapes_and_code_ranges(fitted):
    tok, x = fitted
    codes = tok.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    ids = tok.tokenize(padded(x))
    assert ids.codes.shape == (len(x) + 1, 4) and (ids.codes[0] == -1).all()
    assert ids.sizes[:3] == [8, 8, 8] and ids.sizes[3] == ids.codes[1:, 3].max() + 1
    assert ids.is_unique()
    assert np.array_equal(ids.codes[1:, :3], codes)


def test_reconstruction_beats_the_mean(fitted):
    tok, x = fitted
    z = tok.preprocess(x)
    err = ((tok.reconstruct(tok.encode(x)) - z) ** 2).sum()
    assert err < 0.5 * ((z - z.mean(0)) ** 2).sum()


@pytest.mark.parametrize("method", list(METHODS))
def test_same_seed_same_codes(method, clustered):
    x, _ = clustered(n=300, seed=3)
    a = Tokenizer(METHODS[method]).fit(x).encode(x)
    b = Tokenizer(METHODS[method]).fit(x).encode(x)
    assert np.array_equal(a, b)


def test_rqvae_training_reduces_loss_and_keeps_codes_alive(clustered):
    x, _ = clustered(n=500, seed=4)
    tok = Tokenizer(METHODS["rqvae"]).fit(x)
    hist = tok.quantizer.history
    assert len(hist) == SMALL_VAE.epochs and hist[-1]["recon"] < hist[0]["recon"]
    assert len(np.unique(tok.encode(x)[:, 0])) >= 6  # k-means init + restarts use most of level 1


def test_assign_unique_by_hand():
    prefix = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    full = assign_unique(prefix)
    assert full[:, 2].tolist() == [0, 0, 1, 2, 0]
    new = assign_unique(np.array([[1, 2], [5, 5], [1, 2], [0, 0]]), existing=full)
    assert new[:, 2].tolist() == [3, 0, 4, 1]
    # gaps are never filled: the next free code is after the largest one handed out
    assert assign_unique(np.array([[0, 0]]), existing=np.array([[0, 0, 7]]))[0, 2] == 8
    assert assign_unique(np.zeros((0, 2), np.int64)).shape == (0, 3)


def test_many_exact_duplicates_get_unique_ids(clustered):
    x, _ = clustered(n=200, seed=5)
    x = np.concatenate([x, np.repeat(x[:1], 150, axis=0)])  # 151 copies of one vector
    tok = Tokenizer(METHODS["rqkmeans"]).fit(x)
    ids = tok.tokenize(padded(x))
    assert ids.is_unique() and ids.sizes[-1] >= 151
    dup = ids.codes[np.r_[1, 201:351]]
    assert (dup[:, :3] == dup[0, :3]).all() and sorted(dup[:, 3].tolist()) == sorted(set(dup[:, 3].tolist()))


@pytest.mark.parametrize("method", list(METHODS))
def test_new_items_without_retraining(tmp_path, method, clustered):
    x, _ = clustered(n=300, seed=6)
    tok = Tokenizer(METHODS[method]).fit(x)
    ids = tok.tokenize(padded(x))
    tok.save(tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert files == ["tokenizer.json", "tokenizer.safetensors"]
    loaded = Tokenizer.load(tmp_path / "tok")
    assert np.array_equal(loaded.encode(x), tok.encode(x))  # known items: identical codes
    assert loaded.config == tok.config

    new = np.concatenate([x[:5], clustered(n=20, seed=7)[0]])  # 5 copies of known items + 20 others
    extended = loaded.extend(ids, new)
    assert extended.n_items == 300 + 25 and extended.is_unique()
    assert np.array_equal(extended.codes[:301], ids.codes)  # existing IDs never change
    assert np.array_equal(extended.codes[301:, :3], tok.encode(new))
    assert np.array_equal(extended.codes[301:306, :3], ids.codes[1:6, :3])  # a copy shares the prefix...
    assert (extended.codes[301:306, 3] != ids.codes[1:6, 3]).all()  # ...but not the ID
    assert extended.sizes[-1] == extended.codes[1:, -1].max() + 1
    extended.save(tmp_path / "ids")
    assert np.array_equal(SemanticIds.load(tmp_path / "ids").codes, extended.codes)


def test_errors(tmp_path, clustered):
    x, _ = clustered(n=100)
    with pytest.raises(ConfigError, match="not fitted"):
        Tokenizer().encode(x)
    with pytest.raises(ConfigError, match="codebook_size"):
        Tokenizer(codebook_size=1)
    with pytest.raises(ConfigError, match="levels"):
        Tokenizer(TokenizerConfig(), levels=0)
    tok = Tokenizer(levels=2, codebook_size=4).fit(x)
    with pytest.raises(DataError, match="dimensions"):
        tok.encode(np.zeros((3, 5), np.float32))
    with pytest.raises(DataError, match="NaN"):
        tok.encode(np.full((1, 16), np.nan, np.float32))
    with pytest.raises(DataError, match="not a semantic-ID tokenizer"):
        Tokenizer.load(tmp_path)
    tok.save(tmp_path / "t")
    spec = json.loads((tmp_path / "t" / "tokenizer.json").read_text())
    (tmp_path / "t" / "tokenizer.json").write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(DataError, match="unsupported"):
        Tokenizer.load(tmp_path / "t")


def test_tokenize_pipeline_writes_artifacts_and_handles_missing_content(tmp_path, clustered):
    x, _ = clustered(n=250, seed=8)
    vec = padded(x)
    vec[[3, 10]] = 0  # two items without content
    emb = ItemEmbeddings(vectors=vec, item_ids=[f"item{i}" for i in range(250)], meta={"dataset": "toy"},
                         missing=np.array([3]))
    emb.save(tmp_path / "emb")
    ids, report = tokenize(tmp_path / "emb", method="rqkmeans", levels=2, codebook_size=8, out=tmp_path / "sid")
    assert ids.is_unique() and ids.n_items == 250
    assert report["missing_items"] == 2 and ids.meta["missing"] == [3, 10]
    assert report["codes"]["items"] == 248 and report["unique"]
    assert {p.name for p in (tmp_path / "sid").iterdir()} >= {"semantic_ids.safetensors", "semantic_ids.json",
                                                             "tokenizer.json", "tokenizer.safetensors",
                                                             "report.json"}
    loaded = SemanticIds.load(tmp_path / "sid")
    assert np.array_equal(loaded.codes, ids.codes) and loaded.meta["dataset"] == "toy"
    assert json.loads((tmp_path / "sid" / "report.json").read_text())["sizes"] == ids.sizes
    # the saved tokenizer reproduces every item's content codes
    tok = Tokenizer.load(tmp_path / "sid")
    assert np.array_equal(tok.encode(x[[0, 1, 3, 4]]), ids.codes[[1, 2, 4, 5], :2])
    with pytest.raises(DataError, match="no item embedding table"):
        tokenize(tmp_path / "nowhere")
    # a config is respected; explicit arguments override it
    ids, report = tokenize(emb, config=TokenizerConfig(levels=1, codebook_size=4))
    assert ids.sizes[0] == 4 and ids.n_levels == 2 and report["levels"] == 1
    ids, _ = tokenize(emb, config=TokenizerConfig(levels=1, codebook_size=4), codebook_size=6)
    assert ids.sizes[0] == 6 and ids.n_levels == 2
