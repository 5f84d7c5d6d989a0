"""Jagged against plain-Python reference implementations, on hand-picked and random rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import Jagged

SETTINGS = settings(max_examples=50, deadline=None)

rows_strategy = st.lists(st.lists(st.integers(1, 1000), max_size=8), max_size=8)


# --- plain-Python references ---------------------------------------------------------------------------

def ref_slice(row: list[int], start: int, stop: int) -> list[int]:
    start = min(max(start, 0), len(row))
    stop = min(max(stop, start), len(row))
    return row[start:stop]


def ref_head(rows: list[list[int]], drop_last: int) -> list[list[int]]:
    return [r[: max(len(r) - drop_last, 0)] for r in rows]


def ref_tail(rows: list[list[int]], cap: int) -> list[list[int]]:
    return [r[max(len(r) - cap, 0):] for r in rows]


def ref_padded(rows: list[list[int]], cap: int | None, pad: int, left: bool) -> list[list[int]]:
    rows = ref_tail(rows, cap) if cap is not None else rows
    width = max([len(r) for r in rows] + [1])
    return [[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r)) for r in rows]


# --- construction ---------------------------------------------------------------------------------------

def test_from_lists_layout():
    j = Jagged.from_lists([[1, 2, 3], [], [4]])
    assert j.values.tolist() == [1, 2, 3, 4]
    assert j.offsets.tolist() == [0, 3, 3, 4]
    assert j.lengths.tolist() == [3, 0, 1]
    assert len(j) == 3
    assert j.row(0).tolist() == [1, 2, 3]
    assert j.row(1).tolist() == []
    assert j.row_ids().tolist() == [0, 0, 0, 2]
    assert j.to_lists() == [[1, 2, 3], [], [4]]


def test_empty():
    j = Jagged.from_lists([])
    assert len(j) == 0 and j.to_lists() == []
    assert j.take(np.array([], dtype=np.int64)).to_lists() == []
    assert tuple(j.to_padded().shape) == (0, 1)


@pytest.mark.parametrize(
    "values, offsets",
    [([1, 2], [1, 2]), ([1, 2], [0, 1]), ([1, 2], [0, 3]), ([1], []), ([1], [[0, 1]])],
)
def test_bad_offsets_rejected(values, offsets):
    with pytest.raises(ValueError):
        Jagged(np.array(values), np.array(offsets, dtype=np.int64))


@SETTINGS
@given(rows_strategy)
def test_roundtrip(rows):
    j = Jagged.from_lists(rows)
    assert j.to_lists() == rows
    assert j.lengths.tolist() == [len(r) for r in rows]
    assert j.row_ids().tolist() == [i for i, r in enumerate(rows) for _ in r]


# --- take / slice / head / tail / at ---------------------------------------------------------------------

def test_take_examples():
    j = Jagged.from_lists([[1, 2], [3], [], [4, 5, 6]])
    assert j.take(np.array([3, 0, 0, 2])).to_lists() == [[4, 5, 6], [1, 2], [1, 2], []]
    assert j.take([1]).to_lists() == [[3]]


@SETTINGS
@given(st.data())
def test_take_matches_reference(data):
    rows = data.draw(rows_strategy)
    j = Jagged.from_lists(rows)
    idx = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=12)) if rows else []
    assert j.take(np.array(idx, dtype=np.int64)).to_lists() == [rows[i] for i in idx]


@SETTINGS
@given(st.data())
def test_slice_rows_matches_reference(data):
    rows = data.draw(rows_strategy)
    j = Jagged.from_lists(rows)
    starts = data.draw(st.lists(st.integers(-3, 10), min_size=len(rows), max_size=len(rows)))
    stops = data.draw(st.lists(st.integers(-3, 10), min_size=len(rows), max_size=len(rows)))
    got = j.slice_rows(np.array(starts, dtype=np.int64), np.array(stops, dtype=np.int64)).to_lists()
    assert got == [ref_slice(r, a, b) for r, a, b in zip(rows, starts, stops, strict=True)]


@SETTINGS
@given(rows_strategy, st.integers(0, 10))
def test_head_and_tail_match_reference(rows, k):
    j = Jagged.from_lists(rows)
    assert j.head(k).to_lists() == ref_head(rows, k)
    assert j.tail(k).to_lists() == ref_tail(rows, k)


def test_head_per_row_drop():
    j = Jagged.from_lists([[1, 2, 3], [4, 5], [6]])
    assert j.head(np.array([2, 0, 1])).to_lists() == [[1], [4, 5], []]


@SETTINGS
@given(rows_strategy, st.integers(1, 4))
def test_at_matches_reference(rows, k):
    j = Jagged.from_lists(rows)
    if all(len(r) >= k for r in rows):
        assert j.at(k).tolist() == [r[-k] for r in rows]
    else:
        with pytest.raises(ValueError, match=str(k)):
            j.at(k)


def test_operations_do_not_mutate():
    j = Jagged.from_lists([[1, 2, 3], [4]])
    before = (j.values.copy(), j.offsets.copy())
    j.take([1, 0]), j.head(1), j.tail(1), j.slice_rows(np.array([1, 0]), np.array([2, 1])), j.to_padded(cap=1)
    assert np.array_equal(j.values, before[0]) and np.array_equal(j.offsets, before[1])


# --- padding ---------------------------------------------------------------------------------------------

def test_to_padded_examples():
    j = Jagged.from_lists([[1, 2, 3], [4], []])
    left = j.to_padded()
    assert left.dtype == torch.int64
    assert left.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    assert j.to_padded(left=False).tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert j.to_padded(cap=2).tolist() == [[2, 3], [0, 4], [0, 0]]
    assert j.to_padded(cap=2, left=False, pad=-1).tolist() == [[2, 3], [4, -1], [-1, -1]]
    assert j.to_padded(cap=10).tolist() == left.tolist()  # cap wider than every row: width = longest row


def test_to_padded_all_empty_rows_has_width_one():
    assert Jagged.from_lists([[], []]).to_padded().tolist() == [[0], [0]]


@SETTINGS
@given(rows_strategy, st.one_of(st.none(), st.integers(0, 10)), st.integers(-1, 1), st.booleans())
def test_to_padded_matches_reference(rows, cap, pad, left):
    got = Jagged.from_lists(rows).to_padded(cap=cap, pad=pad, left=left)
    assert got.tolist() == ref_padded(rows, cap, pad, left)
