"""Two-stage evaluation: a retrieval model proposes the top-K of the catalog, a ranker reorders them.

For every evaluation case (a user, the history retrieval reads, the target item and the time t of the target):

1. **Retrieval** scores the whole catalog from the history (items of the history excluded) and keeps its top
   ``k_retrieve`` (default 200) in its deterministic order (score, then smaller id).
2. **Ranking.** The ranker scores those K items as the candidates of one request served at time t, whose history
   is the user's *context* impressions strictly earlier than t (never the target's own impression, nothing at or
   after t; sampled negatives are never history, see ``genrec.data.impressions``). Item ids are mapped between the
   two vocabularies by raw id (:func:`item_map`); a candidate the ranker's vocabulary does not hold keeps its
   retrieval standing (its ranker z-score is its retrieval z-score).
3. **Fusion** (the score rule of ``genrec.models.two_stage``, which serving applies too): final =
   z(retrieval score) + w * z(ranker score), z-scores taken over the case's K candidates; the ranker score is a
   blend of the ranker's outputs (default: the logit of the engagement task, ``rate`` when the ranker has it,
   else ``click``). w = None means the ranker alone. Ties keep the retrieval order, so w = 0 is exactly
   retrieval alone. A target outside the top-K is a miss for both.

w is chosen once, on VALIDATION cases (the grid value with the best mean ``select_metric``, the first on ties),
then applied to the TEST cases. Per-case HR@K / NDCG@K of retrieval alone and of the two-stage list are compared
with ``genrec.eval.stats.paired_test`` (bootstrap interval of the difference, paired t and Wilcoxon p-values).

Like the rest of ``genrec.eval`` this module knows no model class: retrieval is any
:class:`genrec.eval.retrieval.Scorer`, and the ranker any callable mapping the fields of a
``genrec.models.ranking.RankBatch`` (a dict of tensors, ``labels`` absent) to ``{task: [B, M]}`` (wrap a
ranking model as ``lambda fields: model(RankBatch(**fields))``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from genrec.data.dataset import SequenceDataset, Vocab
from genrec.data.impression_splits import ImpressionSplit
from genrec.data.impressions import ImpressionLog
from genrec.data.jagged import Jagged
from genrec.data.requests import histories_before, history_fields
from genrec.data.splits import EvalCases, leave_one_out
from genrec.errors import ConfigError, DataError
from genrec.eval.metrics import metrics_from_ranks
from genrec.eval.retrieval import Scorer, mask_seen, topk_deterministic
from genrec.eval.stats import paired_test
from genrec.models.two_stage import blend_score, fuse, resolve_blend
from genrec.progress import progress_bar

DEFAULT_WEIGHTS: tuple[float | None, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, None)
CandidateRanker = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


# --- cases ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TwoStageCases:
    """One retrieval-then-ranking request per row."""

    users: np.ndarray  # dense user of the retrieval dataset (what the retrieval scorer is given)
    history: Jagged  # retrieval-vocabulary dense items, oldest first
    targets: np.ndarray  # retrieval-vocabulary dense item
    time: np.ndarray  # int64 unix ms of the target: the ranker's request time
    log_users: np.ndarray  # dense user of the impression log (0 = unknown to the ranker)
    history_timestamps: Jagged | None = None
    rows: np.ndarray | None = None  # the target's row in the impression log
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, idx: np.ndarray) -> TwoStageCases:
        idx = np.asarray(idx, dtype=np.int64)
        return TwoStageCases(self.users[idx], self.history.take(idx), self.targets[idx], self.time[idx],
                             self.log_users[idx],
                             self.history_timestamps.take(idx) if self.history_timestamps is not None else None,
                             self.rows[idx] if self.rows is not None else None, dict(self.info))

    def eval_cases(self) -> EvalCases:
        """The retrieval side alone, for ``genrec.eval.retrieval.rank_cases``."""
        return EvalCases(self.users, self.history, self.targets, self.history_timestamps)


def _as_text(raw: pa.Array | Sequence | np.ndarray) -> pa.Array:
    arr = raw if isinstance(raw, pa.Array | pa.ChunkedArray) else pa.array(list(raw))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def item_map(retrieval_raw: pa.Array | Sequence, log_items: Vocab) -> np.ndarray:
    """int64 [n_retrieval + 1]: the impression log's dense item for each retrieval dense item (index = dense id,
    0 = padding); 0 where the log does not know the raw id. Raw ids are matched as text, so a run folder's
    ``items.parquet`` (raw ids as strings) maps onto a log with integer ids."""
    dense = Vocab(_as_text(log_items.raw)).encode(_as_text(retrieval_raw), missing=0)
    return np.concatenate([[0], dense]).astype(np.int64)


def _encode_users(ds_users: Vocab, log_users: Vocab) -> np.ndarray:
    """int64 [n_ds_users + 1]: log dense user per dataset dense user (0 = unknown)."""
    return np.concatenate([[0], Vocab(_as_text(log_users.raw)).encode(_as_text(ds_users.raw), missing=0)])


def leave_one_out_cases(ds: SequenceDataset, log: ImpressionLog, split: ImpressionSplit,
                        min_length: int = 3) -> dict[str, TwoStageCases]:
    """ML-1M style: the leave-one-out cases of ``ds`` (``genrec.data.splits.leave_one_out``) whose target
    impression lies in the ranker's period of the same name: validation targets in ``split.valid``, test targets
    in ``split.test``, so the ranker never trained on a target. The time of a case is that of the (user, item)
    row in ``log`` (its latest one, if the pair repeats); cases whose pair is not in the log are dropped."""
    loo = leave_one_out(ds, min_length=min_length)
    u_map = _encode_users(ds.users, log.users)
    i_map = item_map(ds.items.raw, log.items)
    width = np.int64(log.n_items + 1)
    ctx = np.flatnonzero(log.context)
    keys = log.user[ctx] * width + log.item[ctx]
    order = np.argsort(keys, kind="stable")  # rows ascend within equal keys: the last is the latest
    sorted_keys = keys[order]
    out = {}
    for part in ("valid", "test"):
        cases = loo.cases(part)
        lu, li = u_map[cases.users], i_map[cases.targets]
        key = lu * width + li
        pos = np.searchsorted(sorted_keys, key, side="right") - 1
        found = (lu > 0) & (li > 0) & (pos >= 0) & (sorted_keys[np.maximum(pos, 0)] == key)
        rows = np.where(found, ctx[order[np.maximum(pos, 0)]], -1)
        keep = found & split.part(part)[np.maximum(rows, 0)]
        idx = np.flatnonzero(keep)
        sub = cases.take(idx)
        out[part] = TwoStageCases(
            sub.users, sub.history, sub.targets, log.time[rows[idx]], lu[idx], sub.history_timestamps, rows[idx],
            {"kind": "leave-one-out targets in the ranker's period", "part": part, "loo_cases": len(cases),
             "not_in_log": int((~found).sum()), "outside_period": int((found & ~keep).sum()), "cases": len(idx),
             "repeated_pairs": int(len(sorted_keys) - len(np.unique(sorted_keys)))})
    return out


def first_positive_cases(ds: SequenceDataset, log: ImpressionLog, split: ImpressionSplit, task: str = "click",
                         max_history: int | None = None) -> dict[str, TwoStageCases]:
    """KuaiRand style: per user and part (valid, test), the first impression of the part with a positive
    ``task`` label is the target; retrieval's history is the user's sequence in ``ds`` strictly before its time
    (``ds`` timestamps must be in the log's unit, unix ms). Cases whose target item or user is unknown to ``ds``
    or whose history is empty are dropped (counted in ``info``)."""
    if ds.timestamps is None:
        raise ConfigError(f"dataset '{ds.name}' has no timestamps; first_positive_cases cuts histories by time")
    if task not in log.binary_tasks:
        raise ConfigError(f"{task!r} is not a binary task of '{log.name}' ({', '.join(log.binary_tasks)})")
    ds_user = Vocab(_as_text(ds.users.raw)).encode(_as_text(log.users.raw), missing=0)  # log user -> ds user
    ds_item = Vocab(_as_text(ds.items.raw)).encode(_as_text(log.items.raw), missing=0)
    seq, ts = ds.sequences, ds.timestamps
    out = {}
    for part in ("valid", "test"):
        rows = np.flatnonzero(split.part(part) & (log.labels[task] > 0) & log.context)
        first = np.ones(len(rows), dtype=bool)
        first[1:] = log.user[rows[1:]] != log.user[rows[:-1]]  # rows are user-major, by time
        rows = rows[first]
        users, targets, t = ds_user[log.user[rows] - 1], ds_item[log.item[rows] - 1], log.time[rows]
        known = (users > 0) & (targets > 0)
        u = np.where(known, users, 1)
        lo, hi = seq.offsets[u - 1], seq.offsets[u]
        left, right = lo.copy(), hi.copy()
        while (open_ := left < right).any():  # per-row binary search: items strictly before t
            mid = (left + right) // 2
            earlier = open_ & (ts.values[np.minimum(mid, len(ts.values) - 1)] < t)
            left = np.where(earlier, mid + 1, left)
            right = np.where(open_ & ~earlier, mid, right)
        n_hist = np.where(known, left - lo, 0)
        keep = np.flatnonzero(known & (n_hist > 0))
        start = np.zeros(len(keep), dtype=np.int64)
        if max_history is not None:
            start = np.maximum(n_hist[keep] - max_history, 0)
        hist = seq.take(u[keep] - 1).slice_rows(start, n_hist[keep])
        hist_ts = ts.take(u[keep] - 1).slice_rows(start, n_hist[keep])
        out[part] = TwoStageCases(
            users[keep], hist, targets[keep], t[keep], log.user[rows[keep]], hist_ts, rows[keep],
            {"kind": f"first {task} of each user in the ranker's period", "part": part, "users_with_one": len(rows),
             "unknown_to_retrieval": int((~known).sum()), "empty_history": int((known & (n_hist == 0)).sum()),
             "cases": len(keep)})
    return out


# --- the two stages ---------------------------------------------------------------------------------------------

@torch.no_grad()
def retrieve(scorer: Scorer, cases: TwoStageCases, n_items: int, k: int, *, exclude_seen: bool = True,
             batch_size: int = 256, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` retrieval items [N, k] (dense retrieval ids, 0 = empty slot) and their scores [N, k] (float64,
    -inf in empty slots), in the deterministic order of ``genrec.eval.retrieval`` (score desc, smaller id first)."""
    k = min(k, n_items)
    ids = np.zeros((len(cases), k), dtype=np.int64)
    vals = np.full((len(cases), k), -np.inf, dtype=np.float64)
    with progress_bar(len(cases), "retrieve", enabled=show_progress) as advance:
        for start in range(0, len(cases), batch_size):
            rows = np.arange(start, min(start + batch_size, len(cases)))
            hist = cases.history.take(rows)
            extra = ({"timestamps": cases.history_timestamps.take(rows)}
                     if cases.history_timestamps is not None else {})
            scores = scorer.score(hist, cases.users[rows], **extra).detach().to(torch.float32).clone()
            if scores.shape != (len(rows), n_items + 1):
                raise ValueError(f"retrieval returned shape {tuple(scores.shape)}, expected {(len(rows), n_items + 1)}")
            scores = torch.nan_to_num(scores, nan=-torch.inf, neginf=-torch.inf, posinf=torch.inf)
            scores[:, 0] = -torch.inf
            if exclude_seen:
                mask_seen(scores, hist)
            top_ids, top_vals = topk_deterministic(scores[:, 1:], k)
            top_vals = top_vals.double().cpu().numpy()
            ids[rows] = np.where(top_vals == -np.inf, 0, top_ids.cpu().numpy() + 1)
            vals[rows] = top_vals
            advance(len(rows))
    return ids, vals


@torch.no_grad()
def rank_candidates(ranker: CandidateRanker, log: ImpressionLog, cases: TwoStageCases, candidates: np.ndarray, *,
                    max_len: int, task_blend: Mapping[str, float] | None = None, batch_size: int = 32,
                    device: torch.device | str = "cpu", show_progress: bool = False,
                    ) -> tuple[np.ndarray, dict[str, float]]:
    """The ranker's score [N, M] (float64; NaN where ``candidates`` is 0) of log-vocabulary ``candidates`` [N, M]:
    one request per case at its time, with the user's last ``max_len`` context impressions strictly before it as
    history, which every candidate reads whole. Returns the scores and the task blend used."""
    candidates = np.asarray(candidates, dtype=np.int64)
    n, m = candidates.shape
    hs, he = histories_before(log, cases.log_users, cases.time, max_len)
    out = np.full((n, m), np.nan, dtype=np.float64)
    blend: dict[str, float] | None = None
    with progress_bar(n, "rank", enabled=show_progress) as advance:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            fields: dict[str, Any] = {"user": cases.log_users[idx], **history_fields(log, hs[idx], he[idx])}
            cand = candidates[idx]
            real = cand > 0
            fields["cand_items"] = cand
            fields["cand_time"] = np.where(real, cases.time[idx, None], 0).astype(np.int64)
            fields["visible"] = np.where(real, fields["hist_len"][:, None], 0).astype(np.int64)
            tensors = {key: torch.as_tensor(np.ascontiguousarray(v)).to(device) for key, v in fields.items()}
            outputs = ranker(tensors)
            if blend is None:
                blend = resolve_blend(list(outputs), task_blend)
            score = blend_score({t: outputs[t].detach().double() for t in blend}, blend)
            out[idx] = np.where(real, score.cpu().numpy(), np.nan)
            advance(len(idx))
    return out, blend if blend is not None else {t: float(w) for t, w in (task_blend or {}).items()}


def ranks_in_list(final: np.ndarray, target_col: np.ndarray, miss_rank: int) -> np.ndarray:
    """0-based rank of each target column under ``final`` (desc; ties: the smaller column, i.e. the retrieval
    order); ``miss_rank`` where the target is not in the list (column -1)."""
    n = len(final)
    col = np.maximum(target_col, 0)
    t = final[np.arange(n), col][:, None]
    cols = np.arange(final.shape[1])[None, :]
    rank = (final > t).sum(axis=1) + ((final == t) & (cols < col[:, None])).sum(axis=1)
    return np.where(target_col >= 0, rank, miss_rank)


def _target_columns(top_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    hit = top_ids == np.asarray(targets)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def _weight_name(w: float | None) -> str:
    return "ranker only" if w is None else f"{w:g}"


@dataclass
class StageScores:
    """Everything a weight needs, computed once per case set."""

    top_ids: np.ndarray  # [N, K] retrieval dense ids (0 = empty)
    retrieval: np.ndarray  # [N, K] retrieval scores
    ranker: np.ndarray  # [N, K] ranker scores (NaN: unknown to the ranker or empty slot)
    target_col: np.ndarray  # [N] the target's column in top_ids, -1 if not retrieved
    blend: dict[str, float]

    def per_case(self, weight: float | None | str, ks: Sequence[int]) -> dict[str, np.ndarray]:
        """Per-case HR@K / NDCG@K of retrieval alone (``weight="retrieval"``) or the fused list."""
        miss = self.top_ids.shape[1] + max(ks)  # beyond every cut-off
        if isinstance(weight, str):
            cols = np.arange(self.top_ids.shape[1])
            ranks = np.where(self.target_col >= 0, cols[np.maximum(self.target_col, 0)], miss)
        else:
            ranks = ranks_in_list(fuse(self.retrieval, self.ranker, weight), self.target_col, miss)
        out = metrics_from_ranks(ranks, ks)
        out.pop("mrr")
        return out


def stage_scores(retrieval: Scorer, ranker: CandidateRanker, log: ImpressionLog, cases: TwoStageCases,
                 items: np.ndarray, *, k_retrieve: int = 200, ranker_max_len: int = 200,
                 task_blend: Mapping[str, float] | None = None, exclude_seen: bool = True,
                 retrieval_batch: int = 256, ranker_batch: int = 32, device: torch.device | str = "cpu",
                 show_progress: bool = False) -> StageScores:
    """Retrieve the top-``k_retrieve`` of every case, then score them with the ranker. ``items`` is
    :func:`item_map` (retrieval dense -> log dense)."""
    n_items = len(items) - 1
    top_ids, top_vals = retrieve(retrieval, cases, n_items, k_retrieve, exclude_seen=exclude_seen,
                                 batch_size=retrieval_batch, show_progress=show_progress)
    scores, blend = rank_candidates(ranker, log, cases, items[top_ids], max_len=ranker_max_len,
                                    task_blend=task_blend, batch_size=ranker_batch, device=device,
                                    show_progress=show_progress)
    return StageScores(top_ids, top_vals, scores, _target_columns(top_ids, cases.targets), blend)


@dataclass
class TwoStageResult:
    weight: float | None  # chosen on validation
    select_metric: str
    valid: dict[str, dict[str, float]]  # grid value (or "retrieval") -> mean validation metrics
    test: dict[str, dict[str, float]]  # the same on test, every grid value (only `weight` is the result)
    paired: dict[str, dict[str, Any]]  # metric -> paired_test(retrieval alone, two-stage) on test cases
    per_case: dict[str, dict[str, np.ndarray]]  # "retrieval" / "two_stage" -> metric -> test value per case
    info: dict[str, Any] = field(default_factory=dict)


def select_weight(valid: StageScores, weights: Sequence[float | None], metric: str,
                  ks: Sequence[int]) -> tuple[float | None, dict[str, dict[str, float]]]:
    """The grid value with the best mean validation ``metric`` (the first on ties) and every value's means."""
    if not weights:
        raise ConfigError("the weight grid is empty")
    table = {_weight_name(w): {m: float(v.mean()) if len(v) else float("nan")
                               for m, v in valid.per_case(w, ks).items()} for w in weights}
    if metric not in next(iter(table.values())):
        raise ConfigError(f"select_metric {metric!r} is not one of {sorted(next(iter(table.values())))}")
    values = [table[_weight_name(w)][metric] for w in weights]
    best = int(np.argmax(np.nan_to_num(values, nan=-np.inf)))
    return weights[best], table


def two_stage_eval(retrieval: Scorer, ranker: CandidateRanker, log: ImpressionLog,
                   cases: Mapping[str, TwoStageCases], items: np.ndarray, *, k_retrieve: int = 200,
                   weights: Sequence[float | None] = DEFAULT_WEIGHTS, task_blend: Mapping[str, float] | None = None,
                   select_metric: str = "ndcg@10", ks: Sequence[int] = (10, 20, 50), ranker_max_len: int = 200,
                   exclude_seen: bool = True, retrieval_batch: int = 256, ranker_batch: int = 32,
                   device: torch.device | str = "cpu", n_boot: int = 1000, seed: int = 0,
                   show_progress: bool = False) -> TwoStageResult:
    """Retrieval top-``k_retrieve`` reordered by the ranker (see the module docstring): w chosen on
    ``cases["valid"]``, applied once to ``cases["test"]``, and compared with retrieval alone per test case.

    ``items`` maps retrieval dense ids to the log's (:func:`item_map`); ``ks`` are the reported cut-offs
    (``select_metric`` must be one of their metrics); ``ranker_max_len`` caps the ranker's history."""
    if set(cases) != {"valid", "test"}:
        raise ConfigError(f"cases must have 'valid' and 'test', got {sorted(cases)}")
    ks = sorted({int(k) for k in ks})
    if max(ks) > k_retrieve:
        raise ConfigError(f"cut-offs {ks} exceed k_retrieve={k_retrieve}")
    if int(np.max(items, initial=0)) > log.n_items:
        raise DataError(f"the item map points past the log's {log.n_items} items")
    common = {"k_retrieve": k_retrieve, "ranker_max_len": ranker_max_len, "task_blend": task_blend,
              "exclude_seen": exclude_seen, "retrieval_batch": retrieval_batch, "ranker_batch": ranker_batch,
              "device": device, "show_progress": show_progress}
    valid = stage_scores(retrieval, ranker, log, cases["valid"], items, **common)
    weight, valid_table = select_weight(valid, list(weights), select_metric, ks)
    valid_table = {"retrieval": {m: float(v.mean()) for m, v in valid.per_case("retrieval", ks).items()},
                   **valid_table}
    test = stage_scores(retrieval, ranker, log, cases["test"], items, **common)
    base = test.per_case("retrieval", ks)
    fused = test.per_case(weight, ks)
    test_table = {"retrieval": {m: float(v.mean()) for m, v in base.items()}}
    for w in weights:
        test_table[_weight_name(w)] = {m: float(v.mean()) for m, v in test.per_case(w, ks).items()}
    paired = {m: paired_test(base[m], fused[m], n_boot=n_boot, seed=seed) for m in base}
    known = (items[test.top_ids] > 0)[test.top_ids > 0]
    info = {"weights": [_weight_name(w) for w in weights], "select_metric": select_metric, "ks": ks,
            "k_retrieve": k_retrieve, "task_blend": test.blend, "ranker_max_len": ranker_max_len,
            "exclude_seen": exclude_seen, "valid_cases": len(cases["valid"]), "test_cases": len(cases["test"]),
            "valid_recall_at_k": float((valid.target_col >= 0).mean()) if len(cases["valid"]) else float("nan"),
            "test_recall_at_k": float((test.target_col >= 0).mean()) if len(cases["test"]) else float("nan"),
            "test_candidates_unknown_to_ranker": float(1 - known.mean()) if known.size else 0.0,
            "cases_info": {p: c.info for p, c in cases.items()}}
    return TwoStageResult(weight, select_metric, valid_table, test_table, paired,
                          {"retrieval": base, "two_stage": fused}, info)
