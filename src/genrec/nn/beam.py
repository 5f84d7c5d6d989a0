"""Constrained beam search over semantic IDs: a prefix trie of the valid IDs as dense tensors, and a beam
search that only ever extends a beam with a code that keeps it a prefix of some item's ID.

The trie has one table per depth t: ``masks[t]`` [prefixes of length t + 1 (a dead row last), size_t] says
which codes may follow each valid prefix, and the sorted ``keys[t] = prefix * size_t + code`` map a chosen
code to the next prefix's row (at the last depth: to the item). Nothing is a Python dict or a per-item loop,
so the whole batch of users and beams moves through it with a few gathers per step.

The decoder is anything with the generator's interface (``encode``, ``memory_kv``, ``new_caches``,
``decode``, ``level_logits``, ``code_tokens``, ``reorder_caches``; see ``genrec.models.tiger``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genrec.errors import DataError

BOS = 1  # the decoder's start token (genrec.models.tiger)


class PrefixTrie:
    """Every item's ID as a path; ``codes`` [n_items, C] holds items 1..n_items in order (no padding row)."""

    def __init__(self, codes: torch.Tensor | np.ndarray, sizes: Sequence[int]):
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        sizes = [int(s) for s in sizes]
        if codes.ndim != 2 or codes.shape[1] != len(sizes) or codes.shape[0] == 0:
            raise DataError(f"semantic IDs have shape {tuple(codes.shape)}; expected [n_items > 0, {len(sizes)}]")
        if (codes < 0).any() or (codes >= torch.tensor(sizes)).any():
            raise DataError("a semantic-ID code lies outside its codebook")
        self.codes, self.sizes = codes.clone(), sizes
        self.n_items, self.depth = codes.shape[0], codes.shape[1]
        self.masks: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.children: list[torch.Tensor] = []
        node = torch.zeros(self.n_items, dtype=torch.int64)  # every item starts at the root
        n_nodes = 1
        for t, size in enumerate(sizes):
            key = node * size + codes[:, t]
            uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
            mask = torch.zeros(n_nodes + 1, size, dtype=torch.bool)  # the extra last row: dead beams (-1)
            mask[uniq // size, uniq % size] = True
            if t + 1 < self.depth:
                child = torch.arange(len(uniq))
                node, n_nodes = inverse, len(uniq)
            else:
                if len(uniq) < self.n_items:
                    counts = torch.bincount(inverse)
                    clash = torch.nonzero(counts[inverse] > 1)[:2, 0] + 1
                    raise DataError(f"semantic IDs are not unique: items {clash.tolist()} share the ID "
                                    f"{codes[clash[0] - 1].tolist()} (add a uniqueness code)")
                child = torch.empty(len(uniq), dtype=torch.int64)
                child[inverse] = torch.arange(1, self.n_items + 1)
            self.masks.append(mask)
            self.keys.append(uniq)
            self.children.append(child)

    def __len__(self) -> int:
        return self.n_items

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def to(self, device: torch.device | str) -> PrefixTrie:
        """The lookup tables on ``device`` (where the beams are); ``codes`` stay on the CPU. In place."""
        for tables in (self.masks, self.keys, self.children):
            tables[:] = [t.to(device) for t in tables]
        return self

    def allowed(self, t: int, nodes: torch.Tensor) -> torch.Tensor:
        """Codes that may follow each prefix: nodes [...] (rows of depth t, -1 = dead) -> [..., size_t] bool."""
        return self.masks[t][nodes]

    def child(self, t: int, nodes: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The prefix one code longer (at the last depth: the item id), or -1 where it is not a valid ID."""
        keys = self.keys[t]
        key = nodes * self.sizes[t] + code
        pos = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        found = (keys[pos] == key) & (nodes >= 0) & (code >= 0) & (code < self.sizes[t])
        return torch.where(found, self.children[t][pos], torch.full_like(key, -1))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Item id of each ID [..., C], 0 where the ID is not an item's."""
        node = torch.zeros(codes.shape[:-1], dtype=torch.int64, device=codes.device)
        for t in range(self.depth):
            node = self.child(t, node, codes[..., t])
        return node.clamp(min=0)

    def paths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every complete path, read back from the tables: codes [M, C] and the item at its end [M]."""
        cols = []
        rows = torch.arange(len(self.keys[-1]), device=self.device)
        for t in range(self.depth - 1, -1, -1):
            key = self.keys[t][rows]
            cols.append(key % self.sizes[t])
            rows = key // self.sizes[t]
        return torch.stack(cols[::-1], dim=1), self.children[-1]


@torch.no_grad()
def beam_search(model, history: torch.Tensor, trie: PrefixTrie, beam: int = 10, k: int | None = None,
                use_cache: bool = True, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` (default: ``beam``) most likely valid items per user and their log-probabilities.

    history [B, L] left-padded item ids. At every step each of the (at most) ``beam`` beams may be extended
    only by codes the trie allows, so every finished beam is a distinct item. ``renormalize`` takes the
    softmax over the allowed codes only (the probability of the next code given that the ID is valid).
    Where fewer than ``k`` items can be reached the rest is item 0 with score -inf. ``use_cache=False``
    re-runs the decoder over the whole prefix at every step (the plain reference for the KV cache).
    """
    k = beam if k is None else k
    if beam < 1 or k < 1:
        raise ValueError(f"beam ({beam}) and k ({k}) must be >= 1")
    if k > beam:
        raise ValueError(f"k ({k}) cannot exceed the beam width ({beam}): beam search only finds `beam` items")
    b = history.shape[0]
    memory, memory_mask = model.encode(history)
    memory_kv = model.memory_kv(memory)
    caches = model.new_caches() if use_cache else None
    tokens = torch.full((b, 1, 1), BOS, dtype=torch.int64, device=history.device)  # this step's input
    prefix = tokens  # every step's input so far (uncached decoding only)
    scores = torch.zeros(b, 1, device=history.device)
    nodes = torch.zeros(b, 1, dtype=torch.int64, device=history.device)
    for t in range(trie.depth):
        if use_cache:
            h = model.decode(tokens, t, memory_kv, memory_mask, caches)[:, :, -1]
        else:
            h = model.decode(prefix, 0, memory_kv, memory_mask)[:, :, -1]
        logits = model.level_logits(h, t).float()  # [B, W, size_t]
        allowed = trie.allowed(t, nodes)
        logp = torch.log_softmax(logits.masked_fill(~allowed, -torch.inf) if renormalize else logits, dim=-1)
        logp = logp.masked_fill(~allowed, -torch.inf)  # also clears the NaN rows of dead beams
        size = logp.shape[-1]
        candidates = (scores[:, :, None] + logp).view(b, -1)
        scores, idx = candidates.topk(min(beam, candidates.shape[1]), dim=1)
        parent, code = idx // size, idx % size
        nodes = trie.child(t, nodes.gather(1, parent), code).masked_fill(torch.isinf(scores), -1)
        if t + 1 < trie.depth:
            tokens = model.code_tokens(code, t)[:, :, None]
            if use_cache:
                model.reorder_caches(caches, parent)
            else:
                prefix = torch.cat([prefix.gather(1, parent[:, :, None].expand(-1, -1, prefix.shape[2])), tokens], 2)
    items = nodes.clamp(min=0)
    scores = scores.masked_fill(items == 0, -torch.inf)
    if items.shape[1] < k:  # fewer beams than k (a tiny catalog): pad with "nothing"
        pad = k - items.shape[1]
        items = torch.cat([items, items.new_zeros(b, pad)], dim=1)
        scores = torch.cat([scores, scores.new_full((b, pad), -torch.inf)], dim=1)
    return items[:, :k], scores[:, :k]
