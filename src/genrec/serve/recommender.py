"""The in-process serving API: load a bundle, recommend from a history of raw item ids.

:meth:`Recommender.recommend` never raises for a model failure: an exception in the model, or a missed
``deadline_ms``, answers from the popularity list with ``fallback=True`` and a short ``reason`` (a small, fixed
set of strings, fit for a metric label); details go to ``warnings`` and the log. Bad arguments (``k < 1``, a
``query_weight`` outside [0, 1], timestamps that do not line up with the history) raise ``ValueError``.

A recommender is safe to share between threads: everything read while answering is built at load time and never
mutated; the lazily created parts (the query text encoder, the model thread, a loop's batcher) are created under a
lock. Concurrent requests are answered together (:mod:`genrec.serve.batching`): one retrieval and one ranker
forward pass for everything queued, each request scored as it would be alone; :meth:`recommend` batches on one
model thread per recommender, :meth:`recommend_async` on the event loop's own thread.

Two kinds of model serve through the same :class:`Recommender` (filters, warnings, fallbacks, deadline and query
blending are shared); a scorer (:mod:`genrec.serve.scorers`) holds the model-specific part:

- ID models (``genrec.models.SEQUENTIAL``: sasrec, hstu) score the whole catalog (``mode="model"``);
- a semantic-ID generator (``genrec.models.generators``: tiger, hstu-gen) answers by constrained beam search
  (``mode="generator"``): it runs with ``beam = max(min(k + |deny ∪ excluded seen items|, MAX_BEAM, n_items),
  config.beam_width)`` beams and keeps every beam, each beam item scored by its sequence log-probability and every
  other item -inf. Only beam items can be returned, so with ``allow`` (or many excluded items) fewer than ``k``
  items may come back; a warning says so, and the list is never padded with unscored items. With a ``query``, the
  z-scored log-probabilities of the beam items are blended with the z-scored query similarity
  (``mode="generator+query"``: the query re-weights the beams, it did not shape them), and a generator trained with
  ``model.query`` (TIGER only) first decodes conditioned on the query's content vector (``mode="generator+prompt"``,
  :mod:`genrec.models.tiger_query`): the query shapes the beams, then re-ranks them.

A bundle with an ID model may carry the generator as a second retriever (``generator.*`` files, see
:func:`genrec.serve.bundle.export_bundle`): :attr:`Recommender.retrievers` lists what a request may choose with
``retriever=`` (``"model"``: the ID model, ``"generator"``; None: the bundle's own model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Generator, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from genrec.content.query import ContentTable, QueryEncoder
from genrec.errors import GenrecError
from genrec.io import read_json
from genrec.models import SequentialModel
from genrec.models.generators import SemanticIdGenerator, is_generator
from genrec.serve.ann import ANN_FILE, AnnIndex
from genrec.serve.batching import BatchWorker, LoopBatcher
from genrec.serve.bundle import (
    CONTENT_FILES,
    GENERATOR_FILES,
    ITEM_TABLE_FILE,
    POPULARITY_FILE,
    PROJECTION_FILE,
    RANKER_FILES,
    load_manifest,
)
from genrec.serve.catalog import CATALOG_FILES, Catalog
from genrec.serve.filters import allowed_mask, check_k, id_list, note_unknown, popular_top, popularity_order
from genrec.serve.model_io import load_model, precompute
from genrec.serve.pipeline import Job, Pipeline
from genrec.serve.ranking import RankingStage, ranker_inputs
from genrec.serve.scorers import AnnScorer, GeneratorScorer, IdScorer

log = logging.getLogger(__name__)

# Fallback reasons (``Recommendation.reason``): few and fixed, so they can label a metric.
NO_HISTORY = "no usable history"
MODEL_ERROR = "model error"
DEADLINE = "deadline exceeded"
NO_QUERY_CONTENT = "query ignored: bundle has no content embeddings"
RETRIEVERS = ("model", "generator")  # what a request may name (Recommender.retrievers: what a bundle has)
MAX_BATCH = 32  # the most queued requests that share one pass through the models


@dataclass
class Recommendation:
    items: list[dict[str, Any]]  # item_id, score, and display fields (title, image path, ...)
    warnings: list[str] = field(default_factory=list)
    fallback: bool = False  # True: the popularity list answered (see ``reason``)
    reason: str | None = None  # why the fallback answered: NO_HISTORY, MODEL_ERROR or DEADLINE
    model_version: str | None = None  # the bundle's version
    truncated: bool = False  # the history was longer than the model reads; its most recent part was used
    mode: str = "model"  # model | model+query | generator | generator+query | content | popularity; "+ranker"
    # when the bundle's ranking stage reordered the list


class Recommender:
    def __init__(self, model: SequentialModel | SemanticIdGenerator, catalog: Catalog, manifest: dict[str, Any],
                 popular: list[str] | None = None, content: ContentTable | None = None, ann: AnnIndex | None = None,
                 ranker: RankingStage | None = None, table: torch.Tensor | None = None,
                 generator: SemanticIdGenerator | None = None):
        self.model, self.manifest, self.ranker = model.eval(), manifest, ranker
        self.path: Path | None = None  # the bundle folder, when loaded from one
        if is_generator(model):
            self._scorer: IdScorer | GeneratorScorer = GeneratorScorer(model)
        else:
            self._scorer = IdScorer(model, table) if ann is None else AnnScorer(model, ann, table)
        if generator is not None and (is_generator(model) or not is_generator(generator)):
            raise GenrecError("a second retriever must be a semantic-ID generator next to an ID model")
        self.generator = generator.eval() if generator is not None else None
        others = {"generator": GeneratorScorer(self.generator)} if self.generator is not None else {}
        self.retrievers = ["generator" if is_generator(model) else "model", *others]  # the first: the default
        self.catalog = catalog  # Arrow columns: only the rows an answer returns are decoded
        self.raw_ids = catalog.raw_ids
        self.n_items = catalog.n_items
        self.display = dict(catalog.display)
        self.index = catalog.index
        self.popular = popularity_order(catalog, popular)
        self.content = content
        if content is not None and content.vectors.shape[0] != self.n_items + 1:
            raise GenrecError(f"content embeddings have {content.vectors.shape[0]} rows; the catalog needs "
                              f"{self.n_items + 1}")
        self._query = QueryEncoder(content) if content is not None else None
        self._table_lock = threading.Lock()
        self._similarity: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pipeline = Pipeline(self._scorer, ranker, self._query, self._items, others)
        self._worker = BatchWorker(self._pipeline.run, MAX_BATCH, "genrec-recommend")
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBatcher] = \
            weakref.WeakKeyDictionary()

    @classmethod
    def load(cls, bundle: str | Path) -> Recommender:
        """Load a bundle; every checksum is verified first, and only safetensors / JSON / Arrow / Parquet / npy
        (and a FAISS index) are read.

        An ID model (sasrec, hstu) or a semantic-ID generator (tiger, hstu-gen: rebuilt by
        :func:`genrec.serve.model_io.load_model`, its codes travel in the weights). The large parts (the
        item table, the index's lists, the catalog) are memory-mapped: processes serving the same bundle share
        them through the page cache."""
        bundle = Path(bundle)
        manifest = load_manifest(bundle)
        files = manifest["files"]
        model = load_model(bundle, mmap=True)
        precompute(model)
        table = None
        if ITEM_TABLE_FILE in files:
            table = torch.from_numpy(np.load(bundle / ITEM_TABLE_FILE, mmap_mode="c"))
        ann = None
        if ANN_FILE in files:
            if table is None:
                with torch.no_grad():
                    table = model.item_table().detach().float().cpu()
            info = manifest["ann"]
            ann = AnnIndex.load(bundle / ANN_FILE, nprobe=int(info["nprobe"]), refine=int(info.get("refine") or 0),
                                table=table.numpy()[1:])
        catalog = Catalog.load(bundle, [name for name in files if name in CATALOG_FILES])
        popular = None
        if POPULARITY_FILE in files:  # only files the manifest lists (and so were verified) are read
            popular = [str(x) for x in read_json(bundle / POPULARITY_FILE)["items"]]
        content = None
        if all(name in files for name in CONTENT_FILES):
            projection = load_file(bundle / PROJECTION_FILE) if PROJECTION_FILE in files else None
            content = ContentTable.from_vectors(load_file(bundle / CONTENT_FILES[0])["vectors"],
                                                read_json(bundle / CONTENT_FILES[1]), projection)
        ranker = None
        if all(name in files for name in RANKER_FILES):
            ranker = RankingStage.load(bundle, list(catalog.raw_ids))
        generator = None
        if all(name in files for name in GENERATOR_FILES):
            generator = load_model(bundle, mmap=True, stem="generator")
            precompute(generator)
        rec = cls(model, catalog, manifest, popular, content, ann, ranker, table, generator)
        rec.path = bundle
        return rec

    # --- small accessors (the HTTP layer uses them) ------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    @property
    def max_history(self) -> int:
        """How many of the most recent history items the model reads (the most either retriever reads)."""
        return max(int(m.config.max_len) for m in (self.model, self.generator) if m is not None)

    @property
    def history_needed(self) -> int:
        """How many of the most recent events a request should read: what retrieval or the ranker reads."""
        return max(self.max_history, self.ranker.max_len if self.ranker is not None else 0)

    def knows(self, item_id: Any) -> bool:
        return str(item_id) in self.index

    def popular_ids(self, n: int = 10) -> list[str]:
        return [self.raw_ids[i - 1] for i in self.popular[:max(int(n), 0)].tolist()]

    def close(self) -> None:
        """Stop the model thread once the requests queued so far are answered (a recommender is still usable
        afterwards: the thread restarts on demand)."""
        self._worker.close()

    # --- recommend ----------------------------------------------------------------------------------------

    def recommend(self, history: Iterable[Any], k: int = 10, *, deadline_ms: float | None = None,
                  **options: Any) -> Recommendation:
        """Top-``k`` items after ``history`` (raw item ids, oldest first).

        Unknown ids (in ``history``, ``allow`` or ``deny``) are skipped with a warning; only the most recent
        :attr:`max_history` known items are read (``truncated=True`` when more were given). ``allow``: only
        these items may be returned; ``deny``: never these; ``exclude_seen``: never the history's items.
        ``query``: text that steers the ranking when the bundle has content embeddings: final score =
        ``(1 - query_weight) * z(model) + query_weight * z(cosine(query, item))``, z-scored over the catalog;
        with no usable history the query alone ranks (``mode="content"``). ``retriever``: one of :attr:`retrievers`
        (None: the bundle's own model; one the bundle lacks is ignored with a warning); a query-conditioned generator
        decodes with the query, then blends it.
        No usable history and no query, a model error or a missed ``deadline_ms``: the popularity list answers
        (``fallback=True``, ``reason``).

        With a ranking stage in the bundle (:mod:`genrec.serve.ranking`) the filtered top ``ranker.candidates``
        are reordered by the ranker and every item carries ``retrieval_score`` and ``predictions`` (per task);
        ``actions`` (one dict of signals per history item, or None for the default interaction), ``user_id``
        (the ranker's user features), ``history_context`` (one dict per history item: where it was shown, e.g.
        ``{"tab": 1}``) and ``context`` (the request's, every candidate's) feed it. A bad action or context raises
        ValueError; with ``strict_actions=False`` (stored events, which may predate this ranker) the history's
        unknown signals and context names are ignored (the request's own ``context`` is always checked). A ranker
        failure keeps the retrieval order (warning, no fallback). ``ranker_weight`` replaces the bundle's weight of
        the ranker score for this request (an experiment arm's setting; no ranking stage: ignored).
        """
        t0 = time.perf_counter()
        steps = self._steps(history, k, deadline_ms=deadline_ms, **options)
        try:
            job = next(steps)
        except StopIteration as done:  # answered without the model (no usable history)
            return done.value
        future = self._worker.submit(job)
        try:
            outcome: tuple[str, Any] = ("ok", future.result(timeout=_left(deadline_ms, t0)))
        except FutureTimeout:
            future.cancel()  # not started yet: never runs; running: finishes in the background, ignored
            outcome = DEADLINE_OUTCOME
        except Exception as e:  # noqa: BLE001 - a model failure is answered from the fallback
            outcome = ("error", e)
        return _finish(steps, outcome)

    async def recommend_async(self, history: Iterable[Any], k: int = 10, *, deadline_ms: float | None = None,
                              **options: Any) -> Recommendation:
        """:meth:`recommend` for an event loop: everything runs on the loop's thread, the model in a batch with the
        loop's concurrent requests (:class:`~genrec.serve.batching.LoopBatcher`). A request whose batch has not
        started when ``deadline_ms`` passes is answered from popularity; a started batch runs to its end (it holds
        the loop, so nothing could answer sooner)."""
        t0 = time.perf_counter()
        steps = self._steps(history, k, deadline_ms=deadline_ms, **options)
        try:
            job = next(steps)
        except StopIteration as done:
            return done.value
        try:  # on the deadline wait_for cancels the future: a batch that has not started skips it
            outcome = ("ok", await asyncio.wait_for(self._batcher().submit(job), _left(deadline_ms, t0)))
        except TimeoutError:
            outcome = DEADLINE_OUTCOME
        except Exception as e:  # noqa: BLE001 - a model failure is answered from the fallback
            outcome = ("error", e)
        return _finish(steps, outcome)

    def _batcher(self) -> LoopBatcher:
        """The running loop's batcher (one per loop: a batch's futures belong to one loop)."""
        loop = asyncio.get_running_loop()
        with self._table_lock:
            batcher = self._batchers.get(loop)
            if batcher is None:
                batcher = self._batchers[loop] = LoopBatcher(self._pipeline.run, MAX_BATCH)
            return batcher

    def _steps(self, history: Iterable[Any], k: int = 10, *, timestamps: Iterable[Any] | None = None,
               exclude_seen: bool = True, allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
               query: str | None = None, query_weight: float = 0.5, deadline_ms: float | None = None,
               actions: Iterable[dict[str, Any] | None] | None = None, user_id: str | None = None,
               strict_actions: bool = True, history_context: Iterable[dict[str, Any] | None] | None = None,
               context: dict[str, Any] | None = None, ranker_weight: float | None = None,
               retriever: str | None = None) -> Generator[Job, tuple, Recommendation]:
        """One recommendation as a generator shared by the sync and async drivers: check the arguments (bad ones
        raise ValueError at once), then either return an answer that needs no model, or yield the model's work (a
        :class:`~genrec.serve.pipeline.Job`, run in a batch with concurrent requests') and receive its
        outcome (("ok", (items, mode, warnings)), ("error", exception) or DEADLINE_OUTCOME) to build the answer."""
        k = check_k(k)
        if retriever is not None and retriever not in RETRIEVERS:
            raise ValueError(f"retriever {retriever!r}: must be one of {', '.join(map(repr, RETRIEVERS))}")
        chosen = self.generator if retriever == "generator" and self.generator is not None else self.model
        if not 0.0 <= float(query_weight) <= 1.0:
            raise ValueError(f"query_weight must be in [0, 1], got {query_weight}")
        if deadline_ms is not None and not float(deadline_ms) > 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        history = id_list(history, "history")
        ts = None
        if timestamps is not None:
            ts = id_list(timestamps, "timestamps")
            if len(ts) != len(history):
                raise ValueError(f"timestamps has {len(ts)} entries for a history of {len(history)} items")
            try:
                ts = [int(t) for t in ts]
            except (TypeError, ValueError):
                raise ValueError("timestamps must be integers (seconds)") from None
        inputs = ranker_inputs(self.ranker, history, actions, history_context, context, strict_actions)
        if query is not None:
            if not isinstance(query, str):
                raise ValueError(f"query must be a string, got {type(query).__name__}")
            query = query.strip() or None

        warnings: list[str] = []
        if retriever is not None and retriever not in self.retrievers:  # a bundle without it: its own model answers
            warnings.append(f"retriever {retriever!r} ignored: this bundle serves {self.retrievers[0]!r} only")
        dense = [int(i) or None for i in self.catalog.lookup(history)]
        positions = [j for j, i in enumerate(dense) if i is not None]
        note_unknown(warnings, [h for h, i in zip(history, dense, strict=True) if i is None], "")
        known = [dense[j] for j in positions]
        known_ts = [ts[j] for j in positions] if ts is not None else None
        allow = None if allow is None else id_list(allow, "allow")
        deny = None if deny is None else id_list(deny, "deny")
        deny_dense = self.catalog.lookup(deny) if deny is not None else None
        mask = allowed_mask(self.catalog, allow, deny, warnings, deny_dense)
        blocked = set(known) if exclude_seen else set()
        if deny_dense is not None:
            blocked |= {int(i) for i in deny_dense if i}
        width = k + len(blocked)  # candidates the model must propose so that k survive the filters
        if exclude_seen and known:
            mask[torch.tensor(known)] = False
        reads = int(chosen.config.max_len)
        truncated = len(known) > reads
        if truncated:
            known, known_ts = known[-reads:], known_ts[-reads:] if known_ts else known_ts
        if query is not None and self.content is None:
            warnings.append(NO_QUERY_CONTENT)
            query = None
        if not known and query is None:
            return self._fallback(k, mask, warnings, NO_HISTORY, truncated)
        if known and known_ts is None and chosen.use_timestamps:
            warnings.append("the model reads timestamps but none were given; time gaps are ignored")

        allowed = mask.nonzero().squeeze(1) if allow is not None else None
        job = Job(known, known_ts, query, float(query_weight), width, allowed, mask, k, user_id, history, ts, inputs,
                  ranker_weight, None if chosen is self.model else "generator")
        status, value = yield job
        if status == "deadline":
            warnings.append(f"no answer within the {deadline_ms:g} ms deadline; answered from popularity")
            return self._fallback(k, mask, warnings, DEADLINE, truncated)
        if status == "error":
            log.error("recommend failed; answering from popularity", exc_info=value)
            warnings.append(f"the model failed ({type(value).__name__}); answered from popularity")
            return self._fallback(k, mask, warnings, MODEL_ERROR, truncated)
        items, mode, more = value
        return Recommendation(items, warnings + more, fallback=False, model_version=self.version,
                              truncated=truncated, mode=mode)

    # --- similar ------------------------------------------------------------------------------------------

    def similar(self, item_id: Any, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items closest to ``item_id`` (itself excluded), each a dict like :attr:`Recommendation.items`
        with ``score`` the cosine: over the content embeddings when the bundle has them (and the item has
        content), else over the model's item representation: an ID model's output item embeddings, or for the
        generator its ``item_table`` (tiger: the mean of the embeddings of the item's code tokens; hstu-gen: the
        item's input vector, its codes' embeddings summed plus its id row). Unknown id: KeyError."""
        k = check_k(k)
        i = int(self.catalog.lookup([item_id])[0])
        if not i:
            raise KeyError(f"unknown item id {item_id!r}: not in this bundle's catalog")
        mask = torch.ones(self.n_items + 1, dtype=torch.bool)
        mask[0] = mask[i] = False
        if self.content is not None and bool(self.content.has[i]):
            table = self.content.vectors
            mask &= self.content.has
            scores = table @ table[i]
        else:
            table, inv_norm = self._similarity_table()
            scores = (table @ table[i]) * inv_norm * inv_norm[i]  # cosine, without a normalised copy of the table
        scores[~mask] = -torch.inf
        n = int(mask.sum())
        top = torch.topk(scores, min(k, n)).indices if n else torch.zeros(0, dtype=torch.int64)
        return self._items(top.numpy(), scores[top].tolist())

    # --- helpers ------------------------------------------------------------------------------------------

    def _fallback(self, k: int, mask: torch.Tensor, warnings: list[str], reason: str,
                  truncated: bool) -> Recommendation:
        return Recommendation(self._items(popular_top(self.popular, mask, k), None), warnings, fallback=True,
                              reason=reason, model_version=self.version, truncated=truncated, mode="popularity")

    def _similarity_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's item representation and each row's inverse norm (row 0, the padding, 0), built on the
        first similar-items request."""
        with self._table_lock:
            if self._similarity is None:
                with torch.no_grad():
                    table = self._scorer.item_table()
                    self._similarity = table, 1.0 / table.norm(dim=1).clamp(min=1e-12)
            return self._similarity

    def _items(self, ids: np.ndarray, scores: list[float] | None) -> list[dict[str, Any]]:
        out = []
        for j, i in enumerate(np.asarray(ids).tolist()):
            row = {"item_id": self.raw_ids[i - 1], "score": None if scores is None else float(scores[j])}
            row.update({k: v[i - 1] for k, v in self.display.items()})
            out.append(row)
        return out


DEADLINE_OUTCOME = ("deadline", None)


def _left(deadline_ms: float | None, t0: float) -> float | None:
    """Seconds left of a deadline that started at ``t0`` (None: no deadline)."""
    return None if deadline_ms is None else max(float(deadline_ms) / 1000 - (time.perf_counter() - t0), 0.0)


def _finish(steps: Generator, outcome: tuple[str, Any]) -> Recommendation:
    try:
        steps.send(outcome)
    except StopIteration as done:
        return done.value
    raise RuntimeError("recommend steps did not finish")  # pragma: no cover - the generator returns once
