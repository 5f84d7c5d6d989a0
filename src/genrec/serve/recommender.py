"""The in-process serving API: load a bundle, recommend from a history of raw item ids.

:meth:`Recommender.recommend` never raises for a model failure: an exception in the model, or a missed
``deadline_ms``, answers from the popularity list with ``fallback=True`` and a short ``reason`` (a small, fixed
set of strings, fit for a metric label); details go to ``warnings`` and the log. Bad arguments (``k < 1``, a
``query_weight`` outside [0, 1], timestamps that do not line up with the history) raise ``ValueError``.

A recommender is safe to share between threads: everything read while answering is built at load time and never
mutated; the lazily created parts (the query text encoder, the deadline worker pool) are created under a lock.

Two kinds of model serve through the same :class:`Recommender` (filters, warnings, fallbacks, deadline and query
blending are shared); a small internal scorer holds the model-specific part:

- ID models (``genrec.models.SEQUENTIAL``: sasrec, hstu) score the whole catalog (``mode="model"``);
- the semantic-ID generator (``tiger``) answers by constrained beam search (``mode="generator"``): it runs with
  ``beam = max(min(k + |deny ∪ excluded seen items|, MAX_BEAM, n_items), config.beam_width)`` beams and keeps
  every beam, each beam item scored by its sequence log-probability and every other item -inf. Only beam
  items can be returned, so with ``allow`` (or many excluded items) fewer than ``k`` items may come back; a
  warning says so, and the list is never padded with unscored items. With a ``query``, the z-scored
  log-probabilities of the beam items are blended with the z-scored query similarity (``mode="generator+query"``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genrec.content.text import text_encoder
from genrec.data.jagged import Jagged
from genrec.errors import GenrecError
from genrec.io import read_json
from genrec.models import SequentialModel
from genrec.models.tiger import TIGER
from genrec.serve.ann import ANN_FILE, AnnIndex
from genrec.serve.batching import Batcher
from genrec.serve.bundle import (
    CONTENT_FILES,
    ITEM_TABLE_FILE,
    POPULARITY_FILE,
    PROJECTION_FILE,
    RANKER_FILES,
    load_manifest,
)
from genrec.serve.catalog import CATALOG_FILES, Catalog
from genrec.serve.model_io import load_model
from genrec.serve.ranking import RankerInputs, RankingStage

log = logging.getLogger(__name__)

# Fallback reasons (``Recommendation.reason``): few and fixed, so they can label a metric.
NO_HISTORY = "no usable history"
MODEL_ERROR = "model error"
DEADLINE = "deadline exceeded"
NO_QUERY_CONTENT = "query ignored: bundle has no content embeddings"
MAX_ID_WARNINGS = 10  # per list (history, allow, deny); the rest are counted in one line
DEADLINE_WORKERS = 4
MAX_BEAM = 256  # the most beams the generator runs for one request, however many items are excluded
ANN_MARGIN = 100  # extra candidates the approximate index proposes beyond what the filters need
FALLBACK_BLOCK = 4096  # popularity-ordered items checked against the filters per step


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


@dataclass
class _Content:
    """The bundle's content embeddings: rows L2-normalised (items without content stay zero)."""

    vectors: torch.Tensor  # [n_items + 1, dim]
    has: torch.Tensor  # [n_items + 1] bool: the item has a content vector
    meta: dict[str, Any]
    projection: dict[str, torch.Tensor] | None  # pca map (mean, components) when the table was projected


def _hidden_states(model: SequentialModel, jobs: list[tuple[list[int], list[int] | None]]) -> list[torch.Tensor]:
    """The last hidden state [D] after each (dense history, timestamps or None); histories with and without
    timestamps run as separate passes."""
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for timed in (True, False):
        idx = [i for i, (_, ts) in enumerate(jobs) if (ts is not None) == timed]
        if not idx:
            continue
        ts = Jagged.from_lists([jobs[i][1] for i in idx]) if timed and model.use_timestamps else None
        h = model.last_hidden(Jagged.from_lists([jobs[i][0] for i in idx]), timestamps=ts).float().cpu()
        for row, i in enumerate(idx):
            out[i] = h[row]
    return out  # type: ignore[return-value]


class _IdScorer:
    """An ID model (sasrec, hstu): scores over the whole catalog. ``table``: the item table when the bundle stores
    it (memory-mapped); else the model's, computed once here, not per request."""

    mode = "model"

    def __init__(self, model: SequentialModel, table: torch.Tensor | None = None):
        self.model = model
        self.batcher = Batcher(lambda jobs: _hidden_states(model, jobs))
        if table is None:
            with torch.no_grad():
                table = model.item_table().detach().float().cpu()
        self.items = table

    def item_table(self) -> torch.Tensor:
        return self.items

    def score(self, known: list[int], known_ts: list[int] | None, width: int,
              allow: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
        return self.items @ self.batcher.submit((known, known_ts)), []


class _AnnScorer(_IdScorer):
    """An ID model over a large catalog: the FAISS index proposes candidates, each scored by its inner product;
    every other item -inf. ``width`` (k plus the items the filters remove) + ANN_MARGIN are proposed, so the
    filters leave k; an allow list is scored exactly instead (it may hold items the index did not propose)."""

    mode = "model+ann"

    def __init__(self, model: SequentialModel, ann: AnnIndex, table: torch.Tensor | None = None):
        super().__init__(model, table)
        self.ann = ann

    def score(self, known: list[int], known_ts: list[int] | None, width: int,
              allow: torch.Tensor | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
        h = self.batcher.submit((known, known_ts))
        if allow is not None:
            return (allow, self.items[allow] @ h), []
        ids, found = self.ann.search(h.numpy()[None], min(width + ANN_MARGIN, self.model.n_items))
        keep = ids[0] > 0
        return (torch.from_numpy(ids[0][keep]), torch.from_numpy(found[0][keep])), []


class _GeneratorScorer:
    """The semantic-ID generator (tiger): beam items get their log-probability, every other item -inf."""

    mode = "generator"

    def __init__(self, model: TIGER):
        self.model = model
        model.trie()  # built once here, not lazily by concurrent requests

    def beams(self, width: int) -> int:
        """Beams for a request that needs ``width`` candidates (k plus the items it excludes)."""
        return max(min(int(width), MAX_BEAM, self.model.n_items), int(self.model.config.beam_width))

    def item_table(self) -> torch.Tensor:
        """Each item's representation: the mean of its code tokens' embeddings (row 0, the padding, zero)."""
        m = self.model
        out = m.tok_emb(m.code_tokens(m.codes.clamp(min=0))).mean(dim=1).detach().float().cpu()
        out[0] = 0
        return out

    def score(self, known: list[int], known_ts: list[int] | None, width: int,
              allow: torch.Tensor | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
        beam = self.beams(width)
        history = torch.tensor([known], dtype=torch.int64, device=self.model.codes.device)
        items, logp = self.model.recommend(history, k=beam, beam=beam)
        items, logp = items[0].cpu(), logp[0].float().cpu()
        keep = torch.isfinite(logp) & (items > 0)
        return (items[keep], logp[keep]), []


class Recommender:
    def __init__(self, model: SequentialModel | TIGER, catalog: Catalog, manifest: dict[str, Any],
                 popular: list[str] | None = None, content: _Content | None = None, ann: AnnIndex | None = None,
                 ranker: RankingStage | None = None, table: torch.Tensor | None = None):
        self.model, self.manifest, self.ranker = model.eval(), manifest, ranker
        if isinstance(model, TIGER):
            self._scorer: _IdScorer | _GeneratorScorer = _GeneratorScorer(model)
        else:
            self._scorer = _IdScorer(model, table) if ann is None else _AnnScorer(model, ann, table)
        self.catalog = catalog  # Arrow columns: only the rows an answer returns are decoded
        self.raw_ids = catalog.raw_ids
        self.n_items = catalog.n_items
        self.display = dict(catalog.display)
        self.index = catalog.index
        self.popular = _popularity_order(catalog, popular)
        self.content = content
        if content is not None and content.vectors.shape[0] != self.n_items + 1:
            raise GenrecError(f"content embeddings have {content.vectors.shape[0]} rows; the catalog needs "
                              f"{self.n_items + 1}")
        self._encoder_lock, self._pool_lock, self._table_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._encoder: Any = None
        self._encoder_error: str | None = None
        self._query_dim: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._similarity: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def load(cls, bundle: str | Path) -> Recommender:
        """Load a bundle; every checksum is verified first, and only safetensors / JSON / Arrow / Parquet / npy
        (and a FAISS index) are read.

        An ID model (sasrec, hstu) or the semantic-ID generator (tiger, rebuilt like
        :func:`genrec.train.generator.load_generator`: its codes travel in the weights). The large parts (the
        item table, the index's lists, the catalog) are memory-mapped: processes serving the same bundle share
        them through the page cache."""
        bundle = Path(bundle)
        manifest = load_manifest(bundle)
        files = manifest["files"]
        model = load_model(bundle, mmap=True)
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
            vectors = load_file(bundle / CONTENT_FILES[0])["vectors"].to(torch.float32)
            meta = read_json(bundle / CONTENT_FILES[1])
            projection = load_file(bundle / PROJECTION_FILE) if PROJECTION_FILE in files else None
            norms = vectors.norm(dim=1)
            content = _Content(F.normalize(vectors, dim=1), norms > 0, meta, projection)
        ranker = None
        if all(name in files for name in RANKER_FILES):
            ranker = RankingStage.load(bundle, list(catalog.raw_ids))
        return cls(model, catalog, manifest, popular, content, ann, ranker, table)

    # --- small accessors (the HTTP layer uses them) ------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    @property
    def max_history(self) -> int:
        """How many of the most recent history items the model reads."""
        return int(self.model.config.max_len)

    @property
    def history_needed(self) -> int:
        """How many of the most recent events a request should read: what retrieval or the ranker reads."""
        return max(self.max_history, self.ranker.max_len if self.ranker is not None else 0)

    def knows(self, item_id: Any) -> bool:
        return str(item_id) in self.index

    def popular_ids(self, n: int = 10) -> list[str]:
        return [self.raw_ids[i - 1] for i in self.popular[:max(int(n), 0)].tolist()]

    def close(self) -> None:
        """Stop the deadline worker threads (a recommender is still usable afterwards: they restart on demand)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # --- recommend ----------------------------------------------------------------------------------------

    def recommend(self, history: Iterable[Any], k: int = 10, *, deadline_ms: float | None = None,
                  **options: Any) -> Recommendation:
        """Top-``k`` items after ``history`` (raw item ids, oldest first).

        Unknown ids (in ``history``, ``allow`` or ``deny``) are skipped with a warning; only the most recent
        :attr:`max_history` known items are read (``truncated=True`` when more were given). ``allow``: only
        these items may be returned; ``deny``: never these; ``exclude_seen``: never the history's items.
        ``query``: text that steers the ranking when the bundle has content embeddings: final score =
        ``(1 - query_weight) * z(model) + query_weight * z(cosine(query, item))``, z-scored over the catalog;
        with no usable history the query alone ranks (``mode="content"``). No usable history and no query, a
        model error or a missed ``deadline_ms``: the popularity list answers (``fallback=True``, ``reason``).

        With a ranking stage in the bundle (:mod:`genrec.serve.ranking`) the filtered top ``ranker.candidates``
        are reordered by the ranker and every item carries ``retrieval_score`` and ``predictions`` (per task);
        ``actions`` (one dict of signals per history item, or None for the default interaction), ``user_id``
        (the ranker's user features), ``history_context`` (one dict per history item: where it was shown, e.g.
        ``{"tab": 1}``) and ``context`` (the request's, every candidate's) feed it. A bad action or context raises
        ValueError; with ``strict_actions=False`` (stored events, which may predate this ranker) the history's
        unknown signals and context names are ignored (the request's own ``context`` is always checked). A ranker
        failure keeps the retrieval order (warning, no fallback).
        """
        t0 = time.perf_counter()
        steps = self._steps(history, k, deadline_ms=deadline_ms, **options)
        try:
            compute = next(steps)
        except StopIteration as done:  # answered without the model (no usable history)
            return done.value
        if deadline_ms is None:
            outcome = _run(compute)
        else:
            future = self._executor().submit(_run, compute)
            try:
                outcome = future.result(timeout=max(float(deadline_ms) / 1000 - (time.perf_counter() - t0), 0.0))
            except FutureTimeout:
                future.cancel()  # not started yet: never runs; running: finishes in the background, ignored
                outcome = DEADLINE_OUTCOME
        return _finish(steps, outcome)

    async def recommend_async(self, history: Iterable[Any], k: int = 10, *, deadline_ms: float | None = None,
                              **options: Any) -> Recommendation:
        """:meth:`recommend` for an event loop: the checks and the answer run on the loop, the model on a worker
        thread, awaited with the deadline (no thread is held while it waits)."""
        t0 = time.perf_counter()
        steps = self._steps(history, k, deadline_ms=deadline_ms, **options)
        try:
            compute = next(steps)
        except StopIteration as done:
            return done.value
        future = asyncio.wrap_future(self._executor().submit(_run, compute))
        try:
            timeout = None if deadline_ms is None else max(float(deadline_ms) / 1000 - (time.perf_counter() - t0), 0)
            outcome = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            future.cancel()
            outcome = DEADLINE_OUTCOME
        return _finish(steps, outcome)

    def _steps(self, history: Iterable[Any], k: int = 10, *, timestamps: Iterable[Any] | None = None,
               exclude_seen: bool = True, allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
               query: str | None = None, query_weight: float = 0.5, deadline_ms: float | None = None,
               actions: Iterable[dict[str, Any] | None] | None = None, user_id: str | None = None,
               strict_actions: bool = True, history_context: Iterable[dict[str, Any] | None] | None = None,
               context: dict[str, Any] | None = None) -> Generator[Callable[[], tuple], tuple, Recommendation]:
        """One recommendation as a generator shared by the sync and async drivers: check the arguments (bad ones
        raise ValueError at once), then either return an answer that needs no model, or yield the model's work
        (a callable returning (items, mode, warnings)) and receive its outcome (:func:`_run`: ("ok", value),
        ("error", exception) or DEADLINE_OUTCOME) to build the answer."""
        k = _check_k(k)
        if not 0.0 <= float(query_weight) <= 1.0:
            raise ValueError(f"query_weight must be in [0, 1], got {query_weight}")
        if deadline_ms is not None and not float(deadline_ms) > 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        history = _id_list(history, "history")
        ts = None
        if timestamps is not None:
            ts = _id_list(timestamps, "timestamps")
            if len(ts) != len(history):
                raise ValueError(f"timestamps has {len(ts)} entries for a history of {len(history)} items")
            try:
                ts = [int(t) for t in ts]
            except (TypeError, ValueError):
                raise ValueError("timestamps must be integers (seconds)") from None
        inputs = self._ranker_inputs(history, actions, history_context, context, strict_actions)
        if query is not None:
            if not isinstance(query, str):
                raise ValueError(f"query must be a string, got {type(query).__name__}")
            query = query.strip() or None

        warnings: list[str] = []
        dense = [int(i) or None for i in self.catalog.lookup(history)]
        positions = [j for j, i in enumerate(dense) if i is not None]
        _unknown(warnings, [h for h, i in zip(history, dense, strict=True) if i is None], "")
        known = [dense[j] for j in positions]
        known_ts = [ts[j] for j in positions] if ts is not None else None
        allow = None if allow is None else _id_list(allow, "allow")
        deny = None if deny is None else _id_list(deny, "deny")
        mask = self._mask(allow, deny, warnings)
        blocked = set(known) if exclude_seen else set()
        if deny is not None:
            blocked |= {int(i) for i in self.catalog.lookup(deny) if i}
        width = k + len(blocked)  # candidates the model must propose so that k survive the filters
        if exclude_seen and known:
            mask[torch.tensor(known)] = False
        truncated = len(known) > self.max_history
        if truncated:
            known, known_ts = known[-self.max_history:], known_ts[-self.max_history:] if known_ts else known_ts
        if query is not None and self.content is None:
            warnings.append(NO_QUERY_CONTENT)
            query = None
        if not known and query is None:
            return self._fallback(k, mask, warnings, NO_HISTORY, truncated)
        if known and known_ts is None and self.model.use_timestamps:
            warnings.append("the model reads timestamps but none were given; time gaps are ignored")

        allowed = mask.nonzero().squeeze(1) if allow is not None else None

        def compute() -> tuple[list[dict[str, Any]], str, list[str]]:
            scores, mode, more = self._rank(known, known_ts, query, float(query_weight), width, allowed)
            return self._select(scores, mode, more, mask, k, width, user_id, history, ts, inputs)

        status, value = yield compute
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

    def _select(self, scores: Any, mode: str, warnings: list[str], mask: torch.Tensor, k: int, width: int,
                user_id: str | None, history: list[Any], ts: list[int] | None,
                inputs: RankerInputs | None) -> tuple[list[dict[str, Any]], str, list[str]]:
        """The filters and top-k over the scores (dense, or a partial scorer's (ids, scores)); with a ranking
        stage, its reordering of the top ``ranker.candidates``. Returns (items, mode, warnings)."""
        pool = k if self.ranker is None else max(k, self.ranker.candidates)  # what the ranker reorders
        if isinstance(scores, tuple):  # a partial scorer: its candidates' ids and scores only
            ids, values = scores
            keep = mask[ids]
            ids, values = ids[keep], values[keep]
            n = len(ids)
            if n < k and n < (n_allowed := int(mask.sum())):
                if isinstance(self._scorer, _GeneratorScorer):
                    source = f"the generator's {self._scorer.beams(width)} beams"
                else:
                    source = "the approximate index's candidates"
                warnings.append(f"only {n} of the {n_allowed} allowed items are among {source}; "
                                f"returning {n} instead of {k}")
            order = torch.topk(values, min(pool, n)).indices if n else torch.zeros(0, dtype=torch.int64)
            top, top_scores = ids[order], values[order]
        else:
            scores = scores.clone()
            scores[~mask] = -torch.inf
            n = int(mask.sum())
            top = torch.topk(scores, min(pool, n)).indices if n else torch.zeros(0, dtype=torch.int64)
            top_scores = scores[top]
        if self.ranker is None:
            return self._items(top.numpy(), top_scores.tolist()), mode, warnings
        items, ranked = self._rerank(user_id, history, ts, inputs, top.numpy(), top_scores.double().numpy(), k,
                                     warnings)
        return items, mode + "+ranker" if ranked else mode, warnings

    def _ranker_inputs(self, history: list[Any], actions: Iterable[Any] | None, history_context: Iterable[Any] | None,
                       context: Any, strict: bool) -> RankerInputs | None:
        """What the ranker reads of the history's actions and contexts and the request's context (None without a
        ranking stage); ValueError on bad input."""
        actions = _per_event(actions, history, "actions", "(signal -> number)")
        history_context = _per_event(history_context, history, "history_context", "(name -> value)")
        if context is not None and not isinstance(context, dict):
            raise ValueError(f"context must be an object (name -> value) or null, got {type(context).__name__}")
        if self.ranker is None:
            return None
        return self.ranker.encode(actions, history_context, context, strict=strict)

    def _rerank(self, user_id: str | None, history: list[Any], ts: list[int] | None, inputs: RankerInputs | None,
                top: np.ndarray, scores: np.ndarray, k: int, warnings: list[str]) -> tuple[list[dict], bool]:
        """The ranking stage over the retrieval pool: (the top-k items with predictions, whether it ran)."""
        assert self.ranker is not None and inputs is not None
        try:
            ranked = self.ranker.rerank(user_id, [str(h) for h in history], ts, inputs, top, scores)
        except Exception as e:  # noqa: BLE001 - the retrieval order still answers
            log.exception("ranking stage failed; answering in retrieval order")
            warnings.append(f"the ranker failed ({type(e).__name__}); answered in retrieval order")
            return self._items(top[:k], scores[:k].tolist()), False
        pick = ranked.order[:k]
        items = self._items(top[pick], ranked.final[pick].tolist())
        for row, j in zip(items, pick.tolist(), strict=True):
            row["retrieval_score"] = float(scores[j])
            row["predictions"] = {t: None if np.isnan(v[j]) else float(v[j]) for t, v in ranked.predictions.items()}
        return items, True

    def _rank(self, known: list[int], known_ts: list[int] | None, query: str | None,
              weight: float, width: int, allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, str, list[str]]:
        """Scores over the catalog [n_items + 1] (row 0 unused) or, from a partial scorer (the generator, an
        approximate index), (candidate ids, their scores); the mode; and warnings. ``width``: how many
        candidates the request needs (the generator's beam count follows it); ``allowed``: the only items that
        may be returned, when the request has an allow list."""
        warnings: list[str] = []
        q = None
        if query is not None:
            try:
                q = self._query_similarity(query)
            except Exception as e:
                if not known:
                    raise
                log.warning("query encoding failed: %s", e)
                warnings.append(f"query ignored: it could not be encoded ({type(e).__name__}: {e})")
        if not known:
            assert q is not None
            return q, "content", warnings
        scores, more = self._scorer.score(known, known_ts, width, allowed)
        warnings += more
        mode = self._scorer.mode
        if q is None:
            return scores, mode, warnings
        if isinstance(scores, tuple):  # blend over the candidates only
            ids, values = scores
            return (ids, (1 - weight) * _zscore_all(values) + weight * _zscore(q)[ids]), mode + "+query", warnings
        return (1 - weight) * _zscore(scores) + weight * _zscore(q), mode + "+query", warnings

    def _query_similarity(self, query: str) -> torch.Tensor:
        """cosine(query, item content) [n_items + 1], the query embedded like the catalog's text."""
        assert self.content is not None
        encoder, dim = self._query_encoder()
        text = np.asarray(encoder.encode([query]), dtype=np.float32).reshape(1, -1)
        if text.shape[1] != dim:
            raise GenrecError(f"the text encoder gives {text.shape[1]}-d vectors; the content table's text has {dim}")
        x = torch.from_numpy(self._to_content_space(text))
        return (self.content.vectors @ F.normalize(x, dim=1)[0]).float()

    def _query_encoder(self) -> tuple[Any, int]:
        """The text encoder of the content table: created and loaded once, under a lock (a failure is kept and
        raised again, so a broken encoder is not reloaded on every request)."""
        assert self.content is not None
        with self._encoder_lock:
            if self._encoder is None and self._encoder_error is None:
                try:
                    meta = self.content.meta
                    if "text" not in meta.get("modalities", ["text"]) or not meta.get("text_model"):
                        raise GenrecError("the content embeddings hold no text (no text model named)")
                    encoder = text_encoder(str(meta["text_model"]))
                    load = getattr(encoder, "load", None)
                    if callable(load):
                        load()
                    self._query_dim = int(meta.get("text_dim") or encoder.dim)
                    self._encoder = encoder
                except Exception as e:
                    self._encoder_error = f"{type(e).__name__}: {e}"
            if self._encoder_error is not None:
                raise GenrecError(f"no text encoder for queries ({self._encoder_error})")
            return self._encoder, int(self._query_dim)  # type: ignore[arg-type]

    def _to_content_space(self, text: np.ndarray) -> np.ndarray:
        """Fuse a text vector the way the catalog was fused (genrec.content.encode.fuse): L2-normalise and weigh
        the text block, zeros for the other modalities, then the table's projection."""
        from genrec.content.encode import FusionConfig, fit_projection, l2_normalize

        assert self.content is not None
        meta = self.content.meta
        fusion = FusionConfig.model_validate(meta.get("fusion") or {})
        blocks = []
        for name in meta.get("modalities", ["text"]):
            if name == "text":
                blocks.append(l2_normalize(text) * np.float32(fusion.weights.get("text", 1.0)))
            else:
                blocks.append(np.zeros((1, int(meta.get(f"{name}_dim", 0))), np.float32))
        x = np.concatenate(blocks, axis=1)
        if fusion.projection == "pca":
            if self.content.projection is None:
                raise GenrecError("the content table was projected with pca, but the bundle has no projection")
            p = self.content.projection
            x = ((x - p["mean"].numpy()) @ p["components"].numpy()).astype(np.float32)
        elif fusion.projection == "random":
            proj = fit_projection(x, fusion)
            assert proj is not None
            x = proj(x)
        if x.shape[1] != self.content.vectors.shape[1]:
            raise GenrecError(f"the query maps to {x.shape[1]} dimensions; the content table has "
                              f"{self.content.vectors.shape[1]}")
        return x

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(DEADLINE_WORKERS, thread_name_prefix="genrec-recommend")
            return self._pool

    # --- similar ------------------------------------------------------------------------------------------

    def similar(self, item_id: Any, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items closest to ``item_id`` (itself excluded), each a dict like :attr:`Recommendation.items`
        with ``score`` the cosine: over the content embeddings when the bundle has them (and the item has
        content), else over the model's item representation: an ID model's output item embeddings, or for the
        generator (tiger) the mean of the embeddings of the item's code tokens (``tok_emb`` of
        ``code_tokens(codes[item])``). Unknown id: KeyError."""
        k = _check_k(k)
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

    def _mask(self, allow: Iterable[Any] | None, deny: Iterable[Any] | None, warnings: list[str]) -> torch.Tensor:
        """[n_items + 1] bool: the items that may be returned (padding never)."""
        if allow is None:
            mask = torch.ones(self.n_items + 1, dtype=torch.bool)
        else:
            allow = _id_list(allow, "allow")
            mask = torch.zeros(self.n_items + 1, dtype=torch.bool)
            dense = self.catalog.lookup(allow)
            mask[torch.from_numpy(dense[dense > 0])] = True
            _unknown(warnings, [a for a, i in zip(allow, dense.tolist(), strict=True) if not i], " in allow")
        if deny is not None:
            deny = _id_list(deny, "deny")
            dense = self.catalog.lookup(deny)
            mask[torch.from_numpy(dense[dense > 0])] = False
            _unknown(warnings, [d for d, i in zip(deny, dense.tolist(), strict=True) if not i], " in deny")
        mask[0] = False
        return mask

    def _fallback(self, k: int, mask: torch.Tensor, warnings: list[str], reason: str,
                  truncated: bool) -> Recommendation:
        allowed, top = mask.numpy(), np.zeros(0, np.int64)
        for lo in range(0, len(self.popular), FALLBACK_BLOCK):  # most answers are found in the first block
            block = np.asarray(self.popular[lo:lo + FALLBACK_BLOCK])
            top = np.concatenate([top, block[allowed[block]][:k - len(top)]])
            if len(top) >= k:
                break
        return Recommendation(self._items(top, None), warnings, fallback=True, reason=reason,
                              model_version=self.version, truncated=truncated, mode="popularity")

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


def _popularity_order(catalog: Catalog, popular: list[str] | None) -> np.ndarray:
    """Dense ids for the popularity fallback: the bundle's precomputed list first, then everything else by
    training count (the catalog's own order, shared and not copied, when the list is its head)."""
    order = catalog.by_count
    if not popular:
        return order
    head = catalog.lookup(popular)
    head = head[head > 0]
    head = head[np.sort(np.unique(head, return_index=True)[1])]  # first occurrence of each, in list order
    if np.array_equal(head, order[:len(head)]):
        return order
    rest = np.ones(catalog.n_items + 1, dtype=bool)
    rest[head] = False
    return np.concatenate([head, order[rest[order]]])


DEADLINE_OUTCOME = ("deadline", None)


def _run(compute: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", compute()) or ("error", the exception): a model failure is an outcome, not a raise."""
    try:
        return "ok", compute()
    except Exception as e:  # noqa: BLE001 - answered from the fallback by the caller
        return "error", e


def _finish(steps: Generator, outcome: tuple[str, Any]) -> Recommendation:
    try:
        steps.send(outcome)
    except StopIteration as done:
        return done.value
    raise RuntimeError("recommend steps did not finish")  # pragma: no cover - the generator returns once


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _id_list(values: Iterable[Any], what: str) -> list[Any]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{what} must be a list, not one string")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{what} must be a list, got {type(values).__name__}") from None


def _per_event(values: Iterable[Any] | None, history: list[Any], what: str, kind: str) -> list[dict | None]:
    """One object or None per history item (all None when ``values`` is None); ValueError otherwise."""
    if values is None:
        return [None] * len(history)
    values = _id_list(values, what)
    if len(values) != len(history):
        raise ValueError(f"{what} has {len(values)} entries for a history of {len(history)} items")
    if any(v is not None and not isinstance(v, dict) for v in values):
        raise ValueError(f"{what} must hold one object {kind} or null per history item")
    return values


def _unknown(warnings: list[str], ids: list[Any], where: str) -> None:
    warnings.extend(f"unknown item id {h!r}{where} ignored" for h in ids[:MAX_ID_WARNINGS])
    if len(ids) > MAX_ID_WARNINGS:
        warnings.append(f"... and {len(ids) - MAX_ID_WARNINGS} more unknown item ids{where} ignored")


def _zscore_all(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over every entry (0 where they do not vary)."""
    std = x.std() if x.numel() > 1 else torch.tensor(0.0)
    if torch.isfinite(std) and std > 0:
        return (x - x.mean()) / std
    return torch.zeros_like(x)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the real items (row 0, the padding, is left at 0)."""
    body = x[1:]
    std = body.std()
    out = torch.zeros_like(x)
    if body.numel() > 1 and torch.isfinite(std) and std > 0:
        out[1:] = (body - body.mean()) / std
    return out

