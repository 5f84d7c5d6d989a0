"""Checks on the real public datasets; skipped (never failed) when GENREC_DATA_DIR has no copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from genrec.data import get_builtin, leave_one_out, load_dataset, verify

pytestmark = pytest.mark.realdata

COUNTS = {
    "movielens-1m": (6040, 3416, 999611),
    "amazon-beauty": (22363, 12101, 198502),
    "microlens-50k": (50000, 19220, 359708),
    "movielens-100k": (943, 1682, 100000),
}


def need(name: str) -> None:
    """Skip unless GENREC_DATA_DIR is set and holds every required file of the built-in dataset ``name``."""
    env = os.environ.get("GENREC_DATA_DIR", "").strip()
    if not env:
        pytest.skip("GENREC_DATA_DIR is not set")
    ds = get_builtin(name)
    if not (Path(env).expanduser() / ds.folder).is_dir() or not ds.available():
        pytest.skip(f"no copy of {name} under GENREC_DATA_DIR={env}")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts(name):
    need(name)
    ds = load_dataset(name)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == COUNTS[name]
    assert get_builtin(name).expected == dict(zip(("users", "items", "interactions"), COUNTS[name], strict=True))
    assert ds.sequences.values.min() >= 1 and ds.sequences.values.max() == ds.n_items


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_verify_pinned_files(name):
    need(name)
    builtin = get_builtin(name)
    status = verify(builtin)
    for f in builtin.files:
        if f.sha256 is not None and status[f.path] != "missing":
            assert status[f.path] == "ok", (f.path, status[f.path])
    assert all(status[f.path] == "ok" for f in builtin.files if f.required and f.sha256 is not None)


def test_movielens_1m_titles():
    need("movielens-1m")
    ds = load_dataset("movielens-1m")
    titles = ds.item_titles()
    if titles is None:
        pytest.skip("movies.dat is not in this copy")
    assert titles[0] == ""
    assert titles[1] == "Raiders of the Lost Ark (1981)"
    assert ds.items.decode(np.array([1])) == [1198]
    assert len(titles) == ds.n_items + 1


def test_microlens_titles_join():
    need("microlens-50k")
    titles = load_dataset("microlens-50k").item_titles()
    if titles is None:
        pytest.skip("titles file is not in this copy")
    assert sum(bool(t) for t in titles[1:]) > 0.9 * (len(titles) - 1)


def test_movielens_1m_leave_one_out():
    need("movielens-1m")
    ds = load_dataset("movielens-1m")
    split = leave_one_out(ds)
    assert len(split.valid) == len(split.test) == ds.n_users  # every ML-1M user has >= 5 ratings
    assert split.train.lengths.sum() == ds.n_interactions - 2 * ds.n_users
