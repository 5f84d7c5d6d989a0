"""Constrained beam search over semantic IDs: a prefix trie of the valid IDs as dense tensors, and a beam
search that only ever extends a beam with a code that keeps it a prefix of some item's ID.

The trie has one table per depth t: ``masks[t]`` [prefixes of length t + 1 (a dead row last), size_t] says
which codes may follow each valid prefix, and the sorted ``keys[t] = prefix * size_t + code`` map a chosen
code to the next prefix's row (at the last depth: to the item). Nothing is a Python dict or a per-item loop,
so the whole batch of users and beams moves through it with a few gathers per step.

The decoder is anything with the generator's interface (``encode``, ``memory_kv``, ``new_caches``,
``decode``, ``level_logits``, ``code_tokens``, ``reorder_caches``; see ``genrec.models.tiger``).

``ColdMixer`` is TIGER's cold-start remedy (Rajput et al. 2023, section 4.2): a decoder never learns to write
the final code of an item it never saw in training, so items never seen ("cold") whose ID shares a prefix
with a generated beam are mixed into the top-K, at most ``ceil(epsilon * n)`` of every top n.
"""

from __future__ import annotations

import math
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

    def prefix_nodes(self, length: int) -> torch.Tensor:
        """For items 1..n_items in order, the row of their first ``length`` codes in the depth ``length - 1``
        table [n_items] (CPU): equal rows = equal prefixes, and rows follow the prefixes' lexicographic order."""
        if not 1 <= length < self.depth:
            raise ValueError(f"a prefix length must lie in 1..{self.depth - 1}, got {length}")
        codes = self.codes.to(self.device)
        node = torch.zeros(self.n_items, dtype=torch.int64, device=self.device)
        for t in range(length):
            node = self.child(t, node, codes[:, t])
        return node.cpu()


def cold_quota(epsilon: float, n: int) -> int:
    """How many of the first ``n`` recommendations may be cold items: ``ceil(epsilon * n)`` (0 when epsilon is 0;
    a hair of tolerance so that e.g. 0.3 * 10 counts as 3, not 4)."""
    return max(0, math.ceil(epsilon * n - 1e-9))


class ColdMixer:
    """TIGER's cold-start mixing over finished beams.

    ``cold`` [n_items + 1] bool marks the items the model never saw in training; ``prefix`` is how many leading
    codes a cold item must share with a beam's ID to be its candidate (TIGER: every content level, i.e. all
    codes but the final uniqueness code). :meth:`mix` walks each user's beams in score order and builds the
    top-k from two queues:

    - the beams' warm items, in order;
    - cold candidates: the first beam of each prefix brings every cold item with that prefix (in ID order),
      and a beam that is itself a cold item comes first in its group. A candidate is scored with its beam's
      log-probability (the model's probability of writing that content prefix, which the cold item shares)
      and may only be placed after its beam (a cold beam: at its own place).

    Slot n (1-based) takes the next cold candidate when one is available and fewer than ``ceil(epsilon * n)``
    of the first n slots would then be cold, else the next warm item. So every prefix of the list (top 5,
    top 10, ...) holds at most ``ceil(epsilon * n)`` cold items, a cold item sits just below the beam that
    brought it unless the quota pushes it down, and the warm items keep their order. Returned scores are made
    strictly decreasing along the list (a cold item gets its beam's log-probability, lowered by float32 steps
    where needed), so ranking by score, ties by id, gives back the list. ``epsilon`` 0 returns the beams as
    they are. Cold items are real items: nothing outside the catalog is ever returned.
    """

    def __init__(self, trie: PrefixTrie, cold: torch.Tensor | np.ndarray, prefix: int):
        cold = np.asarray(torch.as_tensor(cold).cpu(), dtype=bool)
        if cold.shape != (trie.n_items + 1,):
            raise ValueError(f"cold mask has shape {cold.shape}; expected ({trie.n_items + 1},)")
        self.prefix, self.is_cold = int(prefix), cold.copy()
        self.is_cold[0] = False
        self.item_prefix = np.concatenate([[-1], trie.prefix_nodes(prefix).numpy()])
        ids = np.flatnonzero(self.is_cold)
        codes = trie.codes.numpy()[ids - 1]
        order = np.lexsort(codes.T[::-1]) if len(ids) else np.zeros(0, dtype=np.int64)  # ID order
        self.cold_sorted = ids[order].astype(np.int64)
        self.cold_prefix = self.item_prefix[self.cold_sorted]  # non-decreasing: prefix rows are lexicographic

    @property
    def n_cold(self) -> int:
        return len(self.cold_sorted)

    def mix(self, items: torch.Tensor, scores: torch.Tensor, k: int, epsilon: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """items, scores [B, W] (finished beams, best first; item 0 / -inf = none) -> top-``k`` [B, k] with cold
        items mixed in (item 0, score -inf where fewer than ``k`` are left), on the beams' device."""
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        device = items.device
        beam_items, beam_scores = items.cpu().numpy(), scores.float().cpu().numpy()
        if epsilon == 0 or self.n_cold == 0:
            out_i = np.zeros((len(beam_items), k), dtype=np.int64)
            out_s = np.full((len(beam_items), k), -np.inf, dtype=np.float32)
            w = min(k, beam_items.shape[1])
            out_i[:, :w], out_s[:, :w] = beam_items[:, :w], beam_scores[:, :w]
            return torch.from_numpy(out_i).to(device), torch.from_numpy(out_s).to(device)
        quota = [cold_quota(epsilon, n) for n in range(1, k + 1)]
        out_i = np.zeros((len(beam_items), k), dtype=np.int64)
        out_s = np.full((len(beam_items), k), -np.inf, dtype=np.float32)
        for row in range(len(beam_items)):
            warm, cold = self._queues(beam_items[row], beam_scores[row], quota[-1])
            wi = ci = n_cold = 0
            for n in range(k):
                if ci < len(cold) and cold[ci][2] <= wi and n_cold < quota[n]:
                    out_i[row, n], out_s[row, n] = cold[ci][0], cold[ci][1]
                    ci, n_cold = ci + 1, n_cold + 1
                elif wi < len(warm):
                    out_i[row, n], out_s[row, n] = warm[wi]
                    wi += 1
                else:
                    break
        for n in range(1, k):  # strictly decreasing, so that a ranking by score reproduces the list
            out_s[:, n] = np.minimum(out_s[:, n], np.nextafter(out_s[:, n - 1], np.float32(-np.inf)))
        return torch.from_numpy(out_i).to(device), torch.from_numpy(out_s).to(device)

    def _queues(self, items: np.ndarray, scores: np.ndarray, cap: int
                ) -> tuple[list[tuple[int, float]], list[tuple[int, float, int]]]:
        """One user's warm items [(item, score)] and at most ``cap`` cold candidates [(item, score, anchor)],
        where ``anchor`` is how many warm items must precede the candidate."""
        warm: list[tuple[int, float]] = []
        cold: list[tuple[int, float, int]] = []
        queued: set[int] = set()
        prefixes: set[int] = set()
        for item, score in zip(items.tolist(), scores.tolist(), strict=True):
            if item <= 0 or not math.isfinite(score):
                break  # beams come best first: the rest are empty
            group = []
            if self.is_cold[item]:
                group.append(item)
                anchor = len(warm)
            else:
                warm.append((item, score))
                anchor = len(warm)
            p = int(self.item_prefix[item])
            if p not in prefixes and len(cold) < cap:
                prefixes.add(p)
                lo = int(np.searchsorted(self.cold_prefix, p, side="left"))
                hi = min(int(np.searchsorted(self.cold_prefix, p, side="right")), lo + cap + 1)
                group.extend(self.cold_sorted[lo:hi].tolist())
            for c in group:
                if len(cold) < cap and c not in queued:
                    queued.add(c)
                    cold.append((c, score, anchor))
        return warm, cold


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
