"""Retrieval scorers: the model-specific part of :class:`genrec.serve.recommender.Recommender`.

Each scorer turns a request's known history into scores, either over the whole catalog (a tensor [n_items + 1])
or over its own candidates only (a tuple of their ids and scores). :meth:`score_many` scores a batch of requests
(:class:`ScoreRequest`) at once: the ID models run one forward pass for all their histories.

- :class:`IdScorer`: an ID model (``genrec.models.SEQUENTIAL``: sasrec, hstu) scores the whole catalog;
- :class:`AnnScorer`: an ID model over a large catalog: a FAISS index proposes the candidates;
- :class:`GeneratorScorer`: a semantic-ID generator (``genrec.models.generators``: tiger, hstu-gen) by constrained
  beam search: only beam items are scored (by their sequence log-probability); a generator trained with
  ``model.query`` decodes conditioned on the request's query vector.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from genrec.data.jagged import Jagged
from genrec.models import SequentialModel
from genrec.models.generators import SemanticIdGenerator, conditioned
from genrec.serve.ann import AnnIndex

MAX_BEAM = 256  # the most beams the generator runs for one request, however many items are excluded
ANN_MARGIN = 100  # extra candidates the approximate index proposes beyond what the filters need


class ScoreRequest(NamedTuple):
    """One request's retrieval inputs: its known history (dense ids, oldest first) and their timestamps (or None),
    how many candidates it needs (``width``: k plus the items its filters remove), its allow list (or None) and its
    query's content vector (or None; read by a query-conditioned generator)."""

    known: list[int]
    known_ts: list[int] | None
    width: int
    allowed: torch.Tensor | None = None
    query: torch.Tensor | None = None


Scored = tuple[Any, list[str]]  # (scores [n_items + 1], or a partial scorer's (ids, scores)), warnings


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


class IdScorer:
    """An ID model (sasrec, hstu): scores over the whole catalog. ``table``: the item table when the bundle stores
    it (memory-mapped); else the model's, computed once here, not per request."""

    mode = "model"

    def __init__(self, model: SequentialModel, table: torch.Tensor | None = None):
        self.model = model
        if table is None:
            with torch.no_grad():
                table = model.item_table().detach().float().cpu()
        self.items = table

    def item_table(self) -> torch.Tensor:
        return self.items

    @torch.inference_mode()
    def hidden(self, requests: list[ScoreRequest]) -> torch.Tensor:
        """The model's last hidden state of each request's history [B, D], in one forward pass (an inference
        tensor: read it, never write it)."""
        return torch.stack(_hidden_states(self.model, [(r.known, r.known_ts) for r in requests]))

    def score_many(self, requests: list[ScoreRequest]) -> list[Scored]:
        return [(self.items @ h, []) for h in self.hidden(requests)]  # per row: as a request alone


class AnnScorer(IdScorer):
    """An ID model over a large catalog: the FAISS index proposes candidates, each scored by its inner product;
    every other item -inf. ``width`` (k plus the items the filters remove) + ANN_MARGIN are proposed, so the
    filters leave k; an allow list is scored exactly instead (it may hold items the index did not propose)."""

    mode = "model+ann"

    def __init__(self, model: SequentialModel, ann: AnnIndex, table: torch.Tensor | None = None):
        super().__init__(model, table)
        self.ann = ann

    def score_many(self, requests: list[ScoreRequest]) -> list[Scored]:
        return [self._search(r, h) for r, h in zip(requests, self.hidden(requests), strict=True)]

    def _search(self, request: ScoreRequest, h: torch.Tensor) -> Scored:
        if request.allowed is not None:
            return (request.allowed, self.items[request.allowed] @ h), []
        ids, found = self.ann.search(h.numpy()[None], min(request.width + ANN_MARGIN, self.model.n_items))
        keep = ids[0] > 0
        return (torch.from_numpy(ids[0][keep]), torch.from_numpy(found[0][keep])), []


class GeneratorScorer:
    """A semantic-ID generator (tiger, hstu-gen): beam items get their log-probability, every other item -inf.
    With ``model.query`` (:attr:`conditioned`) a request's query vector conditions the decoding itself."""

    mode = "generator"

    def __init__(self, model: SemanticIdGenerator):
        self.model = model
        self.conditioned = conditioned(model)
        model.trie()  # built once here, not lazily by concurrent requests

    def beams(self, width: int) -> int:
        """Beams for a request that needs ``width`` candidates (k plus the items it excludes)."""
        return max(min(int(width), MAX_BEAM, self.model.n_items), int(self.model.config.beam_width))

    def item_table(self) -> torch.Tensor:
        """Each item's representation (the generator's ``item_table``; row 0, the padding, zero)."""
        with torch.no_grad():
            return self.model.item_table()

    def score_many(self, requests: list[ScoreRequest]) -> list[Scored]:
        return [self._search(r) for r in requests]  # a beam search per request: widths differ

    def _search(self, request: ScoreRequest) -> Scored:
        beam = self.beams(request.width)
        history = torch.tensor([request.known], dtype=torch.int64, device=self.model.codes.device)
        if self.conditioned and request.query is not None:
            items, logp = self.model.recommend(history, k=beam, beam=beam, query=request.query[None])
        else:  # a generator without model.query takes no query (the pipeline blends one into its beams instead)
            items, logp = self.model.recommend(history, k=beam, beam=beam)
        items, logp = items[0].cpu(), logp[0].float().cpu()
        keep = torch.isfinite(logp) & (items > 0)
        return (items[keep], logp[keep]), []
