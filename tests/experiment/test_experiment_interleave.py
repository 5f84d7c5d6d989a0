"""Team-draft interleaving: the merge follows the draft rules, credit goes to the picking team, and the preference
is 0 under position-only clicks and positive for the better list."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.experiment import Credit, credit, preference, team_draft


def test_merge_follows_the_draft_rules():
    rng = np.random.default_rng(0)
    for seed in range(200):
        a, b = list(rng.permutation(30)[:10]), list(rng.permutation(30)[:12])
        merged = team_draft(a, b, k=15, seed=seed)
        assert merged == team_draft(a, b, k=15, seed=seed)  # the seed (request id) rebuilds it
        assert len(set(merged.items)) == len(merged.items) == min(15, len(set(a) | set(b)))
        for slot, (item, team) in enumerate(zip(merged.items, merged.teams, strict=True)):
            own = (a, b)[team]
            assert item == next(x for x in own if x not in merged.items[:slot])  # its team's best not yet shown
            picks = np.bincount(merged.teams[:slot + 1], minlength=2)
            both_open = all(any(x not in merged.items[:slot] for x in lst) for lst in (a, b))
            assert not both_open or abs(picks[0] - picks[1]) <= 1
    firsts = {team_draft([1, 2], [3, 4], seed=s).teams[0] for s in range(20)}
    assert firsts == {0, 1}  # the coin decides who picks first


def test_shared_items_and_exhausted_lists():
    merged = team_draft(["x", "y"], ["x", "z", "w"], seed="req-7")
    assert sorted(merged.items) == ["w", "x", "y", "z"]
    assert merged.items[0] == "x"  # both lists rank x first: whoever picks first takes it
    assert merged.teams[merged.items.index("w")] == 1  # list a ran out: b fills the rest


def test_credit_on_hand_built_impressions():
    teams = (0, 1, 0, 1)
    assert credit(teams, [0, 2]) == Credit(2, 0) and Credit(2, 0).outcome == "loss"
    assert credit(teams, [1]).outcome == "win"
    assert credit(teams, [0, 1]).outcome == "tie"
    assert credit(teams, []).outcome == "none"
    assert credit(teams, [3, 3, 0]) == Credit(1, 2)
    with pytest.raises(ValueError, match="position 4 is outside the 4 shown slots"):
        credit(teams, [4])


def test_preference_on_hand_built_outcomes():
    credits = [Credit(0, 1), Credit(0, 2), Credit(1, 0), Credit(1, 1), Credit(0, 0)]
    got = preference(credits)
    assert (got.wins, got.losses, got.ties, got.none) == (2, 1, 1, 1)
    assert got.delta.value == pytest.approx((2 + 0.5) / 4 - 0.5)
    assert got.delta.n == 4
    as_ties = preference(credits, engaged_only=False).delta  # impressions without engagement count as ties
    assert as_ties.value == pytest.approx((2 + 2 / 2) / 5 - 0.5)
    by_user = preference(credits, users=["u1", "u1", "u2", "u2", "u3"])
    assert by_user.delta.value == pytest.approx(0.125) and by_user.delta.n == 2  # u3 engaged with nothing


def simulate(better_b: bool, n: int, seed: int) -> list[Credit]:
    """Users click the relevant items among the top 5 with a position-decaying chance; b ranks them higher."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        relevant = set(rng.choice(40, 4, replace=False).tolist())
        a = list(rng.permutation(40))
        b = list(rng.permutation(40))
        if better_b:  # b moves most relevant items to its top
            b = sorted(a, key=lambda x: (x not in relevant) or rng.random() < 0.3)
        merged = team_draft(a, b, k=5, seed=i)
        examine = rng.random(5) < 0.9 ** np.arange(5)
        engaged = [p for p in range(5) if examine[p] and (merged.items[p] in relevant or rng.random() < 0.1)]
        out.append(credit(merged.teams, engaged))
    return out


def test_no_preference_under_random_lists_and_a_clear_one_for_the_better_list():
    null = preference(simulate(False, 3000, 1)).delta
    assert null.low < 0 < null.high and abs(null.value) < 0.04
    better = preference(simulate(True, 300, 2)).delta
    assert better.low > 0.1
