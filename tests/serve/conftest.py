"""Fixtures shared by the serving tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from tests.serve.test_bundle import tiny

from genrec.serve import export_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles of one tiny trained run (a reload target for the other)."""
    root = tmp_path_factory.mktemp("bundles")
    _, run = tiny(root)
    return export_bundle(run, root / "bundle-a"), export_bundle(run, root / "bundle-b")


@contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port in a background thread; yields its base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if srv.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)


@contextmanager
def headless_page(sync_api, binary: str):
    """A page of a headless system Chromium (skips the test when the browser cannot start), closed afterwards."""
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=binary, headless=True)
        except Exception as e:  # noqa: BLE001 - a browser that cannot start is the machine's problem
            pytest.skip(f"Chromium at {binary} did not start: {e}")
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()
