"""Who sees which arm, and team-draft interleaving of two arms' lists.

**Assignment.** A user's arm comes from ``blake2b(salt, user id)`` read as a number in [0, 1) and cut by the arms'
cumulative shares: the same user always gets the same arm (no state to store), the shares hold in expectation, and
two experiments with different salts split users independently of each other (the hash of one salt tells nothing
about the hash of another). Python's ``hash()`` is salted per process and is not used. Changing the shares of a
running experiment moves the users near the cut points; change the salt to start afresh. A request without a user
id gets an arm of its own (from its request id when there is one, so replaying a log gives the same arm), is flagged
``anonymous`` and is reported apart from users.

**Team-draft interleaving** (Radlinski, Kurup & Joachims, 2008, "How does clickthrough data reflect retrieval
quality?", CIKM): two rankers' lists are merged as two captains pick teams: in each round the team with fewer picks
(a coin flip when even) adds its highest-ranked item not yet shown. Each shown slot is credited to the team that
picked it; an impression is a win for the team whose slots got more engagements. Under random engagement both teams
win equally often, so the preference ``delta = (wins_b + ties / 2) / (wins + ties + losses) - 1/2`` (Chapelle,
Joachims, Radlinski & Yue, 2012, "Large-scale validation and analysis of interleaved search evaluation", ACM TOIS) is
0 for equally good lists. Impressions without engagement carry no preference and are left out of delta by default.
Interleaving compares the two rankers within one request, which removes the between-user variance an A/B test
carries; Chapelle et al. report one to two orders of magnitude fewer queries for the same power.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from genrec.experiment.config import Experiment
from genrec.experiment.stats import ALPHA, Estimate, normal_estimate, ratio_estimate, user_totals

_SCALE = float(1 << 64)


def unit_hash(salt: str, key: str) -> float:
    """A stable number in [0, 1) for (salt, key): the same on every machine, process and Python version."""
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def arm_index(shares: Sequence[float], u: float | np.ndarray) -> np.ndarray:
    """The arm whose slice of [0, 1) holds ``u``, slices laid out in arm order by ``shares`` (vectorised)."""
    edges = np.cumsum(shares)
    edges[-1] = 1.0  # shares that sum to 1 - 1e-12 must still cover u close to 1
    return np.searchsorted(edges, u, side="right")


@dataclass(frozen=True)
class Assignment:
    """The arm a request is served by; ``arm`` None in interleave mode (the request shows both arms merged by
    :func:`team_draft`). ``anonymous``: no user id, so the arm is the request's own."""

    experiment: str
    arm: str | None
    anonymous: bool


def assign(experiment: Experiment, user_id: str | None, request_id: str | None = None) -> Assignment:
    """The arm of ``user_id`` in ``experiment``; no user id (None or empty): an arm per request, drawn from the
    request id's hash (or at random without one) and flagged anonymous. Interleave mode: arm None."""
    anonymous = not user_id
    if experiment.mode == "interleave":
        return Assignment(experiment.name, None, anonymous)
    if not anonymous:
        u = unit_hash(experiment.salt, str(user_id))
    elif request_id:
        u = unit_hash(experiment.salt, f"request\x1f{request_id}")
    else:
        u = random.random()
    return Assignment(experiment.name, experiment.arm_names[int(arm_index(experiment.shares, u))], anonymous)


def assign_many(experiment: Experiment, user_ids: Iterable[str]) -> np.ndarray:
    """Arm indices (into ``experiment.arms``) of many identified users at once (simulators, reports)."""
    u = np.fromiter((unit_hash(experiment.salt, str(x)) for x in user_ids), dtype=np.float64)
    return arm_index(experiment.shares, u)


@dataclass(frozen=True)
class Interleaved:
    """A merged list: ``items`` in shown order and ``teams`` per slot (0: list a, 1: list b)."""

    items: tuple[Hashable, ...]
    teams: tuple[int, ...]


def _seed(seed: int | str) -> int:
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big")


def team_draft(list_a: Sequence[Hashable], list_b: Sequence[Hashable], k: int | None = None,
               seed: int | str = 0) -> Interleaved:
    """Team-draft interleaving of two ranked lists into at most ``k`` slots (default: as many distinct items as
    the lists hold). ``seed`` (e.g. the request id) fixes the coin flips, so a logged request can be rebuilt."""
    rng = random.Random(_seed(seed))
    limit = len(set(list_a) | set(list_b)) if k is None else k
    shown: set[Hashable] = set()
    items: list[Hashable] = []
    teams: list[int] = []
    picks, cursor = [0, 0], [0, 0]
    lists = (list_a, list_b)
    while len(items) < limit:
        for t in (0, 1):  # skip what the other team already showed
            while cursor[t] < len(lists[t]) and lists[t][cursor[t]] in shown:
                cursor[t] += 1
        open_ = [t for t in (0, 1) if cursor[t] < len(lists[t])]
        if not open_:
            break
        if len(open_) == 1:
            team = open_[0]
        elif picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = rng.getrandbits(1)
        item = lists[team][cursor[team]]
        shown.add(item)
        items.append(item)
        teams.append(team)
        picks[team] += 1
    return Interleaved(tuple(items), tuple(teams))


@dataclass(frozen=True)
class Credit:
    """One impression's engagements per team and its outcome for list b ("win", "loss", "tie" or "none": no
    engagement)."""

    a: int
    b: int

    @property
    def outcome(self) -> Literal["win", "loss", "tie", "none"]:
        if self.a == self.b:
            return "none" if self.a == 0 else "tie"
        return "win" if self.b > self.a else "loss"


def credit(teams: Sequence[int], engaged_positions: Iterable[int]) -> Credit:
    """Engagements of one interleaved impression credited to the team that picked each engaged slot (0-based
    positions; a position engaged twice counts twice)."""
    counts = [0, 0]
    for p in engaged_positions:
        if not 0 <= p < len(teams):
            raise ValueError(f"engaged position {p} is outside the {len(teams)} shown slots")
        counts[teams[p]] += 1
    return Credit(counts[0], counts[1])


@dataclass(frozen=True)
class Preference:
    """Interleaving outcome over impressions: counts from list b's side and ``delta`` (> 0: b preferred) with its
    interval, impressions (or users, when given) as the unit."""

    wins: int
    losses: int
    ties: int
    none: int
    delta: Estimate


def preference(credits: Sequence[Credit], users: Sequence[Hashable] | None = None, alpha: float = ALPHA,
               engaged_only: bool = True) -> Preference:
    """Wins, losses and ties of list b and ``delta = (wins + ties / 2) / n - 1/2`` with a 1 - alpha interval.
    ``users`` (one per impression): impressions of one user are correlated, so the interval takes users as the
    unit (delta method on per-user sums). ``engaged_only`` False counts impressions without engagement as ties."""
    outcome = np.array([c.outcome for c in credits])
    score = np.select([outcome == "win", outcome == "loss"], [0.5, -0.5], 0.0)  # delta's share of each impression
    keep = outcome != "none" if engaged_only else np.ones(len(outcome), dtype=bool)
    counts = {o: int((outcome == o).sum()) for o in ("win", "loss", "tie", "none")}
    if keep.sum() < 2:
        est = normal_estimate(float("nan"), float("nan"), int(keep.sum()), alpha)
    elif users is None:
        est = ratio_estimate(score[keep], alpha=alpha)
    else:
        if len(users) != len(outcome):
            raise ValueError(f"users: one per impression, got {len(users)} for {len(outcome)} impressions")
        _, per_user, impressions = user_totals(np.asarray(users).astype(str)[keep], score[keep], np.ones(keep.sum()))
        est = ratio_estimate(per_user, impressions, alpha)
    return Preference(counts["win"], counts["loss"], counts["tie"], counts["none"], est)
