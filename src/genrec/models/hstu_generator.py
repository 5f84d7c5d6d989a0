"""A decoder-only semantic-ID generator over item tokens with HSTU blocks (``model.name: hstu-gen``).

Each history item enters as one token: the sum of its code embeddings (plus, with ``item_id``, a learned row of
its own). HSTU blocks (``genrec.models.hstu``) read the sequence causally, so one pass over a training window
gives a hidden state at every position, and every position learns to write the NEXT item's C codes, level by
level: level l's logits come from that position's state plus the embeddings of the true codes of levels < l
(teacher forcing), through a small residual MLP and the level's output rows; the loss is cross-entropy over
each level's codebook. Compared with TIGER's encoder-decoder (``genrec.models.tiger``), which re-encodes a
sliding window for each single target, every training window here teaches all of its targets at once.

``item_loss`` > 0 adds a softmax over the whole catalog at every position, each item scored by its input
representation (codes + id row, as the SID-augmented ID models score items): an auxiliary signal for the
hidden states; decoding still writes codes.

Decoding is the shared constrained beam search (``genrec.nn.beam``) from the last position: the "memory" is
that position's hidden state, and a beam's cache is the running sum of its written codes' embeddings, so a
step costs one MLP on [B, W, D]. Only valid IDs are ever returned.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import ModelInputError, check_ids
from genrec.models.generator_config import GeneratorConfig
from genrec.models.hstu import HSTUBlock, HSTUConfig
from genrec.nn.beam import BOS, ColdMixer, PrefixTrie, beam_search

N_SPECIAL = 2  # token 0: padding, 1: start of the codes (BOS)


class HSTUGeneratorConfig(GeneratorConfig):
    """The decoder-only generator: HSTU blocks over item tokens, codes written level by level."""

    name: Literal["hstu-gen"] = "hstu-gen"
    blocks: int = Field(2, ge=1, description="HSTU blocks.")
    heads: int = Field(2, ge=1, description="Attention heads.")
    max_len: int = Field(50, ge=1, description="History cap in items (training windows hold max_len + 1).")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on embeddings and block outputs.")
    item_id: bool = Field(True, description="Add a learned row per item to its input token (the sum of its code "
                          "embeddings); false: codes only (no parameters grow with the catalog).")
    head_hidden: int = Field(256, ge=1, description="Hidden width of the residual MLP that turns a hidden state "
                             "plus the written codes into a level's logits.")
    item_loss: float = Field(0.0, ge=0, description="Weight of an auxiliary softmax over the whole catalog at "
                             "every position (items scored by their input representation); 0: codes only.")

    def hstu(self) -> HSTUConfig:
        """The HSTU block settings."""
        return HSTUConfig(dim=self.dim, blocks=self.blocks, heads=self.heads, max_len=self.max_len,
                          dropout=self.dropout, time_buckets=0)


class HSTUGenerator(nn.Module):
    """``codes`` [n_items + 1, C] (row 0 = padding) and ``cold`` [n_items + 1] travel with the weights as
    buffers; ``sizes`` are the codebook sizes of the C columns."""

    use_timestamps = False  # reads item order only (what serving and the saved model.json check)

    def __init__(self, config: HSTUGeneratorConfig, codes: np.ndarray | torch.Tensor, sizes: list[int]):
        super().__init__()
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        if codes.ndim != 2 or codes.shape[1] != len(sizes):
            raise ValueError(f"codes have shape {tuple(codes.shape)}; expected [n_items + 1, {len(sizes)}]")
        self.config, self.sizes = config, [int(s) for s in sizes]
        self.n_items, self.n_levels = codes.shape[0] - 1, codes.shape[1]
        if config.cold_mixing.epsilon > 0 and self.n_levels < 2:
            raise ConfigError("model.cold_mixing needs IDs of 2 or more codes (a shared prefix and a final code)")
        offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.register_buffer("codes", codes.clone())
        self.register_buffer("cold", torch.zeros(codes.shape[0], dtype=torch.bool))
        self.register_buffer("level_offsets", torch.from_numpy(offsets), persistent=False)
        d, vocab = config.dim, N_SPECIAL + sum(self.sizes)
        self.in_codes = nn.Embedding(vocab, d, padding_idx=0)  # history items: the sum of their codes
        self.item_emb = nn.Embedding(self.n_items + 1, d, padding_idx=0) if config.item_id else None
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.prefix_emb = nn.Embedding(vocab, d, padding_idx=0)  # codes already written (BOS: nothing yet)
        self.level_emb = nn.Embedding(self.n_levels, d)
        for emb in (self.in_codes, self.item_emb, self.pos_emb, self.prefix_emb, self.level_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=config.init_std)
        with torch.no_grad():
            for emb in (self.in_codes, self.item_emb, self.prefix_emb):
                if emb is not None:
                    emb.weight[0].zero_()
            self.prefix_emb.weight[BOS].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(HSTUBlock(config.hstu()) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d)
        self.head_norm = nn.LayerNorm(d)
        self.head_mlp = nn.Sequential(nn.Linear(d, config.head_hidden), nn.GELU(), nn.Linear(config.head_hidden, d))
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, sum(self.sizes), bias=False)  # level j's logits: its slice of rows

    # --- items and the sequence ---------------------------------------------------------------------

    def code_tokens(self, codes: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Vocabulary tokens of codes: [..., C] of all levels, or [...] of one ``level``."""
        offsets = self.level_offsets if level is None else self.level_offsets[level]
        return codes + offsets + N_SPECIAL

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Input representation of items [...] -> [..., D] (every item [n_items + 1, D] when None); padding: 0."""
        items = torch.arange(self.n_items + 1, device=self.codes.device) if items is None else items
        tokens = self.code_tokens(self.codes[items]).masked_fill((items == 0)[..., None], 0)
        x = self.in_codes(tokens).sum(dim=-2)
        return x + self.item_emb(items) if self.item_emb is not None else x

    def item_table(self) -> torch.Tensor:
        """Each item's representation for similar-item lookups: its input vector (codes + id row) [n_items + 1, D],
        row 0 (the padding) zero."""
        return self.item_vectors().detach().float().cpu()

    def hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items [B, L] right-padded ids, lengths [B] -> hidden states [B, L, D] (padded rows are garbage)."""
        x = self.item_vectors(items) + self.pos_emb.weight[:items.shape[1]][None]
        x = self.drop(x) * (items > 0)[..., None]
        index = self.blocks[0].rab.causal_index(x.shape[1], None)
        for block in self.blocks:
            x = block(x, lengths, None, bias_index=index)
        return self.final_norm(x)

    def level_states(self, h: torch.Tensor, prefix: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """A hidden state plus the embeddings of the codes written before ``level`` -> the state that level's
        logits are read from (same shape as h)."""
        z = h + prefix + self.level_emb(torch.as_tensor(level, device=h.device))
        return self.out_norm(z + self.head_mlp(self.head_norm(z)))

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """[..., D] -> logits over level ``level``'s codes [..., sizes[level]]."""
        start = int(self.level_offsets[level])
        return F.linear(h, self.head.weight[start:start + self.sizes[level]])

    # --- training ---------------------------------------------------------------------------------------

    def loss(self, items: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """items [B, L] right-padded windows, lengths [B], targets [B, L] (the next item at each position, 0: none)
        -> the summed cross-entropy over every target's C codes (plus ``item_loss`` x the catalog softmax) and
        the number of targets."""
        if items.ndim != 2 or targets.shape != items.shape:
            raise ModelInputError(f"items and targets must be [batch, length] alike, got {tuple(items.shape)} and "
                                  f"{tuple(targets.shape)}")
        check_ids(items, 0, self.n_items, "history item ids (0: padding)")
        check_ids(targets, 0, self.n_items, "target item ids (0: none)")
        h = self.hidden(items, lengths)
        keep = targets > 0
        h, target = h[keep], targets[keep]  # [M, D], [M]
        codes = self.codes[target]  # [M, C]
        written = self.prefix_emb(self.code_tokens(codes))  # [M, C, D]
        prefix = torch.cat([torch.zeros_like(written[:, :1]), written[:, :-1].cumsum(dim=1)], dim=1)
        z = self.level_states(h[:, None], prefix, torch.arange(self.n_levels, device=h.device))  # [M, C, D]
        loss = sum(F.cross_entropy(self.level_logits(z[:, j], j), codes[:, j], reduction="sum")
                   for j in range(self.n_levels))
        if self.config.item_loss > 0:
            logits = h @ self.item_vectors()[1:].T  # items 1..n
            loss = loss + self.config.item_loss * F.cross_entropy(logits, target - 1, reduction="sum")
        return loss, int(keep.sum())

    # --- the interface of genrec.nn.beam ----------------------------------------------------------------

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B, L] left-padded ids (most recent last) -> the last position's state [B, 1, D] and an
        all-true mask [B, 1, 1, 1] (there is nothing to mask: the state already read the history)."""
        history = history[:, -self.config.max_len:]
        b, length = history.shape
        lengths = (history > 0).sum(dim=1)
        cols = torch.arange(length, device=history.device)
        # Right-align: row r's items move to 0..n_r-1 (causal blocks must not read padding first).
        src = (cols[None] + (length - lengths)[:, None]).clamp(max=length - 1)
        items = history.gather(1, src).masked_fill(cols[None] >= lengths[:, None], 0)
        last = (lengths - 1).clamp(min=0)
        h = self.hidden(items, lengths.clamp(min=1))[torch.arange(b, device=history.device), last]
        return h[:, None], torch.ones(b, 1, 1, 1, dtype=torch.bool, device=history.device)

    def memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        return memory[:, 0]

    def new_caches(self) -> list[dict[str, torch.Tensor]]:
        return [{}]

    def decode(self, tokens: torch.Tensor, start: int, memory_kv: torch.Tensor, memory_mask: torch.Tensor | None,
               caches: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """tokens [B, W, 1] (BOS, then the code just written) at step ``start`` -> states [B, W, 1, D]; the
        cache holds each beam's sum of written code embeddings."""
        if tokens.shape[2] != 1 or caches is None:
            raise ValueError("the generator decodes one cached step at a time")
        cache = caches[0]
        written = self.prefix_emb(tokens[:, :, 0])  # [B, W, D]; BOS is a zero row
        prefix = cache["prefix"] + written if "prefix" in cache else written
        cache["prefix"] = prefix
        return self.level_states(memory_kv[:, None], prefix, start)[:, :, None]

    @staticmethod
    def reorder_caches(caches: list[dict[str, torch.Tensor]], parents: torch.Tensor) -> None:
        """Keep beam ``parents[b, j]`` of user b as its new beam j (in place); parents [B, W']."""
        for cache in caches:
            if "prefix" in cache:
                p = cache["prefix"]
                cache["prefix"] = p.gather(1, parents[..., None].expand(-1, -1, p.shape[-1]))

    # --- inference ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, history: torch.Tensor, k: int = 10, beam: int | None = None,
                  epsilon: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items [B, k] and their log-probabilities by beam search over valid IDs only (item 0, score -inf
        where fewer than k are reachable); with cold mixing (``epsilon`` > 0) cold items sharing a beam's prefix
        are mixed in (see ``genrec.models.tiger.TIGER.recommend``)."""
        if history.ndim != 2:
            raise ModelInputError(f"history must be [batch, length] left-padded item ids, got shape "
                                  f"{tuple(history.shape)}")
        check_ids(history, 0, self.n_items, "history item ids (0: padding)")
        if k < 1:
            raise ModelInputError(f"k must be at least 1, got {k}")
        eps = self.config.cold_mixing.epsilon if epsilon is None else float(epsilon)
        beam = beam or max(k, self.config.beam_width)
        if eps == 0 or not bool(self.cold.any()):
            return beam_search(self, history, self.trie(), beam=beam, k=k)
        items, scores = beam_search(self, history, self.trie(), beam=beam, k=beam)
        return self.mix_cold(items, scores, k, eps)

    def set_cold_items(self, items: torch.Tensor | np.ndarray | list[int]) -> None:
        """Mark these item ids (and only these) as never seen in training."""
        ids = torch.as_tensor(np.asarray(items, dtype=np.int64).reshape(-1))
        if len(ids) and (int(ids.min()) < 1 or int(ids.max()) > self.n_items):
            raise ValueError(f"cold items must be ids in 1..{self.n_items}")
        self.cold.zero_()
        self.cold[ids.to(self.cold.device)] = True

    def cold_prefix(self, prefix: int | None = None) -> int:
        """Codes a cold item shares with its beam: ``prefix``, else the config's, else all but the last."""
        p = prefix if prefix is not None else self.config.cold_mixing.prefix
        p = self.n_levels - 1 if p is None else int(p)
        if not 1 <= p < self.n_levels:
            raise ConfigError(f"cold-mixing prefix {p}: an item has {self.n_levels} codes, so a prefix must be "
                              f"1..{self.n_levels - 1}")
        return p

    def mix_cold(self, items: torch.Tensor, scores: torch.Tensor, k: int, epsilon: float | None = None,
                 prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cold items mixed into finished beams (``genrec.nn.beam.ColdMixer``)."""
        eps = self.config.cold_mixing.epsilon if epsilon is None else float(epsilon)
        return ColdMixer(self.trie(), self.cold.cpu(), self.cold_prefix(prefix)).mix(items, scores, k, eps)

    def trie(self) -> PrefixTrie:
        """The prefix trie of every item's ID (rebuilt only when the codes change, e.g. on loading weights)."""
        trie = self.__dict__.get("_trie")
        codes = self.codes[1:].cpu()
        if trie is None or not torch.equal(trie.codes, codes) or trie.device != self.codes.device:
            trie = PrefixTrie(codes, self.sizes).to(self.codes.device)
            self.__dict__["_trie"] = trie
        return trie
