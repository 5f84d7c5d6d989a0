"""What SASRec and HSTU share: item embeddings (the hook for content features), learned positions, scoring
the whole catalog from the last position, and the training targets of a right-padded batch.

Items are represented (``item_repr``) by a learned row each (``id``: parameters grow with the catalog) or by
their semantic IDs (``sid``: the sum of one learned vector per code; ``sid_hash``: plus a few hashed buckets
of the item id, so items that share every code stay apart). With semantic IDs the parameters do not depend on
the number of items; each item costs its L codes in a compact integer buffer.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genrec.data.jagged import Jagged
from genrec.models.base import ModelInputError, check_ids
from genrec.nn.dropout import Dropout

# Universal hashing ((a * id + b) mod P) mod buckets with P = 2^31 - 1; fixed constants, so the hashed rows
# travel with the weights and need no state of their own.
_HASH_P = 2**31 - 1
_HASH_A = (1_103_515_245, 1_664_525_371, 2_147_483_629, 1_431_655_765, 914_143_351, 1_812_433_253, 69_069_001,
           2_024_317_717)
_HASH_B = (12_345, 1_013_904_223, 7_777_777, 362_436_069, 521_288_629, 88_675_123, 123_456_789, 987_654_321)
_BLOCK = 65_536  # items per block when a whole table is built from codes


class SequentialConfig(BaseModel):
    """Fields every sequential model has; each model's config adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(50, ge=1, description="Embedding and hidden size D.")
    blocks: int = Field(2, ge=1, description="Number of stacked blocks.")
    heads: int = Field(1, ge=1, description="Attention heads.")
    max_len: int = Field(200, ge=1, description="History cap: only the most recent items are read.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on embeddings and block outputs.")
    init_std: float = Field(0.02, gt=0, description="Std of the item/position embedding init (at N(0, 1) "
                            "the tied output embeddings barely train; generative-recommenders uses 0.02).")
    l2_normalize: bool = Field(False, description="L2-normalise hidden states and item embeddings when scoring "
                               "(pair with a temperature in the loss).")
    item_repr: Literal["id", "sid", "sid_hash"] = Field(
        "id", description="How an item is represented. id: a learned row per item ([n_items + 1, dim], grows with "
        "the catalog). sid: the sum of its semantic-ID code embeddings (needs features.semantic_ids; no per-item "
        "parameters). sid_hash: sid plus hash_count learned vectors of a table of hash_buckets rows, picked by "
        "fixed hashes of the item id (items that share all codes stay distinguishable).")
    hash_buckets: int = Field(16384, ge=1, description="sid_hash: rows of the hashed id table.")
    hash_count: int = Field(2, ge=1, le=len(_HASH_A), description="sid_hash: hashes per item (their rows are "
                            "summed).")


class SequentialModel(nn.Module):
    """Subclasses set ``self.blocks`` and implement :meth:`encode_embeddings`.

    ``reference = True`` swaps every fast attention kernel for its plain per-sequence reference (tests).
    """

    reference: bool = False

    def __init__(self, config: SequentialConfig, n_items: int, use_timestamps: bool = False):
        super().__init__()
        self.config, self.n_items, self.use_timestamps = config, n_items, use_timestamps
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0) if config.item_repr == "id" else None
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.emb_dropout = Dropout(config.dropout)
        self.final_norm = nn.LayerNorm(config.dim)
        self.register_buffer("item_features", None)  # content features, see attach_item_features
        self.register_buffer("sid_codes", None)  # semantic IDs, see attach_semantic_ids
        if self.item_emb is not None:
            nn.init.normal_(self.item_emb.weight, std=config.init_std)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
        nn.init.normal_(self.pos_emb.weight, std=config.init_std)
        if config.item_repr == "sid_hash":
            if n_items >= _HASH_P:
                raise ValueError(f"sid_hash hashes item ids below {_HASH_P:,}; this catalog has {n_items:,} items")
            self.hash_emb = nn.Embedding(config.hash_buckets, config.dim)
            nn.init.normal_(self.hash_emb.weight, std=config.init_std)

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
        """Add semantic-ID features: item = id embedding (item_repr id; none for sid / sid_hash) + the sum of
        one learned embedding per code column. ``codes`` [n_items + 1, C] (row 0 = padding, -1) come from
        ``genrec tokenize``; column j lies in [0, sizes[j]). Items that share codes share parameters, so an item
        never seen in training still gets a learned representation from its codes. The codes are stored with
        the weights, as int16 (int32 for codebooks above 32767 codes)."""
        codes = (codes if isinstance(codes, torch.Tensor) else torch.as_tensor(codes)).detach()
        if codes.ndim != 2 or codes.shape[0] != self.n_items + 1 or codes.shape[1] != len(sizes):
            raise ValueError(f"semantic IDs have shape {tuple(codes.shape)}, expected [n_items + 1 = "
                             f"{self.n_items + 1}, {len(sizes)}]")
        body = codes[1:]  # checked column-wise, without an int64 copy of a large catalog's codes
        if body.numel() and (int(body.amin()) < 0
                             or any(m >= s for m, s in zip(body.amax(0).tolist(), sizes, strict=True))):
            raise ValueError("a semantic-ID code lies outside its column's size")
        small = max(sizes, default=0) <= torch.iinfo(torch.int16).max
        codes = codes.to(torch.int16 if small else torch.int32, copy=True)
        codes[0] = -1
        self.sid_codes = codes  # a registered buffer: saved with the weights
        self.sid_emb = nn.ModuleList(nn.Embedding(int(size), self.config.dim) for size in sizes)
        for emb in self.sid_emb:
            nn.init.normal_(emb.weight, std=self.config.init_std)

    def attach_from_state(self, state: dict[str, torch.Tensor]) -> None:
        """Re-attach the features a saved state dict holds, so ``load_state_dict(state)`` fits."""
        if "item_features" in state:
            self.attach_item_features(state["item_features"])
            if "feature_proj.query" in state:  # video frames pooled by a learned temporal attention
                from genrec.content.video import TemporalAttentionPooling

                hidden, frame_dim = state["feature_proj.hidden.weight"].shape
                frames = state["item_features"].shape[1] // frame_dim
                self.feature_proj = TemporalAttentionPooling(frame_dim, frames, self.config.dim, hidden,
                                                             self.config.init_std)
        if "sid_codes" in state:
            sizes, j = [], 0
            while f"sid_emb.{j}.weight" in state:
                sizes.append(int(state[f"sid_emb.{j}.weight"].shape[0]))
                j += 1
            self.attach_semantic_ids(state["sid_codes"], sizes)

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item representations, shared by the input and the output side: of ``ids`` [...] -> [..., D], or of
        every item [n_items + 1, D] (built in blocks from the codes for sid / sid_hash)."""
        if ids is None and self.item_emb is not None:
            w = self.item_emb.weight
            if self.item_features is not None:
                w = w + self.feature_proj(self.item_features)
            if self.sid_codes is not None:
                valid = self.sid_codes >= 0
                codes = self.sid_codes.clamp(min=0).long()
                for j, emb in enumerate(self.sid_emb):
                    w = w + emb(codes[:, j]) * valid[:, j, None].to(w.dtype)
            return w
        if ids is None:
            device = self.pos_emb.weight.device
            return torch.cat([self._rows(torch.arange(start, min(start + _BLOCK, self.n_items + 1), device=device))
                              for start in range(0, self.n_items + 1, _BLOCK)])
        return self._rows(ids)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The representation of ``ids`` [...] -> [..., D], computing nothing for the other items."""
        if self.item_emb is None and self.sid_codes is None:
            raise RuntimeError(f"item_repr {self.config.item_repr} needs semantic IDs: call attach_semantic_ids "
                               "(features.semantic_ids in a run config) before using the model")
        if self.item_emb is not None:
            w = self.item_emb(ids)
        else:
            w = self.pos_emb.weight.new_zeros((*ids.shape, self.config.dim))
        if self.item_features is not None:
            w = w + self.feature_proj(self.item_features[ids])
        if self.sid_codes is not None:
            codes = self.sid_codes[ids]
            valid = (codes >= 0).to(w.dtype)
            codes = codes.clamp(min=0).long()
            for j, emb in enumerate(self.sid_emb):
                w = w + emb(codes[..., j]) * valid[..., j, None]
        if self.config.item_repr == "sid_hash":
            for a, b in zip(_HASH_A[:self.config.hash_count], _HASH_B[:self.config.hash_count], strict=True):
                w = w + self.hash_emb((ids * a + b) % _HASH_P % self.config.hash_buckets) * (ids > 0)[..., None]
        return w

    def item_table(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Output embeddings that histories are scored against (L2-normalised when configured): of ``ids``, or of
        every item [n_items + 1, D]. Training with sampled softmax asks for the rows it needs only."""
        w = self.item_vectors(ids)
        return F.normalize(w, dim=-1) if self.config.l2_normalize else w

    def parameter_counts(self) -> dict[str, int]:
        """Learned parameters of the item representation (``items``: id rows, code and hash embeddings,
        content projection), of the rest (``other``), their ``total``, and the bytes of per-item buffers
        (``item_buffer_bytes``: semantic-ID codes, content features)."""
        item_modules = [m for m in (self.item_emb, getattr(self, "hash_emb", None), getattr(self, "sid_emb", None),
                                    getattr(self, "feature_proj", None)) if m is not None]
        items = sum(p.numel() for m in item_modules for p in m.parameters())
        total = sum(p.numel() for p in self.parameters())
        buffers = sum(b.numel() * b.element_size() for b in (self.sid_codes, self.item_features) if b is not None)
        return {"items": items, "other": total - items, "total": total, "item_buffer_bytes": buffers}

    def encode_embeddings(self, x: torch.Tensor, lengths: torch.Tensor,
                          timestamps: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, items: torch.Tensor, lengths: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """items: [B, L] right-padded dense ids -> hidden states [B, L, D] (padded rows are garbage)."""
        h = self.final_norm(self.encode_embeddings(self._embed(items), lengths, timestamps))
        return F.normalize(h, dim=-1) if self.config.l2_normalize else h

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        rows = self.item_vectors()[items] if self.item_emb is not None else self.item_vectors(items)
        x = rows * math.sqrt(self.config.dim) + self.pos_emb.weight[:items.shape[1]][None]
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
        scored against (an approximate index searches with it). Item ids must lie in 1..n_items; an empty
        history gets the query of the padding item alone."""
        check_ids(history.values, 1, self.n_items, "history item ids")
        if timestamps is not None and not np.array_equal(timestamps.lengths, history.lengths):
            raise ModelInputError("timestamps must hold one value per history item")
        if len(history) == 0:
            return self.pos_emb.weight.new_zeros((0, self.config.dim))
        hist = history.tail(self.config.max_len)
        items = hist.to_padded(left=False)
        lengths = torch.from_numpy(hist.lengths).clamp(min=1)
        ts = timestamps.tail(self.config.max_len).to_padded(left=False) if timestamps is not None else None
        device = self.pos_emb.weight.device
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
