"""``genrec serve``: the HTTP API over a bundle (FastAPI + uvicorn, extra ``serve``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from genrec.errors import ConfigError

LOCAL = ("127.0.0.1", "localhost", "::1")


def serve_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by 'genrec export'.")],
    host: Annotated[str, typer.Option(help="Interface to bind; anything but localhost needs an API key.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the bundle).", min=1)] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="GENREC_API_KEY", help="Bearer token required on every "
                                                "endpoint but the health checks (env GENREC_API_KEY).")] = None,
    store: Annotated[str | None, typer.Option(help="History store: a SQLite file (default: history.sqlite next "
                                              "to the bundle).")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Keep user histories in Redis instead (redis://...).")
                         ] = None,
    max_events: Annotated[int, typer.Option(help="Events kept per user.", min=1)] = 200,
    max_body_bytes: Annotated[int, typer.Option(help="Larger request bodies get 413.", min=1)] = 1 << 20,
    deadline_ms: Annotated[float, typer.Option(help="Per-request model deadline; past it the popularity "
                                               "fallback answers (0 = none).", min=0)] = 200.0,
    torch_threads: Annotated[int, typer.Option(help="torch threads per worker. 1 (the default) runs each request "
                                               "on one core and serves concurrent requests side by side; more "
                                               "threads per request oversubscribe the cores under load.", min=1)
                             ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn's access log).")] = True,
    experiment: Annotated[Path | None, typer.Option(envvar="GENREC_SERVE_EXPERIMENT", help="Run this experiment "
                                                    "file (A/B or interleaving arms; env GENREC_SERVE_EXPERIMENT); "
                                                    "every answer is logged to the store's exposure log.")] = None,
    exposure_log: Annotated[bool | None, typer.Option("--exposure-log/--no-exposure-log", help="Log what every "
                                                      "answer showed, durably, in the store (request id, items, "
                                                      "arm, propensities). Default: on while --experiment runs, "
                                                      "else off (each logged answer costs a durable write).")
                            ] = None,
) -> None:
    """Serve recommendations over HTTP: POST /v1/recommend and /v1/events, GET /v1/items/{id}/similar, /healthz,
    /readyz, /metrics, POST /admin/reload, OpenAPI docs at /docs."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("genrec serve needs the serving extra: pip install 'genrec[serve]'") from None
    from genrec.serve.bundle import load_manifest

    if host not in LOCAL and not api_key:
        raise ConfigError(f"--host {host}: binding beyond localhost needs --api-key (or GENREC_API_KEY)")
    if store and redis_url:
        raise ConfigError("give --store or --redis-url, not both")
    load_manifest(bundle)  # fail here, with the bundle's own error, before any worker starts
    if experiment is not None:
        from genrec.experiment.config import load_experiment

        load_experiment(experiment)  # a bad file: its error now, not one per worker
        os.environ["GENREC_SERVE_EXPERIMENT"] = str(experiment.absolute())
    else:
        os.environ.pop("GENREC_SERVE_EXPERIMENT", None)
    os.environ.update({"GENREC_SERVE_BUNDLE": str(bundle.absolute()), "GENREC_SERVE_STORE": redis_url or store or "",
                       "GENREC_SERVE_MAX_BODY": str(max_body_bytes), "GENREC_SERVE_MAX_EVENTS": str(max_events),
                       "GENREC_SERVE_DEADLINE_MS": str(deadline_ms) if deadline_ms else "none",
                       "GENREC_SERVE_TORCH_THREADS": str(torch_threads),
                       "GENREC_SERVE_EXPOSURE_LOG": "" if exposure_log is None else str(int(exposure_log))})
    if api_key:
        os.environ["GENREC_API_KEY"] = api_key
    # Workers load the bundle before they answer; give them longer than uvicorn's 5 s on a busy machine.
    options = {"factory": True, "host": host, "port": port, "workers": workers, "log_level": "info",
               "timeout_worker_healthcheck": 60, "access_log": access_log}
    if workers == 1:
        uvicorn.run("genrec.serve.app:app_from_env", **options)
        return
    config = uvicorn.Config("genrec.serve.app:app_from_env", **options)
    in_place_reloads()(config, sockets=[listen_socket(host, port)]).run()


def in_place_reloads() -> type:
    """uvicorn's worker supervisor, except that SIGHUP reloads the bundle inside every worker (each worker's own
    SIGHUP handler swaps the model atomically) instead of restarting the worker processes: a restart closes
    the keep-alive connections of the old worker, and a request racing that close fails."""
    from uvicorn.supervisors import Multiprocess

    class InPlaceReload(Multiprocess):
        def handle_hup(self) -> None:
            logging.getLogger("uvicorn.error").info("Received SIGHUP: reloading the bundle in every worker.")
            for worker in self.processes:
                if worker.process.pid is not None and worker.process.is_alive():
                    os.kill(worker.process.pid, signal.SIGHUP)

    return InPlaceReload


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket for several workers. uvicorn's own creates it with protocol 0, so asyncio never
    sets TCP_NODELAY on the accepted connections and every keep-alive response waited ~40 ms for the client's
    delayed ACK; this one is the same bind with IPPROTO_TCP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
