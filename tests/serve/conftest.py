"""Fixtures shared by the serving tests."""

from __future__ import annotations

import pytest
from tests.serve.test_bundle import tiny

from genrec.serve import export_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles of one tiny trained run (a reload target for the other)."""
    root = tmp_path_factory.mktemp("bundles")
    _, run = tiny(root)
    return export_bundle(run, root / "bundle-a"), export_bundle(run, root / "bundle-b")
