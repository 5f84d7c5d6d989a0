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
import os
import shlex
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from loadgen import (
    ENDPOINTS,
    MIX,
    Catalog,
    Client,
    Record,
    measured,
    run_phase,
    start_server,
    stop_server,
    wait_ready,
)

RESULTS = Path(__file__).parent / "results"
SIGNAL_LOG = {"reloaded_in_place": "SIGHUP: reloaded", "reload_failed": "SIGHUP: bundle",  # one worker
              "workers_restarted": "Received SIGHUP, restarting", "restart_aborted": "was not ready in time"}



def _brief(summary: dict) -> dict:
    """req/s, p50 and p99 of each endpoint of a phase (one repeat of a steady phase)."""
    return {e: {k: v[k] for k in ("per_s", "p50_ms", "p99_ms")} for e, v in summary.items() if "p99_ms" in v}


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
    ap.add_argument("--repeats", type=int, default=1, help="Steady phases per concurrency, back to back on the same "
                    "server: the tables pool them, each repeat's p50 / p99 is listed below them.")
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
    if min(levels) < 1 or args.reload_concurrency < 1 or args.repeats < 1:
        ap.error("concurrency and --repeats must be >= 1")
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
                parts = [measured(partial(run_phase, url, clients, catalog, args.seconds, args.k, args.timeout, hlen,
                                          client_kind=args.client, processes=args.client_processes), proc.pid)
                         for _ in range(args.repeats)]
                records, seconds = [r for p in parts for r in p[0]], sum(p[1] for p in parts)
                cpu = {key: float(np.average([p[2][key] for p in parts], weights=[len(p[0]) for p in parts]))
                       for key in parts[0][2]}
                steady[c] = {"seconds": seconds, "cpu": cpu, **summarise(records, seconds),
                             "repeats": [_brief(summarise(p[0], p[1])) for p in parts]}
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
        if len(summary.get("repeats", [])) > 1:
            each = "; ".join(f"{e} {r[e]['per_s']:.0f}, {r[e]['p50_ms']:.1f} / {r[e]['p99_ms']:.1f}"
                             for r in summary["repeats"] for e in r)
            lines += ["", f"Each of {len(summary['repeats'])} repeats ({args.seconds:g} s), req/s, p50 / p99: {each}."]
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
