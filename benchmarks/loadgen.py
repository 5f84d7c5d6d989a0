"""The load generator of the serving benchmarks (serve_load.py, experiment_overhead.py): `genrec serve` started
on a free localhost port, client threads (or forked processes of them) that send requests back to back over
keep-alive connections, each request timed and checked, and the CPU time the server and the clients spent."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

ENDPOINTS = ("recommend_history", "recommend_user", "events", "similar")
MIX = (0.4, 0.2, 0.25, 0.15)  # share of each endpoint above
USERS_PER_CLIENT = 50


@dataclass
class Record:
    endpoint: str
    seconds: float
    ok: bool
    fallback: str | None = None  # the fallback reason of a recommend answer
    version: str | None = None
    error: str | None = None


@dataclass
class Client:
    """One client thread's state, kept across phases: its users and those that have posted events."""

    cid: int
    rng: np.random.Generator
    active: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


class Catalog:
    def __init__(self, bundle: Path):
        table = pq.read_table(bundle / "items.parquet", columns=["raw_id", "train_count"])
        self.ids = np.asarray([str(x) for x in table.column("raw_id").to_pylist()])
        counts = np.asarray(table.column("train_count").to_pylist(), dtype=np.float64) + 1.0
        self.cdf = np.cumsum(counts / counts.sum())  # once: rng.choice(p=...) rebuilds it on every call

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        idx = np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), len(self.ids) - 1)
        return self.ids[idx].tolist()


class Answer:
    """The part of an HTTP answer the load loop reads."""

    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.content = status_code, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> dict:
        return json.loads(self.content)


class StdlibClient:
    """A keep-alive HTTP/1.1 client on the standard library's http.client: a few times less CPU per request
    than httpx, so on a machine shared with the server the load generator takes less of the cores it measures
    (the default; ``--client httpx`` for the earlier figures)."""

    def __init__(self, base_url: str, timeout: float):
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"content-type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return Answer(r.status, r.read())
        except (OSError, http.client.HTTPException):
            self.close()  # a broken connection is not reused
            raise

    def post(self, path: str, json: dict) -> Answer:  # noqa: A002 - httpx's keyword
        return self._request("POST", path, _dumps(json))

    def get(self, path: str, params: dict | None = None) -> Answer:
        return self._request("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> StdlibClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def one_request(http: httpx.Client | StdlibClient, client: Client, catalog: Catalog, k: int,
                history_len: int | None) -> Record:
    """``history_len``: only recommend-by-history requests with histories of exactly this length; None: the mix."""
    rng = client.rng
    endpoint = "recommend_history" if history_len else ENDPOINTS[int(rng.choice(len(ENDPOINTS), p=MIX))]
    if endpoint == "recommend_user" and not client.active:
        endpoint = "events"
    t = time.perf_counter()
    try:
        if endpoint == "recommend_history":
            n = history_len or int(rng.integers(1, 21))
            r = http.post("/v1/recommend", json={"history": catalog.sample(rng, n), "k": k})
        elif endpoint == "recommend_user":
            r = http.post("/v1/recommend", json={"user_id": client.active[int(rng.integers(len(client.active)))],
                                                 "k": k})
        elif endpoint == "events":
            user = f"load-{client.cid}-{int(rng.integers(USERS_PER_CLIENT))}"
            items = catalog.sample(rng, int(rng.integers(1, 4)))
            r = http.post("/v1/events", json={"user_id": user, "items": items})
        else:
            r = http.get(f"/v1/items/{catalog.sample(rng, 1)[0]}/similar", params={"k": k})
        seconds = time.perf_counter() - t
    except (httpx.HTTPError, OSError, http.client.HTTPException) as e:
        return Record(endpoint, time.perf_counter() - t, False, error=f"{type(e).__name__}: {e}"[:200])
    if r.status_code != 200:
        return Record(endpoint, seconds, False, error=f"HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    if endpoint == "events":
        if user not in client.active:
            client.active.append(user)
        return Record(endpoint, seconds, body.get("stored") == len(items))
    ok = bool(body.get("items"))
    return Record(endpoint, seconds, ok, fallback=body.get("reason") if body.get("fallback") else None,
                  version=body.get("model_version"), error=None if ok else f"no items: {r.text[:200]}")


def run_phase(url: str, clients: list[Client], catalog: Catalog, seconds: float, k: int,
              timeout: float, history_len: int | None, during=None, client_kind: str = "stdlib",
              processes: int = 1) -> tuple[list[Record], float]:
    """Every client sends requests back to back for ``seconds``; ``during`` runs alongside (the reloads).
    ``processes`` > 1: the clients are spread over that many forked processes, so that a reply is timed as it
    arrives, not when its thread next gets this interpreter's lock from the other client threads."""
    if processes > 1:
        return _forked_phase(url, clients, catalog, seconds, k, timeout, history_len, during, client_kind, processes)
    stop = threading.Event()
    start = [len(c.records) for c in clients]

    def loop(client: Client) -> None:
        make = StdlibClient if client_kind == "stdlib" else httpx.Client
        with make(base_url=url, timeout=timeout) as http:
            while not stop.is_set():
                client.records.append(one_request(http, client, catalog, k, history_len))

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    side = threading.Thread(target=during, args=(seconds,), daemon=True) if during else None
    if side:
        side.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    if side:
        side.join()
    return [r for c, s in zip(clients, start, strict=True) for r in c.records[s:]], time.perf_counter() - t0


def _forked_phase(url, clients, catalog, seconds, k, timeout, history_len, during, client_kind, processes):
    """:func:`run_phase` over ``processes`` forked children, each timing its share of the clients with threads;
    the clients' state comes back to this process (records, active users, random generators)."""
    ctx = multiprocessing.get_context("fork")
    groups = [clients[i::processes] for i in range(processes)]
    pipes = [ctx.Pipe(duplex=False) for _ in groups]

    def child(group: list[Client], conn) -> None:
        run_phase(url, group, catalog, seconds, k, timeout, history_len, client_kind=client_kind)
        conn.send(group)

    side = [threading.Thread(target=during, args=(seconds,), daemon=True)] if during else []
    procs = [ctx.Process(target=child, args=(g, w), daemon=True) for g, (_, w) in zip(groups, pipes, strict=True)]
    start, t0 = [len(c.records) for c in clients], time.perf_counter()
    for p in (*procs, *side):
        p.start()
    for g, (r, _) in zip(groups, pipes, strict=True):
        for mine, theirs in zip(g, r.recv(), strict=True):
            mine.rng, mine.active, mine.records = theirs.rng, theirs.active, theirs.records
    for p in (*procs, *side):
        p.join()
    return [r for c, s in zip(clients, start, strict=True) for r in c.records[s:]], time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children so far (Linux /proc; 0 elsewhere)."""
    tick, total, todo = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for f in Path(f"/proc/{p}/task").glob("*/children") for c in f.read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def measured(phase, server_pid: int) -> tuple[list[Record], float, dict[str, float]]:
    """``phase()`` -> (records, seconds), plus the CPU ms per request the server and this load generator spent."""
    server, client = process_cpu(server_pid), _own_cpu()
    records, seconds = phase()
    n = max(sum(r.endpoint != "reload" for r in records), 1)
    return records, seconds, {"server_cpu_ms_per_request": 1000 * (process_cpu(server_pid) - server) / n,
                              "client_cpu_ms_per_request": 1000 * (_own_cpu() - client) / n}


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children (the forked clients of --client-processes)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def start_server(bundle: Path, folder: Path, workers: int = 1, deadline_ms: float = 200.0, access_log: bool = True,
                 experiment: Path | None = None) -> tuple[str, subprocess.Popen, Path]:
    """`genrec serve BUNDLE` on a free localhost port with a fresh SQLite store and its log in ``folder``
    (``experiment``: served with the exposure log on); returns its URL, process and log file."""
    port = free_port()
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "GENREC_API_KEY"}
    cmd = [sys.executable, "-m", "genrec", "serve", str(bundle), "--port", str(port), "--workers", str(workers),
           "--store", str(folder / "history.sqlite"), "--deadline-ms", str(deadline_ms)]
    cmd += [] if access_log else ["--no-access-log"]
    cmd += ["--experiment", str(experiment.resolve()), "--exposure-log"] if experiment else []
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return f"http://127.0.0.1:{port}", proc, log


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGINT (uvicorn's graceful stop), then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"genrec serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"genrec serve not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
