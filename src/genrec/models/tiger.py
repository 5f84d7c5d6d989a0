"""TIGER (Rajput et al., NeurIPS 2023): recommend by generating the next item's semantic ID.

Every item is a short tuple of codes (``SemanticIds``: L content levels plus one code that makes the tuple
unique). A user's history becomes a token sequence, C tokens per item; a T5-style encoder reads it and a
decoder writes the next item's C codes one at a time. Training is teacher forcing with cross-entropy on
each code; inference is beam search constrained to the prefix trie of real IDs (``genrec.nn.beam``), so
the decoder never proposes an ID that is not an item.

Token layout (one vocabulary shared by encoder and decoder):

- 0 is padding and 1 starts the decoder;
- level j's code c is token ``2 + offset[j] + c`` (``offset`` = cumulative codebook sizes), so codes of
  different levels never share an embedding row.

Cold start (TIGER's section 4.2): the decoder never learns to write the final code of an item it never saw,
so with ``cold_mixing.epsilon > 0`` the items marked cold (``set_cold_items``; the trainer marks every item
absent from the training sequences, and the mark travels with the weights) whose ID shares a generated
beam's leading codes are mixed into the top-K, at most ``ceil(epsilon * n)`` of every top n
(``genrec.nn.beam.ColdMixer``).

Slates (``config.slate`` or :meth:`TIGER.recommend_slate`): the list is decoded as a set with at most one item
per ID prefix of p codes, so it holds no near-duplicates (``genrec.nn.beam.slate_search``).

Encoder input embedding = token + level (0..C-1) + item position counted from the most recent item (with
``encoder_tokens: items`` the C code embeddings of an item are summed into one token first); decoder
input embedding = token + decoding step. Blocks are pre-norm with ``heads x head_dim`` attention that need not
equal ``dim`` (TIGER: d 128, 6 heads of 64, MLP 1024). T5 normalises with RMSNorm; here LayerNorm, whose
fused CPU kernel is about 3x faster than torch's RMSNorm.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import ModelInputError, check_ids
from genrec.models.generator_config import GeneratorConfig
from genrec.models.tiger_query import Conditioned, QueryConditioning, QueryToken, check_query
from genrec.nn.beam import ColdMixer, PrefixTrie, beam_search, slate_search

PAD, BOS, N_SPECIAL = 0, 1, 2


class Slate(BaseModel):
    """Slate decoding (``genrec.nn.beam.slate_search``): recommendations as a set with at most one item per ID
    prefix, so no two items are near-duplicates. Off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: int | None = Field(None, ge=1, description="Leading codes two slate items may not share (1..C-1, "
                               "C codes per item); unset decodes the plain top-K.")
    group_beams: int = Field(2, ge=1, description="Beams each prefix keeps while its best item is decoded.")


class TigerConfig(GeneratorConfig):
    """The encoder-decoder generator over semantic IDs (defaults: TIGER's)."""

    name: Literal["tiger"] = "tiger"
    encoder_layers: int = Field(4, ge=1, description="Encoder blocks.")
    decoder_layers: int = Field(4, ge=1, description="Decoder blocks.")
    heads: int = Field(6, ge=1, description="Attention heads.")
    head_dim: int = Field(64, ge=1, description="Width of each head (heads x head_dim need not equal dim).")
    ffn_dim: int = Field(1024, ge=1, description="Hidden width of the feed-forward layers.")
    activation: Literal["relu", "gelu"] = Field("relu", description="Feed-forward activation (T5: ReLU).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on embeddings and block outputs.")
    max_len: int = Field(20, ge=1, description="History cap in items (TIGER: 20); the encoder reads "
                         "max_len x C tokens (max_len with encoder_tokens: items).")
    encoder_tokens: Literal["codes", "items"] = Field(
        "codes", description="codes: one encoder token per code (TIGER); items: one token per history item, the "
        "sum of its C code embeddings (as the SID-augmented ID models embed items), C times fewer encoder "
        "tokens, so about 3x cheaper training on CPU.")
    slate: Slate = Field(default_factory=Slate, description="Decode every recommendation list as a slate of "
                         "items with pairwise different ID prefixes (also what a served model returns); off by "
                         "default.")
    query: QueryConditioning | None = Field(None, description="Prompt-conditioned generation: a text query's "
                                            "content vector as one more encoder token (genrec.models.tiger_query); "
                                            "unset: history only.")


class Attention(nn.Module):
    """Multi-head attention projections; the attention itself is torch's fused scaled_dot_product_attention."""

    def __init__(self, cfg: TigerConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        inner = cfg.heads * cfg.head_dim
        self.q = nn.Linear(cfg.dim, inner, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * inner, bias=False)
        self.out = nn.Linear(inner, cfg.dim, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, H*Dh] -> [B, H, N, Dh]
        return x.view(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        return self.split(self.q(x))

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def merge(self, a: torch.Tensor) -> torch.Tensor:  # [B, H, N, Dh] -> [B, N, D]
        return self.out(a.transpose(1, 2).reshape(a.shape[0], a.shape[2], -1))

    def qkv_weight(self) -> torch.Tensor:
        """q and kv weights as one matrix (one matmul per decoding step instead of two), for inference only:
        a copy kept until either weight changes in place or moves."""
        q, kv = self.q.weight, self.kv.weight
        key = (q.data_ptr(), q._version, kv.data_ptr(), kv._version)
        if self.__dict__.get("_qkv_key") != key:
            self.__dict__["_qkv"], self.__dict__["_qkv_key"] = torch.cat([q, kv]).detach(), key
        return self.__dict__["_qkv"]


def feed_forward(cfg: TigerConfig) -> nn.Sequential:
    act = nn.ReLU() if cfg.activation == "relu" else nn.GELU()
    return nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), act, nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, cfg.dim))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: TigerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn, self.ffn, self.drop = Attention(cfg), feed_forward(cfg), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, D]; key_mask [B, 1, 1, S] (True = a real token; None = all are)."""
        h = self.norm1(x)
        if self.training or torch.is_grad_enabled():
            q, (k, v) = self.attn.project_q(h), self.attn.project_kv(h)
        else:  # inference: one matmul for q, k and v
            b, s, heads, hd = *h.shape[:2], self.attn.heads, self.attn.head_dim
            q, k, v = F.linear(h, self.attn.qkv_weight()).view(b, s, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = x + self.drop(self.attn.merge(a))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention over the codes written so far (with a KV cache), cross-attention to the history,
    feed-forward. Inputs are [B, W, T, D]: W beams of T steps per user; all beams of a user attend to the
    same encoder memory, so cross-attention runs on [B, H, W*T, Dh] queries without copying the memory."""

    def __init__(self, cfg: TigerConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.self_attn, self.cross_attn = Attention(cfg), Attention(cfg)
        self.ffn, self.drop = feed_forward(cfg), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
                cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        b, w, t, d = x.shape
        h = self.norm1(x).reshape(b * w, t, d)
        q = self.self_attn.project_q(h)
        k, v = self.self_attn.project_kv(h)
        if cache is not None:
            if "k" in cache:
                if t != 1:
                    raise ValueError("a cached decoder takes one step at a time")
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + self.drop(self.self_attn.merge(a).view(b, w, t, d))
        q = self.cross_attn.project_q(self.norm2(x).reshape(b, w * t, d))
        a = F.scaled_dot_product_attention(q, *memory_kv, attn_mask=memory_mask)
        x = x + self.drop(self.cross_attn.merge(a).view(b, w, t, d))
        return x + self.drop(self.ffn(self.norm3(x)))

    def step(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor | None,
             cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """One cached decoding step without dropout (inference): x [B, W, D] -> [B, W, D]. The same function
        as ``forward`` with T = 1, in fewer tensor ops (a beam step is small enough that op overhead counts)."""
        b, w, d = x.shape
        n, heads, hd = b * w, self.self_attn.heads, self.self_attn.head_dim
        x = x.reshape(n, d)
        q, k, v = F.linear(self.norm1(x), self.self_attn.qkv_weight()).view(n, 3, heads, 1, hd).unbind(1)
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        x = x + self.self_attn.out(F.scaled_dot_product_attention(q, k, v).view(n, heads * hd))
        q = self.cross_attn.q(self.norm2(x)).view(b, w, heads, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, *memory_kv, attn_mask=memory_mask)
        x = x + self.cross_attn.out(a.transpose(1, 2).reshape(n, heads * hd))
        ffn = self.ffn
        x = x + ffn[3](ffn[1](ffn[0](self.norm3(x))))
        return x.view(b, w, d)


class TIGER(nn.Module):
    """``codes`` [n_items + 1, C] (row 0 = padding) travel with the weights as a buffer, so a saved model
    decodes without its tokenizer's folder; ``sizes`` are the codebook sizes of the C columns. So does
    ``cold`` [n_items + 1] bool, the items never seen in training (none until :meth:`set_cold_items`)."""

    def __init__(self, config: TigerConfig, codes: np.ndarray | torch.Tensor, sizes: list[int]):
        super().__init__()
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        if codes.ndim != 2 or codes.shape[1] != len(sizes):
            raise ValueError(f"codes have shape {tuple(codes.shape)}; expected [n_items + 1, {len(sizes)}]")
        self.config, self.sizes = config, [int(s) for s in sizes]
        self.n_items, self.n_levels = codes.shape[0] - 1, codes.shape[1]
        self.use_timestamps = False
        offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.register_buffer("codes", codes.clone())
        self.register_buffer("cold", torch.zeros(codes.shape[0], dtype=torch.bool))
        prefix = config.cold_mixing.prefix
        if prefix is not None and prefix >= self.n_levels:
            raise ConfigError(f"model.cold_mixing.prefix {prefix}: an item has {self.n_levels} codes, so a "
                              f"prefix must be 1..{self.n_levels - 1}")
        if config.cold_mixing.epsilon > 0 and self.n_levels < 2:
            raise ConfigError("model.cold_mixing needs IDs of 2 or more codes (a shared prefix and a final code)")
        if config.slate.prefix is not None and config.slate.prefix >= self.n_levels:
            raise ConfigError(f"model.slate.prefix {config.slate.prefix}: an item has {self.n_levels} codes, so a "
                              f"slate prefix must be 1..{self.n_levels - 1}")
        if config.slate.prefix is not None and config.cold_mixing.epsilon > 0:
            raise ConfigError("model.slate and model.cold_mixing cannot both be on (a mixed-in cold item shares "
                              "its beam's prefix)")
        self.register_buffer("level_offsets", torch.from_numpy(offsets), persistent=False)
        self.tok_emb = nn.Embedding(N_SPECIAL + sum(self.sizes), config.dim, padding_idx=PAD)
        self.enc_level = nn.Embedding(self.n_levels, config.dim)
        self.enc_pos = nn.Embedding(config.max_len, config.dim)
        self.dec_step = nn.Embedding(self.n_levels, config.dim)
        for emb in (self.tok_emb, self.enc_level, self.enc_pos, self.dec_step):
            nn.init.normal_(emb.weight, std=config.init_std)
        with torch.no_grad():
            self.tok_emb.weight[PAD].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, sum(self.sizes), bias=False)  # level j's logits: its slice of rows
        q = config.query
        if q is not None and q.dim is None:
            raise ConfigError("model.query.dim is unset (training fills it in from the content table)")
        self.query_token = QueryToken(q.dim, config.dim, config.init_std) if q is not None else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before cold items travelled with them have no ``cold``: none is cold.
        state_dict.setdefault(prefix + "cold", torch.zeros_like(self.cold))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- tokens --------------------------------------------------------------------------------------

    def code_tokens(self, codes: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Vocabulary tokens of codes: [..., C] of all levels, or [...] of one ``level``."""
        offsets = self.level_offsets if level is None else self.level_offsets[level]
        return codes + offsets + N_SPECIAL

    def item_table(self) -> torch.Tensor:
        """Each item's representation for similar-item lookups: the mean of its code tokens' embeddings
        [n_items + 1, D], row 0 (the padding) zero."""
        out = self.tok_emb(self.code_tokens(self.codes.clamp(min=0))).mean(dim=1).detach().float().cpu()
        out[0] = 0
        return out

    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """[B, L] dense item ids (0 = padding) -> [B, L, C] tokens (padding items -> PAD)."""
        tokens = self.code_tokens(self.codes[items])
        return tokens.masked_fill((items == 0)[..., None], PAD)

    # --- encoder -------------------------------------------------------------------------------------

    def encode(self, history: torch.Tensor, query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B, L] left-padded item ids (most recent last, L <= max_len, each row non-empty) ->
        memory [B, S, D] and its key mask [B, 1, 1, S]: S = L*C tokens, or L with ``encoder_tokens: items``.
        ``query`` [B, query dim] (``model.query``; zero rows: none) adds one token first: S + 1."""
        b, length = history.shape
        if length > self.config.max_len:
            history, length = history[:, -self.config.max_len:], self.config.max_len
        tokens = self.item_tokens(history)  # [B, L, C]
        pos = torch.arange(length - 1, -1, -1, device=history.device)  # 0 = most recent item
        x = self.tok_emb(tokens) + self.enc_level.weight[None, None]
        if self.config.encoder_tokens == "items":
            x, tokens = x.sum(dim=2) + self.enc_pos(pos)[None], tokens[..., 0]  # [B, L, D], [B, L]
        else:
            x = (x + self.enc_pos(pos)[None, :, None]).view(b, length * self.n_levels, -1)
        mask = (tokens != PAD).view(b, 1, 1, -1)
        if query is not None:
            check_query(query, b, self.query_token.query_dim if self.query_token is not None else None)
            x, mask = self.query_token.prepend(x, mask, query)
        x = self.drop(x)
        # An empty history reads the padding of its most recent slot (not NaN), the same at any batch width.
        last = torch.zeros_like(mask)
        last[..., -(1 if self.config.encoder_tokens == "items" else self.n_levels):] = True
        mask = mask | (last & ~mask.any(dim=-1, keepdim=True))
        # Inference skips an all-true mask (the attention kernel then has nothing to apply); training never
        # waits on the device for that check.
        attn_mask = None if not torch.is_grad_enabled() and bool(mask.all()) else mask
        for block in self.encoder:
            x = block(x, attn_mask)
        return self.enc_norm(x), mask

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder block's cross-attention keys and values, computed once per history."""
        return [block.cross_attn.project_kv(memory) for block in self.decoder]

    # --- decoder -------------------------------------------------------------------------------------

    def new_caches(self) -> list[dict[str, torch.Tensor]]:
        return [{} for _ in self.decoder]

    def decode(self, tokens: torch.Tensor, start: int, memory_kv: list, memory_mask: torch.Tensor,
               caches: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """tokens [B, W, T] at decoding steps start..start+T-1 -> hidden states [B, W, T, D]. With ``caches``
        (one dict per block) earlier steps' keys and values are reused and T must be 1 after the first call."""
        t = tokens.shape[2]
        x = self.drop(self.tok_emb(tokens) + self.dec_step.weight[start:start + t])
        if caches is not None and t == 1 and not (self.training or torch.is_grad_enabled()):
            x = x[:, :, 0]
            for block, kv, cache in zip(self.decoder, memory_kv, caches, strict=True):
                x = block.step(x, kv, memory_mask, cache)
            return self.dec_norm(x)[:, :, None]
        for i, block in enumerate(self.decoder):
            x = block(x, memory_kv[i], memory_mask, None if caches is None else caches[i])
        return self.dec_norm(x)

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """[..., D] -> logits over level ``level``'s codes [..., sizes[level]]."""
        start = int(self.level_offsets[level])
        return F.linear(h, self.head.weight[start:start + self.sizes[level]])

    @staticmethod
    def reorder_caches(caches: list[dict[str, torch.Tensor]], parents: torch.Tensor) -> None:
        """Keep beam ``parents[b, j]`` of user b as its new beam j (in place); parents [B, W']."""
        b = parents.shape[0]
        for cache in caches:
            for key, value in cache.items():
                w = value.shape[0] // b
                rows = (parents + torch.arange(0, b * w, w, device=parents.device)[:, None]).view(-1)
                cache[key] = value.index_select(0, rows)

    # --- training --------------------------------------------------------------------------------------

    def forward(self, history: torch.Tensor, targets: torch.Tensor,
                query: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Teacher forcing: history [B, L] left-padded, target items [B] (and ``query`` vectors, optional) ->
        per level j logits [B, sizes[j]] of code j given the history (and query) and the target's codes 0..j-1."""
        memory, mask = self.encode(history, query)
        target_tokens = self.code_tokens(self.codes[targets])  # [B, C]
        bos = torch.full_like(target_tokens[:, :1], BOS)
        tokens = torch.cat([bos, target_tokens[:, :-1]], dim=1)[:, None]  # [B, 1, C]
        h = self.decode(tokens, 0, self.memory_kv(memory), mask)[:, 0]  # [B, C, D]
        return [self.level_logits(h[:, j], j) for j in range(self.n_levels)]

    def loss(self, history: torch.Tensor, targets: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """Summed cross-entropy over the C codes of every target (divide by B*C for the mean)."""
        self._check_history(history)
        check_ids(targets, 1, self.n_items, "target item ids")
        codes = self.codes[targets]
        logits = self.forward(history, targets, query)
        return sum(F.cross_entropy(lg, codes[:, j], reduction="sum") for j, lg in enumerate(logits))

    def _check_history(self, history: torch.Tensor) -> None:
        if history.ndim != 2:
            raise ModelInputError(f"history must be [batch, length] left-padded item ids, got shape "
                                  f"{tuple(history.shape)}")
        check_ids(history, 0, self.n_items, "history item ids (0: padding)")

    # --- inference -------------------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, history: torch.Tensor, k: int = 10, beam: int | None = None, epsilon: float | None = None,
                  slate: int | None = None, query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items [B, k] and their log-probabilities from beam search over valid IDs only (item 0 with
        score -inf where fewer than k items are reachable). ``history`` [B, L] left-padded item ids.

        With cold mixing on (``epsilon``, default ``config.cold_mixing.epsilon``, > 0 and some item marked
        cold), cold items sharing a beam's ID prefix are mixed in (:meth:`mix_cold`): their score is the
        beam's log-probability, lowered just enough to rank right below the item before them. With a slate
        prefix (``slate``, default ``config.slate.prefix``; 0 = none) the list is :meth:`recommend_slate`'s.
        ``query`` [B, query dim]: decode conditioned on these content vectors too (``model.query``)."""
        self._check_history(history)
        if k < 1:
            raise ModelInputError(f"k must be at least 1, got {k}")
        model = self if query is None else self._conditioned(history, query)
        prefix = self.config.slate.prefix if slate is None else (int(slate) or None)
        eps = self.config.cold_mixing.epsilon if epsilon is None else float(epsilon)
        if prefix is not None:
            if eps > 0 and bool(self.cold.any()):
                raise ValueError("a slate cannot mix in cold items (they share their beam's prefix); pass epsilon=0")
            return self.recommend_slate(history, n=k, prefix=prefix, beam=max(beam or 2 * k, k), query=query)
        beam = beam or max(k, self.config.beam_width)
        if eps == 0 or not bool(self.cold.any()):
            return beam_search(model, history, self.trie(), beam=beam, k=k)
        items, scores = beam_search(model, history, self.trie(), beam=beam, k=beam)
        return self.mix_cold(items, scores, k, eps)

    @torch.no_grad()
    def recommend_slate(self, history: torch.Tensor, n: int = 10, prefix: int | None = None, beam: int | None = None,
                        group_beams: int | None = None, query: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """A slate of ``n`` items per user [B, n] with pairwise different first ``prefix`` codes (default
        ``config.slate.prefix``, else 1: no two items from the same top-level cluster), best first, and their
        log-probabilities (``genrec.nn.beam.slate_search``; ``beam`` prefixes are searched, default 2 n)."""
        self._check_history(history)
        if n < 1:
            raise ModelInputError(f"n must be at least 1, got {n}")
        prefix = prefix or self.config.slate.prefix or 1
        if not 1 <= prefix < self.n_levels:
            raise ModelInputError(f"slate prefix {prefix}: an item has {self.n_levels} codes, so a prefix must be "
                                  f"1..{self.n_levels - 1}")
        model = self if query is None else self._conditioned(history, query)
        return slate_search(model, history, self.trie(), n=n, prefix=prefix, beam=beam,
                            group_beams=group_beams or self.config.slate.group_beams)

    def _conditioned(self, history: torch.Tensor, query: torch.Tensor) -> Conditioned:
        """This model as beam search sees it with a query batch (checked here, once)."""
        check_query(query, history.shape[0], self.query_token.query_dim if self.query_token is not None else None)
        return Conditioned(self, query.to(self.codes.device))

    def mix_cold(self, items: torch.Tensor, scores: torch.Tensor, k: int, epsilon: float | None = None,
                 prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix the cold items into finished beams (items, scores [B, W], best first): top-``k`` [B, k] with at
        most ``ceil(epsilon * n)`` cold items in every top n (``genrec.nn.beam.ColdMixer``). ``epsilon`` and
        ``prefix`` default to ``config.cold_mixing``'s."""
        eps = self.config.cold_mixing.epsilon if epsilon is None else float(epsilon)
        return self.cold_mixer(prefix).mix(items, scores, k, eps)

    def set_cold_items(self, items: torch.Tensor | np.ndarray | list[int]) -> None:
        """Mark these item ids (and only these) as never seen in training: the candidates of cold mixing."""
        ids = torch.as_tensor(np.asarray(items, dtype=np.int64).reshape(-1))
        if len(ids) and (int(ids.min()) < 1 or int(ids.max()) > self.n_items):
            raise ValueError(f"cold items must be ids in 1..{self.n_items}")
        self.cold.zero_()
        self.cold[ids.to(self.cold.device)] = True

    def cold_items(self) -> torch.Tensor:
        """The ids of the items marked cold (CPU, ascending)."""
        return torch.nonzero(self.cold.cpu())[:, 0]

    def cold_prefix(self, prefix: int | None = None) -> int:
        """Codes a cold item shares with its beam: ``prefix``, else the config's, else all but the last."""
        p = prefix if prefix is not None else self.config.cold_mixing.prefix
        p = self.n_levels - 1 if p is None else int(p)
        if not 1 <= p < self.n_levels:
            raise ConfigError(f"cold-mixing prefix {p}: an item has {self.n_levels} codes, so a prefix must be "
                              f"1..{self.n_levels - 1}")
        return p

    def cold_mixer(self, prefix: int | None = None) -> ColdMixer:
        """The mixer for the current cold items and prefix (rebuilt only when either, or the codes, change)."""
        p = self.cold_prefix(prefix)
        cached = self.__dict__.get("_cold_mixer")
        cold = self.cold.cpu()
        if cached is None or cached[0] != p or not torch.equal(cached[1], cold) or cached[2] is not self.trie():
            cached = (p, cold.clone(), self.trie(), ColdMixer(self.trie(), cold, p))
            self.__dict__["_cold_mixer"] = cached
        return cached[3]

    def trie(self) -> PrefixTrie:
        """The prefix trie of every item's ID (rebuilt only when the codes change, e.g. on loading weights)."""
        trie = self.__dict__.get("_trie")
        codes = self.codes[1:].cpu()
        if trie is None or not torch.equal(trie.codes, codes) or trie.device != self.codes.device:
            trie = PrefixTrie(codes, self.sizes).to(self.codes.device)
            self.__dict__["_trie"] = trie
        return trie
