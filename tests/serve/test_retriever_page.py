"""The web page's retriever switch, in headless Chromium: hidden for a one-model bundle; for a bundle with the ID
model and a query-conditioned generator it switches the list between them, and with the generator selected the
query box conditions the generator's decoding (mode generator + query (conditioned))."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from tests.serve.conftest import headless_page, live_server  # noqa: E402
from tests.serve.test_retriever_switch import FakeEncoder, built  # noqa: E402, F401
from tests.serve.test_web_page import browser_stack  # noqa: E402, F401

import genrec.content.query as query_module  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402


def test_switch_between_the_id_model_and_the_conditioned_generator(browser_stack, built, tmp_path,  # noqa: F811
                                                                   monkeypatch):
    sync_api, binary = browser_stack
    expect = sync_api.expect
    _, _, vectors, bundle = built
    app = create_app(Settings(bundle=bundle, store=str(tmp_path / "h.sqlite")))
    rec = app.state.serving.current()
    monkeypatch.setattr(query_module, "text_encoder", lambda name, **kw: FakeEncoder(vectors[rec.index["9"]]))
    with live_server(app) as url, headless_page(sync_api, binary) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.fill("#ids", "3, 4, 5")
        page.click("#add-ids")
        expect(page.locator("#history li")).to_have_count(3)
        expect(page.locator("#retriever-box")).to_be_visible()
        expect(page.locator("#retriever option")).to_have_count(2)
        expect(page.locator("#mode")).to_have_text("model")
        model_list = page.locator("#recs li").evaluate_all("rows => rows.map(r => r.dataset.itemId)")

        page.select_option("#retriever", "generator")
        expect(page.locator("#mode")).to_have_text("generator")
        generated = page.locator("#recs li").evaluate_all("rows => rows.map(r => r.dataset.itemId)")
        expected = [r["item_id"] for r in rec.recommend(["3", "4", "5"], k=10, retriever="generator").items]
        assert generated == expected and generated != model_list

        page.fill("#query", "a pink lipstick")
        page.click("#apply-query")
        expect(page.locator("#mode")).to_have_text("generator + query (conditioned)")
        expect(page.locator("#retriever-note")).to_contain_text("conditioned on the query")
        prompted = rec.recommend(["3", "4", "5"], k=10, retriever="generator", query="a pink lipstick")
        expect(page.locator("#recs li").first).to_have_attribute("data-item-id", prompted.items[0]["item_id"])

        page.select_option("#retriever", "model")
        expect(page.locator("#mode")).to_have_text("model + query (blended)")
        expect(page.locator("#retriever-note")).to_contain_text("re-weights")
        assert not errors
