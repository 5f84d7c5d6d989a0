"""A step's windows cut into passes by length: every row once, and the cheapest cut."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.train.windows import length_groups


def cost(lengths, groups, pass_tokens):
    return sum(len(g) * lengths[g].max() + pass_tokens for g in groups)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(2, 40), min_size=1, max_size=9), st.integers(0, 60))
def test_the_cut_covers_every_row_once_and_costs_least(lengths, pass_tokens):
    lengths = np.array(lengths)
    groups = length_groups(lengths, pass_tokens)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    ordered = np.sort(lengths)[::-1]
    n = len(ordered)
    cheapest = min(  # every cut of the length-sorted rows into consecutive passes
        sum((b - a) * ordered[a] + pass_tokens for a, b in itertools.pairwise((0, *cuts, n)))
        for r in range(n) for cuts in itertools.combinations(range(1, n), r))
    assert cost(lengths, groups, pass_tokens) == cheapest


def test_equal_lengths_make_one_pass_and_a_free_pass_cost_splits_by_length():
    assert len(length_groups(np.full(7, 30), 100)) == 1
    groups = length_groups(np.array([5, 30, 5, 30]), 0)
    assert [sorted(g.tolist()) for g in groups] == [[1, 3], [0, 2]]
