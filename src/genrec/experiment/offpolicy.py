"""Off-policy evaluation of a candidate bundle from an exploring arm's exposure log (``genrec ope``).

**Estimator: position-based (independent) IPS.** A logged slot's reward is weighted by
``pi(item at j) / mu(item at j)``, the *marginal* probabilities that the candidate and the logging policy show
the slot's item at that position (Li, Kim, Kveton & Muthukrishnan, 2018, "Offline evaluation of ranking policies
with click models", KDD; Open Bandit Pipeline's ``SlateIndependentIPS``). It is unbiased for the engagements per
shown slot when a slot's reward depends on the request, the item and the position only: the item-position click
model, which includes the examination hypothesis ``P(click) = attraction(user, item) * examine(position)`` that
:mod:`genrec.experiment.response` simulates. It is biased when a slot's reward depends on the other items of the
list (cascade browsing: a click above ends the visit); the product of the conditional propensities of the slots
down to j would then be needed (reward-interaction IPS), at a far larger variance. SNIPS and DR use the same
weights (:mod:`genrec.experiment.ope`). The logged propensities are *conditional* on the slots above
(:mod:`genrec.experiment.explore`), so they cannot be the weights' denominators: weighting slot j by the ratio of
conditionals given the *logged* slots above estimates a list that follows the logging policy above j and the
candidate at j, a different policy.

**Both policies are replayed on each logged request's context**: the user's history before the request (at most
what the bundle reads, as the server does) and the request's ``deny`` filter. The logging policy is the arm's
bundle and exploration from the experiment file; its conditional propensities of the logged list, recomputed,
must equal the logged ones: the share of requests where they do (``reproduced``) says whether the context was
rebuilt faithfully (a request with a different context weights its slots by wrong probabilities). The marginals
are Rao-Blackwellised Monte Carlo estimates (:func:`~genrec.experiment.explore.position_probs`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.errors import ConfigError
from genrec.experiment.config import Exploration
from genrec.experiment.explore import epsilon_propensities, pl_propensities, position_probs
from genrec.experiment.serving import exploration_pool


@dataclass(frozen=True)
class Policy:
    """A bundle (a loaded Recommender) serving with an exploration."""

    rec: object
    exploration: Exploration


@dataclass
class Context:
    """One logged request: its rows in the table (shown order), user, time, shown items and filter."""

    request_id: str
    rows: list[int]
    user: str | None
    time: float
    shown: list[str]
    deny: list[str] | None


@dataclass
class Played:
    """A policy replayed on a context: its candidates (raw ids), their scores (None: a popularity fallback) and
    ``probs[i, j]`` = P(candidate i at position j); ``answer`` is the Recommendation."""

    items: list[str]
    probs: np.ndarray
    scores: np.ndarray | None
    answer: object


def histories(table: pa.Table, events: Path | None) -> dict[str, list[tuple[float, str]]]:
    """user -> sorted (time, item) of what the user engaged with: ``events`` (Parquet: user_id, item_id, time) or,
    without it, the engaged slots of the log itself."""
    if events is not None:
        t = pq.read_table(events, columns=["user_id", "item_id", "time"]).to_pydict()
        rows = zip(t["user_id"], t["time"], t["item_id"], strict=True)
    else:
        d = table.to_pydict()
        rows = ((u, tm, i) for u, tm, i, e in zip(d["user_id"], d["time"], d["item_id"], d["engaged"], strict=True)
                if e)
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for user, tm, item in rows:
        if user is not None:
            out[str(user)].append((float(tm), str(item)))
    return {u: sorted(v) for u, v in out.items()}


def read_filters(path: Path | None) -> dict[str, list[str]]:
    """request_id -> the request's ``deny`` list (Parquet: request_id, deny as a list of item ids)."""
    if path is None:
        return {}
    t = pq.read_table(path)
    if not {"request_id", "deny"} <= set(t.column_names):
        raise ConfigError(f"--filters {path}: needs columns request_id and deny (a list of item ids)")
    d = t.to_pydict()
    return {str(r): [str(i) for i in (x or [])] for r, x in zip(d["request_id"], d["deny"], strict=True)}


def contexts(table: pa.Table, events: Path | None, filters: Path | None) -> Iterator[Context]:
    """The logged requests of ``table`` (exposure rows with propensities), each with its history's source."""
    d = table.to_pydict()
    deny = read_filters(filters)
    by_request: dict[str, list[int]] = defaultdict(list)
    for j, rid in enumerate(d["request_id"]):
        by_request[rid].append(j)
    for rid, rows in by_request.items():
        rows.sort(key=lambda j: d["position"][j])
        first = rows[0]
        user = d["user_id"][first]
        yield Context(rid, rows, None if user is None else str(user), float(d["time"][first]),
                      [d["item_id"][j] for j in rows], deny.get(rid))


def play(policy: Policy, past: list[str], ctx: Context, samples: int, answers: dict | None = None) -> Played:
    """The policy's answer on the context, with its position probabilities for the logged list's length.
    ``answers``: a cache of the bundles' answers by (bundle, request, size), shared by policies of one bundle."""
    k = len(ctx.rows)
    explores = policy.exploration.kind != "none"
    rec, size = policy.rec, exploration_pool(k) if explores else k
    key = (id(rec), ctx.request_id, size)
    answer = None if answers is None else answers.get(key)
    if answer is None:
        answer = rec.recommend(past[-rec.history_needed:] if past else [], k=size, deny=ctx.deny)
        if answers is not None:
            answers[key] = answer
    items = [i["item_id"] for i in answer.items]
    raw = [i["score"] for i in answer.items]
    scores = None if not raw or any(s is None for s in raw) else np.asarray(raw, dtype=np.float64)
    n = len(items)
    if scores is None or not explores or n < k:  # shown as is (the server's fallback, a greedy arm)
        probs = np.zeros((n, k))
        probs[np.arange(min(n, k)), np.arange(min(n, k))] = 1.0
        return Played(items, probs, scores, answer)
    seed = int.from_bytes(hashlib.blake2b(ctx.request_id.encode(), digest_size=8).digest(), "big")
    return Played(items, position_probs(scores, k, policy.exploration, samples, np.random.default_rng(seed)),
                  scores, answer)


def reproduces(played: Played, exploration: Exploration, shown: list[str], logged: np.ndarray) -> bool:
    """Whether the replayed logging policy gives the logged list the logged (conditional) propensities."""
    pos = {item: j for j, item in enumerate(played.items)}
    if played.scores is None or any(i not in pos for i in shown):
        return False
    order = np.array([pos[i] for i in shown])
    if exploration.kind == "plackett_luce":
        again = pl_propensities(played.scores, order, exploration.temperature)
    elif exploration.kind == "epsilon":
        again = epsilon_propensities(played.scores, order, exploration.epsilon)
    else:
        again = np.ones(len(order))
    return bool(np.allclose(again, logged, rtol=1e-3, atol=1e-9))


def logged_rows(exposures: Path, arms: set[str] | None = None) -> pa.Table:
    """The exposure table's rows with propensities (exploring arms), only ``arms``' when given."""
    table = pq.read_table(exposures)
    if "propensity" not in table.column_names:
        raise ConfigError(f"{exposures}: no propensity column (export it with genrec experiment export-exposures)")
    table = table.filter(pc.is_valid(table.column("propensity")))
    if arms is not None:
        table = table.filter(pc.is_in(table.column("arm"), pa.array(sorted(arms))))
    if table.num_rows == 0:
        raise ConfigError(f"{exposures}: no logged slot has a propensity (no arm explored)")
    return table


def logging_policies(experiment: Path, default, loader=None) -> dict[str, Policy]:
    """Each exploring arm's logging policy from the experiment file the server ran: the arm's bundle (relative
    paths from the file's folder; none: ``default``, the server's bundle) and exploration."""
    from genrec.experiment.config import load_experiment

    exp = load_experiment(experiment)
    if loader is None:
        from genrec.serve.recommender import Recommender

        loader = Recommender.load
    out, loaded = {}, {}
    for arm in exp.arms:
        if arm.serving.exploration.kind == "none":
            continue
        if arm.serving.fresh_share > 0:
            raise ConfigError(f"experiment {exp.name}, arm {arm.name}: off-policy evaluation of an arm with "
                              "fresh_share is not supported (its fresh slots are placed, not sampled)")
        rec = default
        if arm.bundle is not None:
            where = arm.bundle if arm.bundle.is_absolute() else experiment.parent / arm.bundle
            rec = loaded[where] if where in loaded else loaded.setdefault(where, loader(where))
        out[arm.name] = Policy(rec, arm.serving.exploration)
    return out


def evaluate_candidate(exposures: Path, rec, temperature: float = 0.0, events: Path | None = None, *,
                       logging: dict[str, Policy], filters: Path | None = None, samples: int = 2000,
                       answers: dict | None = None, observe: Callable[[Context, Played], None] | None = None
                       ) -> dict:
    """IPS, SNIPS and doubly robust estimates of engagements per shown slot had ``rec`` (a loaded candidate
    Recommender, serving its best items in order at ``temperature`` 0, else sampling them by Plackett-Luce) chosen
    the lists of the logged requests of the arms in ``logging`` (module docstring; rows are slots, grouped by
    request). DR's reward model: the candidate ranker's first task's predictions when the bundle has a ranker,
    else the log's mean engagement (a constant). ``answers``: a cache of the bundles' answers (see :func:`play`;
    pass one dict to evaluate several candidates of one log); ``observe(context, candidate)``: called on each
    request with the candidate's replayed policy."""
    from genrec.experiment.ope import doubly_robust, ips, snips

    answers = {} if answers is None else answers

    table = logged_rows(exposures, set(logging))
    d = table.to_pydict()
    hist = histories(table, events)
    candidate = Policy(rec, Exploration(kind="plackett_luce", temperature=temperature) if temperature > 0
                       else Exploration())
    reward = (np.array(d["engaged"], dtype=float) > 0).astype(float)
    base = float(reward.mean())
    logged = np.array(d["propensity"], dtype=float)
    n = len(reward)
    pi, mu, q, q_target = np.zeros(n), logged.copy(), np.full(n, base), np.full(n, base)
    task = rec.ranker.tasks[0] if rec.ranker is not None else None
    requests = reproduced = 0
    outside: list[float] = []
    for ctx in contexts(table, events, filters):
        requests += 1
        past = [i for tm, i in hist.get(ctx.user, []) if tm < ctx.time] if ctx.user is not None else []
        policy = logging[d["arm"][ctx.rows[0]]]
        mine = play(candidate, past, ctx, samples, answers)
        theirs = play(policy, past, ctx, samples, answers)
        if observe is not None:
            observe(ctx, mine)
        reproduced += reproduces(theirs, policy.exploration, ctx.shown, logged[ctx.rows])
        at = {item: i for i, item in enumerate(mine.items)}
        log_at = {item: i for i, item in enumerate(theirs.items)}
        model = {i["item_id"]: (i.get("predictions") or {}).get(task) for i in mine.answer.items} if task else {}
        qs = np.array([model.get(i) if model.get(i) is not None else base for i in mine.items])
        beyond = np.array([i not in log_at for i in mine.items], dtype=bool)
        for j, (row, item) in enumerate(zip(ctx.rows, ctx.shown, strict=True)):
            pi[row] = mine.probs[at[item], j] if item in at else 0.0
            if item in log_at and theirs.probs[log_at[item], j] > 0:  # else: the logged propensity stands in
                mu[row] = theirs.probs[log_at[item], j]
            outside.append(float(mine.probs[beyond, j].sum()) if len(beyond) else 0.0)
            if task:
                q[row] = model.get(item) if model.get(item) is not None else base
                q_target[row] = float(mine.probs[:, j] @ qs) if len(qs) else base
    groups = d["request_id"]
    estimates = [ips(reward, pi, mu, groups=groups), snips(reward, pi, mu, groups=groups) if pi.sum() > 0 else None,
                 doubly_robust(reward, pi, mu, q, q_target, groups=groups)]
    return {"slots": n, "requests": requests, "logged_value": base, "estimator": "position-based (independent) IPS",
            "reproduced": reproduced / requests, "candidate_mass_outside_log": float(np.mean(outside)),
            "reward_model": f"ranker predictions ({task})" if task else "constant (the log's mean engagement; "
            "the bundle has no ranker)",
            "estimates": [{"estimator": e.estimator, "value": e.value, "low": e.estimate.low,
                           "high": e.estimate.high, "ess": e.ess} for e in estimates if e is not None]}
