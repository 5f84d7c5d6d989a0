"""A disk cache of content embeddings, keyed by model and by the sha256 of the exact input (text or image bytes).

Layout: ``<root>/<model key>/shard-*.safetensors``, each shard holding ``keys`` [k, 32] uint8 (sha256 digests)
and ``vectors`` [k, dim] float32. A run only encodes inputs whose digest is in no shard and appends one new shard
per flush (written atomically), so an interrupted run keeps what it finished and a re-run, or a catalog with a few
new or changed items, encodes only what changed. Many small shards are merged into one when the cache is opened.
The root is ``$GENREC_CACHE_DIR/embeddings``, else ``~/.cache/genrec/embeddings``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genrec.errors import DataError
from genrec.io import atomic_write

MAX_SHARDS = 16


def cache_root() -> Path:
    base = os.environ.get("GENREC_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "genrec") / "embeddings"


def digest(data: str | bytes) -> bytes:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).digest()


class EmbeddingCache:
    """Vectors of one model, looked up by input digest."""

    def __init__(self, model_key: str, root: str | Path | None = None, persist: bool = True):
        """``persist=False``: an in-memory cache for one run (reads and writes nothing on disk)."""
        self.folder = Path(root if root is not None else cache_root()) / model_key
        self.persist = persist
        self.index: dict[bytes, int] = {}
        self.blocks: list[np.ndarray] = []
        self._rows = 0
        self.dim: int | None = None
        shards = sorted(self.folder.glob("shard-*.safetensors")) if persist and self.folder.is_dir() else []
        for shard in shards:
            self._add(*self._read(shard))
        if len(shards) > MAX_SHARDS:
            self._compact(shards)

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, shard: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            t = load_file(shard)
            keys, vectors = t["keys"].numpy(), t["vectors"].numpy()
        except (SafetensorError, KeyError, OSError) as e:
            raise DataError(f"corrupt embedding cache shard ({e}); delete it or the folder {self.folder}",
                            path=shard) from None
        if keys.ndim != 2 or keys.shape[1] != 32 or vectors.shape[0] != keys.shape[0]:
            raise DataError(f"corrupt embedding cache shard; delete it or the folder {self.folder}", path=shard)
        return keys, vectors

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        elif vectors.shape[1] != self.dim:
            raise DataError(f"embedding cache {self.folder} mixes dims {self.dim} and {vectors.shape[1]}; delete it")
        for i, k in enumerate(keys):
            self.index[bytes(k)] = self._rows + i
        self.blocks.append(np.asarray(vectors, dtype=np.float32))
        self._rows += len(keys)

    def _all(self) -> np.ndarray:
        if len(self.blocks) > 1:
            self.blocks = [np.concatenate(self.blocks)]
        return self.blocks[0] if self.blocks else np.zeros((0, self.dim or 0), np.float32)

    def lookup(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Row of each digest in :meth:`vectors` (-1 when absent) and the mask of hits."""
        rows = np.array([self.index.get(d, -1) for d in digests], dtype=np.int64)
        return rows, rows >= 0

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self._all()[rows]

    def put(self, digests: list[bytes], vectors: np.ndarray) -> None:
        """Add vectors (one new shard on disk)."""
        if not digests:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32).copy()
        if self.persist:
            self._write(self.folder / f"shard-{uuid.uuid4().hex}.safetensors", keys, vectors)
        self._add(keys, vectors)

    def _write(self, path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {"keys": torch.from_numpy(keys), "vectors": torch.from_numpy(vectors)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp))

    def _compact(self, shards: list[Path]) -> None:
        keys = np.zeros((len(self.index), 32), np.uint8)
        rows = np.zeros(len(self.index), np.int64)
        for i, (k, r) in enumerate(self.index.items()):
            keys[i], rows[i] = np.frombuffer(k, np.uint8), r
        self._write(self.folder / f"shard-{uuid.uuid4().hex}.safetensors", keys, self._all()[rows])
        for shard in shards:
            shard.unlink(missing_ok=True)
