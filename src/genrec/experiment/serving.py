"""An experiment inside the server (``genrec serve --experiment FILE``): which arm answers a request, with which
bundle and serving settings, and what the answer showed (an :class:`~genrec.serve.store.Exposure` for the log).

- **ab**: the user's arm (:func:`~genrec.experiment.assign.assign`: sticky by user id; a request without one gets
  an arm of its own, flagged anonymous) answers with its bundle (none: the server's current one), its
  ``ranker_weight`` and its exploration: an exploring arm asks its model for a larger candidate pool and samples
  the shown list from the scores (:func:`~genrec.experiment.explore.sample_list`), logging each slot's propensity.
- **interleave**: both arms answer (concurrently) and :func:`~genrec.experiment.assign.team_draft`, seeded by the
  request id, merges their lists; each slot's team is logged. Exploration does not apply (the merge is the
  randomisation).

An arm whose bundle does not load is logged and served by the default bundle (its serving settings still apply):
the server keeps serving. Outside the experiment's [start, end) window requests are served as without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from genrec.experiment.assign import Assignment, assign, team_draft
from genrec.experiment.config import Arm, Experiment, load_experiment
from genrec.experiment.explore import sample_list
from genrec.serve.recommender import Recommendation, Recommender
from genrec.serve.store import Exposure

log = logging.getLogger(__name__)
MAX_POOL = 1000  # the most candidates an exploring arm samples from (the API's largest k)

# (recommender, k, ranker_weight) -> its answer: the request's inputs are bound by the caller
Run = Callable[[Recommender, int, float | None], Awaitable[Recommendation]]


def bundle_checksum(rec: Recommender) -> str:
    """A short digest of the bundle's file checksums: which exact files answered."""
    files = sorted((rec.manifest.get("files") or {}).items())
    return hashlib.blake2b(repr(files).encode(), digest_size=8).hexdigest()


def exploration_pool(k: int) -> int:
    """How many candidates an exploring arm draws its ``k`` shown items from."""
    return min(MAX_POOL, max(2 * k, k + 10))


@dataclass
class Served:
    """One answer: the recommendation to return (its items as shown) and its exposure record."""

    result: Recommendation
    exposure: Exposure


class ExperimentServer:
    """The loaded experiment: each arm's recommender (None: the server's current one)."""

    def __init__(self, experiment: Experiment, bundles: dict[str, Recommender | None]):
        self.experiment = experiment
        self.bundles = bundles

    @classmethod
    def load(cls, path: str | Path, loader: Callable[[Path], Recommender] = Recommender.load) -> ExperimentServer:
        """Read and validate the file (a ConfigError names what is wrong) and load each arm's bundle; relative
        bundle paths are read from the experiment file's folder. A bundle that fails to load is logged and its arm
        served by the default bundle."""
        experiment = load_experiment(path)
        root, bundles, loaded = Path(path).parent, {}, {}
        for arm in experiment.arms:
            bundles[arm.name] = None
            if arm.bundle is None:
                continue
            where = arm.bundle if arm.bundle.is_absolute() else root / arm.bundle
            try:
                if where not in loaded:
                    loaded[where] = loader(where)
                bundles[arm.name] = loaded[where]
            except Exception as e:  # noqa: BLE001 - any failure: the arm falls back to the default bundle
                log.error("experiment %s, arm %s: bundle %s not loaded (%s: %s); the arm is served by the default "
                          "bundle", experiment.name, arm.name, where, type(e).__name__, e)
        if experiment.mode == "interleave" and any(a.serving.exploration.kind != "none" for a in experiment.arms):
            log.warning("experiment %s: exploration does not apply in interleave mode", experiment.name)
        return cls(experiment, bundles)

    def history_needed(self, default: Recommender) -> int:
        return max([default.history_needed] + [r.history_needed for r in self.bundles.values() if r is not None])

    def route(self, user_id: str | None, request_id: str, now: float) -> Assignment | None:
        """The request's assignment, or None outside the experiment's window."""
        if not self.experiment.active(datetime.fromtimestamp(now, UTC)):
            return None
        return assign(self.experiment, user_id, request_id)

    async def serve(self, default: Recommender, run: Run, k: int, request_id: str, user_id: str | None) -> Served:
        """The answer of ``request_id`` under the experiment (or without it outside its window)."""
        now = time.time()
        plan = self.route(user_id, request_id, now)
        if plan is None:
            return await serve_plain(default, run, k, request_id, user_id, now)
        if plan.arm is None:  # interleave
            return await self._interleave(default, run, k, request_id, user_id, plan, now)
        arm = self.experiment.arm(plan.arm)
        rec = self.bundles[arm.name] or default
        result, propensities = await _explore(rec, run, k, arm, request_id)
        return Served(result, _exposure(request_id, now, user_id, plan, result, [rec], propensities=propensities))

    async def _interleave(self, default: Recommender, run: Run, k: int, request_id: str, user_id: str | None,
                          plan: Assignment, now: float) -> Served:
        arms = self.experiment.arms
        recs = [self.bundles[a.name] or default for a in arms]
        a, b = await asyncio.gather(*(run(r, k, arm.serving.ranker_weight) for r, arm in zip(recs, arms,
                                                                                                strict=True)))
        merged = team_draft([i["item_id"] for i in a.items], [i["item_id"] for i in b.items], k, seed=request_id)
        rows = {i["item_id"]: i for i in b.items} | {i["item_id"]: i for i in a.items}
        result = Recommendation([rows[i] for i in merged.items], a.warnings + [w for w in b.warnings
                                                                               if w not in a.warnings],
                                fallback=a.fallback and b.fallback, reason=a.reason or b.reason,
                                model_version=a.model_version, truncated=a.truncated, mode=a.mode)
        return Served(result, _exposure(request_id, now, user_id, plan, result, recs, teams=merged.teams))


async def serve_plain(rec: Recommender, run: Run, k: int, request_id: str, user_id: str | None,
                      now: float | None = None) -> Served:
    """An answer outside any experiment: the bundle's own settings."""
    now = time.time() if now is None else now
    result = await run(rec, k, None)
    return Served(result, _exposure(request_id, now, user_id, None, result, [rec]))


async def _explore(rec: Recommender, run: Run, k: int, arm: Arm, request_id: str
                   ) -> tuple[Recommendation, tuple[float, ...] | None]:
    """The arm's answer; an exploring arm samples its ``k`` items from a larger pool and returns the propensities
    (a popularity fallback has no scores: its list is shown as is, each slot with propensity 1)."""
    exploration = arm.serving.exploration
    if exploration.kind == "none":
        return await run(rec, k, arm.serving.ranker_weight), None
    result = await run(rec, exploration_pool(k), arm.serving.ranker_weight)
    scores = [i["score"] for i in result.items]
    if not scores or any(s is None for s in scores):
        result.items = result.items[:k]
        return result, tuple(1.0 for _ in result.items)
    seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    sampled = sample_list(np.asarray(scores), min(k, len(scores)), exploration, np.random.default_rng(seed))
    result.items = [result.items[j] for j in sampled.order.tolist()]
    return result, tuple(sampled.propensity.tolist())


def _exposure(request_id: str, now: float, user_id: str | None, plan: Assignment | None, result: Recommendation,
              recs: list[Recommender], teams: tuple[int, ...] | None = None,
              propensities: tuple[float, ...] | None = None) -> Exposure:
    unique = list(dict.fromkeys(recs))
    return Exposure(request_id, now, user_id, not user_id, plan.experiment if plan else None,
                    plan.arm if plan else None, tuple(i["item_id"] for i in result.items), teams, propensities,
                    ",".join(str(r.version) for r in unique), ",".join(bundle_checksum(r) for r in unique))


def answer_fields(served: Served) -> dict[str, Any]:
    """What a /v1/recommend answer says about the experiment."""
    e = served.exposure
    return {"request_id": e.request_id, "experiment": e.experiment, "arm": e.arm, "anonymous": e.anonymous}
