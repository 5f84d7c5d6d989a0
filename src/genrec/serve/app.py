"""The HTTP API (FastAPI): recommendations from a bundle, live user events, similar items, health, Prometheus
metrics and atomic model reloads.

One :class:`Serving` object holds the current :class:`~genrec.serve.recommender.Recommender` and the history
store. A request takes a reference to the recommender when it starts, so a reload never disturbs requests in
flight: they finish on the old model while new ones get the new one, and a bundle that fails to load leaves
the old one serving. Under ``genrec serve`` (``app_from_env``), SIGHUP reloads the bundle path the server was
started with (GENREC_SERVE_BUNDLE) the same way.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

try:
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None

from genrec.experiment.serving import ExperimentServer, answer_fields, serve_plain
from genrec.serve.batching import BatchWorker
from genrec.serve.page import ItemIdParam, add_page_routes
from genrec.serve.recommender import Recommender
from genrec.serve.schemas import (
    EventsRequest,
    EventsResponse,
    Health,
    Readiness,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SimilarResponse,
    answers,
)
from genrec.serve.store import Event, HistoryStore, open_store

log = logging.getLogger(__name__)
# The event loop shares the interpreter lock with the threads of sync endpoints and of the exposure log: a short
# switch interval hands it back to the loop soon, instead of after the default interval (5 ms) of their Python.
SWITCH_INTERVAL_S = 0.0005
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/openapi.json", "/redoc")
BODY_ERRORS = (400, 401, 413, 422)  # what an operation with a JSON body can answer besides its own errors
DESCRIPTION = (
    "Generative recommendation: recommendations, live events, similar items. Every 4xx answer is an `ErrorBody`. "
    f"With an API key (`genrec serve --api-key`), every operation but {', '.join(OPEN_PATHS[:3])} needs "
    "`Authorization: Bearer <key>` (else 401). Any request whose body is over the size limit "
    "(`--max-body-bytes`; {limit} bytes here) gets 413.")


# --- state ----------------------------------------------------------------------------------------------

@dataclass
class Settings:
    bundle: Path
    store: str | None = None  # SQLite path or redis:// URL; default: history.sqlite next to the bundle
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    deadline_ms: float | None = 200.0
    max_events: int = 200
    freeze_gc: bool = False  # genrec serve: see freeze_gc()
    experiment: Path | None = None  # an experiment file (genrec.experiment.serving)
    exposure_log: bool | None = None  # log every answer durably; None: only while an experiment file is loaded


REFREEZE_S = 30.0  # after a reload, the old model is collected and the heap frozen again this much later


def freeze_gc() -> None:
    """Collect, then freeze what is alive (the app, the models, the catalog: gc.freeze), so that a full collection
    scans only what was made since instead of pausing every request while it walks the whole heap."""
    gc.collect()
    gc.freeze()


class Serving:
    """The current model, the history store and the metrics of one process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: HistoryStore = open_store(settings.store, settings.bundle.parent / "history.sqlite",
                                              settings.max_events)
        self._lock = threading.Lock()
        self._refreeze: threading.Timer | None = None
        self.recommender = Recommender.load(settings.bundle)
        self.experiment = ExperimentServer.load(settings.experiment, store=self.store, default=self.recommender
                                                ) if settings.experiment else None
        # exposures of concurrent answers share one durable commit (group commit), off the event loop
        self.exposure_log = BatchWorker(self.store.log_exposures, 256, "genrec-exposures")
        self.logs_exposures = settings.exposure_log if settings.exposure_log is not None else bool(settings.experiment)
        self.ready = False
        self.registry = CollectorRegistry()
        self.requests = Counter("genrec_requests_total", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("genrec_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.fallbacks = Counter("genrec_fallbacks_total", "Answers from the popularity fallback", ["reason"],
                                 registry=self.registry)
        self.model_info = Gauge("genrec_model_info", "The bundle being served", ["version", "model", "dataset"],
                                registry=self.registry)
        self._set_model_info()

    def current(self) -> Recommender:
        return self.recommender  # one attribute read: atomic, so a request sees the old or the new model

    def warm_up(self) -> None:
        """One recommendation through the model, so the first real request pays no lazy-initialisation cost."""
        rec = self.current()
        rec.recommend(rec.popular_ids(1), k=1)
        self.ready = True

    def reload(self, bundle: Path) -> Recommender:
        """Load ``bundle`` fully (checksums verified) before swapping; on any error the old model keeps serving."""
        fresh = Recommender.load(bundle)
        fresh.recommend(fresh.popular_ids(1), k=1)
        with self._lock:
            self.recommender = fresh
            self.settings.bundle = Path(bundle)
            self._set_model_info()
        if self.settings.freeze_gc:  # the old model was frozen: let the collector free it once requests are done
            gc.unfreeze()
            with self._lock:
                if self._refreeze is not None:
                    self._refreeze.cancel()  # one pending freeze, after the latest reload
                self._refreeze = threading.Timer(REFREEZE_S, freeze_gc)
                self._refreeze.daemon = True
                self._refreeze.start()
        return fresh

    def _set_model_info(self) -> None:
        m = self.recommender.manifest
        self.model_info.clear()
        self.model_info.labels(m.get("version", "?"), m.get("model", "?"), m.get("dataset", "?")).set(1)


# --- the app --------------------------------------------------------------------------------------------

def create_app(settings: Settings, warm_up: bool = True) -> FastAPI:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    serving = Serving(settings)
    app = FastAPI(title="genrec", version=serving.current().version,
                  description=DESCRIPTION.format(limit=settings.max_body_bytes))
    app.state.serving = serving

    app.add_middleware(_Guard, settings=settings, serving=serving)
    app.openapi = lambda: _openapi(app, bool(settings.api_key))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc starts with where (body, query, path): the field is what follows, or the whole body
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
                  for e in exc.errors()]
        return _error(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def failed(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    async def state() -> Serving:  # async: a sync dependency would cost a thread hop per request
        return serving

    @app.get("/healthz", response_model=None, responses=answers(Health))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None,
             responses={**answers(Readiness), 503: {"model": Readiness, "description": "Still warming up."}})
    def readyz(s: Serving = Depends(state)) -> Response:
        if not s.ready:
            return JSONResponse({"status": "warming up"}, 503)
        return JSONResponse({"status": "ready", "model_version": s.current().version})

    @app.get("/metrics", response_class=Response,
             responses=answers(None, 401, media={"text/plain": {"type": "string"}}))
    def metrics(s: Serving = Depends(state)) -> Response:
        """Prometheus metrics, in its text exposition format."""
        return Response(generate_latest(s.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/recommend", response_model=None, responses=answers(RecommendResponse, *BODY_ERRORS))
    async def recommend(body: RecommendRequest, s: Serving = Depends(state)) -> Response:
        # async: the checks, the model (batched with the loop's concurrent requests: Recommender.recommend_async)
        # and the answer all run on the event loop's thread, with no thread hand-over per request
        rec, experiment = s.current(), s.experiment
        warnings: list[str] = []
        history, timestamps, actions, contexts = body.history or [], body.timestamps, body.actions, body.history_context
        if body.user_id is not None:  # the store may wait on a write's fsync: not on the event loop
            needed = experiment.history_needed(rec) if experiment else rec.history_needed
            events = await run_in_threadpool(s.store.history, body.user_id, limit=needed)
            if not events:
                warnings.append(f"unknown user {body.user_id!r}: cold-start answer")
            history = [e.item_id for e in events]
            timestamps = [e.timestamp for e in events] if events and all(e.timestamp is not None
                                                                          for e in events) else None
            actions = [e.actions for e in events]
            contexts = [e.context for e in events]
        def run(model: Recommender, k: int, ranker_weight: float | None, only: list[str] | None = None) -> Any:
            allow = body.allow if only is None else only if body.allow is None else list(set(only) & set(body.allow))
            return model.recommend_async(
                history, k=k, timestamps=timestamps, exclude_seen=body.exclude_seen, allow=allow,
                deny=body.deny, query=body.query, deadline_ms=s.settings.deadline_ms, actions=actions,
                user_id=body.user_id, strict_actions=body.user_id is None, history_context=contexts,
                context=body.context, ranker_weight=ranker_weight, retriever=body.retriever)

        request_id = uuid.uuid4().hex
        try:
            served = await (experiment.serve(rec, run, body.k, request_id, body.user_id, history) if experiment
                            else serve_plain(rec, run, body.k, request_id, body.user_id))
        except ValueError as e:  # e.g. a signal the bundle's ranker does not read
            raise HTTPException(422, str(e)) from None
        # Durable before the 2xx: an answer the client saw is always in the log. A lone exposure commits here (no
        # hop to the log's thread and back); concurrent ones share one commit on that thread.
        if s.logs_exposures and not s.exposure_log.run_if_idle(served.exposure):
            await asyncio.wrap_future(s.exposure_log.submit(served.exposure))
        result = served.result
        if result.fallback:
            s.fallbacks.labels(result.reason or "no usable history").inc()
        return _json({"user_id": body.user_id, "items": result.items, "model_version": served.exposure.model_version,
                      "fallback": result.fallback, "reason": result.reason, "mode": result.mode,
                      "warnings": warnings + result.warnings, "retrievers": rec.retrievers, **answer_fields(served)})

    @app.post("/v1/events", response_model=None, responses=answers(EventsResponse, *BODY_ERRORS))
    def events(body: EventsRequest, s: Serving = Depends(state)) -> dict[str, Any]:
        rec = s.current()
        known = [i for i in body.items if rec.knows(i)]
        warnings = [f"unknown item id {i!r} stored but not used by this model" for i in body.items
                    if not rec.knows(i)]
        ts = body.timestamps or [None] * len(body.items)
        actions = body.actions or [None] * len(body.items)
        contexts = body.context or [None] * len(body.items)
        if rec.ranker is not None:
            try:  # before anything is stored: a signal or context the ranker cannot read is an error now, not later
                rec.ranker.encode_actions(actions)
                rec.ranker.encode_context(contexts)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        length = s.store.append(body.user_id, [Event(*e) for e in zip(body.items, ts, actions, contexts, strict=True)],
                                request_id=body.request_id)
        if s.experiment is not None:  # first sightings of items, for fresh-content arms
            s.experiment.saw(body.items)
        return {"user_id": body.user_id, "stored": len(body.items), "known": len(known),
                "history_length": length, "warnings": warnings}

    @app.get("/v1/items/{item_id}/similar", response_model=None, responses=answers(SimilarResponse, 401, 404, 422))
    def similar(item_id: ItemIdParam, k: Annotated[int, Query(ge=1, le=1000)] = 10,
                s: Serving = Depends(state)) -> dict[str, Any]:
        rec = s.current()
        try:
            items = rec.similar(item_id, k=k)
        except KeyError:
            raise HTTPException(404, f"unknown item id {item_id!r}") from None
        return {"item_id": item_id, "items": items, "model_version": rec.version}

    @app.post("/admin/reload", response_model=None, responses=answers(ReloadResponse, *BODY_ERRORS, 409))
    def reload(body: ReloadRequest, s: Serving = Depends(state)) -> dict[str, Any]:
        old = s.current().version
        try:
            fresh = s.reload(Path(body.bundle))
        except Exception as e:  # noqa: BLE001 - any failure keeps the old model serving
            raise HTTPException(409, f"bundle {body.bundle!r} not loaded ({e}); still serving {old}") from None
        return {"previous_version": old, "model_version": fresh.version}

    add_page_routes(app, serving)
    if warm_up:
        serving.warm_up()
    if settings.freeze_gc:
        freeze_gc()
    return app


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """Every 4xx answer: :class:`~genrec.serve.schemas.ErrorBody`."""
    return JSONResponse({"detail": detail, "errors": errors or []}, status, headers=headers)


def _openapi(app: FastAPI, key_required: bool) -> dict[str, Any]:
    """FastAPI's schema with the bearer token (required by every operation but the open paths when the server
    has a key, else optional: the server then ignores it), and without the 422 answer FastAPI adds to routes
    that declare none (every route that can answer 422 declares it, with :class:`ErrorBody`)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in schema["paths"].items():
            for op in operations.values():
                if "HTTPValidationError" in json.dumps(op["responses"].get("422", {})):
                    del op["responses"]["422"]
                if path not in OPEN_PATHS:
                    op["security"] = [{"bearer": []}] if key_required else [{}, {"bearer": []}]
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
    return app.openapi_schema


def _json(content: dict[str, Any]) -> Response:
    """A JSON answer of plain Python values, encoded once (FastAPI would walk it with jsonable_encoder first), by
    orjson when it is installed (the serve extra), an order of magnitude faster than the json module."""
    if orjson is not None:
        return Response(orjson.dumps(content), media_type="application/json")
    return Response(json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
                    media_type="application/json")


class _Guard:
    """Body-size limit, API key and per-endpoint metrics, as a plain ASGI middleware (Starlette's
    BaseHTTPMiddleware would run every request through extra tasks and memory streams)."""

    def __init__(self, app: Any, settings: Settings, serving: Serving):
        self.app, self.settings, self.serving = app, settings, serving

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, settings = time.perf_counter(), self.settings
        headers = Headers(scope=scope)
        size = headers.get("content-length")
        endpoint, status = "rejected", 500  # a fixed label: raw paths would make the label set unbounded
        try:
            if size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
                status = 413
                await _error(413, f"request body over the {settings.max_body_bytes}-byte limit")(scope, receive, send)
            elif settings.api_key and scope["path"] not in OPEN_PATHS and not _authorised(headers, settings.api_key):
                status = 401
                await _error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send)
            else:
                received = 0

                async def counted() -> dict:  # a body without content-length (chunked) is capped as it arrives
                    nonlocal received
                    message = await receive()
                    received += len(message.get("body", b""))
                    if received > settings.max_body_bytes:
                        raise HTTPException(413, f"request body over the {settings.max_body_bytes}-byte limit")
                    return message

                async def record(message: dict) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                try:
                    await self.app(scope, counted, record)
                finally:
                    route = scope.get("route")
                    endpoint = route.path if route is not None else "unmatched"
        finally:
            self.serving.requests.labels(endpoint, str(status)).inc()
            self.serving.latency.labels(endpoint).observe(time.perf_counter() - start)


def _authorised(headers: Headers, key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())


def reload_from_env(serving: Serving) -> bool:
    """Reload the bundle at GENREC_SERVE_BUNDLE (what SIGHUP does); on failure log it and keep the old model."""
    path, old = os.environ.get("GENREC_SERVE_BUNDLE", ""), serving.current().version
    try:
        if not path:
            raise ValueError("GENREC_SERVE_BUNDLE is not set")
        fresh = serving.reload(Path(path))
    except Exception as e:  # noqa: BLE001 - any failure keeps the old model serving
        log.error("SIGHUP: bundle %r not loaded (%s: %s); still serving %s", path, type(e).__name__, e, old)
        return False
    log.info("SIGHUP: reloaded %s: serving %s (was %s)", path, fresh.version, old)
    return True


def install_reload_signal(serving: Serving) -> bool:
    """SIGHUP -> :func:`reload_from_env` in a background thread (loading never blocks the event loop). Only the
    main thread can install handlers; returns whether it was installed."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(
        target=reload_from_env, args=(serving,), name="genrec-sighup-reload", daemon=True).start())
    return True


def app_from_env() -> FastAPI:
    """The app uvicorn workers build (``genrec serve`` passes its options through GENREC_SERVE_* variables); it
    also reloads its bundle on SIGHUP."""
    env = os.environ
    deadline = env.get("GENREC_SERVE_DEADLINE_MS", "200")
    torch.set_num_threads(int(env.get("GENREC_SERVE_TORCH_THREADS", "1")))
    genrec_log = logging.getLogger("genrec")
    if not genrec_log.handlers:  # genrec's messages (reloads, fallbacks) go where uvicorn's go
        genrec_log.handlers = list(logging.getLogger("uvicorn").handlers)
        genrec_log.setLevel(logging.INFO)
    app = create_app(Settings(
        bundle=Path(env["GENREC_SERVE_BUNDLE"]), store=env.get("GENREC_SERVE_STORE") or None,
        api_key=env.get("GENREC_API_KEY") or None,
        max_body_bytes=int(env.get("GENREC_SERVE_MAX_BODY", str(1 << 20))),
        deadline_ms=float(deadline) if deadline not in ("", "none") else None,
        max_events=int(env.get("GENREC_SERVE_MAX_EVENTS", "200")), freeze_gc=True,
        experiment=Path(env["GENREC_SERVE_EXPERIMENT"]) if env.get("GENREC_SERVE_EXPERIMENT") else None,
        exposure_log={"1": True, "0": False}.get(env.get("GENREC_SERVE_EXPOSURE_LOG", ""))))
    install_reload_signal(app.state.serving)
    return app
