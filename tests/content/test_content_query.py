"""Text queries in a catalog's content space (genrec.content.query): a query fused like the catalog's items lands
on the item whose text it repeats, under every projection, and the query blend z-scores both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genrec.content.query as query_module
from genrec.content import ContentTable, FusionConfig, QueryEncoder, blend_with_query, fuse, to_content_space
from genrec.errors import GenrecError


class Echo:
    """A text encoder that returns one fixed vector."""

    dim = 6

    def __init__(self, vector: np.ndarray):
        self.vector = vector

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.repeat(self.vector[None], len(texts), axis=0)


def table(fusion: FusionConfig, modalities: tuple[str, ...] = ("text", "image"),
          seed: int = 0) -> tuple[ContentTable, np.ndarray]:
    """A catalog of 8 items with a text (6-d) and an image (4-d) block fused by ``fusion``, and the text vectors."""
    rng = np.random.default_rng(seed)
    blocks = {"text": rng.normal(size=(8, 6)).astype(np.float32), "image": rng.normal(size=(8, 4)).astype(np.float32)}
    blocks = {name: blocks[name] for name in modalities}
    fused, proj = fuse(blocks, fusion, np.ones(8, bool))
    vectors = torch.from_numpy(np.concatenate([np.zeros((1, fused.shape[1]), np.float32), fused]))
    projection = None if proj is None or fusion.projection != "pca" else {
        "mean": torch.from_numpy(proj.mean), "components": torch.from_numpy(proj.components)}
    meta = {"modalities": list(modalities), "text_model": "echo", "text_dim": 6, "image_dim": 4,
            "fusion": fusion.model_dump()}
    return ContentTable.from_vectors(vectors, meta, projection), blocks["text"]


@pytest.mark.parametrize("fusion", [FusionConfig(), FusionConfig(weights={"text": 2.0}),
                                    FusionConfig(projection="pca", dim=5), FusionConfig(projection="random", dim=4)],
                         ids=["plain", "weighted", "pca", "random"])
def test_a_query_repeating_an_items_text_lands_on_that_item(fusion, monkeypatch):
    content, text = table(fusion, modalities=("text",))
    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: Echo(3.0 * text[4]))
    sim = QueryEncoder(content).similarity("anything")
    assert sim.shape == (9,) and sim[0] == 0
    assert float(sim[5]) == pytest.approx(1.0, abs=1e-5) and int(sim.argmax()) == 5
    assert float(sim[1:].sort().values[-2]) < 0.999


def test_a_query_fills_the_text_block_only_with_its_weight():
    content, text = table(FusionConfig(weights={"text": 2.0, "image": 0.5}))
    x = to_content_space(text[2:3], content)
    expected = np.concatenate([2.0 * text[2] / np.linalg.norm(text[2]), np.zeros(4)])
    np.testing.assert_allclose(x[0], expected, rtol=1e-5, atol=1e-6)


def test_broken_or_missing_encoder_is_kept_and_named(monkeypatch):
    content, _ = table(FusionConfig())
    calls = []

    def broken(name, **kw):
        calls.append(name)
        raise OSError("no such model")

    monkeypatch.setattr(query_module, "text_encoder", broken)
    encoder = QueryEncoder(content)
    for _ in range(2):
        with pytest.raises(GenrecError, match="no text encoder for queries .*no such model"):
            encoder.similarity("q")
    assert calls == ["echo"]  # tried once, the failure kept
    no_text = ContentTable(content.vectors, content.has, {**content.meta, "modalities": ["image"]}, None)
    with pytest.raises(GenrecError, match="hold no text"):
        QueryEncoder(no_text).similarity("q")
    pca, _ = table(FusionConfig(projection="pca", dim=5))
    with pytest.raises(GenrecError, match="projection is missing"):
        to_content_space(np.ones((1, 6), np.float32), ContentTable(pca.vectors, pca.has, pca.meta, None))


def test_blend_z_scores_the_model_and_the_query():
    scores, sim = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([9.0, 3.0, 2.0, 1.0])
    z = torch.tensor([0.0, -1.0, 0.0, 1.0])  # over items 1..3 (row 0 is padding), std with Bessel's correction
    torch.testing.assert_close(blend_with_query(scores, sim, 0.25), 0.75 * z - 0.25 * z)
    ids = torch.tensor([3, 1])
    part = blend_with_query(torch.tensor([5.0, 1.0]), sim, 0.5, ids)
    torch.testing.assert_close(part, 0.5 * torch.tensor([0.7071, -0.7071]) + 0.5 * torch.tensor([-1.0, 1.0]),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(blend_with_query(torch.tensor([2.0]), sim, 0.0, torch.tensor([1])), torch.zeros(1))
