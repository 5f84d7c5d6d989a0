"""The ranking stage of a two-stage bundle: retrieval proposes candidates, a multi-task ranker reorders them.

A bundle exported with ``genrec export RETRIEVAL_RUN --ranker RANKER_RUN`` holds, next to the retrieval model:

- ``ranker.safetensors`` + ``ranker.json``: the ranking model (``genrec.models.RANKING``: ranker, dcn, din), its
  data spec, the Platt calibration of each binary task, the action schema (:mod:`genrec.data.actions`) and the
  stage settings below;
- ``ranker_items.parquet`` / ``ranker_users.parquet``: the ranker's raw item and user ids in dense order (the
  ranker's vocabularies differ from retrieval's; items and users are matched by raw id, as text).

For one request (:meth:`RankingStage.rerank`):

1. the retrieval stage's top ``candidates`` items (after every filter) are the candidate list;
2. the ranker reads one request: the user (features and id embedding; unknown users and explicit histories get
   the unknown user), the history's items the ranker knows with their actions (an event without actions counts
   as the schema's ``default``, e.g. a click), their context and times (``time_scale`` x the event timestamps, in
   ms; none given: all 0), and every candidate at the request time (the latest history time) in the request's
   context, reading the whole history. A context (``{"tab": 1}``: where an impression is shown, the log's row
   features) is mapped through the raw values the ranker was trained on (``row_values`` in ranker.json); a value
   it never saw, or no context, is code 0 (unknown), as in training;
3. per task it predicts: a calibrated probability for binary tasks (sigmoid, then the task's Platt map), the
   model's value for regression tasks (KuaiRand ``watch_time``: log(1 + seconds));
4. the final order, by the score rule the two-stage evaluation applies too (``genrec.models.two_stage``):
   ranker score r = sum over ``blend`` of weight x the task's logit (regression: value); final =
   z(retrieval score) + ``weight`` x z(r), z-scores over the candidate list (``weight`` null: z(r) alone); a
   candidate the ranker does not know keeps its retrieval z-score as its r z-score; ties keep the retrieval order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.data.actions import encode_events
from genrec.errors import GenrecError
from genrec.io import read_json, read_vocab
from genrec.models.ranker import GenerativeRanker
from genrec.models.ranking import RankBatch, RankSpec
from genrec.models.two_stage import blend_score, final_order, fuse
from genrec.serve.filters import per_event
from genrec.serve.model_io import load_ranking_model

DEFAULT_CANDIDATES = 200


@dataclass
class RankerInputs:
    """What the ranker reads of a request besides items and times: per history event its action codes [n, A]
    and context codes [n, C], and the request's own context codes [C] (every candidate's); C = the ranker's row
    features, in its spec's order."""

    actions: np.ndarray
    hist_context: np.ndarray
    context: np.ndarray


@dataclass
class RankRequest:
    """One request's ranking inputs: the user (raw id or None), the history's raw item ids (oldest first) with
    their timestamps (or None) and :class:`RankerInputs`, and the candidates (retrieval dense ids [M]) with their
    retrieval scores [M]."""

    user_id: str | None
    history: list[str]
    timestamps: list[int] | None
    inputs: RankerInputs
    candidates: np.ndarray
    retrieval_scores: np.ndarray


@dataclass
class Ranked:
    """The reordered candidate list: positions into the given candidates, best first, with per-task
    predictions [M] and the final and ranker scores [M] (aligned with the given candidates)."""

    order: np.ndarray
    final: np.ndarray
    ranker_score: np.ndarray  # NaN where the ranker does not know the item
    predictions: dict[str, np.ndarray]  # NaN where the ranker does not know the item


class RankingStage:
    def __init__(self, model: torch.nn.Module, spec: RankSpec, info: dict[str, Any], items: list[str],
                 users: list[str], retrieval_raw_ids: list[str]):
        self.model, self.spec, self.info = model.eval(), spec, info
        self.items = {raw: i + 1 for i, raw in enumerate(items)}
        self.users = {raw: i + 1 for i, raw in enumerate(users)}
        # retrieval dense id -> ranker dense id (0: the ranker does not know the item)
        self.item_map = np.array([0] + [self.items.get(r, 0) for r in retrieval_raw_ids], dtype=np.int64)
        self.schema = info["actions"]
        self.calibration = {t: tuple(ab) for t, ab in (info.get("calibration") or {}).items()}
        self.blend = {t: float(w) for t, w in info["blend"].items()}
        self.weight = None if info.get("weight") is None else float(info["weight"])
        self.candidates = int(info.get("candidates", DEFAULT_CANDIDATES))
        self.time_scale = float(info.get("time_scale", 1.0))
        self.max_len = int(info["config"].get("max_len", 200))
        self.row_names = list(spec.row_feature_sizes or {})
        values = info.get("row_values") or {}
        self.row_codes = {name: {v: code for code, v in enumerate(values.get(name, []), start=1)}
                          for name in self.row_names}
        self._default_actions = self.encode_actions([None])  # [1, A]: an event without actions

    @classmethod
    def load(cls, bundle: Path, retrieval_raw_ids: list[str]) -> RankingStage:
        model = load_ranking_model(bundle)
        info, spec = read_json(bundle / "ranker.json"), model.spec
        items, users = read_vocab(bundle / "ranker_items.parquet"), read_vocab(bundle / "ranker_users.parquet")
        if len(items) != spec.n_items or len(users) != spec.n_users:
            raise GenrecError(f"{bundle}: the ranker's vocabularies ({len(items)} items, {len(users)} users) do not "
                              f"match its model ({spec.n_items} items, {spec.n_users} users)")
        return cls(model, spec, info, items, users, retrieval_raw_ids)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.tasks

    def encode_actions(self, actions: list[dict[str, Any] | None], strict: bool = True) -> np.ndarray:
        """Action codes [n, A] (None: the default interaction); ValueError naming the event and the signal on
        bad input (unknown signals are ignored with ``strict=False``)."""
        if all(a is None for a in actions) and hasattr(self, "_default_actions"):  # the common case, encoded once
            return np.repeat(self._default_actions, len(actions), axis=0)
        return encode_events(self.schema, self.spec.action_sizes or {}, actions, strict=strict)

    def encode_context(self, contexts: list[dict[str, Any] | None], strict: bool = True,
                       what: str = "context") -> np.ndarray:
        """Context codes [n, C], one row per context (None: unknown); ValueError naming ``what[i]`` on a name that
        is not one of the ranker's row features (ignored with ``strict=False``) or a value that is not text or an
        integer. A value the ranker never saw is code 0 (unknown)."""
        if all(ctx is None for ctx in contexts):
            return np.zeros((len(contexts), len(self.row_names)), dtype=np.int64)
        rows = [self._context_codes(ctx, f"{what}[{i}]", strict) for i, ctx in enumerate(contexts)]
        return np.stack(rows) if rows else np.zeros((0, len(self.row_names)), dtype=np.int64)

    def _context_codes(self, ctx: dict[str, Any] | None, where: str, strict: bool) -> np.ndarray:
        out = np.zeros(len(self.row_names), dtype=np.int64)
        for name, value in (ctx or {}).items():
            if name not in self.row_codes:
                if strict:
                    raise ValueError(f"{where}: {name!r} is not a context this ranker reads (it reads: "
                                     f"{', '.join(self.row_names) or 'none'})")
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValueError(f"{where}.{name}: must be text or an integer, got {value!r}")
            out[self.row_names.index(name)] = self.row_codes[name].get(str(value), 0)
        return out

    def encode(self, actions: list[dict[str, Any] | None], history_context: list[dict[str, Any] | None],
               context: dict[str, Any] | None, strict: bool = True) -> RankerInputs:
        """:class:`RankerInputs` of a history's actions and contexts (aligned with it) and the request's context.
        ``strict=False`` (stored events) relaxes the history only: the request's own context is always checked."""
        return RankerInputs(self.encode_actions(actions, strict),
                            self.encode_context(history_context, strict, "history_context"),
                            self._context_codes(context, "context", True))

    def rerank(self, user_id: str | None, history: list[str], timestamps: list[int] | None, inputs: RankerInputs,
               candidates: np.ndarray, retrieval_scores: np.ndarray) -> Ranked:
        """Reorder ``candidates`` (retrieval dense ids [M], with their retrieval scores) for a history of raw
        item ids (oldest first; timestamps and ``inputs`` (:meth:`encode`) aligned with it)."""
        return self.rerank_many([RankRequest(user_id, history, timestamps, inputs, candidates, retrieval_scores)])[0]

    def rerank_many(self, requests: list[RankRequest]) -> list[Ranked]:
        """:meth:`rerank` for several requests at once: one padded forward pass of the ranker for all of them
        (each request scored as it would be alone), and the score rule applied to all their lists together."""
        rows = [self._request(r) for r in requests]
        out = self._forward(rows)
        m = max(len(r.candidates) for r in requests)
        retrieval, score = np.full((len(rows), m), -np.inf), np.full((len(rows), m), np.nan)
        preds = {t: np.full((len(rows), m), np.nan) for t in self.tasks}
        for i, (r, row, o) in enumerate(zip(requests, rows, out, strict=True)):
            n, known = len(r.candidates), row["cand"] > 0
            retrieval[i, :n] = r.retrieval_scores
            score[i, :n] = np.where(known, blend_score(o, self.blend), np.nan)
            for t, v in o.items():
                preds[t][i, :n] = np.where(known, v, np.nan)
        preds = {t: self._predict(t, v) for t, v in preds.items()}
        final = fuse(retrieval, score, self.weight)
        ranked = []
        for i, r in enumerate(requests):
            n = len(r.candidates)
            ranked.append(Ranked(final_order(final[i, :n]), final[i, :n], score[i, :n],
                                 {t: v[i, :n] for t, v in preds.items()}))
        return ranked

    def _request(self, r: RankRequest) -> dict[str, Any]:
        """What :meth:`_forward` reads of a request, in the ranker's vocabularies (history items it does not know
        are dropped; only the most recent ``max_len`` are kept)."""
        keep = [j for j, h in enumerate(r.history) if h in self.items][-self.max_len:]
        times = (np.array([r.timestamps[j] for j in keep], dtype=np.float64) * self.time_scale).astype(np.int64) \
            if r.timestamps is not None else np.zeros(len(keep), dtype=np.int64)
        inputs = r.inputs
        return {"user": self.users.get(r.user_id, 0) if r.user_id is not None else 0,
                "items": np.array([self.items[r.history[j]] for j in keep], dtype=np.int64),
                "actions": inputs.actions[keep].reshape(len(keep), inputs.actions.shape[1]), "time": times,
                "context": inputs.hist_context[keep].reshape(len(keep), len(self.row_names)),
                "cand_context": inputs.context, "cand": self.item_map[np.asarray(r.candidates, dtype=np.int64)]}

    @torch.inference_mode()
    def _forward(self, requests: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """One padded RankBatch for the requests; every candidate of a request reads its whole history at the
        request time (the latest history time) in the request's context. The generative ranker reads these as one
        column per request, shared by its candidates (M-FALCON: the history encoded once, the relative bias and
        mask built once per request); the other models get them repeated per candidate. Returns {task: [M_b]}
        per request."""
        b = len(requests)
        hist_len = np.array([len(r["items"]) for r in requests], dtype=np.int64)
        n_cand = np.array([len(r["cand"]) for r in requests], dtype=np.int64)
        width, m, n_actions = max(int(hist_len.max()), 1), int(n_cand.max()), requests[0]["actions"].shape[1]
        items, times = np.zeros((b, width), np.int64), np.zeros((b, width), np.int64)
        actions, cand = np.zeros((b, width, n_actions), np.int64), np.zeros((b, m), np.int64)
        c = len(self.row_names)
        hist_ctx, cand_ctx = np.zeros((b, width, c), np.int64), np.zeros((b, 1, c), np.int64)
        for i, r in enumerate(requests):
            n = hist_len[i]
            items[i, :n], times[i, :n], actions[i, :n] = r["items"], r["time"], r["actions"]
            hist_ctx[i, :n], cand_ctx[i, 0] = r["context"], r["cand_context"]
            cand[i, :n_cand[i]] = r["cand"]
        now, seen = torch.from_numpy(times.max(axis=1, initial=0)[:, None]), torch.from_numpy(hist_len[:, None])
        shared = {"cand_time": now, "visible": seen, "cand_context": torch.from_numpy(cand_ctx) if c else None}
        batch = RankBatch(user=torch.tensor([r["user"] for r in requests]), hist_items=torch.from_numpy(items),
                          hist_actions=torch.from_numpy(actions), hist_time=torch.from_numpy(times),
                          hist_len=torch.from_numpy(hist_len), cand_items=torch.from_numpy(cand),
                          hist_context=torch.from_numpy(hist_ctx) if c else None,
                          **{k: None if v is None else v.expand(b, m, *v.shape[2:]) for k, v in shared.items()})
        if isinstance(self.model, GenerativeRanker):
            model = self.model
            scores = model.score_candidates(model.encode_history(batch), batch.cand_items, shared["cand_time"],
                                            shared["visible"], cand_context=shared["cand_context"])
        else:
            scores = self.model(batch)
        stacked = torch.stack([scores[t] for t in self.tasks]).double().numpy()  # one copy for every task
        out = dict(zip(self.tasks, stacked, strict=True))
        return [{t: v[i, :n_cand[i]] for t, v in out.items()} for i in range(b)]

    def _predict(self, task: str, value: np.ndarray) -> np.ndarray:
        if task not in self.spec.binary_tasks:
            return value
        a, b = self.calibration.get(task, (1.0, 0.0))
        return 1.0 / (1.0 + np.exp(-(a * value + b)))



def ranker_inputs(stage: RankingStage | None, history: list[Any], actions: Iterable[Any] | None,
                  history_context: Iterable[Any] | None, context: Any, strict: bool) -> RankerInputs | None:
    """What the ranker reads of a request: its history's actions and contexts and its own context (None without a
    ranking stage). Their shape is checked either way: ValueError on bad input."""
    actions = per_event(actions, history, "actions", "(signal -> number)")
    history_context = per_event(history_context, history, "history_context", "(name -> value)")
    if context is not None and not isinstance(context, dict):
        raise ValueError(f"context must be an object (name -> value) or null, got {type(context).__name__}")
    if stage is None:
        return None
    return stage.encode(actions, history_context, context, strict=strict)
