"""Approximate top-k over large catalogs with FAISS (the ``ann`` extra: ``pip install genrec[ann]``).

An ID model scores a history by the inner product of its last hidden state with every item's output embedding.
Up to ~1e5 items that exact product is a few milliseconds; beyond, an inverted-file index (IVF, flat lists,
inner product) answers by scanning only the ``nprobe`` lists nearest to the query. ``nprobe`` is chosen at
export: the smallest value whose recall@k against the exact top-k, on sample queries, reaches the target; the
recall reached is written into the bundle's manifest. The index is stored with ``faiss.write_index`` (FAISS's
own binary format, not pickle) and verified by its checksum like every other bundle file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import GenrecError
from genrec.serve.bundle import ANN_FILE  # noqa: F401 - re-exported

DEFAULT_THRESHOLD = 100_000  # catalogs larger than this get an index with ``ann="auto"``
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise GenrecError("approximate search needs faiss: pip install 'genrec[ann]' (faiss-cpu)") from None
    return faiss


@dataclass
class AnnIndex:
    """An IVF inner-product index over rows 1..n of an item table (row 0, the padding, is never returned)."""

    index: Any
    nprobe: int

    @classmethod
    def build(cls, items: np.ndarray, nlist: int | None = None, seed: int = 0) -> AnnIndex:
        """``items``: [n_items, D] float32 output embeddings, dense ids 1..n in row order."""
        faiss = _faiss()
        x = np.ascontiguousarray(items, dtype=np.float32)
        n, d = x.shape
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        cap = 64 * nlist  # FAISS asks for 39..256 points per list; 64 keeps the k-means quick on 2 cores
        sample = x if n <= cap else x[np.random.default_rng(seed).choice(n, cap, replace=False)]
        index.train(sample)
        index.add(x)
        return cls(index, nprobe=1)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def search(self, queries: np.ndarray, n: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (dense item ids 1.., scores) per query row; missing slots have id 0 and score -inf."""
        self.index.nprobe = int(nprobe or self.nprobe)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(n))
        ids = np.where(rows >= 0, rows + 1, 0)
        return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)

    def tune(self, items: np.ndarray, queries: np.ndarray, k: int = 10, target: float = 0.95) -> dict[str, Any]:
        """Set ``nprobe`` to the smallest value whose recall@k against exact search reaches ``target`` (or the
        largest tried) and report the recall at @k and @100 for it."""
        exact = exact_top(items, queries, max(k, 100))
        tried = {}
        for nprobe in [p for p in NPROBES if p <= self.nlist] or [self.nlist]:
            tried[nprobe] = recall(self.search(queries, k, nprobe)[0], exact[:, :k])
            self.nprobe = nprobe
            if tried[nprobe] >= target:
                break
        return {"kind": "ivf_flat_ip", "nlist": self.nlist, "nprobe": self.nprobe, "target_recall": target,
                "k": k, f"recall@{k}": tried[self.nprobe],
                "recall@100": recall(self.search(queries, min(100, exact.shape[1]))[0], exact[:, :100]),
                "queries": int(len(queries)), "tried": {str(p): r for p, r in tried.items()}}

    def save(self, path: str | Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int) -> AnnIndex:
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # one query per request thread: no OpenMP team per call
        return cls(faiss.read_index(str(path)), nprobe=int(nprobe))


def exact_top(items: np.ndarray, queries: np.ndarray, n: int, chunk: int = 65536) -> np.ndarray:
    """Exact top-``n`` dense ids (1..) by inner product, in blocks of ``chunk`` items (bounded memory)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(items), chunk):
        s = queries @ items[start:start + chunk].T
        i = np.broadcast_to(np.arange(start + 1, start + 1 + s.shape[1]), s.shape)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :n]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    return best_i


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact ids that ``found`` contains."""
    hits = [len(set(f.tolist()) & set(e.tolist())) / max(len(e), 1) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")
