"""Next-item losses over the catalog: full cross-entropy and sampled softmax.

Both take the hidden states of the positions that have a target ([N, D]) and the targets ([N]) and return
the summed loss (callers divide by the global token count, so data-parallel runs match single-process ones
exactly). The full loss reads the item embedding table ([n_items + 1, D], row 0 = padding); the sampled one
also takes a function from item ids to their rows, so a catalog's whole table is never built.

Sampled softmax with the logQ correction (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling
for large corpus item recommendations"; TensorFlow's ``sampled_softmax_loss(subtract_log_q=True)``): every
column's logit, the target's included, loses the log of how many times that item is expected among the
row's negatives: ``K q(i)`` for K draws from the sampler plus ``N p(i)`` for the N in-batch targets, whose
distribution is the training frequency p. Uniform draws alone shift every logit equally (no change); skewed
draws or in-batch negatives would otherwise push popular items down for being sampled more often.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

ItemRows = Callable[[torch.Tensor], torch.Tensor]  # item ids [...] -> their vectors [..., D]


def full_cross_entropy(h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, chunk: int = 1024,
                       temperature: float = 1.0, known: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over every item (padding excluded), in chunks of positions: small chunks keep the logits
    below the allocator's mmap threshold, which on CPU halves the step time (no page faults per step).
    ``known`` [n_items + 1] bool, when given, keeps the other items out of the softmax."""
    total = h.new_zeros(())
    real = items[1:]  # drop the padding row instead of masking a column of every logit matrix
    unknown = ~known[1:] if known is not None else None
    if temperature != 1.0:
        h = h / temperature
    for start in range(0, h.shape[0], chunk):
        logits = h[start:start + chunk] @ real.T
        if unknown is not None:
            logits = logits.masked_fill(unknown, float("-inf"))
        total = total + F.cross_entropy(logits, targets[start:start + chunk] - 1, reduction="sum")
    return total


class NegativeSampler:
    """Draws negatives from items 1..n_items, uniformly or by training popularity ``count ** alpha``, and
    knows each item's draw probability q and training frequency p (both needed by the logQ correction).

    ``counts`` [n_items + 1]: training interactions per item (row 0 = padding, ignored); needed for
    ``popularity`` and for the frequency of in-batch negatives. Memory: 8 bytes per item for the popularity
    table, nothing for uniform draws.
    """

    def __init__(self, n_items: int, counts: torch.Tensor | None = None,
                 distribution: Literal["uniform", "popularity"] = "uniform", alpha: float = 1.0):
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"unknown negative distribution {distribution!r} (uniform or popularity)")
        if counts is not None and counts.shape != (n_items + 1,):
            raise ValueError(f"item counts have shape {tuple(counts.shape)}, expected [n_items + 1 = {n_items + 1}]")
        if distribution == "popularity" and counts is None:
            raise ValueError("popularity sampling needs the training item counts")
        self.n_items, self.counts, self.distribution = n_items, counts, distribution
        self.cdf: torch.Tensor | None = None
        if counts is not None:
            freq = counts.to(torch.float64)
            freq[0] = 0
            self.freq = freq / freq.sum().clamp_min(1.0)
        if distribution == "popularity":
            weights = counts[1:].to(torch.float64).pow(alpha)
            if not weights.sum() > 0:
                raise ValueError("popularity sampling needs at least one item with a positive count")
            self.cdf = weights.cumsum(0)
            self.q = torch.cat([weights.new_zeros(1), weights / self.cdf[-1]])

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
        """Item ids [shape], drawn with replacement."""
        if self.cdf is None:
            return torch.randint(1, self.n_items + 1, shape, generator=generator, device=device)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n_items - 1) + 1

    def prob(self, ids: torch.Tensor) -> torch.Tensor:
        """q(i): the probability that one draw is item i."""
        if self.cdf is None:
            return torch.full(ids.shape, 1.0 / self.n_items, dtype=torch.float64, device=ids.device)
        return self.q[ids]

    def frequency(self, ids: torch.Tensor) -> torch.Tensor:
        """p(i): item i's share of the training interactions (the distribution of in-batch targets)."""
        if self.counts is None:
            raise ValueError("the logQ correction of in-batch negatives needs the training item counts")
        return self.freq[ids]

    def log_expected_count(self, ids: torch.Tensor, n_drawn: int, n_in_batch: int) -> torch.Tensor:
        """log(n_drawn q(i) + n_in_batch p(i)): how often item i is expected among one row's negatives."""
        expected = n_drawn * self.prob(ids)
        if n_in_batch:
            expected = expected + n_in_batch * self.frequency(ids)
        return expected.clamp_min(1e-30).log()


def sampled_softmax(h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor | ItemRows, n_negatives: int,
                    temperature: float = 1.0, l2_normalize: bool = False, shared: bool = True,
                    in_batch: bool = False, generator: torch.Generator | None = None,
                    known: torch.Tensor | None = None, sampler: NegativeSampler | None = None,
                    logq: bool = False) -> torch.Tensor:
    """Softmax over the target and ``n_negatives`` drawn negatives (shared across the batch or drawn per
    position), optionally plus the other positions' targets (in-batch negatives). A negative equal to the
    target (an accidental hit), or outside ``known`` [n_items + 1] bool when given, is masked out.

    ``items`` is the item table [n_items + 1, D] or a function from ids to rows (then ``sampler`` is
    required: it knows n_items); with a function only the rows of the batch's targets and negatives are
    computed. ``sampler`` defaults to uniform draws. ``logq`` subtracts each column's log expected count
    (see the module docstring) after the temperature.
    """
    n = h.shape[0]
    if sampler is None:
        if callable(items) and not isinstance(items, torch.Tensor):
            raise ValueError("sampled_softmax with an item function needs a sampler (it knows n_items)")
        sampler = NegativeSampler(items.shape[0] - 1)
    neg = sampler.draw((n_negatives,) if shared else (n, n_negatives), generator, h.device)
    pos_emb, neg_emb = _rows(items, targets, neg)
    if l2_normalize:
        h, pos_emb, neg_emb = F.normalize(h, dim=-1), F.normalize(pos_emb, dim=-1), F.normalize(neg_emb, dim=-1)
    pos_logit = (h * pos_emb).sum(-1, keepdim=True)
    neg_logit = h @ neg_emb.T if shared else torch.einsum("nd,nkd->nk", h, neg_emb)
    neg_ids = neg[None, :].expand(n, -1) if shared else neg
    if in_batch:
        neg_logit = torch.cat([neg_logit, h @ pos_emb.T], dim=1)
        neg_ids = torch.cat([neg_ids, targets[None, :].expand(n, -1)], dim=1)
    drop = neg_ids == targets[:, None]
    if known is not None:
        drop = drop | ~known[neg_ids]
    logits = torch.cat([pos_logit, neg_logit.masked_fill(drop, float("-inf"))], dim=1) / temperature
    if logq:
        n_batch = n if in_batch else 0
        log_pos = sampler.log_expected_count(targets, n_negatives, n_batch)
        log_neg = sampler.log_expected_count(neg, n_negatives, n_batch)
        log_neg = log_neg[None, :].expand(n, -1) if shared else log_neg
        if in_batch:
            log_neg = torch.cat([log_neg, log_pos[None, :].expand(n, -1)], dim=1)
        logits = logits - torch.cat([log_pos[:, None], log_neg], dim=1).to(logits.dtype)
    return -F.log_softmax(logits, dim=1)[:, 0].sum()


def _rows(items: torch.Tensor | ItemRows, targets: torch.Tensor,
          neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets' and the negatives' vectors; a function is asked once, for the distinct ids only."""
    if isinstance(items, torch.Tensor):
        return items[targets], items[neg]
    ids, inverse = torch.unique(torch.cat([targets, neg.reshape(-1)]), return_inverse=True)
    rows = items(ids)
    return rows[inverse[:len(targets)]], rows[inverse[len(targets):]].view(*neg.shape, -1)
