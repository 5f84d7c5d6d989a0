"""``genrec simulate``: simulated users drive the real HTTP server through an experiment.

The simulator seeds a fresh store with each user's real past (:mod:`genrec.experiment.response`), starts
``genrec serve --experiment FILE`` on loopback (a subprocess by default, so the server has a core of its own), and
runs ``concurrency`` clients for a bounded number of requests or minutes (``workers`` server processes, each
coalescing its concurrent requests into model batches). Each client takes a visit: a user drawn
with probability proportional to the user's real activity (heavy users return often, over several simulated days)
who asks ``POST /v1/recommend`` for ``k`` items a geometric number of times (mean ``pages``). The response model
draws clicks for the shown slots; the clicked items go back with ``POST /v1/events`` carrying the answer's
``request_id``, so they join the user's history (the next answer reads it) and the exposure log links them to the
exposure that caused them. Fresh items are kept out (``deny``) until their release time.

Written to ``out``: ``store.sqlite`` (the server's store: histories, exposure log, engagements; ``genrec experiment
report EXPERIMENT --store out/store.sqlite`` reads it), ``exposures.parquet`` (its export, one row per shown slot),
``simulation.parquet`` (one row per shown slot with the simulator's side: click probability, click, simulated day,
whether the item is fresh, request latency, and the item's creator where the bundle's items.parquet has a
``creator_col`` column, e.g. KuaiRand's ``author_id``) and ``summary.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from genrec.errors import ConfigError, GenrecError
from genrec.experiment.loopback import Client, event_loop
from genrec.experiment.response import ResponseConfig, ResponseModel

DAY = 86_400.0
READY_TIMEOUT_S = 180.0
CLIENT_TIMEOUT_S = 900.0  # a request that long unanswered: the server is stuck


class SimulateConfig(BaseModel):
    """One simulation run (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Path = Field(description="The bundle the server serves by default.")
    experiment: Path = Field(description="The experiment file the server runs.")
    out: Path = Field(description="Folder for the store, the logs and the summary (must not exist or be empty).")
    data: str = Field("movielens-1m", description="Dataset the response model is fitted on (a built-in name or "
                      "a path genrec data reads).")
    requests: int | None = Field(None, ge=1, description="Stop after this many recommendation requests.")
    minutes: float | None = Field(None, gt=0, description="Stop after this many minutes.")
    days: int = Field(7, ge=1, description="Simulated days the run spans (fresh items arrive over them).")
    concurrency: int = Field(16, ge=1, le=512, description="Concurrent simulated clients.")
    k: int = Field(10, ge=1, le=100, description="Items per answer.")
    pages: float = Field(3.0, ge=1, description="Mean requests per visit (geometric).")
    max_users: int | None = Field(None, ge=2, description="Simulate this many users (a random subset).")
    max_events: int = Field(200, ge=1, description="Events kept per user by the server (genrec serve "
                            "--max-events): the history length the model reads.")
    server: Literal["process", "thread"] = Field("process", description="process: genrec serve as a subprocess "
                                                 "(its own core); thread: uvicorn in this process (tests).")
    workers: int = Field(1, ge=1, le=64, description="Server worker processes (genrec serve --workers; each loads "
                         "the bundle and coalesces its own concurrent requests into model batches).")
    creator_col: str = Field("author_id", description="Column of the bundle's items.parquet naming each item's "
                             "creator: simulation.parquet then carries each shown item's creator (none: no column).")
    seed: int = 0
    response: ResponseConfig = Field(default_factory=ResponseConfig)

    @model_validator(mode="after")
    def _bounded(self) -> SimulateConfig:
        if self.requests is None and self.minutes is None:
            raise ValueError("give requests or minutes (or both): a simulation must be bounded")
        if self.server == "thread" and self.workers > 1:
            raise ValueError("workers > 1 needs server: process (an in-process server has one worker)")
        return self


def load_sequences(data: str) -> dict[str, list[str]]:
    """user id -> raw item ids, oldest first, of a dataset genrec can load."""
    from genrec.data import load_dataset

    ds = load_dataset(data)
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    users = [str(x) for x in ds.users.raw.to_pylist()]
    s = ds.sequences
    return {users[u]: [raw[i - 1] for i in s.values[s.offsets[u]:s.offsets[u + 1]]] for u in range(len(users))}


def catalog_ids(bundle: Path) -> list[str]:
    path = bundle / "items.parquet"
    if not path.is_file():
        raise ConfigError(f"--bundle {bundle}: no items.parquet (not a genrec bundle?)")
    return [str(x) for x in pq.read_table(path, columns=["raw_id"]).column(0).to_pylist()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, alive, timeout: float = READY_TIMEOUT_S) -> None:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise GenrecError("the server exited before it was ready (see server.log in the output folder)")
        try:
            with opener.open(f"{url}/readyz", timeout=2.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while warming up
            pass
        time.sleep(0.2)
    raise GenrecError(f"the server at {url} was not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running_server(cfg: SimulateConfig, store: Path) -> Iterator[str]:
    """``genrec serve`` over ``cfg.bundle`` with the experiment and the exposure log on; yields its base URL."""
    if cfg.server == "thread":
        yield from _thread_server(cfg, store)
        return
    port = _free_port()
    cmd = [sys.executable, "-m", "genrec", "serve", str(cfg.bundle), "--port", str(port), "--store", str(store),
           "--experiment", str(cfg.experiment), "--exposure-log", "--no-access-log", "--max-events",
           str(cfg.max_events), "--deadline-ms", "0", "--workers", str(cfg.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(cfg.out / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, lambda: proc.poll() is None)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _thread_server(cfg: SimulateConfig, store: Path) -> Iterator[str]:
    import uvicorn

    from genrec.serve.app import Settings, create_app

    app = create_app(Settings(bundle=cfg.bundle, store=str(store), experiment=cfg.experiment, exposure_log=True,
                              max_events=cfg.max_events, deadline_ms=None))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started and thread.is_alive():
        time.sleep(0.01)
    if not srv.started:
        raise GenrecError("the in-process server did not start")
    try:
        yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        app.state.serving.exposure_log.close()
        app.state.serving.store.close()


def seed_store(store: Path, model: ResponseModel, users: list[int], max_events: int) -> None:
    """Write the simulated users' real past into a new store, before the server opens it."""
    from genrec.serve.store import Event, open_store

    s = open_store(str(store), store, max_events)
    try:
        s.seed({model.users[u]: [Event(i) for i in model.histories[u][-max_events:]] for u in users})
    finally:
        s.close()


class _Log:
    """Columns of simulation.parquet, one row per shown slot."""

    FIELDS = ("request_id", "user_id", "wall_time", "sim_time", "day", "experiment", "arm", "position", "item_id",
              "creator", "p_click", "clicked", "fresh", "fallback", "latency_ms")

    def __init__(self, creators: dict[str, str] | None = None) -> None:
        self.cols: dict[str, list] = {f: [] for f in self.FIELDS}
        self.latencies: list[float] = []
        self.creators = creators or {}

    def add(self, answer: dict, user: str, wall: float, sim: float, day: int, probs: np.ndarray, clicks: np.ndarray,
            fresh: set[str], latency_ms: float) -> None:
        self.latencies.append(latency_ms)
        for j, item in enumerate(answer["items"]):
            i = item["item_id"]
            row = (answer["request_id"], user, wall, sim, day, answer["experiment"], answer["arm"], j, i,
                   self.creators.get(i), float(probs[j]), bool(clicks[j]), i in fresh, answer["fallback"], latency_ms)
            for f, v in zip(self.FIELDS, row, strict=True):
                self.cols[f].append(v)

    def table(self) -> pa.Table:
        return pa.table({**self.cols, "creator": pa.array(self.cols["creator"], pa.string())})


class _Driver:
    """The simulated clients (module docstring)."""

    def __init__(self, cfg: SimulateConfig, model: ResponseModel, users: np.ndarray, url: str,
                 creators: dict[str, str] | None = None):
        self.cfg, self.model, self.url = cfg, model, url
        self.rng = np.random.default_rng(cfg.seed)
        self.users = users
        weights = model.activity[users]
        self.cum = np.cumsum(weights / weights.sum())
        fresh = model.fresh()
        self.fresh_set = set(fresh)
        self.fresh_ids = fresh
        self.fresh_release = np.sort(model.release[model.release > 0])
        self.active: set[int] = set()
        self.issued = self.errors = 0
        self.log = _Log(creators)
        self.start = time.monotonic()

    def progress(self) -> float:
        """How far the run is, 0..1: the larger of the request and the time budgets' shares."""
        p = 0.0
        if self.cfg.requests:
            p = self.issued / self.cfg.requests
        if self.cfg.minutes:
            p = max(p, (time.monotonic() - self.start) / (60 * self.cfg.minutes))
        return min(p, 1.0)

    def _visitor(self) -> int:
        for _ in range(20):  # a user already being served is skipped (one visit per user at a time)
            u = int(self.users[min(np.searchsorted(self.cum, self.rng.random()), len(self.users) - 1)])
            if u not in self.active:
                return u
        return -1

    async def run(self) -> None:
        # a keep-alive connection per simulated client; the generous timeout outlasts a pause of both processes
        # (SIGSTOP), after which the monotonic clock has jumped
        async with Client(self.url, self.cfg.concurrency, timeout=CLIENT_TIMEOUT_S) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.cfg.concurrency)))

    async def _client(self, client: Client) -> None:
        while self.progress() < 1.0:
            u = self._visitor()
            if u < 0:
                await asyncio.sleep(0.001)
                continue
            self.active.add(u)
            try:
                for _ in range(int(self.rng.geometric(1 / self.cfg.pages))):
                    if self.progress() >= 1.0:
                        break
                    await self._page(client, u)
            finally:
                self.active.discard(u)

    async def _page(self, client: Client, u: int) -> None:
        progress = self.progress()
        user = self.model.users[u]
        body: dict[str, Any] = {"user_id": user, "k": self.cfg.k}
        released = int(np.searchsorted(self.fresh_release, progress, side="right"))
        if released < len(self.fresh_ids):
            body["deny"] = self.fresh_ids[released:]
        self.issued += 1
        t0 = time.perf_counter()
        r = await client.post("/v1/recommend", body)
        latency = 1000 * (time.perf_counter() - t0)
        if r.status_code != 200:
            self.errors += 1
            return
        answer = r.json()
        shown = [i["item_id"] for i in answer["items"]]
        probs = self.model.click_probs(user, shown)
        clicks = self.rng.random(len(probs)) < probs
        sim = progress * self.cfg.days * DAY
        self.log.add(answer, user, time.time(), sim, int(sim // DAY), probs, clicks, self.fresh_set, latency)
        if clicks.any():
            e = await client.post("/v1/events", {"user_id": user, "request_id": answer["request_id"],
                                                      "items": [i for i, c in zip(shown, clicks, strict=True) if c]})
            if e.status_code != 200:
                self.errors += 1


def simulate(cfg: SimulateConfig, sequences: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Run one simulation (module docstring); returns the summary also written to ``out/summary.json``.
    ``sequences`` (user -> raw item ids) replaces ``cfg.data`` when given."""
    from genrec.experiment.config import load_experiment
    from genrec.experiment.exposures import export_exposures
    from genrec.experiment.report import read_creators
    from genrec.io import write_json

    experiment = load_experiment(cfg.experiment)
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise ConfigError(f"--out {cfg.out}: exists and is not empty (a simulation writes a fresh store)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = ResponseModel.fit(sequences if sequences is not None else load_sequences(cfg.data),
                              catalog_ids(cfg.bundle), cfg.response)
    creators = read_creators(cfg.bundle, cfg.creator_col)
    rng = np.random.default_rng(cfg.seed)
    users = np.arange(len(model.users))
    if cfg.max_users is not None and cfg.max_users < len(users):
        users = np.sort(rng.choice(users, cfg.max_users, replace=False))
    store = cfg.out / "store.sqlite"
    seed_store(store, model, users.tolist(), cfg.max_events)
    fit_s = time.perf_counter() - t0
    with running_server(cfg, store) as url:
        driver = _Driver(cfg, model, users, url, creators)
        t1 = time.perf_counter()
        with asyncio.Runner(loop_factory=event_loop()) as runner:
            runner.run(driver.run())
        run_s = time.perf_counter() - t1
    table = driver.log.table()
    pq.write_table(table, cfg.out / "simulation.parquet")
    slots = export_exposures(str(store), cfg.out / "exposures.parquet", experiment.name)
    lat = np.array(driver.log.latencies) if driver.log.latencies else np.array([np.nan])
    answered = len(driver.log.latencies)
    summary = {
        "experiment": experiment.name, "mode": experiment.mode, "requests": driver.issued, "answered": answered,
        "errors": driver.errors, "requests_per_s": answered / run_s if run_s > 0 else None, "run_s": run_s,
        "fit_s": fit_s, "users": int(len(users)), "users_seen": len(set(table.column("user_id").to_pylist())),
        "clicks": int(np.sum(table.column("clicked").to_numpy(zero_copy_only=False))),
        "shown_slots": table.num_rows, "exposure_log_slots": slots,
        "creators": None if creators is None else len(set(creators.values())),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        "config": cfg.model_dump(mode="json"), "response": model.summary(),
    }
    write_json(cfg.out / "summary.json", summary)
    return summary
