"""Exact top-K selection in the deterministic order (score descending, then id ascending) for the fast
evaluation paths of :mod:`genrec.eval.fast`: a packed (score, id) key whose integer order is that order, a
running top-K fed block by block on the CPU and a block-wise one on any device."""

from __future__ import annotations

import numpy as np
import torch


def topk_deterministic(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids and scores per row; among equal scores the smaller id wins, so results never vary."""
    k = min(k, scores.shape[1])
    kth = scores.topk(k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    idx = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: ids ascending within each row
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)


# A (score, id) pair as one int64 whose ascending order is score descending, then id ascending.
EMPTY = np.iinfo(np.int64).max
ID_BITS = 31
ID_MASK = (1 << ID_BITS) - 1


def pack(score: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    bits = (score + 0.0).view(torch.int32)  # + 0.0 makes -0.0 the same key as 0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed 32-bit order
    return (~ordered).to(torch.int64) << ID_BITS | ids


def pack_np(score: np.ndarray, ids: np.ndarray) -> np.ndarray:
    bits = (score + np.float32(0.0)).view(np.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (~ordered).astype(np.int64) << ID_BITS | ids


def unpack_np(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, id) of packed keys; an empty slot reads as (-inf, 0)."""
    ordered = ~(keys >> ID_BITS).astype(np.int32)
    score = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(np.float32)
    empty = keys == EMPTY
    return np.where(empty, np.float32(-np.inf), score), np.where(empty, 0, keys & ID_MASK)


def top_ids(keys: np.ndarray) -> np.ndarray:
    """Ids of each row's keys sorted best first; 0 for empty slots and -inf scores."""
    score, ids = unpack_np(np.sort(keys, axis=1))
    return np.where(score > -np.inf, ids, 0)


def running_top_k(rows: int, k: int, device: torch.device) -> RunningTopK | BlockTopK:
    return RunningTopK(rows, k) if device.type in SPARSE_TOP_K_DEVICES else BlockTopK(rows, k, device)


SPARSE_TOP_K_DEVICES = ("cpu",)
GROUP_MIN, GROUP_MAX = 8, 64


class RunningTopK:
    """The best k columns per row (score desc, id asc) of blocks fed in increasing column order, on the CPU.

    A later column only enters by a strictly higher score than the current k-th (on a tie the earlier, smaller id
    stays), so a block adds few candidates once the k-th is high. They are found through the maxima of column
    groups (strided, so the maxima take one vectorised pass), sized from the last block's share of candidates,
    appended as packed keys and cut back to the best k by a partition.
    """

    def __init__(self, rows: int, k: int) -> None:
        self.k, self.width = k, 5 * k + 256
        self.keys = np.full((rows, self.width), EMPTY, dtype=np.int64)
        self.fill = np.zeros(rows, dtype=np.int64)
        self.kth = np.full(rows, -np.inf, dtype=np.float32)
        self.share = 1.0  # of the last block's entries that were candidates

    def add(self, s: torch.Tensor, start: int) -> None:
        b, w = s.shape
        x = s.numpy()
        group = self._group_size()
        if group and w % group == 0:
            stride = w // group  # group c of a row: columns c, c + stride, c + 2 stride, ...
            hit = np.flatnonzero(s.view(b, group, stride).amax(1).numpy() > self.kth[:, None])
            r, c = np.divmod(hit, stride)
            vals = x.ravel().take((r * w + c)[:, None] + np.arange(group) * stride)
            got = np.flatnonzero(vals > self.kth[r][:, None])
            p, j = np.divmod(got, group)
            rows, cols, v = r[p], start + j * stride + c[p], vals.ravel()[got]
        else:
            got = np.flatnonzero(x > self.kth[:, None])
            rows, j = np.divmod(got, w)
            cols, v = start + j, x.ravel()[got]
        self.share = len(rows) / max(b * w, 1)
        if len(rows) == 0:
            return
        counts = np.bincount(rows, minlength=b)
        if counts.max() > self.width - self.k:  # many new leaders (scores rising with ids): the block's best k
            ids, vals_t = topk_deterministic(s, self.k)
            kk = ids.shape[1]
            rows, cols, v = np.repeat(np.arange(b), kk), ids.numpy().ravel() + start, vals_t.numpy().ravel()
            counts = np.full(b, kk)
        if (self.fill + counts).max() > self.width:
            self._cut()
        pos = self.fill[rows] + np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
        self.keys.ravel()[rows * self.width + pos] = pack_np(v, cols)
        self.fill += counts
        if self.fill.max() >= 2 * self.k or ((self.fill >= self.k) & (self.kth == -np.inf)).any():
            self._cut()  # a fresh k-th score keeps the next blocks' candidates few

    def _group_size(self) -> int:
        """Columns per group: larger when candidates are rarer (fewer maxima to scan, few groups to open);
        0 when they are so common that comparing every entry is cheaper."""
        if self.share >= 1 / 32:
            return 0
        best = float(np.sqrt(1.0 / (3.0 * max(self.share, 1e-12))))
        return int(min(GROUP_MAX, max(GROUP_MIN, 2 ** round(np.log2(best)))))

    def _cut(self) -> None:
        """Keep the best k keys of each row (in any order) in the first k slots."""
        k, used = self.k, max(int(self.fill.max()), self.k)
        part = self.keys[:, :used]
        part[:] = np.partition(part, k - 1, axis=1)
        part[:, k:] = EMPTY
        np.minimum(self.fill, k, out=self.fill)
        self.kth = unpack_np(part[:, :k].max(axis=1))[0]

    def result(self) -> torch.Tensor:
        """[rows, k] ids, best first; 0 where only -inf items were left."""
        self._cut()
        return torch.from_numpy(top_ids(self.keys[:, :self.k]))


class BlockTopK:
    """The same on any device: each block's packed keys and the best k so far, cut back to k by one topk."""

    def __init__(self, rows: int, k: int, device: torch.device) -> None:
        self.k = k
        self.best = torch.full((rows, k), EMPTY, dtype=torch.int64, device=device)

    def add(self, s: torch.Tensor, start: int) -> None:
        keys = pack(s, torch.arange(start, start + s.shape[1], device=s.device))
        self.best = torch.cat([self.best, keys], 1).topk(self.k, dim=1, largest=False, sorted=False).values

    def result(self) -> torch.Tensor:
        return torch.from_numpy(top_ids(self.best.cpu().numpy()))
