"""The two-stage score rule, shared by serving (``genrec.serve.ranking``) and evaluation (``genrec.eval.two_stage``).

A ranker's score of a candidate is a blend of its outputs, sum over ``blend`` of weight x the task's logit (a
regression task: its value). The final order of a retrieved candidate list is
final = z(retrieval score) + w x z(ranker score), z-scores taken over the list (w None: z(ranker score) alone); a
candidate the ranker does not know keeps its retrieval z-score as its ranker z-score. Ties keep the retrieval
order, so w = 0 is exactly retrieval alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from genrec.errors import ConfigError

ENGAGEMENT_TASKS = ("rate", "click")  # the default ranker score: the first of these the ranker has


def resolve_blend(tasks: Sequence[str], task_blend: Mapping[str, float] | None) -> dict[str, float]:
    """The ranker score's weights per output: ``task_blend`` as given (every task must exist), else the logit of
    the first engagement task (``rate``, then ``click``) the ranker has."""
    if task_blend:
        if unknown := set(task_blend) - set(tasks):
            raise ConfigError(f"task_blend names {sorted(unknown)}, not outputs of the ranker ({', '.join(tasks)})")
        return {t: float(w) for t, w in task_blend.items()}
    for t in ENGAGEMENT_TASKS:
        if t in tasks:
            return {t: 1.0}
    raise ConfigError(f"the ranker has none of the engagement tasks {ENGAGEMENT_TASKS}; pass task_blend "
                      f"(its outputs: {', '.join(tasks)})")


def blend_score(outputs: Mapping[str, Any], blend: Mapping[str, float]) -> Any:
    """The ranker score: sum over ``blend`` of weight x the task's output (tensors or arrays alike)."""
    return sum(w * outputs[t] for t, w in blend.items())


def zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, (x - mean) / std over the entries where ``mask``; 0 where the std is 0; 0 outside ``mask``."""
    cnt = mask.sum(axis=1, keepdims=True)
    xm = np.where(mask, x, 0.0)
    mean = xm.sum(axis=1, keepdims=True) / np.maximum(cnt, 1)
    var = (np.where(mask, x - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(cnt, 1)
    std = np.sqrt(var)
    z = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
    return np.where(mask, z, 0.0)


def fuse(retrieval_scores: np.ndarray, ranker_scores: np.ndarray, weight: float | None) -> np.ndarray:
    """final = z(retrieval) + w * z(ranker) per row (w None: z(ranker) alone); a candidate without a ranker score
    (NaN) uses its retrieval z-score for both; empty slots (retrieval -inf) get -inf."""
    slot = np.isfinite(retrieval_scores)
    known = slot & np.isfinite(ranker_scores)
    z_r = zscore(np.where(slot, retrieval_scores, 0.0), slot)
    z_k = np.where(known, zscore(np.where(known, ranker_scores, 0.0), known), z_r)
    final = z_k if weight is None else z_r + weight * z_k
    return np.where(slot, final, -np.inf)


def final_order(final: np.ndarray) -> np.ndarray:
    """Positions of one list's candidates, best ``final`` first; ties keep the retrieval order."""
    return np.lexsort((np.arange(len(final)), -final))
