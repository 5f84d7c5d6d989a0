"""Creator and content health on hand-built exposure tables."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.experiment import Exposures, health, health_by_arm, per_creator
from genrec.experiment.creators import DAY, gini, km_median


def test_gini_by_hand():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([4], population=4) == pytest.approx(0.75)  # never-exposed members count as zeros
    assert gini([1, 3]) == pytest.approx(0.25)
    assert gini([]) == 0.0
    with pytest.raises(ValueError, match="population"):
        gini([1, 2, 3], population=2)


def test_kaplan_meier_median():
    assert km_median(np.array([1.0, 2.0, 3.0]), np.array([True, True, True])) == 2.0
    assert km_median(np.array([1.0, 2.0, 3.0]), np.array([False, False, False])) == np.inf
    # Censored at 0.5 leaves 3 at risk: S(1) = 2/3, S(2) = 1/3 <= 1/2, so the median is 2 (not 1.5 or 1).
    assert km_median(np.array([0.5, 1.0, 2.0, 3.0]), np.array([False, True, True, True])) == 2.0


def table() -> Exposures:
    # Item "old" entered the catalog 30 days before; "new1" and "new2" inside the window; creators x and y.
    rows = [("old", 0.0, "x"), ("old", 1 * DAY, "x"), ("new1", 1 * DAY, "y"), ("new1", 2 * DAY, "y"),
            ("new1", 3 * DAY, "y"), ("new2", 9 * DAY, "y"), ("old", 10 * DAY, "x")]
    item, time, creator = zip(*rows, strict=True)
    return Exposures.of(item, time, creator)


FIRST_SEEN = {"old": -30 * DAY, "new1": 1 * DAY, "new2": 8 * DAY}


def test_health_on_a_hand_built_table():
    h = health(table(), k=2, fresh_days=7, first_seen=FIRST_SEEN, prior_items={"old"}, catalog_size=5,
               creator_count=3)
    assert h.exposures == 7
    assert h.fresh_share == pytest.approx(4 / 7)  # new1 x3 and new2 x1 are within 7 days of entering
    assert h.unexposed_share == pytest.approx(4 / 7)
    assert h.coverage == pytest.approx(3 / 5)
    assert h.item_gini == pytest.approx(gini([3, 3, 1, 0, 0]))
    assert h.creator_gini == pytest.approx(gini([3, 4, 0]))
    # new1 reached 2 exposures one day after entering; new2 has 1 by the window's end (censored).
    assert (h.new_items, h.new_reached_k, h.median_time_to_k_s) == (2, 0.5, 1 * DAY)
    bare = health(table())  # no first_seen: items count from their first exposure; no catalog: no coverage
    assert bare.coverage is None and bare.unexposed_share is None and bare.fresh_share == pytest.approx(6 / 7)


def test_per_creator_and_per_arm():
    rows = per_creator(table(), first_seen=FIRST_SEEN).rows()
    assert rows == [{"creator": "y", "exposures": 4, "items": 2, "fresh_exposures": 4, "share": 4 / 7},
                    {"creator": "x", "exposures": 3, "items": 1, "fresh_exposures": 0, "share": 3 / 7}]
    arms = health_by_arm(table(), ["a", "b", "a", "b", "a", "b", "a"], k=1, first_seen=FIRST_SEEN)
    assert set(arms) == {"a", "b"} and arms["a"].exposures == 4 and arms["b"].exposures == 3
    ints = per_creator(Exposures.of([1, 2, 2], [0, 0, 0], [7, 7, 8])).rows()
    assert ints[0] == {"creator": 7, "exposures": 2, "items": 2, "fresh_exposures": 2, "share": 2 / 3}


def test_bad_tables():
    with pytest.raises(ValueError, match="one value per exposure"):
        Exposures.of(["a", "b"], [0.0])
    with pytest.raises(ValueError, match="no creator column"):
        per_creator(Exposures.of(["a"], [0.0]))
    with pytest.raises(ValueError, match="empty"):
        health(Exposures.of([], []))
