"""DIN, a ranking baseline: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction" (KDD 2018).

Target attention: for candidate item e (id + item features) and each history token h it may read (item
embedding + action embedding; the visible prefix, at most the ``max_len`` most recent), an activation unit
MLP([h, e, h - e, h * e]) gives a weight w. As in the paper the weights are NOT softmax-normalised; the user's
interest in the candidate is sum_j w_j h_j over the visible tokens. An MLP over [user, e, interest,
e * interest] (PReLU or Dice) feeds one head per task (multi-task with a shared bottom). Candidates are
independent of each other.

The activation unit's first layer is one Linear over [h, e, h - e, h * e] as in the paper, evaluated without
building the [B, W, M, 4D] input: W [h, e, h - e, h * e] = (W1 + W3 + W4 diag(e)) h + (W2 - W3) e, one batched
matmul ([B, W, D] x [B, D, M * H]); ``reference=True`` builds the concatenation (tests compare both).

Implemented: the activation unit, unnormalised masked attention, PReLU and Dice (batch statistics over real
rows only, running averages in eval), multi-task heads, the masked loss shared with DCN.
Not implemented: mini-batch aware regularisation (use weight decay), the paper's per-field (goods/shop/category)
concatenation (fields are summed by FeatureEmbedding), timestamps (``hist_time`` / ``cand_time`` are not read).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, NonNegativeFloat, PositiveInt
from torch import nn

from genrec.models.ranking import (
    ActionEmbedding,
    FeatureEmbedding,
    RankBatch,
    RankingOptions,
    RankSpec,
    RowContext,
    TaskHeads,
    check_task_weights,
    make_item_prior,
    make_row_bias,
    multitask_loss,
    visible_history,
    with_item_prior,
)


class DINConfig(RankingOptions):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["din"] = "din"
    dim: int = Field(16, ge=1, description="Embedding size D of users, items and history tokens.")
    attention_hidden: tuple[PositiveInt, ...] = Field(
        (36,), min_length=1, description="Widths of the activation unit's hidden layers (the paper uses 36).")
    hidden: tuple[PositiveInt, ...] = Field((200, 80), description="Widths of the MLP on the pooled input.")
    activation: Literal["prelu", "dice"] = Field("prelu", description="Activation of both MLPs.")
    head_hidden: int | None = Field(None, ge=1, description="Hidden width of each task head (default: its input).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each layer of the top MLP.")
    init_std: float = Field(0.02, gt=0, description="Std of the embedding init.")
    max_len: int = Field(200, ge=1, description="History cap: a candidate reads at most its most recent this many "
                         "visible history tokens.")
    task_weights: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="Weight of each task in the loss (tasks not named weigh 1).")


class PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dimension (torch's nn.PReLU uses dim 1)."""

    def __init__(self, n: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((n,), 0.25))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.prelu(x.reshape(-1, x.shape[-1]), self.alpha).view(x.shape)


class Dice(nn.Module):
    """Dice (DIN eq. 9): p x + (1 - p) alpha x, p = sigmoid((x - E[x]) / sqrt(Var[x] + eps)). In training E and
    Var are statistics of the batch over the rows ``mask`` selects (real candidates / visible tokens only); in
    eval, running averages, so eval outputs never depend on other candidates."""

    def __init__(self, n: int, momentum: float = 0.1, eps: float = 1e-8):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.alpha = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        if self.training:
            flat = x.reshape(-1, x.shape[-1])
            weight = flat.new_ones(flat.shape[0]) if mask is None else mask.reshape(-1).to(x.dtype)
            if (n := weight.sum()) > 1:  # masked moments as two matrix-vector products (no gather)
                mean = weight @ flat / n
                var = (weight @ flat.square() / n - mean.square()).clamp_min(0)
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(var.detach(), self.momentum)
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.eps))
        return x * (self.alpha + (1 - self.alpha) * p)


def activation(kind: str, n: int) -> nn.Module:
    return Dice(n) if kind == "dice" else PReLU(n)


class MLP(nn.Module):
    """Linear -> PReLU/Dice -> dropout per width; ``mask`` selects the rows Dice takes statistics over."""

    def __init__(self, d_in: int, widths: tuple[int, ...], kind: str, dropout: float = 0.0):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip((d_in, *widths), widths, strict=False))
        self.acts = nn.ModuleList(activation(kind, w) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.d_out = widths[-1] if widths else d_in

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for linear, act in zip(self.linears, self.acts, strict=True):
            x = self.drop(act(linear(x), mask))
        return x


class ActivationUnit(nn.Module):
    """MLP([h, e, h - e, h * e]) -> one unnormalised weight per (candidate, history token)."""

    def __init__(self, dim: int, widths: tuple[int, ...], kind: str):
        super().__init__()
        self.dim = dim
        self.first = nn.Linear(4 * dim, widths[0])
        self.act = activation(kind, widths[0])
        self.rest = MLP(widths[0], widths[1:], kind)
        self.out = nn.Linear(self.rest.d_out, 1)

    def forward(self, h: torch.Tensor, e: torch.Tensor, mask: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """h [B, W, D] history tokens, e [B, M, D] candidates, mask [B, M, W] -> weights [B, M, W] (0 off mask)."""
        (b, m, w), d = mask.shape, self.dim
        if reference:
            hh, ee = h[:, :, None].expand(b, w, m, d), e[:, None].expand(b, w, m, d)
            z = self.first(torch.cat([hh, ee, hh - ee, hh * ee], dim=-1))
        else:  # z[b, j, c] = (W1 + W3 + W4 diag(e_c)) h_j + (W2 - W3) e_c + bias, one bmm over all (c, j)
            w1, w2, w3, w4 = self.first.weight.split(d, dim=1)  # each [H, D]
            a = e[:, :, None, :] * w4 + (w1 + w3)  # [B, M, H, D]
            z = torch.bmm(h, a.reshape(b, -1, d).transpose(1, 2)).view(b, w, m, a.shape[2])  # w may be 0
            z = z + (e @ (w2 - w3).T + self.first.bias)[:, None]
        rows = mask.transpose(1, 2)  # the [B, W, M] layout of z
        z = self.rest(self.act(z, rows), rows)
        return (self.out(z).squeeze(-1) * rows.to(z.dtype)).transpose(1, 2)


class DIN(nn.Module):
    reference: bool = False  # True: the activation unit builds its concatenated input (tests)

    def __init__(self, config: DINConfig, spec: RankSpec, item_tables: dict[str, torch.Tensor],
                 user_tables: dict[str, torch.Tensor]):
        super().__init__()
        check_task_weights(spec, config.task_weights)
        self.config, self.spec, d = config, spec, config.dim
        self.item = FeatureEmbedding(spec.n_items, d, spec.item_feature_sizes, item_tables, config.init_std)
        self.user = FeatureEmbedding(spec.n_users, d, spec.user_feature_sizes, user_tables, config.init_std)
        self.action = ActionEmbedding(spec.action_sizes, d, config.init_std)
        self.attention = ActivationUnit(d, config.attention_hidden, config.activation)
        self.mlp = MLP(4 * d, config.hidden, config.activation, config.dropout)
        self.prior = make_item_prior(config, spec)
        self.row_bias = make_row_bias(config, spec)
        self.heads = TaskHeads(self.mlp.d_out, spec.tasks, config.head_hidden)
        self.row = RowContext(spec, config.row_context, d, config.init_std)

    def forward(self, batch: RankBatch) -> dict[str, torch.Tensor]:
        """Logits (binary tasks) or values (regression tasks), each [B, M]."""
        batch.check(self.spec)
        items, actions, mask, context = visible_history(batch, self.config.max_len)
        mask = mask & batch.cand_mask[..., None]  # padded candidates attend to nothing (and skew no Dice stats)
        tokens = self.item(items) + self.action(actions) + self.row(context)  # [B, W, D]
        e = self.item(batch.cand_items) + self.row(batch.cand_context)  # [B, M, D]
        weights = self.attention(tokens, e, mask, self.reference)  # [B, M, W], not normalised
        interest = torch.bmm(weights, tokens)  # [B, M, D]
        u = self.user(batch.user)[:, None, :].expand_as(e)
        z = self.mlp(torch.cat([u, e, interest, e * interest], dim=-1), batch.cand_mask)
        outputs = with_item_prior(self.prior, self.heads(z), batch.cand_items, batch.cand_time)
        return self.row_bias(outputs, batch.cand_context)

    def loss(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted multi-task loss over real candidates (``mask = batch.cand_items > 0``): (total, per task)."""
        return multitask_loss(outputs, labels, mask, self.spec.binary_tasks, self.config.task_weights,
                              self.config.listwise)
