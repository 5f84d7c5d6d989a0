"""HTTP load on `genrec serve`: per-endpoint latency (p50/p95/p99), requests/s and errors under C concurrent
clients, then the same load while the bundle is reloaded several times (failures during reloads must be 0).

The script starts `genrec serve BUNDLE` (uvicorn, --workers N) on a free localhost port with a fresh SQLite
history store in a temporary folder, waits for /readyz, warms up, and runs two phases of --seconds each:

1. steady: C client threads (one keep-alive connection each; --client stdlib: http.client, the lighter one, or
   httpx) send a mix of requests: recommend by an explicit
   history (1..20 items drawn from the bundle's catalog by training popularity), events for a client's users,
   recommend by user (only users that already posted events), and similar items;
2. reloads: the same load while --reloads reloads are spread over the phase: POST /admin/reload alternating
   between --reload-bundle (default: the same bundle) and --bundle, or, with --reload-via sighup, SIGHUP to the
   server process (one worker: an in-place swap; several: uvicorn's rolling restart of the workers, which gives
   each new worker 5 s to be ready and otherwise keeps the old one: counted as a failed reload).

A request fails when it raises (connection, timeout), answers non-2xx, or answers without items. Client and
server share this machine's cores, so figures are for the pair; the load average is recorded at start and end, and
each phase records the CPU time the server (all its processes) and the load generator spent per request, which
other jobs on a shared machine disturb far less than requests/s and latency do. With several workers a POST
/admin/reload reaches one worker only (the versions seen are listed).

Writes benchmarks/results/serve_load.{json,md} with the command line, commit, machine, config and wall time; exits 1
when any request failed during reloads or a reload failed.

    python benchmarks/serve_load.py --bundle runs/quickstart/bundle [--workers 2] [--concurrency 8]
        [--seconds 30] [--reloads 5] [--reload-bundle OTHER_BUNDLE] [--reload-via http|sighup] [--no-access-log]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"
ENDPOINTS = ("recommend_history", "recommend_user", "events", "similar")
MIX = (0.4, 0.2, 0.25, 0.15)  # share of each endpoint above
USERS_PER_CLIENT = 50
SIGNAL_LOG = {"reloaded_in_place": "SIGHUP: reloaded", "reload_failed": "SIGHUP: bundle",  # one worker
              "workers_restarted": "Received SIGHUP, restarting", "restart_aborted": "was not ready in time"}


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


def summarise(records: list[Record], seconds: float) -> dict:
    out = {}
    for endpoint in (*ENDPOINTS, "reload"):
        rows = [r for r in records if r.endpoint == endpoint]
        if not rows:
            continue
        ms = 1000 * np.array([r.seconds for r in rows])
        fallbacks: dict[str, int] = {}
        for r in rows:
            if r.fallback:
                fallbacks[r.fallback] = fallbacks.get(r.fallback, 0) + 1
        errors = [r.error or "bad answer" for r in rows if not r.ok]
        out[endpoint] = {"requests": len(rows), "per_s": len(rows) / seconds,
                         "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                         "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
                         "errors": len(errors), "error_examples": sorted(set(errors))[:5], "fallbacks": fallbacks}
    total = [r for r in records if r.endpoint != "reload"]
    out["all"] = {"requests": len(total), "per_s": len(total) / seconds,
                  "errors": sum(not r.ok for r in total)}
    return out


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


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/quickstart/bundle"))
    ap.add_argument("--reload-bundle", type=Path, help="Bundle the reloads alternate to (default: --bundle).")
    ap.add_argument("--reload-via", choices=("http", "sighup"), default="http")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--concurrency", default="8", help="Client threads, each sending back to back; a comma list "
                    "(1,8,32) runs one steady phase per value.")
    ap.add_argument("--reload-concurrency", type=int, default=8, help="Client threads during the reload phase.")
    ap.add_argument("--history-len", type=int, default=0, help="Send only recommend-by-history requests with "
                    "histories of exactly this many items (0: the endpoint mix).")
    ap.add_argument("--seconds", type=float, default=30.0, help="Length of each phase.")
    ap.add_argument("--warmup", type=float, default=3.0, help="Seconds of load before measuring (not recorded).")
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--deadline-ms", type=float, default=200.0, help="Passed to genrec serve (0 = none).")
    ap.add_argument("--timeout", type=float, default=30.0, help="Client timeout per request, seconds.")
    ap.add_argument("--client", choices=("stdlib", "httpx"), default="stdlib", help="HTTP client of the load "
                    "threads: http.client keep-alive connections (light) or httpx (as in the earliest figures).")
    ap.add_argument("--no-access-log", action="store_true", help="Start genrec serve with --no-access-log.")
    ap.add_argument("--experiment", type=Path, help="Experiment file: genrec serve runs it (--experiment) with the "
                    "exposure log on (--exposure-log), so the numbers include assignment and logging.")
    ap.add_argument("--client-processes", type=int, default=1, help="Spread the client threads over this many "
                    "processes, so replies are not timed late by the client threads' shared interpreter lock.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="Suffix of the result files.")
    args = ap.parse_args()
    try:
        levels = [int(c) for c in str(args.concurrency).split(",")]
    except ValueError:
        ap.error(f"--concurrency must be integers separated by commas, got {args.concurrency!r}")
    if min(levels) < 1 or args.reload_concurrency < 1:
        ap.error("concurrency must be >= 1")
    hlen = args.history_len or None
    bundle = args.bundle.resolve()
    other = (args.reload_bundle or args.bundle).resolve()
    catalog = Catalog(bundle)
    wall = time.perf_counter()
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="genrec-serve-load-") as tmp:
        url, proc, log = start_server(bundle, Path(tmp), args.workers, args.deadline_ms, not args.no_access_log,
                                      args.experiment)
        try:
            t_start = time.perf_counter()
            ready = wait_ready(url, proc, log, timeout=300)
            startup_s = time.perf_counter() - t_start
            print(f"server ready in {startup_s:.1f} s: {ready}", flush=True)
            if args.experiment:  # the answers must come from the experiment (its window may be closed)
                probe = httpx.post(f"{url}/v1/recommend", json={"history": catalog.sample(np.random.default_rng(0), 3),
                                                                "k": args.k}, timeout=args.timeout).json()
                if probe.get("experiment") is None:
                    sys.exit(f"--experiment {args.experiment}: the server answers outside it (window not open?)")
                print(f"experiment {probe['experiment']} answers (arm {probe['arm']})", flush=True)
            steady: dict[int, dict] = {}
            for c in levels:
                clients = [Client(i, np.random.default_rng([args.seed, c, i])) for i in range(c)]
                run_phase(url, clients, catalog, args.warmup, args.k, args.timeout, hlen, client_kind=args.client,
                          processes=args.client_processes)
                records, seconds, cpu = measured(partial(run_phase, url, clients, catalog, args.seconds, args.k,
                                                         args.timeout, hlen, client_kind=args.client,
                                                         processes=args.client_processes), proc.pid)
                steady[c] = {"seconds": seconds, "cpu": cpu, **summarise(records, seconds)}
                print(f"steady, concurrency {c}:", steady[c]["all"], flush=True)
            clients = [Client(i, np.random.default_rng([args.seed, 0, i])) for i in range(args.reload_concurrency)]

            reload_records: list[Record] = []

            def reloader(seconds: float) -> None:
                with httpx.Client(base_url=url, timeout=300) as http:
                    for i in range(args.reloads):
                        time.sleep(seconds / (args.reloads + 1))
                        target = other if i % 2 == 0 else bundle
                        t = time.perf_counter()
                        if args.reload_via == "sighup":
                            proc.send_signal(signal.SIGHUP)
                            reload_records.append(Record("reload", 0.0, proc.poll() is None))
                            continue
                        try:
                            r = http.post("/admin/reload", json={"bundle": str(target)})
                            ok, err = r.status_code == 200, None if r.status_code == 200 else r.text[:200]
                        except httpx.HTTPError as e:
                            ok, err = False, f"{type(e).__name__}: {e}"[:200]
                        reload_records.append(Record("reload", time.perf_counter() - t, ok, error=err,
                                                     version=r.json().get("model_version") if ok else None))

            during, during_s, during_cpu = measured(partial(run_phase, url, clients, catalog, args.seconds, args.k,
                                                            args.timeout, hlen, reloader, client_kind=args.client,
                                                            processes=args.client_processes),
                                                    proc.pid)
            during_summary = {"cpu": during_cpu, **summarise(during + reload_records, during_s)}
            print("during reloads:", during_summary["all"], flush=True)
        finally:
            stop_server(proc)
            server_log = [line for line in log.read_text(errors="replace").splitlines()
                          if ' HTTP/1.1" ' not in line]  # all but the access log
            server_log_tail = "\n".join(server_log[-40:])
            signal_log = {name: sum(pattern in line for line in server_log) for name, pattern in SIGNAL_LOG.items()}

    failures = during_summary["all"]["errors"]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    result = {"benchmark": "serve_load", "command": command, "created": dt.datetime.now(dt.UTC).isoformat(),
              "commit": git_commit(),
              "machine": machine(), "bundle": str(args.bundle), "reload_bundle": str(args.reload_bundle or args.bundle),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "mix": (f"recommend_history only, {hlen} items" if hlen else dict(zip(ENDPOINTS, MIX, strict=True))),
              "experiment": args.experiment.read_text() if args.experiment else None,
              "n_items": len(catalog.ids), "startup_seconds": startup_s, "ready": ready,
              "steady": {str(c): v for c, v in steady.items()},
              "during_reloads": {"seconds": during_s, "reloads_sent": len(reload_records),
                                 "reloads_failed": sum(not r.ok for r in reload_records)
                                 + signal_log["reload_failed"] + signal_log["restart_aborted"],
                                 "server_log_counts": signal_log,
                                 "failures_during_reloads": failures,
                                 "versions_seen": sorted({r.version for r in during if r.version}), **during_summary},
              "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
              "server_log_tail": server_log_tail, "wall_seconds": time.perf_counter() - wall}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve_load" + (f"_{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", result)
    m = result["machine"]
    lines = [f"# genrec serve under load ({args.bundle}, {len(catalog.ids):,} items)", "", f"`{command}`", "",
             f"- {args.workers} uvicorn worker(s){', no access log' if args.no_access_log else ''}"
             f"{f', experiment {args.experiment} with the exposure log' if args.experiment else ''}, client threads "
             f"({args.client} HTTP client{f', {args.client_processes} processes' * (args.client_processes > 1)}) "
             f"on the same machine, {args.seconds:g} s per "
             f"phase after {args.warmup:g} s warm-up, k {args.k}, deadline {args.deadline_ms:g} ms, fresh SQLite "
             "store; requests: " + (f"recommend by an explicit history of {hlen} items (drawn by training "
                                    "popularity)" if hlen else ", ".join(
                                        f"{e} {p:.0%}" for e, p in zip(ENDPOINTS, MIX, strict=True))),
             f"- commit {result['commit']}, {m['cpus']} CPUs, torch {m['torch']}, Python {m['python']}, "
             f"load average {load_start[0]:.1f} at start, {result['load_average_at_end'][0]:.1f} at end, "
             f"server ready in {startup_s:.1f} s, wall {result['wall_seconds']:.0f} s", ""]
    phases = [(f"Steady load, {c} client(s)", v) for c, v in steady.items()]
    phases.append((f"During reloads, {args.reload_concurrency} client(s)", result["during_reloads"]))
    for title, summary in phases:
        lines += [f"## {title} ({summary['all']['requests']:,} requests, {summary['all']['per_s']:.0f} req/s, "
                  f"{summary['all']['errors']} errors)", "",
                  f"CPU per request: server {summary['cpu']['server_cpu_ms_per_request']:.2f} ms, load generator "
                  f"{summary['cpu']['client_cpu_ms_per_request']:.2f} ms.", "",
                  "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | fallbacks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in (*ENDPOINTS, "reload"):
            if e in summary:
                s = summary[e]
                fb = ", ".join(f"{k}: {v}" for k, v in s["fallbacks"].items()) or "0"
                lines.append(f"| {e} | {s['requests']:,} | {s['per_s']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} "
                             f"| {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['errors']} | {fb} |")
        lines.append("")
    d = result["during_reloads"]
    lines.append(f"Reloads ({args.reload_via}): {d['reloads_sent']} sent, {d['reloads_failed']} failed; "
                 f"**{failures} failed requests during reloads**; model versions answered: "
                 f"{', '.join(d['versions_seen']) or '-'}.")
    if args.reload_via == "sighup":
        lines.append("Server log: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in signal_log.items())
                     + " (SIGHUP reloads are checked in the log only; their latency is not measured).")
    write_text(args.out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if failures or d["reloads_failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
