"""What SASRec and HSTU share: item embeddings (the hook for content features), learned positions, scoring
the whole catalog from the last position, and the training targets of a right-padded batch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genrec.data.jagged import Jagged


class SequentialConfig(BaseModel):
    """Fields every sequential model has; each model's config adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(50, ge=1, description="Embedding and hidden size D.")
    blocks: int = Field(2, ge=1, description="Number of stacked blocks.")
    heads: int = Field(1, ge=1, description="Attention heads.")
    max_len: int = Field(200, ge=1, description="History cap: only the most recent items are read.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on embeddings and block outputs.")
    init_std: float = Field(0.02, gt=0, description="Std of the item/position embedding init (N(0, 1) barely "
                            "trains with tied outputs, see ANCHORS.md).")
    l2_normalize: bool = Field(False, description="L2-normalise hidden states and item embeddings when scoring "
                               "(pair with a temperature in the loss).")


class SequentialModel(nn.Module):
    """Subclasses set ``self.blocks`` and implement :meth:`encode_embeddings`.

    ``reference = True`` swaps every fast attention kernel for its plain per-sequence reference (tests).
    """

    reference: bool = False

    def __init__(self, config: SequentialConfig, n_items: int, use_timestamps: bool = False):
        super().__init__()
        self.config, self.n_items, self.use_timestamps = config, n_items, use_timestamps
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.final_norm = nn.LayerNorm(config.dim)
        self.register_buffer("item_features", None)  # content features, see attach_item_features
        self.register_buffer("sid_codes", None)  # semantic IDs, see attach_semantic_ids
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        nn.init.normal_(self.pos_emb.weight, std=config.init_std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def attach_item_features(self, features: torch.Tensor) -> None:
        """Add content features [n_items + 1, F] (row 0 = padding) to every item's representation through a
        learned projection: item = id embedding + W features. Used for text/image embeddings or semantic-ID
        features; the features are stored with the weights."""
        if features.shape[0] != self.n_items + 1:
            raise ValueError(f"features have {features.shape[0]} rows, expected n_items + 1 = {self.n_items + 1}")
        features = features.detach().to(torch.float32).clone()
        features[0] = 0
        self.item_features = features  # a registered buffer: saved with the weights
        self.feature_proj = nn.Linear(features.shape[1], self.config.dim, bias=False)
        nn.init.normal_(self.feature_proj.weight, std=self.config.init_std)

    def attach_semantic_ids(self, codes: torch.Tensor, sizes: list[int]) -> None:
        """Add semantic-ID features: item = id embedding + the sum of one learned embedding per code column.
        ``codes`` [n_items + 1, C] (row 0 = padding, -1) come from ``genrec tokenize``; column j lies in
        [0, sizes[j]). Items that share codes share parameters, so an item never seen in training still gets
        a learned representation from its codes. The codes are stored with the weights."""
        codes = torch.as_tensor(codes).detach().to(torch.int64).clone()
        if codes.ndim != 2 or codes.shape[0] != self.n_items + 1 or codes.shape[1] != len(sizes):
            raise ValueError(f"semantic IDs have shape {tuple(codes.shape)}, expected [n_items + 1 = "
                             f"{self.n_items + 1}, {len(sizes)}]")
        body = codes[1:]
        if body.numel() and (body.min() < 0 or (body >= torch.tensor(sizes)).any()):
            raise ValueError("a semantic-ID code lies outside its column's size")
        codes[0] = -1
        self.sid_codes = codes  # a registered buffer: saved with the weights
        self.sid_emb = nn.ModuleList(nn.Embedding(int(size), self.config.dim) for size in sizes)
        for emb in self.sid_emb:
            nn.init.normal_(emb.weight, std=self.config.init_std)

    def attach_from_state(self, state: dict[str, torch.Tensor]) -> None:
        """Re-attach the features a saved state dict holds, so ``load_state_dict(state)`` fits."""
        if "item_features" in state:
            self.attach_item_features(state["item_features"])
        if "sid_codes" in state:
            sizes, j = [], 0
            while f"sid_emb.{j}.weight" in state:
                sizes.append(int(state[f"sid_emb.{j}.weight"].shape[0]))
                j += 1
            self.attach_semantic_ids(state["sid_codes"], sizes)

    def item_vectors(self) -> torch.Tensor:
        """Every item's representation [n_items + 1, D], shared by the input and the output side."""
        w = self.item_emb.weight
        if self.item_features is not None:
            w = w + self.feature_proj(self.item_features)
        if self.sid_codes is not None:
            valid = self.sid_codes >= 0
            codes = self.sid_codes.clamp(min=0)
            for j, emb in enumerate(self.sid_emb):
                w = w + emb(codes[:, j]) * valid[:, j, None].to(w.dtype)
        return w

    def item_table(self) -> torch.Tensor:
        """Output embeddings that histories are scored against (L2-normalised when configured)."""
        w = self.item_vectors()
        return F.normalize(w, dim=-1) if self.config.l2_normalize else w

    def encode_embeddings(self, x: torch.Tensor, lengths: torch.Tensor,
                          timestamps: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, items: torch.Tensor, lengths: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """items: [B, L] right-padded dense ids -> hidden states [B, L, D] (padded rows are garbage)."""
        h = self.final_norm(self.encode_embeddings(self._embed(items), lengths, timestamps))
        return F.normalize(h, dim=-1) if self.config.l2_normalize else h

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        table = self.item_vectors()
        x = table[items] * math.sqrt(self.config.dim) + self.pos_emb.weight[:items.shape[1]][None]
        return self.emb_dropout(x) * (items > 0).unsqueeze(-1)

    def encode_last(self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        """The blocks' output at each sequence's last position [B, D]; a model may compute only that row in its
        last block (the others are never scored)."""
        h = self.encode_embeddings(x, lengths, timestamps)
        return h[torch.arange(len(lengths), device=h.device), lengths - 1]

    @torch.no_grad()
    def score(self, history: Jagged, users: np.ndarray | None = None,
              timestamps: Jagged | None = None) -> torch.Tensor:
        """Scores over the catalog [B, n_items + 1] from each history's last position."""
        return self.last_hidden(history, timestamps) @ self.item_table().T

    @torch.no_grad()
    def last_hidden(self, history: Jagged, timestamps: Jagged | None = None) -> torch.Tensor:
        """Each history's hidden state at its last position [B, D]: the query that :meth:`item_table` rows are
        scored against (an approximate index searches with it)."""
        hist = history.tail(self.config.max_len)
        items = hist.to_padded(left=False)
        lengths = torch.from_numpy(hist.lengths).clamp(min=1)
        ts = timestamps.tail(self.config.max_len).to_padded(left=False) if timestamps is not None else None
        device = self.item_emb.weight.device
        lengths = lengths.to(device)
        h = self.final_norm(self.encode_last(self._embed(items.to(device)), lengths,
                                             ts.to(device) if ts is not None else None))
        return F.normalize(h, dim=-1) if self.config.l2_normalize else h


def next_item_targets(items: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and shifted targets of a right-padded batch of full training windows.

    ``items`` [B, L+1] holds each window; input = items[:, :-1], target at position t = items[:, t+1]
    (0 where there is none).
    """
    inputs = items[:, :-1]
    targets = items[:, 1:].clone()
    valid = torch.arange(targets.shape[1])[None, :] < (lengths - 1)[:, None]
    targets[~valid] = 0
    return inputs, targets
