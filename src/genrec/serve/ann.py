"""Approximate top-k over large catalogs with FAISS (the ``ann`` extra: ``pip install genrec[ann]``).

An ID model scores a history by the inner product of its last hidden state with every item's output embedding.
Up to ~1e5 items that exact product is a few milliseconds (``flat``: no index); beyond, an inverted-file index
answers by scanning only the ``nprobe`` lists whose centroids are nearest to the query:

- ``ivf`` (IVF-flat): the lists hold the float vectors, so scores are exact; ``n * (4 D + 8)`` bytes;
- ``ivfpq`` (IVF-PQ): the lists hold product-quantization codes, ``m`` sub-quantizers of ``nbits`` bits per
  item (4 by default, scanned by FAISS's fast-scan kernels), about ``n * (m * nbits / 8 + 8)`` bytes; the
  ``refine`` best candidates by code are re-ranked by their exact inner product, read from the model's item
  table (memory-mapped with the weights), so returned scores are exact.

``ann="auto"`` picks ``flat`` up to ``threshold`` items, then ``ivf`` while that index fits ``memory_mb``, else
``ivfpq`` with the smallest ``m`` (of D/4, D/2, D) that fits the budget and reaches the target recall. The search
parameters are tuned at export on sample queries: the smallest ``nprobe`` (and, for IVF-PQ, the smallest
``refine`` with it) whose recall@k against the exact top-k reaches the target with a margin of ``margin_se``
standard errors (so that queries not in the sample reach it too); the recall reached is written into
the bundle's manifest. The index is stored with ``faiss.write_index`` (FAISS's own binary format, not pickle),
verified by its checksum like every other bundle file, and loaded memory-mapped, so the inverted lists are shared
by every worker process that serves the bundle.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrec.errors import ConfigError, GenrecError
from genrec.progress import progress_bar
from genrec.serve.bundle import ANN_FILE  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 100_000  # catalogs larger than this get an index with ``ann="auto"``
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REFINES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)  # IVF-PQ shortlist sizes tried, up to max_refine
MAX_NLIST = 2048  # more lists make k-means and list assignment at export cost more than they save per query
ADD_CHUNK = 1 << 20  # items encoded per step when filling an index (bounded scratch memory)
ALIASES = {"on": "ivf", "off": "flat"}  # the names of earlier releases
Kind = Literal["auto", "flat", "ivf", "ivfpq"]


class AnnConfig(BaseModel):
    """How an export chooses, builds and tunes the approximate index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = Field("auto", description="auto: chosen by catalog size and memory_mb; flat: exact scoring, no "
                                           "index; ivf: IVF with float vectors; ivfpq: IVF with PQ codes + refine.")
    threshold: int = Field(DEFAULT_THRESHOLD, ge=1, description="auto: catalogs up to this many items are flat.")
    memory_mb: float = Field(1024.0, gt=0, description="Budget for the index: auto takes ivfpq when an ivf index "
                                                       "would exceed it, and PQ codes are sized to fit it.")
    recall: float = Field(0.95, gt=0, le=1, description="Recall@k against exact top-k that tuning must reach.")
    k: int = Field(10, ge=1, le=100, description="The k of the tuned recall@k.")
    nlist: int | None = Field(None, ge=1, description="Inverted lists; default min(4 sqrt(n), n / 39, 2048).")
    m: int | None = Field(None, ge=1, description="IVF-PQ bytes per code (sub-quantizers; must divide the "
                                                  "embedding size); default: the smallest of D/4, D/2, D that "
                                                  "fits memory_mb and reaches the recall.")
    nbits: int = Field(4, ge=4, le=12, description="IVF-PQ bits per sub-quantizer code; 4 scans the codes with "
                       "FAISS's fast-scan kernels (SIMD table lookups, several times faster per code), other "
                       "values with the classic IVF-PQ scan.")
    max_refine: int = Field(2000, ge=10, description="The most IVF-PQ candidates re-ranked exactly per query.")
    queries: int = Field(512, ge=16, description="Sample queries the recall is measured on.")
    margin_se: float = Field(2.0, ge=0, description="The tuned recall@k must exceed the target by this many "
                                                    "standard errors of its estimate over the sample queries (so "
                                                    "that unseen queries reach it too; 0: the sample mean alone).")
    seed: int = Field(0, description="Seed of k-means, the training sample and the sample queries.")

    @classmethod
    def of(cls, ann: str | AnnConfig | dict[str, Any], **fields: Any) -> AnnConfig:
        """A config from a kind name (``on`` / ``off`` read as ``ivf`` / ``flat``), a dict or a config; ``fields``
        fill what a kind name leaves out. Bad values: ConfigError naming the field."""
        if isinstance(ann, AnnConfig):
            return ann
        if isinstance(ann, str):
            kind = ALIASES.get(ann, ann)
            if kind not in ("auto", "flat", "ivf", "ivfpq"):
                raise ConfigError(f"ann must be auto, flat, ivf or ivfpq (on / off: ivf / flat), got {ann!r}")
            ann = {"kind": kind, **fields}
        try:
            return cls.model_validate(ann)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "ann"
            raise ConfigError(f"ann {where}: {err['msg']} (got {err.get('input')!r})") from None


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise GenrecError("approximate search needs faiss: pip install 'genrec[ann]' (faiss-cpu)") from None
    return faiss


def default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39, MAX_NLIST))  # FAISS wants >= 39 training points per list


def index_bytes(kind: str, n: int, d: int, nlist: int, m: int = 0, nbits: int = 8) -> int:
    """Estimated size of an index in memory (and on disk): codes, one int64 id per item, the centroids."""
    if kind == "flat":
        return 0
    code = 4 * d if kind == "ivf" else math.ceil(m * nbits / 8)
    books = 0 if kind == "ivf" else 4 * d * (1 << nbits)  # m codebooks of 2^nbits centroids of d / m floats
    return n * (code + 8) + 4 * d * nlist + books


def pq_sizes(d: int) -> list[int]:
    """Code sizes tried by default, smallest first: D/4, D/2, D (those that divide D)."""
    return sorted({m for m in (d // 4, d // 2, d) if m >= 1 and d % m == 0})


def choose(config: AnnConfig, n: int, d: int) -> tuple[str, list[int], str]:
    """(kind, the PQ code sizes to try, why) for a catalog of ``n`` items of dimension ``d``."""
    nlist = config.nlist or default_nlist(n)
    budget = config.memory_mb * 2**20
    if config.m is not None and d % config.m:
        raise ConfigError(f"ann m={config.m} must divide the embedding size {d}")
    kind = config.kind
    why = f"ann={kind}"
    if kind == "auto":
        ivf = index_bytes("ivf", n, d, nlist)
        if n <= config.threshold:
            kind, why = "flat", f"{n:,} items <= threshold {config.threshold:,}"
        elif ivf <= budget:
            kind, why = "ivf", f"ivf index {ivf / 2**20:,.0f} MB fits memory_mb {config.memory_mb:,.0f}"
        else:
            kind, why = "ivfpq", f"ivf index {ivf / 2**20:,.0f} MB exceeds memory_mb {config.memory_mb:,.0f}"
    if kind != "ivfpq":
        return kind, [], why
    sizes = [config.m] if config.m is not None else pq_sizes(d)
    fits = [m for m in sizes if index_bytes("ivfpq", n, d, nlist, m, config.nbits) <= budget]
    if not fits:
        need = index_bytes("ivfpq", n, d, nlist, sizes[0], config.nbits) / 2**20
        raise ConfigError(f"ann memory_mb={config.memory_mb:g}: an IVF-PQ index of {n:,} items with m={sizes[0]} "
                          f"needs {need:,.0f} MB; raise memory_mb or choose a smaller m")
    return kind, fits, why


@dataclass
class AnnIndex:
    """An IVF inner-product index over rows 1..n of an item table (row 0, the padding, is never returned).

    ``refine`` > 0 (IVF-PQ): that many candidates by code are re-scored exactly against ``table`` ([n, D], the
    rows of dense ids 1..n) and the best returned."""

    index: Any
    nprobe: int
    refine: int = 0
    table: np.ndarray | None = None

    @classmethod
    def build(cls, items: np.ndarray, nlist: int | None = None, seed: int = 0) -> AnnIndex:
        """IVF-flat. ``items``: [n_items, D] float32 output embeddings, dense ids 1..n in row order."""
        faiss = _faiss()
        x = np.ascontiguousarray(items, dtype=np.float32)
        quantizer = train_quantizer(x, nlist or default_nlist(len(x)), seed)
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], quantizer.ntotal, faiss.METRIC_INNER_PRODUCT)
        fill(index, x, assign(quantizer, x))
        return cls(index, nprobe=1)

    @classmethod
    def build_pq(cls, items: np.ndarray, m: int, nbits: int = 8, nlist: int | None = None, seed: int = 0,
                 quantizer: Any = None, assigned: np.ndarray | None = None) -> AnnIndex:
        """IVF-PQ with ``m`` sub-quantizers of ``nbits`` bits, refining against ``items`` itself. A trained
        ``quantizer`` and the items' list assignments (``assigned``) may be passed in to share them between
        builds of different ``m``."""
        faiss = _faiss()
        x = items if items.dtype == np.float32 else np.asarray(items, np.float32)
        d = x.shape[1]
        if d % m:
            raise ConfigError(f"ann m={m} must divide the embedding size {d}")
        if quantizer is None:
            quantizer = train_quantizer(x, nlist or default_nlist(len(x)), seed)
        if assigned is None:
            assigned = assign(quantizer, x)
        kind = faiss.IndexIVFPQFastScan if nbits == 4 else faiss.IndexIVFPQ
        index = kind(faiss.clone_index(quantizer), d, quantizer.ntotal, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed, index.pq.cp.niter = seed, 10
        index.train(_sample(x, 40 * (1 << nbits), seed))  # the codebooks only; FAISS asks >= 39 points a centroid
        fill(index, x, assigned)
        return cls(index, nprobe=1, refine=1, table=x)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def kind(self) -> str:
        return "ivfpq" if hasattr(self.index, "pq") else "ivf"

    def search(self, queries: np.ndarray, n: int, nprobe: int | None = None,
               refine: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (dense item ids 1.., scores) per query row; missing slots have id 0 and score -inf."""
        faiss = _faiss()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        refine = self.refine if refine is None else refine
        fetch = max(int(n), int(refine)) if refine and self.table is not None else int(n)
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe))
        scores, rows = self.index.search(q, fetch, params=params)
        if refine and self.table is not None:
            scores, rows = self._rescore(q, rows, int(n))
        ids = np.where(rows >= 0, rows + 1, 0)
        return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)

    def _exact(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products [Q, C] of each query with its candidate rows (-inf for missing slots)."""
        assert self.table is not None
        valid = rows >= 0
        exact = np.einsum("qkd,qd->qk", self.table[np.where(valid, rows, 0)], q)
        exact[~valid] = -np.inf
        return exact

    def _rescore(self, q: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` of each row's candidates by exact inner product with the table."""
        exact = self._exact(q, rows)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)

    def tune(self, items: np.ndarray, queries: np.ndarray, k: int = 10, target: float = 0.95,
             max_refine: int = 2000, exact: np.ndarray | None = None, margin_se: float = 0.0) -> dict[str, Any]:
        """Set ``nprobe`` (and for IVF-PQ ``refine``) to the smallest values whose recall@k against exact search,
        less ``margin_se`` standard errors, reaches ``target`` (or the best tried) and report the recall at @k
        (with its standard error) and @100 for them."""
        q = np.ascontiguousarray(queries, np.float32)
        exact = exact_top(items, q, max(k, 100)) if exact is None else exact
        pq = self.kind == "ivfpq"
        refines = ([r for r in REFINES if k <= r <= max_refine] or [max(k, max_refine)]) if pq else [0]
        tried: dict[str, float] = {}
        best = (-1.0, 1, refines[-1], 0.0)
        for nprobe in [p for p in NPROBES if p <= self.nlist] or [self.nlist]:
            if pq:  # one search and one exact re-scoring for the longest shortlist; shorter ones are its prefixes
                _, rows = self.index.search(q, refines[-1], params=_faiss().SearchParametersIVF(nprobe=nprobe))
                scores = self._exact(q, rows)
            for refine in refines:
                if pq:
                    top = np.argsort(-scores[:, :refine], axis=1, kind="stable")[:, :k]
                    cand = np.take_along_axis(rows[:, :refine], top, 1)
                    found = np.where(cand >= 0, cand + 1, 0)
                else:
                    found = self.search(q, k, nprobe, refine=0)[0]
                per_query = recalls(found, exact[:, :k])
                r, se = float(per_query.mean()), float(per_query.std() / np.sqrt(len(per_query)))
                tried[f"{nprobe}/{refine}" if pq else f"{nprobe}"] = r
                if r - margin_se * se > best[0] - margin_se * best[3]:
                    best = (r, nprobe, refine, se)
                if r - margin_se * se >= target:
                    break
            if best[0] - margin_se * best[3] >= target:
                break
        r, self.nprobe, self.refine, se = best
        return {"kind": "ivf_pq_ip" if pq else "ivf_flat_ip", "nlist": self.nlist, "nprobe": self.nprobe,
                "refine": self.refine, "target_recall": target, "k": k, f"recall@{k}": r, f"recall@{k}_se": se,
                "margin_se": margin_se, "target_met": r - margin_se * se >= target,
                "recall@100": recall(self.search(q, min(100, exact.shape[1]))[0], exact[:, :100]),
                "queries": int(len(q)), "tried": tried}

    def save(self, path: str | Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int, refine: int = 0, table: np.ndarray | None = None,
             mmap: bool = True) -> AnnIndex:
        """Read an index written by :meth:`save`; ``mmap``: its inverted lists stay in the page cache, shared by
        every process that maps the file. ``table``: the rows refine reads (needed when ``refine`` > 0)."""
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # one query per request thread: no OpenMP team per call
        if refine and table is None:
            raise GenrecError(f"{path}: an index that refines needs the item table")
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
        try:
            index = faiss.read_index(str(path), flag)
        except RuntimeError:
            if not flag:
                raise
            index = faiss.read_index(str(path))  # a filesystem that cannot map: a private copy still serves
        return cls(index, nprobe=int(nprobe), refine=int(refine), table=table)


def train_quantizer(x: np.ndarray, nlist: int, seed: int = 0) -> Any:
    """The coarse quantizer: spherical k-means centroids (as FAISS trains an inner-product IVF) in a flat IP
    index, trained on at most 64 points per list (FAISS asks for 39..256; 64 keeps it quick on 2 cores)."""
    faiss = _faiss()
    n, d = x.shape
    nlist = max(1, min(int(nlist), n))
    kmeans = faiss.Kmeans(d, nlist, niter=10, seed=seed, spherical=True, max_points_per_centroid=256,
                          verbose=False)
    kmeans.train(_sample(x, 64 * nlist, seed))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(kmeans.centroids)
    return quantizer


def assign(quantizer: Any, x: np.ndarray, show_progress: bool = True) -> np.ndarray:
    """Each item's inverted list [n] int64 (the list whose centroid has the largest inner product)."""
    out = np.empty(len(x), np.int64)
    with progress_bar(len(x), "assign items to lists", show_progress) as advance:
        for lo in range(0, len(x), ADD_CHUNK):
            chunk = np.ascontiguousarray(x[lo:lo + ADD_CHUNK], np.float32)
            out[lo:lo + len(chunk)] = quantizer.search(chunk, 1)[1][:, 0]
            advance(len(chunk))
    return out


def fill(index: Any, x: np.ndarray, assigned: np.ndarray, show_progress: bool = True) -> None:
    """Add ``x`` (ids 0..n-1 in order) to an IVF index with precomputed list assignments, in chunks."""
    faiss = _faiss()
    with progress_bar(len(x), "fill the index", show_progress) as advance:
        for lo in range(0, len(x), ADD_CHUNK):
            chunk = np.ascontiguousarray(x[lo:lo + ADD_CHUNK], np.float32)
            lists = np.ascontiguousarray(assigned[lo:lo + len(chunk)], np.int64)
            if isinstance(index, faiss.IndexIVFFastScan):  # packs codes in blocks: assigns them itself
                index.add(chunk)
            else:
                index.add_core(len(chunk), faiss.swig_ptr(chunk), None, faiss.swig_ptr(lists))
            advance(len(chunk))


def _sample(x: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(x) <= cap:
        return np.ascontiguousarray(x, np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))  # sorted: sequential reads
    return np.ascontiguousarray(x[rows], np.float32)


def build_tuned(items: np.ndarray, queries: np.ndarray, config: AnnConfig,
                log_step: Callable[[str], None] | None = None) -> tuple[AnnIndex | None, dict[str, Any]]:
    """Choose, build and tune the index for ``items`` ([n, D] float32, dense ids 1..n) on sample ``queries``.
    Returns (the index, or None for ``flat``; the manifest's report)."""
    say = log_step or log.info
    n, d = items.shape
    kind, sizes, why = choose(config, n, d)
    if kind == "flat":
        return None, {"kind": "flat", "chosen": why}
    nlist = config.nlist or default_nlist(n)
    say(f"{kind} index over {n:,} items ({why}); k-means of {nlist:,} lists ...")
    quantizer = train_quantizer(items, nlist, config.seed)
    assigned = assign(quantizer, items)
    exact = exact_top(items, queries, max(config.k, 100))
    if kind == "ivf":
        faiss = _faiss()
        index = AnnIndex(faiss.IndexIVFFlat(quantizer, d, quantizer.ntotal, faiss.METRIC_INNER_PRODUCT), nprobe=1)
        fill(index.index, items, assigned)
        report = index.tune(items, queries, config.k, config.recall, exact=exact, margin_se=config.margin_se)
    else:
        for m in sizes:
            say(f"ivfpq: m={m}, nbits={config.nbits} ...")
            index = AnnIndex.build_pq(items, m, config.nbits, seed=config.seed, quantizer=quantizer,
                                      assigned=assigned)
            report = index.tune(items, queries, config.k, config.recall, config.max_refine, exact=exact,
                                margin_se=config.margin_se)
            report.update(m=m, nbits=config.nbits)
            if report["target_met"]:
                break
    if not report["target_met"]:
        log.warning("approximate index: recall@%d %.3f is below the target %.3f with every setting tried",
                    config.k, report[f"recall@{config.k}"], config.recall)
    report.update(chosen=why, memory_mb=config.memory_mb,
                  bytes_estimate=index_bytes(kind, n, d, nlist, report.get("m", 0), config.nbits))
    return index, report


def exact_top(items: np.ndarray, queries: np.ndarray, n: int, chunk: int = 65536) -> np.ndarray:
    """Exact top-``n`` dense ids (1..) by inner product, in blocks of ``chunk`` items (bounded memory); ties in
    dense-id order."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    best_s = torch.full((len(q), 0), -torch.inf)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(items), chunk):
        block = torch.from_numpy(np.ascontiguousarray(items[start:start + chunk], np.float32))
        s = q @ block.T
        s, i = torch.topk(s, min(n, s.shape[1]), dim=1)  # the block's best, then merged with the best so far
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i + (start + 1)], 1)
        if s.shape[1] > n:
            s, keep = torch.topk(s, n, dim=1)
            i = torch.gather(i, 1, keep)
        best_s, best_i = s, i
    order = np.lexsort((best_i.numpy(), -best_s.numpy()), axis=-1)
    return np.take_along_axis(best_i.numpy(), order, 1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact ids that ``found`` contains."""
    hits = recalls(found, exact)
    return float(hits.mean()) if len(hits) else float("nan")


def recalls(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Each row's share of its exact ids that ``found`` contains [rows]."""
    return np.array([len(set(f.tolist()) & set(e.tolist())) / max(len(e), 1)
                     for f, e in zip(found, exact, strict=True)], dtype=np.float64)
