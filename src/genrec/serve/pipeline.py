"""The model work of a batch of recommendations, run on the batch worker's thread (:mod:`genrec.serve.batching`):
retrieval scores for every request of the batch in one forward pass, each request's filters and top candidates,
then the ranking stage for all of them in one forward pass. Each request is answered as it would be alone.

A bundle may hold two retrievers (an ID model and the semantic-ID generator): each job names the one it wants
(``Job.retriever``; None: the bundle's own model). A query steers an answer in one of two ways: a generator trained
with ``model.query`` decodes conditioned on the query's content vector, and its beams are then blended with the
query's similarity like any candidates (``mode`` ``generator+prompt``); any other retriever's scores are only
blended with the query's similarity to every item (``...+query``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genrec.content.query import QueryEncoder, blend_with_query
from genrec.models.two_stage import final_order, fuse
from genrec.serve.ranking import RankerInputs, RankingStage, RankRequest
from genrec.serve.scorers import GeneratorScorer, IdScorer, ScoreRequest

log = logging.getLogger(__name__)

Answer = tuple[list[dict[str, Any]], str, list[str]]  # the items, the mode, warnings
Pick = tuple[np.ndarray, np.ndarray, str, list[str]]  # candidates (best first), their scores, the mode, warnings


@dataclass
class Job:
    """One checked request, ready for the models: its known history (dense ids) and times, query, how many
    candidates it needs (``width``), its filters (``mask`` [n_items + 1], ``allowed`` ids or None) and ``k``, and
    what the ranking stage reads (the raw history, its timestamps, the user and :class:`RankerInputs`)."""

    known: list[int]
    known_ts: list[int] | None
    query: str | None
    query_weight: float
    width: int
    allowed: torch.Tensor | None
    mask: torch.Tensor
    k: int
    user_id: str | None
    history: list[Any]
    timestamps: list[int] | None
    inputs: RankerInputs | None
    ranker_weight: float | None = None  # an experiment arm's weight of the ranker score (None: the bundle's)
    retriever: str | None = None  # which of the bundle's retrievers answers (None: its own model)


class Pipeline:
    """Retrieval (``scorer``, or one of ``scorers`` by name), the optional ``ranker`` and the query encoder over
    batches of :class:`Job`; ``items`` renders dense ids and scores as answer rows."""

    def __init__(self, scorer: IdScorer | GeneratorScorer, ranker: RankingStage | None, query: QueryEncoder | None,
                 items: Callable[[np.ndarray, list[float] | None], list[dict[str, Any]]],
                 scorers: dict[str, IdScorer | GeneratorScorer] | None = None):
        self.scorer, self.ranker, self.query, self.items = scorer, ranker, query, items
        self.scorers = scorers or {}

    def scorer_for(self, job: Job) -> IdScorer | GeneratorScorer:
        return self.scorer if job.retriever is None else self.scorers[job.retriever]

    def run(self, jobs: list[Job]) -> list[Answer]:
        with torch.no_grad():
            picks = [self._select(job, *scored) for job, scored in zip(jobs, self._retrieve(jobs), strict=True)]
            if self.ranker is None:
                return [(self.items(top, values.tolist()), mode, warnings) for top, values, mode, warnings in picks]
            return self._rerank(jobs, picks)

    def _retrieve(self, jobs: list[Job]) -> list[tuple[Any, str, list[str]]]:
        """Per job: scores over the catalog [n_items + 1] or, from a partial scorer, (candidate ids, scores); the
        mode; warnings. The ID models score every job's history in one forward pass."""
        queried = [self._similarity(job) for job in jobs]
        scored: dict[int, Any] = {}
        for scorer in {id(s): s for s in map(self.scorer_for, jobs)}.values():  # one pass per retriever
            mine = [i for i, job in enumerate(jobs) if job.known and self.scorer_for(job) is scorer]
            requests = [ScoreRequest(jobs[i].known, jobs[i].known_ts, jobs[i].width, jobs[i].allowed, queried[i][0])
                        for i in mine]
            scored.update(zip(mine, scorer.score_many(requests) if mine else [], strict=True))
        out = []
        for i, (job, (vector, q, warnings)) in enumerate(zip(jobs, queried, strict=True)):
            if not job.known:
                out.append((q, "content", warnings))
                continue
            scores, more = scored[i]
            scorer = self.scorer_for(job)
            mode, warnings = scorer.mode, warnings + more
            if vector is not None and getattr(scorer, "conditioned", False):
                # the query shaped the decoding; blending it into the beams as well ranks its items higher still
                # (benchmarks/results/prompt_generation.md)
                ids, values = scores
                out.append(((ids, blend_with_query(values, q, job.query_weight, ids)), mode + "+prompt", warnings))
            elif q is None:
                out.append((scores, mode, warnings))
            elif isinstance(scores, tuple):  # blend over the candidates only
                ids, values = scores
                out.append(((ids, blend_with_query(values, q, job.query_weight, ids)), mode + "+query", warnings))
            else:
                out.append((blend_with_query(scores, q, job.query_weight), mode + "+query", warnings))
        return out

    def _similarity(self, job: Job) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
        """The query's content vector and its similarity to every item (None, None without a query); a query that
        cannot be encoded is ignored with a warning, unless it is all the request has."""
        if job.query is None:
            return None, None, []
        try:
            vector = self.query.vector(job.query)
            return vector, self.query.similarity_to(vector), []
        except Exception as e:
            if not job.known:
                raise
            log.warning("query encoding failed: %s", e)
            return None, None, [f"query ignored: it could not be encoded ({type(e).__name__}: {e})"]

    def _select(self, job: Job, scores: Any, mode: str, warnings: list[str]) -> Pick:
        """The filters and top over the scores (dense, or a partial scorer's (ids, scores)): the top ``k`` or, with
        a ranking stage, the top ``ranker.candidates`` it reorders."""
        k, mask = job.k, job.mask
        pool = k if self.ranker is None else max(k, self.ranker.candidates)
        if isinstance(scores, tuple):  # a partial scorer: its candidates' ids and scores only
            ids, values = scores
            keep = mask[ids]
            ids, values = ids[keep], values[keep]
            n = len(ids)
            if n < k and n < (n_allowed := int(mask.sum())):
                scorer = self.scorer_for(job)
                if isinstance(scorer, GeneratorScorer):
                    source = f"the generator's {scorer.beams(job.width)} beams"
                else:
                    source = "the approximate index's candidates"
                warnings.append(f"only {n} of the {n_allowed} allowed items are among {source}; "
                                f"returning {n} instead of {k}")
            order = torch.topk(values, min(pool, n)).indices if n else torch.zeros(0, dtype=torch.int64)
            top, top_scores = ids[order], values[order]
        else:
            scores = scores.masked_fill(~mask, -torch.inf)
            n = int(mask.sum())
            top = torch.topk(scores, min(pool, n)).indices if n else torch.zeros(0, dtype=torch.int64)
            top_scores = scores[top]
        return top.numpy(), top_scores.double().numpy(), mode, warnings

    def _rerank(self, jobs: list[Job], picks: list[Pick]) -> list[Answer]:
        """The ranking stage over every job's candidates at once (one forward pass); when it fails for the batch,
        each job is reranked alone, and a job whose ranking fails keeps the retrieval order (with a warning)."""
        assert self.ranker is not None
        todo = [i for i, (top, *_) in enumerate(picks) if len(top)]  # nothing to reorder: answered as is
        requests = [RankRequest(jobs[i].user_id, [str(h) for h in jobs[i].history], jobs[i].timestamps,
                                jobs[i].inputs, picks[i][0], picks[i][1]) for i in todo]
        try:
            ranked = dict(zip(todo, self.ranker.rerank_many(requests), strict=True)) if todo else {}
        except Exception:  # noqa: BLE001 - each alone below, so one bad request does not cost the others
            ranked = {}
            for i, request in zip(todo, requests, strict=True):
                try:
                    ranked[i] = self.ranker.rerank_many([request])[0]
                except Exception as e:  # noqa: BLE001 - the retrieval order still answers
                    log.exception("ranking stage failed; answering in retrieval order")
                    picks[i][3].append(f"the ranker failed ({type(e).__name__}); answered in retrieval order")
        out = []
        for i, (job, (top, scores, mode, warnings)) in enumerate(zip(jobs, picks, strict=True)):
            if i not in ranked:
                out.append((self.items(top[:job.k], scores[:job.k].tolist()), mode, warnings))
                continue
            r = ranked[i]
            if job.ranker_weight is not None:  # the same score rule with the arm's weight
                final = fuse(scores[None, :len(r.final)], r.ranker_score[None], job.ranker_weight)[0]
                r = type(r)(final_order(final), final, r.ranker_score, r.predictions)
            pick = r.order[:job.k]
            items = self.items(top[pick], r.final[pick].tolist())
            tasks = list(r.predictions)
            preds = np.stack([r.predictions[t][pick] for t in tasks], axis=1) if tasks else np.zeros((len(pick), 0))
            known = (~np.isnan(preds)).tolist()
            for row, retrieval, values, real in zip(items, scores[pick].tolist(), preds.tolist(), known, strict=True):
                row["retrieval_score"] = retrieval
                row["predictions"] = {t: v if ok else None for t, v, ok in zip(tasks, values, real, strict=True)}
            out.append((items, mode + "+ranker", warnings))
        return out
