"""The simulated users' response model, fitted on real interaction sequences (e.g. MovieLens-1M).

Each user's real sequence is cut in time order: the first ``past_fraction`` is the history the user arrives with
(seeded into the server's store) and the rest is the user's real *future*. The **truth** is a rank-``rank``
truncated SVD of the binary user x item matrix of the past parts: it orders, for every user, the items not yet in
the history. The **relevance curve** ``rel(r)`` is then measured on the same data: the share of users whose real
future holds the item that the truth ranks r-th (log-spaced rank bins, made non-increasing). So a user clicks a
shown item with probability

    P(click | user, item, slot j) = min(1, ctr_scale * rel(truth rank of the item for the user)) * examine(j)

with ``examine(j) = 1 / log2(j + 2)``, the position bias of a list read top down (the discount of DCG; Craswell,
Zoeter, Taylor & Ramsey, 2008, "An experimental comparison of click position-bias models", WSDM, call this the
examination hypothesis). Clicks are independent across slots given these probabilities, so the expected value of
any shown list is known exactly: the simulator logs it beside the sampled clicks (the ground truth that online and
off-policy estimates are checked against).

**Fresh items**: a random ``fresh_fraction`` of the catalog is held back and released at evenly spread times over
the simulated days (released items keep their truth rank: they are as relevant as the data says).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

BINS = 64  # log-spaced rank bins of the relevance curve


class ResponseConfig(BaseModel):
    """How the response model is fitted (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    past_fraction: float = Field(0.8, gt=0, lt=1, description="Share of each real sequence that is the user's "
                                 "history; the rest is the future that calibrates the click probabilities.")
    rank: int = Field(32, ge=1, description="Rank of the truncated SVD that ranks items for each user.")
    ctr_scale: float = Field(1.0, gt=0, description="Multiplies the fitted relevance (1: as measured).")
    fresh_fraction: float = Field(0.05, ge=0, lt=1, description="Share of the catalog released during the run.")
    seed: int = 0


def examine(k: int) -> np.ndarray:
    """Probability that slot j (0-based) of a list of ``k`` is looked at."""
    return 1.0 / np.log2(np.arange(k) + 2.0)


def _svd_factors(users: int, items: int, rows: np.ndarray, cols: np.ndarray, rank: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    m = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(users, items))
    m.data[:] = 1.0  # a repeated (user, item) counts once
    k = max(1, min(rank, min(users, items) - 1))
    u, s, vt = svds(m, k=k, random_state=0)
    return (u * s).astype(np.float32), vt.T.astype(np.float32)


def truth_ranks(user_f: np.ndarray, item_f: np.ndarray, past: list[np.ndarray], chunk: int = 512) -> np.ndarray:
    """(users, items) rank of every item for every user under the truth (0: best); history items rank last."""
    n_users, n_items = len(user_f), len(item_f)
    out = np.empty((n_users, n_items), dtype=np.int32)
    for lo in range(0, n_users, chunk):
        s = user_f[lo:lo + chunk] @ item_f.T
        for j, seen in enumerate(past[lo:lo + chunk]):
            s[j, seen] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")
        np.put_along_axis(out[lo:lo + chunk], order, np.arange(n_items, dtype=np.int32)[None, :], axis=1)
    return out


def relevance_curve(ranks: np.ndarray, past: list[np.ndarray], future: list[np.ndarray]) -> np.ndarray:
    """rel(r) for r in 0..items-1: the share of users (with a future) whose future holds their r-th truth item,
    pooled over log-spaced bins of r and made non-increasing in r."""
    n_items = ranks.shape[1]
    hits = np.zeros(n_items)
    at_risk = np.zeros(n_items + 1)  # users for whom rank r exists (r < items not in the history)
    for u, fut in enumerate(future):
        if len(fut) == 0:
            continue
        np.add.at(hits, ranks[u, fut], 1.0)
        at_risk[0] += 1
        at_risk[n_items - len(np.unique(past[u]))] -= 1
    at_risk = np.cumsum(at_risk)[:n_items]
    edges = np.unique(np.round(np.geomspace(1, n_items + 1, BINS)).astype(int)) - 1
    edges = np.append(edges[edges < n_items], n_items)
    rel = np.zeros(n_items)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        risk = at_risk[lo:hi].sum()
        rel[lo:hi] = hits[lo:hi].sum() / risk if risk > 0 else 0.0
    return np.minimum.accumulate(rel)


@dataclass
class ResponseModel:
    """Users, their histories and truth ranks, the relevance curve and the fresh items' release times."""

    items: list[str]  # raw item ids, column order of ranks
    users: list[str]
    histories: list[list[str]]  # the past part of each user's sequence, oldest first
    activity: np.ndarray  # each user's real sequence length: how often the user returns
    ranks: np.ndarray  # (users, items) int32
    curve: np.ndarray  # rel(r)
    release: np.ndarray  # (items,) release time as a share of the run in [0, 1); 0 for items there from the start
    config: ResponseConfig

    def __post_init__(self) -> None:
        self.column = {item: j for j, item in enumerate(self.items)}
        self.row = {user: u for u, user in enumerate(self.users)}
        self._scaled = np.minimum(1.0, self.config.ctr_scale * self.curve)

    @classmethod
    def fit(cls, sequences: dict[str, list[str]], catalog: list[str], config: ResponseConfig | None = None
            ) -> ResponseModel:
        """Fit on ``sequences`` (user id -> raw item ids, oldest first); items outside ``catalog`` (the served
        bundle's items) are dropped, and users left with fewer than 2 items."""
        config = config or ResponseConfig()
        column = {item: j for j, item in enumerate(catalog)}
        users, past, future, activity = [], [], [], []
        for user, seq in sequences.items():
            cols = np.array([column[i] for i in map(str, seq) if i in column], dtype=np.int64)
            if len(cols) < 2:
                continue
            cut = min(len(cols) - 1, max(1, int(round(config.past_fraction * len(cols)))))
            users.append(str(user))
            past.append(cols[:cut])
            future.append(np.setdiff1d(cols[cut:], cols[:cut]))
            activity.append(len(cols))
        if len(users) < 2:
            raise ValueError(f"the response model needs at least 2 users with 2+ catalog items, got {len(users)}")
        rows = np.concatenate([np.full(len(p), u) for u, p in enumerate(past)])
        user_f, item_f = _svd_factors(len(users), len(catalog), rows, np.concatenate(past), config.rank)
        ranks = truth_ranks(user_f, item_f, past)
        rng = np.random.default_rng(config.seed)
        release = np.zeros(len(catalog))
        n_fresh = int(round(config.fresh_fraction * len(catalog)))
        fresh = rng.choice(len(catalog), n_fresh, replace=False)
        release[fresh] = np.sort(rng.random(n_fresh)) * 0.999 + 1e-3  # every fresh item after the start
        return cls([str(i) for i in catalog], users, [[catalog[j] for j in p] for p in past],
                   np.array(activity, dtype=np.float64), ranks, relevance_curve(ranks, past, future), release,
                   config)

    def fresh(self) -> list[str]:
        """Items released during the run, in release order."""
        idx = np.flatnonzero(self.release > 0)
        return [self.items[j] for j in idx[np.argsort(self.release[idx])]]

    def unreleased(self, progress: float) -> list[str]:
        """Items not released yet when the run is ``progress`` (0..1) through."""
        return [self.items[j] for j in np.flatnonzero(self.release > progress)]

    def click_probs(self, user: str, shown: list[str]) -> np.ndarray:
        """P(click) of each shown slot for ``user`` (items the catalog lacks: 0)."""
        u = self.row[user]
        cols = np.array([self.column.get(i, -1) for i in shown], dtype=np.int64)
        rel = np.where(cols >= 0, self._scaled[self.ranks[u, np.maximum(cols, 0)]], 0.0)
        return rel * examine(len(shown))

    def summary(self) -> dict:
        """What was fitted, for the run's summary."""
        return {"users": len(self.users), "items": len(self.items), "fresh_items": int((self.release > 0).sum()),
                "rel_at_rank": {str(r): float(self.curve[r]) for r in (0, 9, 99, 999) if r < len(self.curve)},
                **self.config.model_dump()}
