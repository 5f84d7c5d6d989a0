"""The web page (GET /) and the endpoints it reads: title search, stored history, catalog cover images (only
files the catalog lists); then the page itself driven in headless Chromium (Playwright with a system Chromium;
skipped where either is missing)."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.serve.conftest import headless_page, live_server  # noqa: E402
from tests.serve.test_bundle import tiny  # noqa: E402

from genrec.serve import export_bundle  # noqa: E402
from genrec.serve.app import Settings, create_app  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    _, run = tiny(root)
    return run


@pytest.fixture
def bundle(run, tmp_path):
    return export_bundle(run, tmp_path / "bundle")


def client(bundle: Path, tmp_path: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(bundle=bundle, store=str(tmp_path / "history.sqlite"), **settings)))


def png(path: Path, width: int = 4, height: int = 6) -> bytes:
    """A small valid PNG (solid colour), written to ``path``; its bytes returned."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x30\x60\xc0" * width for _ in range(height))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def set_covers(c: TestClient, monkeypatch, covers: dict[str, str]) -> None:
    """Give the served catalog a 'cover' column (as if the dataset's items had one)."""
    rec = c.app.state.serving.current()
    column = [None] * rec.n_items
    for item, value in covers.items():
        column[rec.index[item] - 1] = value
    monkeypatch.setitem(rec.display, "cover", column)


# --- the endpoints (TestClient) ------------------------------------------------------------------------------

def test_page_is_served_without_the_key_and_is_self_contained(bundle, tmp_path):
    c = client(bundle, tmp_path, api_key=KEY)
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" in page and 'id="recs"' in page and "Authorization" in page
    assert "http://" not in page and "https://" not in page.replace("https?:", "")  # nothing from a CDN
    documented = c.get("/openapi.json", headers=AUTH).json()["paths"]["/"]["get"]  # open, and an HTML answer
    assert "security" not in documented and list(documented["responses"]["200"]["content"]) == ["text/html"]
    for path in ("/v1/items/search?q=movie", "/v1/users/u/history", "/v1/items/3/image"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers=AUTH).status_code != 401


def test_search_titles(bundle, tmp_path):
    c = client(bundle, tmp_path)
    rec = c.app.state.serving.current()
    body = c.get("/v1/items/search", params={"q": "  mOVIE 1"}).json()
    found = [i["item_id"] for i in body["items"]]
    assert sorted(found) == ["1", "10", "11", "12"] and body["model_version"] == rec.version
    assert found == [i for i in rec.popular_ids(rec.n_items) if i in found]  # most popular first
    assert all(i["title"] == f"Movie {i['item_id']}" for i in body["items"])
    assert len(c.get("/v1/items/search", params={"q": "movie", "k": 3}).json()["items"]) == 3
    exact = [i["item_id"] for i in c.get("/v1/items/search", params={"q": "1", "k": 3}).json()["items"]]
    assert exact[0] == "1" and len(exact) == 3 and set(exact) < {"1", "10", "11", "12"}  # the exact id first
    assert c.get("/v1/items/search", params={"q": "no such film"}).json()["items"] == []
    assert c.get("/v1/items/search", params={"q": "%_*"}).json()["items"] == []  # literal, not a pattern
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "movie", "k": 0}, {"q": "movie", "k": 101},
                   {"q": "x" * 201}):
        r = c.get("/v1/items/search", params=params)
        assert r.status_code == 422, params
    assert "q" in c.get("/v1/items/search", params={"q": " "}).json()["detail"]


def test_history_with_display_fields(bundle, tmp_path):
    c = client(bundle, tmp_path)
    empty = c.get("/v1/users/nobody/history").json()
    assert empty["items"] == [] and empty["user_id"] == "nobody" and empty["model_reads"] == 6
    c.post("/v1/events", json={"user_id": "ann", "items": ["3", "nope", "5"], "timestamps": [10, 20, 30]})
    items = c.get("/v1/users/ann/history").json()["items"]
    assert [(i["item_id"], i["known"], i["timestamp"]) for i in items] == [("3", True, 10), ("nope", False, 20),
                                                                          ("5", True, 30)]
    assert items[0]["title"] == "Movie 3" and "title" not in items[1]
    assert c.get(f"/v1/users/{'u' * 201}/history").status_code == 422


def test_images_only_from_catalog_paths(bundle, tmp_path, monkeypatch):
    c = client(bundle, tmp_path, api_key=KEY)
    absolute = png(tmp_path / "covers" / "3.png")
    relative = png(bundle / "covers" / "4.png", 2, 2)
    png(tmp_path / "outside.png")
    (tmp_path / "secret.txt").write_text("not an image")
    set_covers(c, monkeypatch, {"3": str(tmp_path / "covers" / "3.png"), "4": "covers/4.png",
                                "5": "../outside.png", "6": str(tmp_path / "secret.txt"),
                                "7": "https://example.com/7.jpg", "8": str(tmp_path / "missing.png")})
    r = c.get("/v1/items/3/image", headers=AUTH)
    assert r.status_code == 200 and r.content == absolute and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert c.get("/v1/items/4/image", headers=AUTH).content == relative  # relative: under the bundle's folder
    for item in ("5", "6", "7", "8", "9", "nope", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        assert c.get(f"/v1/items/{item}/image", headers=AUTH).status_code == 404, item
    assert c.get("/v1/items/3/image").status_code == 401
    # recommendations and search carry the column, so the page can show it
    found = c.get("/v1/items/search", params={"q": "3"}, headers=AUTH).json()["items"][0]
    assert found["cover"] == str(tmp_path / "covers" / "3.png")


# --- the page in a browser ---------------------------------------------------------------------------------

def chromium() -> str | None:
    for name in (os.environ.get("GENREC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture
def browser_stack():
    """Playwright's sync API and a system Chromium (Playwright's own browser download needs the internet)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium binary (install chromium, or set GENREC_CHROMIUM)")
    return sync_api, binary


@pytest.fixture
def server(bundle, tmp_path):
    """The app under uvicorn on a free localhost port, in a background thread."""
    app = create_app(Settings(bundle=bundle, store=str(tmp_path / "history.sqlite"), api_key=KEY))
    with live_server(app) as url:
        yield app, url


def test_page_in_headless_chromium(browser_stack, server, tmp_path, monkeypatch):
    sync_api, binary = browser_stack
    expect = sync_api.expect
    app, url = server
    rec = app.state.serving.current()
    png(tmp_path / "c3.png")
    column = [None] * rec.n_items
    column[rec.index["3"] - 1] = str(tmp_path / "c3.png")
    monkeypatch.setitem(rec.display, "cover", column)

    with headless_page(sync_api, binary) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        expect(page.locator("#version")).to_have_text(rec.version)
        expect(page.locator("#error")).to_contain_text("401")  # the server wants a key: the page says so
        page.fill("#api-key", KEY)
        page.click("#use-key")
        expect(page.locator("#error")).to_be_hidden()
        recs = page.locator("#recs li")
        expect(recs).to_have_count(10)

        # a user with no history: the fallback answers
        page.fill("#user-id", "alice")
        page.click("#load-user")
        expect(page.locator("#who")).to_contain_text("alice")
        expect(page.locator("#history li")).to_have_count(0)
        expect(page.locator("#fallback")).to_be_visible()
        before = recs.evaluate_all("rows => rows.map(r => r.dataset.itemId)")

        # an event from a recommended item: stored, shown in the history, and the model answers now
        first = recs.first
        added, title = first.get_attribute("data-item-id"), first.locator(".title").inner_text()
        first.locator(".add-event").click()
        expect(page.locator("#history li")).to_have_count(1)
        expect(page.locator("#history")).to_contain_text(title)
        expect(page.locator("#fallback")).to_be_hidden()
        expect(page.locator("#mode")).to_have_text("model")
        after = recs.evaluate_all("rows => rows.map(r => r.dataset.itemId)")
        assert after != before and added not in after
        assert [e.item_id for e in app.state.serving.store.history("alice")] == [added]

        # a history built in the page: search a title, add it, then typed ids (item 3 has a cover)
        page.click("#anonymous")
        expect(page.locator("#history li")).to_have_count(0)
        page.fill("#search-q", "movie 1")
        page.click("#search-btn")
        found = page.locator("#search-results li")
        expect(found).to_have_count(4)
        pick = found.first
        pick_title = pick.locator(".title").inner_text()
        assert pick_title.startswith("Movie 1")
        pick.locator(".add-found").click()
        expect(page.locator("#history li")).to_have_count(1)
        expect(page.locator("#history")).to_contain_text(pick_title)
        expect(page.locator("#fallback")).to_be_hidden()
        page.fill("#ids", "3, 4")
        page.click("#add-ids")
        expect(page.locator("#history li")).to_have_count(3)
        expect(page.locator("#history")).to_contain_text("Movie 3")
        page.wait_for_function("""() => {
            const img = document.querySelector('#history li[data-item-id="3"] img.cover');
            return img && img.complete && img.naturalWidth === 4;
        }""")
        expect(recs).to_have_count(9)  # 12 items, 3 seen

        # a steering query still gives a list (this bundle has no content embeddings: it says so)
        page.fill("#query", "space adventure")
        page.click("#apply-query")
        expect(page.locator("#warnings")).to_contain_text("query ignored")
        expect(recs).to_have_count(9)

        # errors from the API are shown on the page
        page.fill("#search-q", "x" * 201)
        page.click("#search-btn")
        expect(page.locator("#error")).to_contain_text("422: q:")
        page.fill("#api-key", "wrong")
        page.click("#use-key")
        expect(page.locator("#error")).to_contain_text("401: missing or wrong bearer token")
        assert errors == []
