"""Jagged sequences: one flat array of values plus offsets, the layout every hot path uses.

Row ``i`` is ``values[offsets[i]:offsets[i + 1]]``. All operations are vectorised with numpy; padding
happens only at the last moment, per batch, in :meth:`Jagged.to_padded`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_starts = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return row_starts + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class Jagged:
    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-d and start at 0")
        if self.offsets[-1] != len(self.values):
            raise ValueError(f"offsets end at {self.offsets[-1]} but there are {len(self.values)} values")

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> Jagged:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.asarray(values), offsets)

    @classmethod
    def from_lists(cls, rows: list[list[int]], dtype: type = np.int64) -> Jagged:
        """Convenience for tests and small inputs (not for hot paths)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(lengths.sum()))
        return cls.from_lengths(flat, lengths)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def to_lists(self) -> list[list[int]]:
        return [self.row(i).tolist() for i in range(len(self))]

    def take(self, rows: np.ndarray) -> Jagged:
        """The sub-batch of ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.lengths[rows]
        return Jagged.from_lengths(self.values[_ranges(starts, lengths)], lengths)

    def slice_rows(self, start: np.ndarray, stop: np.ndarray) -> Jagged:
        """Per-row slice ``row[start[i]:stop[i]]`` with row-relative, non-negative, clipped bounds."""
        lengths = self.lengths
        start = np.clip(np.asarray(start, dtype=np.int64), 0, lengths)
        stop = np.clip(np.asarray(stop, dtype=np.int64), start, lengths)
        new_lengths = stop - start
        return Jagged.from_lengths(self.values[_ranges(self.offsets[:-1] + start, new_lengths)], new_lengths)

    def head(self, drop_last: int) -> Jagged:
        """Every row without its last ``drop_last`` elements."""
        return self.slice_rows(np.zeros(len(self), dtype=np.int64), self.lengths - drop_last)

    def tail(self, cap: int) -> Jagged:
        """The most recent ``cap`` elements of every row (the history cap)."""
        return self.slice_rows(self.lengths - cap, self.lengths)

    def at(self, position_from_end: int) -> np.ndarray:
        """Element ``row[-position_from_end]`` of every row (rows must be long enough)."""
        if np.any(self.lengths < position_from_end):
            raise ValueError(f"some rows are shorter than {position_from_end}")
        return self.values[self.offsets[1:] - position_from_end]

    def row_ids(self) -> np.ndarray:
        """The row index of every value."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def to_padded(self, cap: int | None = None, pad: int = 0, left: bool = True) -> torch.Tensor:
        """A [rows, width] tensor; ``left=True`` puts the most recent element in the last column."""
        src = self.tail(cap) if cap is not None else self
        lengths = src.lengths
        width = int(lengths.max()) if len(lengths) else 0
        width = max(width, 1)
        out = np.full((len(src), width), pad, dtype=np.int64)
        rows = src.row_ids()
        pos = np.arange(len(src.values), dtype=np.int64) - np.repeat(src.offsets[:-1], lengths)
        cols = pos + (width - np.repeat(lengths, lengths)) if left else pos
        out[rows, cols] = src.values
        return torch.from_numpy(out)
