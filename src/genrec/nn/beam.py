"""Constrained beam search over semantic IDs: a prefix trie of the valid IDs as dense tensors, and a beam
search that only ever extends a beam with a code that keeps it a prefix of some item's ID.

The trie has tables per depth t, one row per prefix of length t (a dead row last): ``masks[t]`` [rows,
size_t] says which codes may follow the prefix, ``leaves[t]`` [rows] how many items lie below it, and the
sorted ``keys[t] = prefix * size_t + code`` map a chosen code to the next prefix's row (at the last depth:
to the item). Nothing is a Python dict or a per-item loop, so the whole batch of users and beams moves
through it with a few gathers per step.

``beam_search`` finds the most likely items; ``slate_search`` finds a slate: the most likely items with
pairwise different ID prefixes (no two near-duplicates), by the same search with one group of beams per prefix.

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
        self.leaves: list[torch.Tensor] = []
        node = torch.zeros(self.n_items, dtype=torch.int64)  # every item starts at the root
        n_nodes = 1
        for t, size in enumerate(sizes):
            self.leaves.append(torch.cat([torch.bincount(node, minlength=n_nodes), torch.zeros(1, dtype=torch.int64)]))
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
        for tables in (self.masks, self.keys, self.children, self.leaves):
            tables[:] = [t.to(device) for t in tables]
        return self

    def allowed(self, t: int, nodes: torch.Tensor) -> torch.Tensor:
        """Codes that may follow each prefix: nodes [...] (rows of depth t, -1 = dead) -> [..., size_t] bool."""
        return self.masks[t][nodes]

    def branching(self, t: int, nodes: torch.Tensor) -> torch.Tensor:
        """Whether more than one item lies below each prefix of length t (-1 = dead: False): only then does
        the next code carry any choice."""
        return self.leaves[t][nodes] > 1

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


def beam_search(model, history: torch.Tensor, trie: PrefixTrie, beam: int = 10, k: int | None = None,
                renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` (default: ``beam``) most likely valid items per user and their log-probabilities.

    history [B, L] left-padded item ids. At every step each of the (at most) ``beam`` beams may be extended
    only by codes the trie allows, so every finished beam is a distinct item. ``renormalize`` takes the
    softmax over the allowed codes only (the probability of the next code given that the ID is valid).
    Where fewer than ``k`` items can be reached the rest is item 0 with score -inf.

    The encoder runs once per user and the decoder one step at a time on its KV cache. With ``renormalize``
    a beam whose prefix leads to a single item is already finished (every later code is forced, with
    log-probability 0), so the decoder runs only on the beams that still branch.
    """
    k = beam if k is None else k
    if beam < 1 or k < 1:
        raise ValueError(f"beam ({beam}) and k ({k}) must be >= 1")
    if k > beam:
        raise ValueError(f"k ({k}) cannot exceed the beam width ({beam}): beam search only finds `beam` items")
    with torch.inference_mode():
        items, scores, _ = _search(model, history, trie, beam, renormalize)
    return _pad(items, scores, k)


def slate_search(model, history: torch.Tensor, trie: PrefixTrie, n: int = 10, prefix: int = 1,
                 beam: int | None = None, group_beams: int = 2, renormalize: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A slate of ``n`` items per user whose IDs pairwise differ in their first ``prefix`` codes, best first,
    with their log-probabilities: items [B, n], scores [B, n] (item 0, score -inf where fewer are reachable).

    The method: beam search with ``beam`` (default ``2 n``) beams over the first ``prefix`` codes finds the
    most likely prefixes; each prefix then founds a group that keeps its own ``group_beams`` best beams to the
    last code (a constrained beam search: one group never crowds out another), the best item of each group
    represents it, and the ``n`` best groups form the slate. Every item is valid, and no two share a prefix.
    """
    beam = 2 * n if beam is None else beam
    if n < 1 or group_beams < 1:
        raise ValueError(f"n ({n}) and group_beams ({group_beams}) must be >= 1")
    if n > beam:
        raise ValueError(f"n ({n}) cannot exceed the beams over prefixes ({beam}): each slate item is one prefix")
    if not 1 <= prefix < trie.depth:
        raise ValueError(f"a slate prefix must be 1..{trie.depth - 1} codes (an ID has {trie.depth}), got {prefix}")
    with torch.inference_mode():
        items, scores, per = _search(model, history, trie, beam, renormalize, prefix, group_beams)
        b = items.shape[0]
        items, scores = items.view(b, -1, per)[:, :, 0], scores.view(b, -1, per)[:, :, 0]  # each group's best
        scores, order = scores.topk(min(n, scores.shape[1]), dim=1)
        items = items.gather(1, order)
    return _pad(items, scores, n)


def _pad(items: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` columns, padded with item 0 / score -inf where there are fewer (a tiny catalog)."""
    b = items.shape[0]
    if items.shape[1] < k:
        pad = k - items.shape[1]
        items = torch.cat([items, items.new_zeros(b, pad)], dim=1)
        scores = torch.cat([scores, scores.new_full((b, pad), -torch.inf)], dim=1)
    return items[:, :k], scores[:, :k]


def _search(model, history: torch.Tensor, trie: PrefixTrie, beam: int, renormalize: bool,
            group_from: int | None = None, group_beams: int = 1, compact: bool | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Finished beams: items, scores [B, W] and how many beams each group holds (1 without groups).

    On the CPU the live beams of each user (those that still branch) are packed into ``n`` decoder slots (n =
    the most live beams of any user) and the KV cache holds slot rows; on a device every beam keeps a slot,
    so no step waits to read a count back. With ``group_from`` (a prefix length p) each
    beam at step p founds a group; from then on every group keeps its ``group_beams`` best beams, stored
    next to each other (beam g * per + j is beam j of group g), best first."""
    b, device = history.shape[0], history.device
    if compact is None:  # packing live beams reads a count back: worth it only without a device
        compact = device.type == "cpu"
    memory, memory_mask = model.encode(history)
    if compact and bool(memory_mask.all()):
        memory_mask = None  # no padding: nothing to mask
    memory_kv = model.memory_kv(memory)
    caches = model.new_caches()
    scores = torch.zeros(b, 1, device=device)
    nodes = torch.zeros(b, 1, dtype=torch.int64, device=device)
    code = slot = parent = None  # the last step's codes, slot of each beam, parent of each beam
    per = 1
    for t in range(trie.depth):
        live = trie.branching(t, nodes) if renormalize else nodes >= 0
        if not compact:  # every beam gets a slot (a finished one's logits change nothing): no host sync
            live = torch.ones_like(live)
        n = int(live.sum(dim=1).max()) if compact else live.shape[1]  # slots the decoder needs
        size = trie.sizes[t]
        if n:
            order = torch.argsort((~live).to(torch.uint8), dim=1, stable=True)[:, :n]  # live beams first
            if code is None:
                tokens = torch.full((b, 1, 1), BOS, dtype=torch.int64, device=device)
            else:
                tokens = model.code_tokens(code.gather(1, order), t - 1)[:, :, None]
                model.reorder_caches(caches, slot.gather(1, parent.gather(1, order)))
            h = model.decode(tokens, t, memory_kv, memory_mask, caches)[:, :, -1]
            slot = (live.cumsum(dim=1) - 1).clamp(min=0)  # the slot of each live beam
            logits = model.level_logits(h, t).float().gather(1, slot[:, :, None].expand(-1, -1, size))
        else:  # every beam is finished: only forced codes are left
            logits = torch.zeros(*nodes.shape, size, device=device)
        allowed = trie.allowed(t, nodes)
        # A finished beam has one allowed code, so its log-probability is exactly 0 whatever its logits.
        logp = torch.log_softmax(logits.masked_fill(~allowed, -torch.inf) if renormalize else logits, dim=-1)
        logp = logp.masked_fill(~allowed, -torch.inf)  # also clears the NaN rows of dead beams
        candidates = scores[:, :, None] + logp  # [B, W, size]
        if group_from is None or t < group_from:
            scores, idx = candidates.view(b, -1).topk(min(beam, candidates[0].numel()), dim=1)
            parent, code = idx // size, idx % size
        else:  # each group keeps its own best beams
            groups = candidates.shape[1] // per
            scores, idx = candidates.view(b, groups, per * size).topk(min(group_beams, per * size), dim=2)
            first = torch.arange(0, groups * per, per, device=device)[None, :, None]  # each group's first beam
            parent, code = (idx // size + first).view(b, -1), (idx % size).view(b, -1)
            per, scores = idx.shape[2], scores.view(b, -1)
        nodes = trie.child(t, nodes.gather(1, parent), code).masked_fill(torch.isinf(scores), -1)
    items = nodes.clamp(min=0)
    return items, scores.masked_fill(items == 0, -torch.inf), per
