"""Cold-start split: held-out items never reach training or evaluation histories; cold targets are marked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genrec.data import ColdStartSplit, EvalCases, Jagged, SequenceDataset, cold_start_split, leave_one_out, prepare
from genrec.errors import ConfigError
from genrec.eval import rank_cases
from genrec.models import ItemKNN, Popularity, Recommender


def random_dataset(seed: int = 0, n_users: int = 200, n_items: int = 60, max_len: int = 15) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n_users)
    users = np.repeat(np.arange(n_users), lengths)
    items = rng.integers(0, n_items, size=len(users))
    items[: n_items] = np.arange(n_items)  # every item occurs, so n_items is exact
    ts = rng.permutation(len(users))  # unique timestamps
    return prepare(pa.table({"user": users, "item": items, "timestamp": ts}), name=f"cold{seed}")


@pytest.fixture(scope="module")
def ds() -> SequenceDataset:
    return random_dataset()


@pytest.fixture(scope="module")
def split(ds) -> ColdStartSplit:
    return cold_start_split(ds, fraction=0.1, seed=3)


def test_held_out_count_and_ids(ds, split):
    assert ds.n_items == 60
    assert isinstance(split, ColdStartSplit) and split.kind == "cold_start"
    assert len(split.cold_items) == round(0.1 * 60) == 6
    assert np.array_equal(split.cold_items, np.unique(split.cold_items))  # sorted, distinct
    assert split.cold_items.min() >= 1 and split.cold_items.max() <= ds.n_items
    assert len(cold_start_split(ds, fraction=0.05).cold_items) == 3
    assert len(cold_start_split(ds, fraction=0.5).cold_items) == 30
    assert split.info["cold_items"] == 6 and split.info["choice"] == "uniform"


def test_deterministic_by_seed(ds, split):
    again = cold_start_split(ds, fraction=0.1, seed=3)
    assert np.array_equal(again.cold_items, split.cold_items)
    assert again.train.to_lists() == split.train.to_lists()
    assert np.array_equal(again.test_cold, split.test_cold)
    others = {tuple(cold_start_split(ds, fraction=0.1, seed=s).cold_items) for s in range(4, 9)}
    assert len(others | {tuple(split.cold_items)}) > 1  # the seed matters


def test_no_held_out_id_in_training_or_histories(split):
    cold = split.cold_items
    assert not np.isin(split.train.values, cold).any()
    for part in (split.valid, split.test):
        assert not np.isin(part.history.values, cold).any()
    assert (split.train.lengths > 0).all()
    assert len(split.train_users) == len(split.train)


def test_matches_leave_one_out_minus_cold_items(ds, split):
    base = leave_one_out(ds)
    cold = set(split.cold_items.tolist())
    expected = {int(u): [i for i in row if i not in cold] for u, row in zip(base.train_users, base.train.to_lists(),
                                                                           strict=True)}
    expected = {u: row for u, row in expected.items() if row}
    assert dict(zip(split.train_users.tolist(), split.train.to_lists(), strict=True)) == expected
    # Timestamps stay aligned with the items they belong to.
    base_pairs = {(int(u), t): i for u, items, tss in zip(base.train_users, base.train.to_lists(),
                                                          base.train_timestamps.to_lists(), strict=True)
                  for i, t in zip(items, tss, strict=True)}
    for u, items, tss in zip(split.train_users, split.train.to_lists(), split.train_timestamps.to_lists(), strict=True):
        assert [base_pairs[(int(u), t)] for t in tss] == items
    for b, c in ((base.valid, split.valid), (base.test, split.test)):
        assert np.array_equal(b.users, c.users) and np.array_equal(b.targets, c.targets)  # every case kept
        assert c.history.to_lists() == [[i for i in row if i not in cold] for row in b.history.to_lists()]
        assert np.array_equal(c.history.lengths, c.history_timestamps.lengths)


def test_cold_masks_match_targets(split):
    assert split.test_cold.dtype == bool and split.valid_cold.dtype == bool
    assert np.array_equal(split.test_cold, np.isin(split.test.targets, split.cold_items))
    assert np.array_equal(split.valid_cold, np.isin(split.valid.targets, split.cold_items))
    assert split.test_cold.any()
    assert split.info["test_cold_cases"] == int(split.test_cold.sum())


def test_subset_selects_cold_cases(split):
    cold = split.test.subset(split.test_cold)
    assert isinstance(cold, EvalCases) and len(cold) == int(split.test_cold.sum())
    assert np.isin(cold.targets, split.cold_items).all()
    rows = np.flatnonzero(split.test_cold)
    assert cold.history.to_lists() == [split.test.history.to_lists()[r] for r in rows]
    assert np.array_equal(cold.users, split.test.users[rows])
    with pytest.raises(ConfigError, match="boolean"):
        split.test.subset(rows)  # indices, not a mask
    with pytest.raises(ConfigError, match="shape"):
        split.test.subset(split.test_cold[:-1])


class Recording(Recommender):
    """Remembers every id it was trained on."""

    def fit(self, train: Jagged, n_items: int) -> Recording:
        self.seen_ = np.unique(train.values)
        self.n_items = n_items
        return self

    def score(self, history, users, timestamps=None):
        return Popularity().fit(Jagged.from_lists([]), self._check_fitted()).score(history, users)


def test_model_fit_on_train_sees_no_held_out_id(ds, split):
    assert not np.isin(Recording().fit(split.train, ds.n_items).seen_, split.cold_items).any()
    pop = Popularity().fit(split.train, ds.n_items)
    assert (pop.counts_[split.cold_items] == 0).all()
    knn = ItemKNN().fit(split.train, ds.n_items)
    sim = knn.similarity_.tocsc()
    assert knn.similarity_[split.cold_items].nnz == 0 and sim[:, split.cold_items].nnz == 0
    # The benchmark's use: rank only the cold-target cases.
    r = rank_cases(knn, split.test.subset(split.test_cold), ds.n_items, ks=(10,), show_progress=False)
    assert len(r.ranks) == int(split.test_cold.sum())


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0])
def test_bad_fraction_is_config_error(ds, fraction):
    with pytest.raises(ConfigError, match="fraction"):
        cold_start_split(ds, fraction=fraction)


def test_fraction_too_small_for_catalog(ds):
    with pytest.raises(ConfigError, match="no item"):
        cold_start_split(ds, fraction=0.001)


def test_no_cold_test_target_is_config_error():
    # 20 items, one held out; only 2 of them are test targets, so most seeds hold out a non-target.
    rows = [[3, 4, 5, 6, 1], [7, 8, 9, 10, 2]] + [[i] for i in range(11, 21)]
    users = [u for u, r in enumerate(rows) for _ in r]
    ds = prepare(pa.table({"user": users, "item": [i for r in rows for i in r],
                           "timestamp": np.arange(len(users))}), name="tiny")
    raised = 0
    for seed in range(20):
        try:
            sp = cold_start_split(ds, fraction=0.05, seed=seed)
        except ConfigError as e:
            assert "no test case has a held-out target" in str(e) and "fraction=0.05" in str(e)
            raised += 1
        else:
            assert sp.test_cold.sum() == 1
    assert 0 < raised < 20
