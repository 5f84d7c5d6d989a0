"""The demo web page (``GET /``) and the small API it reads beyond recommendations: title search, a user's stored
history, and catalog images on local disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response

from genrec.serve.catalog import Column
from genrec.serve.recommender import Recommender
from genrec.serve.schemas import ExperimentTimeline, SearchResponse, UserHistoryResponse, answers

if TYPE_CHECKING:
    from genrec.serve.app import Serving

ItemIdParam = Annotated[str, PathParam(max_length=200)]  # as long as an item id a body may hold

STATIC = Path(__file__).parent / "static"
BLANKS = " \t\n\r\f\v"  # what search strips from q (one explicit set: every regex engine reads it alike)
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp", ".avif": "image/avif"}  # no SVG: it can hold scripts


def add_page_routes(app: FastAPI, serving: Serving) -> None:
    """``GET /``: a small demo page (static/index.html; open without the key, which it asks for and sends), and
    what it reads beyond the API: title search, a user's stored history, and catalog images on local disk."""
    searchable: dict[str, Any] = {}  # (recommender, dense ids by popularity, their titles), built on first search

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        """The demo page (open without the key; it asks for the key and sends it)."""
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/items/search", response_model=None, responses=answers(SearchResponse, 401, 422))
    def search(q: Annotated[str, Query(min_length=1, max_length=200, pattern=f"[^{BLANKS}]")],
               k: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
        """Items whose title holds ``q`` (case-insensitive, without its leading and trailing blanks; an item whose
        id is ``q`` comes first), most popular first. Catalogs without titles are searched by item id."""
        text = q.strip(BLANKS)
        rec = serving.current()
        built = searchable.get("current")
        if built is None or built[0] is not rec:  # one tuple, swapped whole: a reload rebuilds it
            titles = rec.display.get("title") or rec.raw_ids
            order = np.asarray(rec.popular, dtype=np.int64)
            values = titles.values if isinstance(titles, Column) else pa.array(list(titles))
            # one Arrow take in popularity order: no Python object per catalog item
            built = rec, order, pc.cast(values.take(pa.array(order - 1)), pa.large_string())
            searchable["current"] = built
        _, order, titles = built
        hits = pc.fill_null(pc.match_substring(titles, text, ignore_case=True), False).to_numpy(zero_copy_only=False)
        dense = order[np.flatnonzero(hits)[:k]].tolist()
        exact = rec.index.get(text)
        if exact is not None:
            dense = [exact] + [i for i in dense if i != exact][:k - 1]
        return {"q": text, "items": [_item_row(rec, i) for i in dense], "model_version": rec.version}

    @app.get("/v1/users/{user_id}/history", response_model=None, responses=answers(UserHistoryResponse, 401, 422))
    def history(user_id: Annotated[str, PathParam(max_length=200)]) -> dict[str, Any]:
        """The stored history, oldest first, with display fields; ``known: false`` for ids this model lacks."""
        rec = serving.current()
        items = []
        for e in serving.store.history(user_id):
            i = rec.index.get(e.item_id)
            row = _item_row(rec, i) if i is not None else {"item_id": e.item_id}
            items.append({**row, "timestamp": e.timestamp, "actions": e.actions, "context": e.context,
                          "known": i is not None})
        return {"user_id": user_id, "items": items, "model_reads": rec.max_history, "model_version": rec.version}

    @app.get("/v1/experiment/timeline", response_model=None, responses=answers(ExperimentTimeline, 401, 404, 422))
    def experiment_timeline(points: Annotated[int, Query(ge=2, le=200)] = 40) -> dict[str, Any]:
        """The running experiment's metric per arm over time with always-valid bands, from the exposure log and
        the events tied to it (genrec.experiment.timeline); 404 when the server runs no experiment."""
        from genrec.experiment.timeline import finite, timeline

        if serving.experiment is None:
            raise HTTPException(404, "this server runs no experiment (genrec serve --experiment FILE)")
        store = serving.store
        return finite(timeline(serving.experiment.experiment, store.exposures(), store.engagements(), points))

    @app.get("/v1/items/{item_id}/image", response_class=Response,
             responses=answers(None, 401, 404, 422, media={t: {"type": "string", "format": "binary"}
                                                      for t in sorted(set(IMAGE_TYPES.values()))}))
    def image(item_id: ItemIdParam) -> FileResponse:
        """The item's cover image, when a catalog column holds a path to an image file on this machine
        (relative paths: under the bundle's folder). Only paths the catalog lists are served; else 404."""
        path = _local_image(serving.current(), item_id, serving.settings.bundle)
        if path is None:
            raise HTTPException(404, f"no local image for item {item_id!r}")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})


def _item_row(rec: Recommender, i: int) -> dict[str, Any]:
    """Dense id ``i`` as the API shows an item: its raw id and display fields."""
    return {"item_id": rec.raw_ids[i - 1], **{k: v[i - 1] for k, v in rec.display.items()}}


def _local_image(rec: Recommender, item_id: str, bundle: Path) -> Path | None:
    """The first display value of the item that names an existing image file (a URL is not a local file)."""
    i = rec.index.get(item_id)
    if i is None:
        return None
    root = Path(bundle).resolve()
    for values in rec.display.values():
        value = values[i - 1]
        if not isinstance(value, str) or "://" in value or Path(value).suffix.lower() not in IMAGE_TYPES:
            continue
        raw = Path(value)
        path = raw.resolve() if raw.is_absolute() else (root / raw).resolve()
        if not raw.is_absolute() and not path.is_relative_to(root):
            continue  # a relative path must stay under the bundle's folder
        if path.is_file():
            return path
    return None
