"""DCN-v2, a ranking baseline: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems" (WWW 2021).

Every candidate is one row of D-sized field embeddings, concatenated into x0 (d = F * D): the user id and each
user feature, the candidate's item id and each item feature, and a summary of the history it may read (the mean
of its visible tokens, a token being item embedding + action embedding; at most the ``max_len`` most recent).
The cross network applies x_{l+1} = x0 * (W_l x_l + b_l) + x_l, with W_l full-rank (d x d) or low-rank
(U_l V_l^T, rank r); a deep MLP is stacked on it (or runs beside it, "parallel"), and one head per task reads
the result (multi-task with a shared bottom). Candidates are independent of each other.

Implemented: full- and low-rank cross layers, stacked and parallel structures, multi-task heads, the masked
multi-task loss (:func:`genrec.models.ranking.multitask_loss`, BCE for binary tasks, MSE for regression).
Not implemented: the mixture of low-rank experts (DCN-Mix), dense/continuous input features, timestamps
(``hist_time`` / ``cand_time`` are not read), attention over the history (see DIN).
"""

from __future__ import annotations

from typing import Literal

import torch
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


class DCNConfig(RankingOptions):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["dcn"] = "dcn"
    dim: int = Field(16, ge=1, description="Embedding size D of every field.")
    cross_layers: int = Field(3, ge=0, description="Cross layers (0 = a plain deep network).")
    cross_rank: int | None = Field(None, ge=1, description="None: full-rank W_l (d x d); r: low-rank U_l V_l^T.")
    structure: Literal["stacked", "parallel"] = Field(
        "stacked", description="stacked: deep MLP on the cross output; parallel: both read x0, outputs concatenated.")
    hidden: tuple[PositiveInt, ...] = Field((256, 128), description="Widths of the deep MLP (ReLU).")
    head_hidden: int | None = Field(None, ge=1, description="Hidden width of each task head (default: its input).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each deep-MLP layer.")
    init_std: float = Field(0.02, gt=0, description="Std of the embedding init.")
    max_len: int = Field(200, ge=1, description="History cap: a candidate reads at most its most recent this many "
                         "visible history tokens.")
    task_weights: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="Weight of each task in the loss (tasks not named weigh 1).")


def field_embeddings(emb: FeatureEmbedding, idx: torch.Tensor) -> list[torch.Tensor]:
    """One embedding per field (id, then each feature) instead of FeatureEmbedding's sum: crosses need fields."""
    return [emb.id(idx)] + [emb.feats[f"f_{name}"](getattr(emb, f"table_{name}")[idx]) for name in emb.names]


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l; W full-rank or U V^T of rank r."""

    def __init__(self, d: int, rank: int | None):
        super().__init__()
        self.w = nn.Linear(d, d) if rank is None else nn.Sequential(nn.Linear(d, rank, bias=False), nn.Linear(rank, d))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.w(x) + x


class DCN(nn.Module):
    def __init__(self, config: DCNConfig, spec: RankSpec, item_tables: dict[str, torch.Tensor],
                 user_tables: dict[str, torch.Tensor]):
        super().__init__()
        check_task_weights(spec, config.task_weights)
        self.config, self.spec, d = config, spec, config.dim
        self.item = FeatureEmbedding(spec.n_items, d, spec.item_feature_sizes, item_tables, config.init_std)
        self.user = FeatureEmbedding(spec.n_users, d, spec.user_feature_sizes, user_tables, config.init_std)
        self.action = ActionEmbedding(spec.action_sizes, d, config.init_std)
        # + user id, item id, history summary, and the candidate's row context (with row_context)
        width = d * (len(self.user.names) + len(self.item.names) + 3 + bool(config.row_context))
        self.cross = nn.ModuleList(CrossLayer(width, config.cross_rank) for _ in range(config.cross_layers))
        layers: list[nn.Module] = []
        deep_in = width
        for h in config.hidden:
            layers += [nn.Linear(deep_in, h), nn.ReLU(), nn.Dropout(config.dropout)]
            deep_in = h
        self.deep = nn.Sequential(*layers)
        out = deep_in + (width if config.structure == "parallel" else 0)
        self.prior = make_item_prior(config, spec)
        self.row_bias = make_row_bias(config, spec)
        self.heads = TaskHeads(out, spec.tasks, config.head_hidden)
        self.row = RowContext(spec, config.row_context, d, config.init_std)

    def forward(self, batch: RankBatch) -> dict[str, torch.Tensor]:
        """Logits (binary tasks) or values (regression tasks), each [B, M]."""
        batch.check(self.spec)
        items, actions, mask, context = visible_history(batch, self.config.max_len)
        tokens = self.item(items) + self.action(actions) + self.row(context)  # [B, W, D]
        w = mask.to(tokens.dtype)
        summary = torch.bmm(w, tokens) / w.sum(-1, keepdim=True).clamp_min(1)  # [B, M, D]
        b, m = batch.cand_items.shape
        user = [f[:, None, :].expand(b, m, -1) for f in field_embeddings(self.user, batch.user)]
        fields = user + field_embeddings(self.item, batch.cand_items) + [summary]
        if len(self.row):  # the candidate's own context as one more field
            codes = batch.cand_context
            fields.append(self.row(codes) if codes is not None else torch.zeros_like(summary))
        x0 = torch.cat(fields, dim=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        z = self.deep(x) if self.config.structure == "stacked" else torch.cat([x, self.deep(x0)], dim=-1)
        outputs = with_item_prior(self.prior, self.heads(z), batch.cand_items, batch.cand_time)
        return self.row_bias(outputs, batch.cand_context)

    def loss(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted multi-task loss over real candidates (``mask = batch.cand_items > 0``): (total, per task)."""
        return multitask_loss(outputs, labels, mask, self.spec.binary_tasks, self.config.task_weights,
                              self.config.listwise)
