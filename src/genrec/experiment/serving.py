"""An experiment inside the server (``genrec serve --experiment FILE``): which arm answers a request, with which
bundle and serving settings, and what the answer showed (an :class:`~genrec.serve.store.Exposure` for the log).

- **ab**: the user's arm (:func:`~genrec.experiment.assign.assign`: sticky by user id; a request without one gets
  an arm of its own, flagged anonymous) answers with its bundle (none: the server's current one), its
  ``ranker_weight`` and its exploration: an exploring arm asks its model for a larger candidate pool and samples
  the shown list from the scores (:func:`~genrec.experiment.explore.sample_list`), logging each slot's propensity;
  an arm with a ``fresh_share`` reserves slots for fresh items (:mod:`genrec.experiment.fresh`), each marked in the
  answer and the log (its propensity is 1 in an exploring arm: the pick is deterministic).
- **interleave**: both arms answer (concurrently) and :func:`~genrec.experiment.assign.team_draft`, seeded by the
  request id, merges their lists; each slot's team is logged. Exploration does not apply (the merge is the
  randomisation); an arm's fresh slots do (its list holds them before the merge).

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
from genrec.experiment.config import Arm, Experiment, Exploration, load_experiment
from genrec.experiment.explore import sample_list
from genrec.experiment.fresh import FreshItems, Sightings, place, reserved
from genrec.serve.recommender import Recommendation, Recommender
from genrec.serve.store import Exposure

log = logging.getLogger(__name__)
MAX_POOL = 1000  # the most candidates an exploring arm samples from (the API's largest k)

# (recommender, k, ranker_weight, only) -> its answer: the request's inputs are bound by the caller; ``only`` (raw
# ids, or None) further restricts what may be returned, on top of the request's own filters
Run = Callable[[Recommender, int, float | None, list[str] | None], Awaitable[Recommendation]]


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

    def __init__(self, experiment: Experiment, bundles: dict[str, Recommender | None],
                 fresh: FreshItems | None = None):
        self.experiment = experiment
        self.bundles = bundles
        # fresh items: only when an arm reserves slots for them (else nothing is tracked)
        wanted = any(a.serving.fresh_share > 0 for a in experiment.arms)
        self.fresh = (fresh or FreshItems()) if wanted else None

    @classmethod
    def load(cls, path: str | Path, loader: Callable[[Path], Recommender] = Recommender.load, store: Any = None,
             default: Recommender | None = None) -> ExperimentServer:
        """Read and validate the file (a ConfigError names what is wrong) and load each arm's bundle; relative
        bundle paths are read from the experiment file's folder. A bundle that fails to load is logged and its arm
        served by the default bundle. With fresh-content arms: first sightings are read from ``store``'s logs, and
        each arm's ``fresh_column`` is checked against its catalog (``default``'s for arms without a bundle)."""
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
        server = cls(experiment, bundles)
        if server.fresh is not None:
            if store is not None:
                server.fresh = FreshItems(Sightings.from_store(store))
            for arm in experiment.arms:
                rec = bundles[arm.name] or default
                if arm.serving.fresh_share > 0 and rec is not None:
                    server.fresh.catalog(rec, arm.serving.fresh_column)  # a missing column: ConfigError now
        return server

    def saw(self, items: list[str], when: float | None = None) -> None:
        """Items shown or engaged with now (their first sighting, for fresh-content arms)."""
        if self.fresh is not None:
            self.fresh.saw(items, when)

    def history_needed(self, default: Recommender) -> int:
        return max([default.history_needed] + [r.history_needed for r in self.bundles.values() if r is not None])

    def route(self, user_id: str | None, request_id: str, now: float) -> Assignment | None:
        """The request's assignment, or None outside the experiment's window."""
        if not self.experiment.active(datetime.fromtimestamp(now, UTC)):
            return None
        return assign(self.experiment, user_id, request_id)

    async def serve(self, default: Recommender, run: Run, k: int, request_id: str, user_id: str | None,
                    history: list[str] | None = None) -> Served:
        """The answer of ``request_id`` under the experiment (or without it outside its window); ``history``: the
        request's raw item ids (fresh-content arms pick semantic-ID neighbours of them)."""
        now = time.time()
        plan = self.route(user_id, request_id, now)
        if plan is None:
            served = await serve_plain(default, run, k, request_id, user_id, now)
        elif plan.arm is None:  # interleave
            served = await self._interleave(default, run, k, request_id, user_id, plan, now, history or [])
        else:
            arm = self.experiment.arm(plan.arm)
            rec = self.bundles[arm.name] or default
            result, propensities, fresh = await self._answer(rec, run, k, arm, request_id, history or [], now)
            served = Served(result, _exposure(request_id, now, user_id, plan, result, [rec],
                                              propensities=propensities, fresh=fresh))
        self.saw(list(served.exposure.items), now)
        return served

    async def _answer(self, rec: Recommender, run: Run, k: int, arm: Arm, request_id: str, history: list[str],
                      now: float) -> tuple[Recommendation, tuple[float, ...] | None, tuple[bool, ...] | None]:
        """One arm's answer: its list (explored when the arm explores), with fresh slots when it reserves them."""
        r = reserved(k, arm.serving.fresh_share) if self.fresh is not None else 0
        if r == 0:
            return (*await _explore(rec, run, k, arm, request_id), None)
        (main, propensities), picks = await asyncio.gather(_explore(rec, run, k, arm, request_id),
                                                           self._fresh_picks(rec, run, r, arm, history, now))
        chance = dict(zip((i["item_id"] for i in main.items), propensities or (), strict=False))
        main.items, flags = place(main.items, picks, k)
        if propensities is not None:
            propensities = tuple(1.0 if f else chance[i["item_id"]] for i, f in zip(main.items, flags, strict=True))
        return main, propensities, tuple(flags)

    async def _fresh_picks(self, rec: Recommender, run: Run, r: int, arm: Arm, history: list[str],
                           now: float) -> list[dict[str, Any]]:
        """Up to ``r`` fresh items: semantic-ID neighbours of the history first, then other fresh items, each
        group best first by the model's score under the request's filters (:mod:`genrec.experiment.fresh`)."""
        try:
            catalog = self.fresh.catalog(rec, arm.serving.fresh_column)
        except Exception as e:  # noqa: BLE001 - e.g. a reloaded default bundle without the column: no fresh slots
            log.error("experiment %s, arm %s: no fresh slots (%s: %s)", self.experiment.name, arm.name,
                      type(e).__name__, e)
            return []
        raw, ids = catalog.candidates(now, arm.serving.fresh_days)
        dense = [int(i) for i in rec.catalog.lookup(history) if i] if history else []
        picks: list[dict[str, Any]] = []
        for group in catalog.neighbours(dense, raw, ids):
            if len(picks) < r and group:
                answer = await run(rec, min(r - len(picks), len(group)), arm.serving.ranker_weight, group)
                picks += answer.items
        return picks[:r]

    async def _interleave(self, default: Recommender, run: Run, k: int, request_id: str, user_id: str | None,
                          plan: Assignment, now: float, history: list[str]) -> Served:
        arms = self.experiment.arms
        recs = [self.bundles[a.name] or default for a in arms]
        (a, _, fa), (b, _, fb) = await asyncio.gather(*(
            self._answer(r, run, k, _without_exploration(arm), request_id, history, now)
            for r, arm in zip(recs, arms, strict=True)))
        merged = team_draft([i["item_id"] for i in a.items], [i["item_id"] for i in b.items], k, seed=request_id)
        rows = {i["item_id"]: i for i in b.items} | {i["item_id"]: i for i in a.items}
        result = Recommendation([rows[i] for i in merged.items], a.warnings + [w for w in b.warnings
                                                                               if w not in a.warnings],
                                fallback=a.fallback and b.fallback, reason=a.reason or b.reason,
                                model_version=a.model_version, truncated=a.truncated, mode=a.mode)
        fresh = None
        if fa is not None or fb is not None:
            marked = [{i["item_id"] for i, f in zip(x.items, flags or (), strict=False) if f} for x, flags in
                      ((a, fa), (b, fb))]
            fresh = tuple(item in marked[team] for item, team in zip(merged.items, merged.teams, strict=True))
        return Served(result, _exposure(request_id, now, user_id, plan, result, recs, teams=merged.teams,
                                        fresh=fresh))


def _without_exploration(arm: Arm) -> Arm:
    return arm.model_copy(update={"serving": arm.serving.model_copy(update={"exploration": Exploration()})})


async def serve_plain(rec: Recommender, run: Run, k: int, request_id: str, user_id: str | None,
                      now: float | None = None) -> Served:
    """An answer outside any experiment: the bundle's own settings."""
    now = time.time() if now is None else now
    result = await run(rec, k, None, None)
    return Served(result, _exposure(request_id, now, user_id, None, result, [rec]))


async def _explore(rec: Recommender, run: Run, k: int, arm: Arm, request_id: str
                   ) -> tuple[Recommendation, tuple[float, ...] | None]:
    """The arm's answer; an exploring arm samples its ``k`` items from a larger pool and returns the propensities
    (a popularity fallback has no scores: its list is shown as is, each slot with propensity 1)."""
    exploration = arm.serving.exploration
    if exploration.kind == "none":
        return await run(rec, k, arm.serving.ranker_weight, None), None
    result = await run(rec, exploration_pool(k), arm.serving.ranker_weight, None)
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
              propensities: tuple[float, ...] | None = None, fresh: tuple[bool, ...] | None = None) -> Exposure:
    unique = list(dict.fromkeys(recs))
    return Exposure(request_id, now, user_id, not user_id, plan.experiment if plan else None,
                    plan.arm if plan else None, tuple(i["item_id"] for i in result.items), teams, propensities,
                    ",".join(str(r.version) for r in unique), ",".join(bundle_checksum(r) for r in unique),
                    fresh=fresh)


def answer_fields(served: Served) -> dict[str, Any]:
    """What a /v1/recommend answer says about the experiment."""
    e = served.exposure
    return {"request_id": e.request_id, "experiment": e.experiment, "arm": e.arm, "anonymous": e.anonymous}
