"""The web page's experiment view in headless Chromium: under an experiment it draws each arm's metric and the
difference over time as SVG lines with their always-valid bands; without one the section stays hidden."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from tests.experiment.test_report_cli import fill, write_experiment  # noqa: E402
from tests.serve.conftest import bundles, headless_page, live_server  # noqa: E402,F401 - bundles: the fixture
from tests.serve.test_web_page import browser_stack  # noqa: E402,F401 - the fixture

from genrec.serve.app import Settings, create_app  # noqa: E402
from genrec.serve.store import SQLiteStore  # noqa: E402


def test_the_page_draws_the_running_experiment(browser_stack, bundles, tmp_path):  # noqa: F811
    sync_api, binary = browser_stack
    expect = sync_api.expect
    db = tmp_path / "h.sqlite"
    path = write_experiment(tmp_path)
    store = SQLiteStore(db)
    fill(store, path, [f"u{i}" for i in range(160)], {"control": 0.1, "better": 0.4})  # past the bands' burn-in
    store.close()
    app = create_app(Settings(bundle=bundles[0], store=str(db), experiment=path))
    with live_server(app) as url, headless_page(sync_api, binary) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        expect(page.locator("#experiment")).to_be_visible()
        expect(page.locator("#experiment-name")).to_have_text("exp (ab)")
        expect(page.locator("#experiment-arms polyline.line")).to_have_count(2)
        expect(page.locator("#experiment-arms polygon.band")).to_have_count(2)
        expect(page.locator("#experiment-diffs polyline.line")).to_have_count(1)
        expect(page.locator("#experiment-diffs polygon.band")).to_have_count(1)
        expect(page.locator("#experiment-summary")).to_contain_text("better − control")
        assert page.locator("#experiment-arms polyline.line").first.get_attribute("data-series") == "control"
        assert errors == []


def test_without_an_experiment_the_view_stays_hidden(browser_stack, bundles, tmp_path):  # noqa: F811
    sync_api, binary = browser_stack
    app = create_app(Settings(bundle=bundles[0], store=str(tmp_path / "h.sqlite")))
    with live_server(app) as url, headless_page(sync_api, binary) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        sync_api.expect(page.locator("#recs li")).to_have_count(10)
        sync_api.expect(page.locator("#experiment")).to_be_hidden()
        assert errors == []
