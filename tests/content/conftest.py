from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest


class FakeTextEncoder:
    """Deterministic 8-d vectors from each text's hash; counts what it was asked to encode."""

    key = "text-fake-v1"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def seen(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8).astype(np.float32) - 127.5
               for t in texts]
        return np.stack(out)


class FakeImageEncoder:
    """4-d vectors: mean RGB and the width of each image; counts calls."""

    key = "image-fake-v1"
    dim = 4

    def __init__(self) -> None:
        self.calls = 0
        self.n = 0

    def encode(self, images: list) -> np.ndarray:
        self.calls += 1
        self.n += len(images)
        return np.stack([np.r_[np.asarray(im, np.float32).mean(axis=(0, 1)), im.size[0]] for im in images])


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    """Every test gets its own embedding cache (never the user's ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GENREC_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def fake_text() -> FakeTextEncoder:
    return FakeTextEncoder()


@pytest.fixture
def fake_image() -> FakeImageEncoder:
    return FakeImageEncoder()
