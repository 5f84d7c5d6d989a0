"""A generative multi-task ranker, the HSTU way ("Actions Speak Louder than Words", ICML 2024), scored with
M-FALCON.

**Tokens.** A request is read as one sequence: a user token (user id + user features) first, then the history
of impressions, each token the item (id + item features) plus the actions the user took on it (what was
clicked, liked, how long it was watched), then the candidates, each the item plus a learned candidate-type
vector and no actions: the actions are what is predicted. With ``row_context`` every history token and every
candidate also adds the embedding of its own impression context (e.g. the app tab it was shown on).

**Attention.** HSTU blocks: one fused projection gives U, V, Q, K through SiLU; attention is pointwise
SiLU(Q K^T + rab) / n with the constant n = max_len (so a token's output does not depend on how many tokens
it cannot see); the block output is x + W2(dropout(LayerNorm(A V) * U)). History tokens attend causally to
the user token and the history before them. Candidate c attends to the user token, to the first
``visible[b, c]`` history tokens and to itself, never to another candidate: it sits right after what it can
see, so its relative position to history token j is visible[b, c] - j and its time gap is
cand_time - hist_time[j]. The user token always sits at position 0 and has time gap 0 to every query (it
describes the user as of the query's own time). A history longer than max_len keeps its most recent max_len
tokens; candidates then see what is left of their prefix.

**M-FALCON.** Because no history token attends to a candidate, the history stack does not depend on the
candidates: :meth:`GenerativeRanker.encode_history` runs it once and keeps every layer's history K and V;
:meth:`GenerativeRanker.score_candidates` then pushes the candidates through the layers in micro-batches,
each layer reading the cached K/V (plus each candidate's own K/V for the attention to itself), so scoring M
candidates costs one history pass plus M cheap candidate rows rather than M full passes.
:meth:`GenerativeRanker.score_one_by_one` is that naive baseline (one full pass, history + one candidate, per
candidate); it shares no caching code and gives the same outputs.

**Heads.** The final-normed candidate output feeds one small MLP per task (TaskHeads): logits for binary
tasks (BCE), values for regression tasks (MSE), the losses averaged over real candidates and summed with
``task_weights`` (:func:`multitask_loss`, shared with the ranking baselines). ``head_input`` adds the
candidate item's and the user's embeddings; ``target_attention`` adds a DIN-style pooled interest over the history
tokens the candidate may read (cached with the history, so it costs one small MLP per candidate x token);
``history_stats`` adds exact counts over that history (:class:`~genrec.models.ranking.HistoryStats`: the user's
rate of every signal, and how often and how well items sharing the candidate's id, author, tag... did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from genrec.models.din import ActivationUnit
from genrec.models.hstu import HSTUBlock, HSTUConfig
from genrec.models.ranking import (
    ActionEmbedding,
    FeatureEmbedding,
    HistoryStats,
    RankBatch,
    RankingOptions,
    RankSpec,
    RowContext,
    TaskHeads,
    make_item_prior,
    make_row_bias,
    multitask_loss,
    with_item_prior,
)
from genrec.nn.attention import masked_pointwise_attention

HOUR_MS = 3_600_000
CONTEXT_SIZES = {"hour": 24, "gap": 26}  # gap: 0 = no history read, 1 + min(floor(log2(1 + seconds)), 24)


def gap_bucket(gap_ms: torch.Tensor, has_history: torch.Tensor) -> torch.Tensor:
    """Log2 buckets of a time gap in ms (1 = under a second ... 25 = over ~194 days); 0 where there is no history."""
    seconds = gap_ms.clamp(min=0).to(torch.float64) / 1000.0
    bucket = 1 + torch.floor(torch.log2(1.0 + seconds)).long().clamp(max=CONTEXT_SIZES["gap"] - 2)
    return torch.where(has_history, bucket, torch.zeros_like(bucket))


class RankerConfig(RankingOptions):
    """Hyper-parameters of :class:`GenerativeRanker`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["ranker"] = "ranker"
    dim: int = Field(64, ge=1, description="Embedding and hidden size D (a multiple of heads).")
    blocks: int = Field(2, ge=1, description="Number of stacked HSTU blocks.")
    heads: int = Field(2, ge=1, description="Attention heads.")
    attn_dim: int | None = Field(None, ge=1, description="Per-head Q/K size (default dim // heads): how finely a "
                                 "candidate's attention can tell history items apart, independent of D.")
    max_len: int = Field(200, ge=1, description="History cap: only the most recent max_len impressions are "
                         "read; also the attention normaliser n.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on token embeddings and block outputs.")
    init_std: float = Field(0.02, gt=0, description="Std of the embedding init.")
    task_weights: dict[str, float] | None = Field(None, description="Loss weight per task (default 1 each; "
                                                  "tasks not named weigh 1).")
    head_hidden: int | None = Field(None, ge=1, description="Hidden size of each task head (default: "
                                   "its input width, e.g. 4 x dim with head_input output+embeddings+product).")
    micro_batch: int = Field(256, ge=1, description="Candidates per scoring chunk of score_candidates.")
    head_input: Literal["output", "output+embeddings", "output+embeddings+product"] = Field(
        "output", description="What the task heads read: the candidate's final state, or that concatenated with "
        "the candidate item's and the user's embeddings (as feature-crossing rankers feed their top MLP), "
        "optionally also their elementwise product (a factorisation-machine style user x item cross).")
    target_attention: tuple[PositiveInt, ...] | None = Field(
        None, min_length=1, description="Hidden widths of a DIN-style activation unit (e.g. [36]); when set, the "
        "heads also read the candidate's pooled interest sum_j w(h_j, e) h_j over the history tokens it may see "
        "(item + action embeddings; weights from MLP([h, e, h - e, h * e]), not normalised) and its product with "
        "the candidate's embedding. Off by default.")
    context: tuple[Literal["hour", "gap"], ...] = Field(
        (), description="Request-context embeddings added to every candidate token: 'hour' (UTC hour of day of the "
        "candidate's time) and 'gap' (log2 buckets of the seconds since the last history impression the candidate "
        "may read). Both are known when a request is served. Default none.")
    history_stats: tuple[str, ...] | None = Field(
        None, description="When set, the heads also read exact counts over the history each candidate may read "
        "(HistoryStats): the user's rate of every action signal and, per key named here ('item', or an item "
        "feature such as 'author'), the count, share and signal rates of the history tokens sharing the "
        "candidate's key. [] counts the user's rates only. Off by default.")

    # Options that were measured and not adopted (docs/results-log.md), with the value every model had without them.
    retired: ClassVar[dict[str, Any]] = {**RankingOptions.retired, "linear_dim": None, "time_buckets": 64,
                                         "attn_norm": "max_len", "user_id": True, "mf_dim": 0,
                                         "item_id_dropout": 0.0, "row_head": False}

    @model_validator(mode="after")
    def _dim_splits_into_heads(self) -> RankerConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.task_weights and any(w < 0 for w in self.task_weights.values()):
            raise ValueError("task_weights must be >= 0")
        return self


@dataclass
class HistoryCache:
    """The history stack of a batch, computed once and read by every candidate micro-batch.

    Keys are [user token, history tokens]: ``k[l]``/``v[l]`` [B, H, 1 + L, Da/Dv] are layer l's keys and
    values. ``shift`` [B] is how many of the oldest impressions the max_len cap dropped (candidates'
    ``visible`` counts are moved by it); ``hist_len`` and ``hist_time`` describe the kept history."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    hist_time: torch.Tensor
    hist_len: torch.Tensor
    shift: torch.Tensor
    user: torch.Tensor | None = None  # [B, D] the user's embedding (for head_input: output+embeddings)
    tokens: torch.Tensor | None = None  # [B, L, D] history item + action embeddings (for target_attention)
    items: torch.Tensor | None = None  # [B, L] the kept history's items (for history_stats)
    signals: torch.Tensor | None = None  # [B, L, S] their action signals (for history_stats)


def _cols(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    """Columns ``sl`` of a [B, M, ...] tensor; a candidate dimension of 1 (shared by every candidate) as is."""
    return t if t is None or t.shape[1] == 1 else t[:, sl]


class GenerativeRanker(nn.Module):
    """Maps a :class:`RankBatch` to {task: [B, M]}; see the module docstring. ``item_tables`` /
    ``user_tables`` hold the categorical feature codes per item / user named in ``spec`` (stored as buffers)."""

    def __init__(self, config: RankerConfig, spec: RankSpec, item_tables: dict[str, torch.Tensor] | None = None,
                 user_tables: dict[str, torch.Tensor] | None = None):
        super().__init__()
        unknown = set(config.task_weights or {}) - set(spec.tasks)
        if unknown:
            raise ValueError(f"task_weights names tasks the data does not have: {sorted(unknown)}")
        self.config, self.spec = config, spec
        d = config.dim
        self.item_emb = FeatureEmbedding(spec.n_items, d, spec.item_feature_sizes, item_tables, config.init_std)
        self.user_emb = FeatureEmbedding(spec.n_users, d, spec.user_feature_sizes, user_tables, config.init_std)
        self.action_emb = ActionEmbedding(spec.action_sizes, d, config.init_std)
        self.cand_type = nn.Parameter(torch.randn(d) * config.init_std)
        self.context = nn.ModuleDict({name: nn.Embedding(CONTEXT_SIZES[name], d) for name in config.context})
        for emb in self.context.values():
            nn.init.normal_(emb.weight, std=config.init_std)
        self.row_emb = RowContext(spec, config.row_context, d, config.init_std)
        self.drop = nn.Dropout(config.dropout)
        block_cfg = HSTUConfig(dim=d, blocks=config.blocks, heads=config.heads, max_len=config.max_len,
                               dropout=config.dropout, init_std=config.init_std, attn_dim=config.attn_dim)
        self.blocks = nn.ModuleList(HSTUBlock(block_cfg, use_timestamps=True) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d)
        width = {"output": d, "output+embeddings": 3 * d, "output+embeddings+product": 4 * d}[config.head_input]
        self.target_attention = None
        if config.target_attention:
            self.target_attention = ActivationUnit(d, config.target_attention, "prelu")
            width += 2 * d
        self.history_stats = None
        if config.history_stats is not None:
            known = {"item", *(spec.item_feature_sizes or {})}
            if unknown := set(config.history_stats) - known:
                raise ValueError(f"history_stats names keys the data does not have: {sorted(unknown)} "
                                 f"(known: {', '.join(sorted(known))})")
            self.history_stats = HistoryStats(spec, config.history_stats)
            width += self.history_stats.width
        self.heads = TaskHeads(width, spec.tasks, config.head_hidden)
        self.prior = make_item_prior(config, spec)
        self.row_bias = make_row_bias(config, spec)

    # --- tokens -------------------------------------------------------------------------------------------

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        # embeddings start at init_std; sqrt(D) brings them to the scale of the blocks' residual updates
        return self.drop(x * math.sqrt(self.config.dim))

    def _history_tokens(self, batch: RankBatch) -> tuple[torch.Tensor, ...]:
        """Cap the history to its most recent max_len tokens; return [user, history] tokens [B, 1 + L, D],
        the kept times [B, L], lengths [B], the number of dropped impressions per row [B], the kept
        history's unscaled item + action embeddings [B, L, D], and its items [B, L] and actions [B, L, A]."""
        items, actions, times, length = batch.hist_items, batch.hist_actions, batch.hist_time, batch.hist_len
        ctx = batch.hist_context
        shift = (length - self.config.max_len).clamp(min=0)
        if items.shape[1] > self.config.max_len:
            cols = torch.arange(self.config.max_len, device=items.device)
            idx = (shift[:, None] + cols).clamp(max=items.shape[1] - 1)
            length = length - shift
            real = cols[None, :] < length[:, None]
            items = items.gather(1, idx) * real
            times = times.gather(1, idx) * real
            actions = actions.gather(1, idx[..., None].expand(-1, -1, actions.shape[-1])) * real[..., None]
            if ctx is not None:
                ctx = ctx.gather(1, idx[..., None].expand(-1, -1, ctx.shape[-1])) * real[..., None]
        hist = self.item_emb(items) + self.action_emb(actions) + self.row_emb(ctx)
        x = torch.cat([self.user_emb(batch.user)[:, None], hist], dim=1)
        return self._scale(x), times, length, shift, hist, items, actions

    def _candidate_tokens(self, items: torch.Tensor, times: torch.Tensor, vis: torch.Tensor,
                          hist_time: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate tokens [B, M, D]: item + candidate type + context; ``vis`` [B, M]: the kept history tokens
        each candidate reads, ``hist_time`` [B, L] their times, ``ctx`` [B, M, C] their row context codes."""
        x = self.item_emb(items) + self.cand_type + self.row_emb(ctx)
        if "hour" in self.context:
            x = x + self.context["hour"](torch.div(times, HOUR_MS, rounding_mode="floor") % 24)
        if "gap" in self.context:
            last = hist_time.gather(1, (vis - 1).clamp(min=0)) if hist_time.shape[1] else torch.zeros_like(times)
            x = x + self.context["gap"](gap_bucket(times - last, vis > 0))
        return self._scale(x)

    def _head_input(self, out: torch.Tensor, items: torch.Tensor, user: torch.Tensor | None,
                    interest: torch.Tensor | None, stats: torch.Tensor | None) -> torch.Tensor:
        """[B, M, D] candidate states -> the heads' input (see head_input, target_attention, history_stats)."""
        parts = [out]
        item = self.item_emb(items)
        if self.config.head_input != "output":
            user = user[:, None].expand(-1, out.shape[1], -1)
            parts += [item, user] + ([item * user] if self.config.head_input.endswith("product") else [])
        if interest is not None:
            parts += [interest, item * interest]
        if stats is not None:
            parts.append(stats)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else out

    def _interest(self, tokens: torch.Tensor | None, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """DIN-style pooled interest [B, M, D] of candidates ``items`` [B, M] over the history ``tokens``
        [B, L, D] each may read (``mask`` [B, M, L]); None without target_attention."""
        if self.target_attention is None:
            return None
        weights = self.target_attention(tokens, self.item_emb(items), mask)
        return torch.bmm(weights, tokens)

    def _stats(self, hist_items: torch.Tensor, signals: torch.Tensor | None, items: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor | None:
        """history_stats features [B, M, F] of candidates ``items`` [B, M] over the kept history (``hist_items``
        [B, L], ``signals`` [B, L, S]) each may read (``mask`` [B, M, L]); None without history_stats."""
        if self.history_stats is None:
            return None
        matches = [(self._key(hist_items, key), self._key(items, key)) for key in self.history_stats.keys]
        return self.history_stats(signals, mask, matches)

    def _key(self, items: torch.Tensor, key: str) -> torch.Tensor:
        return items if key == "item" else getattr(self.item_emb, f"table_{key}")[items]

    def _task_outputs(self, out: torch.Tensor, items: torch.Tensor, times: torch.Tensor,
                      user: torch.Tensor | None, interest: torch.Tensor | None = None,
                      stats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{task: [B, M]} from the candidates' final states [B, M, D]: the heads plus the item prior."""
        outputs = self.heads(self._head_input(self.final_norm(out), items, user, interest, stats))
        return with_item_prior(self.prior, outputs, items, times)

    @staticmethod
    def _visible(visible: torch.Tensor, shift: torch.Tensor, hist_len: torch.Tensor) -> torch.Tensor:
        # counts are in the uncapped history; never read past the real history (padding is not a token)
        return torch.minimum((visible - shift[:, None]).clamp(min=0), hist_len[:, None])

    @staticmethod
    def _candidate_geometry(vis: torch.Tensor, cand_time: torch.Tensor,
                            hist_time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Relative positions, time gaps and mask [B, M, 1 + L] of candidates to the [user, history] keys:
        a candidate sits at position vis + 1 (the user token at 0, history token j at j + 1)."""
        pos_k = torch.arange(hist_time.shape[1] + 1, device=vis.device)
        rel = (vis + 1)[..., None] - pos_k
        gap = cand_time[..., None] - hist_time[:, None, :]
        gap = F.pad(gap, (1, 0))  # the user token: gap 0
        mask = rel > 0  # the user token and history tokens j < vis
        return rel, gap, mask

    # --- M-FALCON: history once, candidates in micro-batches ----------------------------------------------

    def encode_history(self, batch: RankBatch) -> HistoryCache:
        x, times, length, shift, hist, items, actions = self._history_tokens(batch)
        n = x.shape[1]
        pos = torch.arange(n, device=x.device)
        rel = pos[:, None] - pos[None, :]
        gap = times[:, :, None] - times[:, None, :]
        gap = F.pad(F.pad(gap, (1, 0)), (0, 0, 1, 0))  # user token row and column: gap 0
        mask = rel >= 0  # causal over [user, history]; a real token never sees padding
        bias_idx = self.blocks[0].rab.index(rel, gap)  # every block's bias is built alike: index once
        ks, vs = [], []
        for block in self.blocks:
            u, v, q, k = block.project(x)
            a = masked_pointwise_attention(q, k, v, block.rab.lookup(bias_idx).unsqueeze(-3), mask,
                                           self.config.max_len)
            x = block.finish(x, a, u)
            ks.append(k)
            vs.append(v)
        signals = None if self.history_stats is None else self.history_stats.signals(actions)
        return HistoryCache(ks, vs, times, length, shift, self.user_emb(batch.user), hist, items, signals)

    def score_candidates(self, cache: HistoryCache, cand_items: torch.Tensor, cand_time: torch.Tensor,
                         visible: torch.Tensor, micro_batch: int | None = None,
                         cand_context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Outputs {task: [B, M]} for candidates [B, M], reading ``cache``; ``micro_batch`` (default
        config.micro_batch) candidates per chunk bounds the attention's memory; ``cand_context`` [B, M, C]:
        their row context codes (None: unknown). ``cand_time``, ``visible`` and ``cand_context`` may have a
        candidate dimension of 1, shared by every candidate of the row (a served request: every candidate reads
        the whole history at the request time); the relative bias and the mask are then built once per row."""
        chunk = micro_batch or self.config.micro_batch
        vis_all = self._visible(visible, cache.shift, cache.hist_len)
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, cand_items.shape[1], chunk):
            sl = slice(start, start + chunk)
            items, times, vis = cand_items[:, sl], _cols(cand_time, sl), _cols(vis_all, sl)
            ctx = _cols(cand_context, sl)
            x = self._candidate_tokens(items, times, vis, cache.hist_time, ctx)
            rel, gap, mask = self._candidate_geometry(vis, times, cache.hist_time)
            bias_idx = self.blocks[0].rab.index(rel, gap)
            zero = torch.zeros((), dtype=torch.long, device=x.device)
            own_idx = self.blocks[0].rab.index(zero, zero)  # a candidate to itself: position 0, gap 0
            n = self.config.max_len
            for block, k_h, v_h in zip(self.blocks, cache.k, cache.v, strict=True):
                u, v, q, k = block.project(x)
                a = masked_pointwise_attention(q, k_h, v_h, block.rab.lookup(bias_idx).unsqueeze(-3),
                                               mask[:, None], n)
                own = F.silu((q * k).sum(-1, keepdim=True) + block.rab.lookup(own_idx))
                a = a + own * v / n
                x = block.finish(x, a, u)
            reads = mask[..., 1:].expand(-1, items.shape[1], -1)  # [B, M, L]: the history each candidate reads
            interest = self._interest(cache.tokens, items, reads)
            stats = self._stats(cache.items, cache.signals, items, reads)
            out = self._task_outputs(x, items, times.expand_as(items), cache.user, interest, stats)
            parts.append(self.row_bias(out, ctx))
        if len(parts) == 1:
            return parts[0]
        return {t: torch.cat([p[t] for p in parts], dim=1) for t in self.spec.tasks}

    def forward(self, batch: RankBatch) -> dict[str, torch.Tensor]:
        """{task: [B, M]}: logits for binary tasks, values for regression tasks (padded candidates: garbage)."""
        batch.check(self.spec)
        return self.score_candidates(self.encode_history(batch), batch.cand_items, batch.cand_time, batch.visible,
                                     cand_context=batch.cand_context)

    # --- the naive baseline -----------------------------------------------------------------------------------

    def score_one_by_one(self, batch: RankBatch) -> dict[str, torch.Tensor]:
        """One full pass per candidate over [user, history, that candidate] with no cache: the cost M-FALCON
        avoids (a speed baseline) and an independent check of the cached path."""
        x_h, times, length, shift, hist, items, actions = self._history_tokens(batch)
        signals = None if self.history_stats is None else self.history_stats.signals(actions)
        vis_all = self._visible(batch.visible, shift, length)
        n = x_h.shape[1] + 1
        cols = torch.arange(n, device=x_h.device)
        outs: list[dict[str, torch.Tensor]] = []
        for c in range(batch.cand_items.shape[1]):
            vis = vis_all[:, c]
            ctx = None if batch.cand_context is None else batch.cand_context[:, c:c + 1]
            cand = self._candidate_tokens(batch.cand_items[:, c:c + 1], batch.cand_time[:, c:c + 1], vis[:, None],
                                          times, ctx)
            x = torch.cat([x_h, cand], dim=1)
            pos = torch.cat([cols[None, :-1].expand(len(vis), -1), (vis + 1)[:, None]], dim=1)  # [B, N]
            t = torch.cat([times[:, :1], times, batch.cand_time[:, c:c + 1]], dim=1)  # user slot: any value
            rel = pos[:, :, None] - pos[:, None, :]
            gap = t[:, :, None] - t[:, None, :]
            gap[:, :, 0] = 0
            # causal by index among [user, history]; the candidate (last) reads the user, its prefix and itself
            mask = cols[:, None] >= cols[None, :]
            mask = mask[None].expand(len(vis), -1, -1).clone()
            mask[:, -1, 1:-1] = cols[None, :-2] < vis[:, None]
            for block in self.blocks:
                u, v, q, k = block.project(x)
                a = masked_pointwise_attention(q, k, v, block.rab.at(rel, gap).unsqueeze(-3), mask[:, None],
                                               self.config.max_len)
                x = block.finish(x, a, u)
            interest = self._interest(hist, batch.cand_items[:, c:c + 1], mask[:, -1:, 1:-1])
            stats = self._stats(items, signals, batch.cand_items[:, c:c + 1], mask[:, -1:, 1:-1])
            out = self._task_outputs(x[:, -1:], batch.cand_items[:, c:c + 1], batch.cand_time[:, c:c + 1],
                                     self.user_emb(batch.user), interest, stats)
            outs.append(self.row_bias(out, ctx))
        return {t: torch.cat([o[t] for o in outs], dim=1) for t in self.spec.tasks}

    # --- training ------------------------------------------------------------------------------------------

    def loss(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, {task: loss}) over real candidates (``mask`` = cand_items > 0)."""
        return multitask_loss(outputs, labels, mask, self.spec.binary_tasks, self.config.task_weights,
                              self.config.listwise)
