"""Reload by signal: SIGHUP reloads the bundle at GENREC_SERVE_BUNDLE; a bundle that fails to load leaves the old
model serving. create_app never installs the handler (only app_from_env does)."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest

pytest.importorskip("fastapi")
from genrec.serve.app import Serving, Settings, create_app, install_reload_signal, reload_from_env  # noqa: E402


@pytest.fixture
def serving(bundles, tmp_path):
    return Serving(Settings(bundle=bundles[0], store=str(tmp_path / "history.sqlite")))


def test_reload_from_env_swaps_the_model(bundles, serving, monkeypatch, caplog):
    first = serving.current()
    monkeypatch.setenv("GENREC_SERVE_BUNDLE", str(bundles[1]))
    with caplog.at_level(logging.INFO, logger="genrec.serve.app"):
        assert reload_from_env(serving)
    assert serving.current() is not first and serving.settings.bundle == bundles[1]
    assert "reloaded" in caplog.text


@pytest.mark.parametrize("value", ["missing", ""])
def test_failed_reload_keeps_the_old_model(serving, tmp_path, monkeypatch, caplog, value):
    before = serving.current()
    monkeypatch.setenv("GENREC_SERVE_BUNDLE", str(tmp_path / value) if value else "")
    with caplog.at_level(logging.INFO, logger="genrec.serve.app"):
        assert not reload_from_env(serving)
    assert serving.current() is before
    assert "not loaded" in caplog.text and f"still serving {before.version}" in caplog.text
    assert before.recommend(["3", "4"], k=3).items  # still answers


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_handler_reloads_in_the_background(bundles, serving, monkeypatch):
    previous = signal.getsignal(signal.SIGHUP)
    try:
        create_app(Settings(bundle=bundles[0], store=str(serving.settings.bundle.parent / "h2.sqlite")),
                   warm_up=False)
        assert signal.getsignal(signal.SIGHUP) == previous  # create_app leaves signals alone
        assert install_reload_signal(serving)
        first = serving.current()
        monkeypatch.setenv("GENREC_SERVE_BUNDLE", str(bundles[1]))
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)  # what the interpreter calls on kill -HUP
        deadline = time.monotonic() + 60
        while (serving.current() is first or serving.settings.bundle != bundles[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving.current() is not first and serving.settings.bundle == bundles[1]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_handler_is_not_installed_off_the_main_thread(serving):
    result = []
    t = threading.Thread(target=lambda: result.append(install_reload_signal(serving)))
    t.start()
    t.join()
    assert result == [False]


def test_frozen_heap_is_released_on_reload_and_frozen_again(bundles, tmp_path, monkeypatch):
    """With freeze_gc (genrec serve) the loaded app is frozen out of the collector's full scans; a reload unfreezes
    it so the old model can be freed, then the heap is collected and frozen again (REFREEZE_S later)."""
    import gc
    import weakref

    import genrec.serve.app as app_module

    monkeypatch.setattr(app_module, "REFREEZE_S", 0.05)
    try:
        app = create_app(Settings(bundle=bundles[0], store=str(tmp_path / "h.sqlite"), freeze_gc=True))
        assert gc.get_freeze_count() > 0
        serving = app.state.serving
        old = weakref.ref(serving.current())
        serving.reload(bundles[1])
        assert gc.get_freeze_count() == 0  # the old model is collectable again
        for _ in range(200):
            if gc.get_freeze_count() > 0:
                break
            time.sleep(0.01)
        assert gc.get_freeze_count() > 0 and old() is None  # collected, then the heap frozen again
        assert serving.current().recommend(["3", "4"], k=3).items
    finally:
        gc.unfreeze()
