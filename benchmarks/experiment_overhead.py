"""What an experiment adds to a request: two `genrec serve` processes side by side on the same bundle (started as
`benchmarks/serve_load.py` starts one), one plain and one serving an A/A experiment with its durable exposure log,
and one client that sends each history to both, in random order, one request at a time.

Pairing request by request spreads whatever drifts on a shared machine (other jobs, the CPU's clock, the page
cache) evenly over both servers, which separate runs cannot: a server started a minute later meets a different
machine. Each round starts a fresh pair (a server differs a little from start to start) and the rounds' latencies
are pooled. The overhead is the difference of the pooled percentiles, with a 95% bootstrap interval (requests
resampled within each round and server). Writes benchmarks/results/experiment_overhead.{json,md} with the command
line, commit, machine and wall time.

    python benchmarks/experiment_overhead.py --bundle runs/kuairand/bundle-2stage-d16 \
        [--experiment benchmarks/experiments/serve-overhead.yaml] [--rounds 4] [--seconds 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from loadgen import Catalog, StdlibClient, start_server, stop_server, wait_ready

RESULTS = Path(__file__).parent / "results"
ARMS = ("plain", "experiment")
PERCENTILES = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}


def paired_round(args: argparse.Namespace, catalog: Catalog, rng: np.random.Generator, seconds: float,
                 folder: Path) -> dict[str, list[float]]:
    """Start both servers, warm them up, then send every history to both (random order) for ``seconds``;
    returns each server's latencies in ms (every answer checked: 200 with items, the experiment's in the arm)."""
    servers = {}
    try:
        for arm in ARMS:
            (folder / arm).mkdir()
            servers[arm] = start_server(args.bundle, folder / arm, 1, args.deadline_ms, False,
                                        args.experiment if arm == "experiment" else None)
        for url, proc, log in servers.values():
            wait_ready(url, proc, log, timeout=300)
        clients = {arm: StdlibClient(servers[arm][0], timeout=30.0) for arm in ARMS}
        one_pass(clients, catalog, rng, args, args.warmup)
        return one_pass(clients, catalog, rng, args, seconds)
    finally:
        for _, proc, _ in servers.values():
            stop_server(proc)


def one_pass(clients: dict[str, StdlibClient], catalog: Catalog, rng: np.random.Generator,
             args: argparse.Namespace, seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {arm: [] for arm in ARMS}
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        body = {"history": catalog.sample(rng, args.history_len), "k": args.k}
        for arm in (ARMS if rng.random() < 0.5 else ARMS[::-1]):
            t = time.perf_counter()
            r = clients[arm].post("/v1/recommend", json=body)
            out[arm].append(1000 * (time.perf_counter() - t))
            answer = r.json() if r.status_code == 200 else {}
            if not answer.get("items") or (arm == "experiment") != (answer.get("experiment") is not None):
                sys.exit(f"{arm} server: a bad answer (HTTP {r.status_code}): {r.text[:300]}")
    return out


def summary(rounds: list[dict[str, list[float]]], n_boot: int, seed: int) -> dict:
    """Each server's pooled percentiles and their difference (experiment - plain) with a 95% interval from a
    bootstrap that resamples requests within each round and server."""
    rng = np.random.default_rng(seed)
    pooled = {arm: np.concatenate([r[arm] for r in rounds]) for arm in ARMS}
    boot = {name: np.empty(n_boot) for name in PERCENTILES}
    for b in range(n_boot):
        draw = {arm: np.concatenate([rng.choice(np.asarray(r[arm]), len(r[arm])) for r in rounds]) for arm in ARMS}
        for name, q in PERCENTILES.items():
            boot[name][b] = np.percentile(draw["experiment"], q) - np.percentile(draw["plain"], q)
    out = {}
    for name, q in PERCENTILES.items():
        plain, exp = float(np.percentile(pooled["plain"], q)), float(np.percentile(pooled["experiment"], q))
        low, high = np.percentile(boot[name], [2.5, 97.5])
        out[name] = {"plain": plain, "experiment": exp, "difference": exp - plain, "low": float(low),
                     "high": float(high)}
    return out


def per_round(rounds: list[dict[str, list[float]]]) -> list[dict]:
    return [{"requests": len(r["plain"]), **{f"{arm}_{name}": float(np.percentile(r[arm], q)) for arm in ARMS
                                             for name, q in PERCENTILES.items()}} for r in rounds]


def render(res: dict) -> str:
    lines = ["# What serving an experiment adds to a request", "", f"`{res['command']}`", "",
             f"- commit {res['commit']}, {res['created'][:10]}; {res['machine'].get('cpus')} CPUs, torch "
             f"{res['machine'].get('torch')}; wall {res['wall_seconds']:.0f} s",
             f"- {len(res['rounds'])} rounds of {res['seconds']:g} s, each a fresh pair of `genrec serve` processes "
             f"(1 worker each) on `{res['bundle']}`: one plain, one serving `{res['experiment']}` (assignment, "
             "answer fields, durable exposure log); one client sends each history "
             f"({res['history_len']} items, k {res['k']}) to both, in random order, one request at a time",
             f"- {res['requests']:,} requests per server; 95% intervals: {res['bootstrap']} bootstrap resamples of "
             "the requests within each round and server", "",
             "| statistic | plain | experiment | difference | 95% interval |", "|---|---|---|---|---|"]
    for name, v in res["summary"].items():
        lines.append(f"| {name} | {v['plain']:.2f} | {v['experiment']:.2f} | {v['difference']:+.2f} | "
                     f"[{v['low']:+.2f}, {v['high']:+.2f}] |")
    lines += ["", "| round | requests | " + " | ".join(f"{name} {arm}" for name in PERCENTILES for arm in ARMS) + " |",
              "|---|---|" + "---|" * (2 * len(PERCENTILES))]
    for i, r in enumerate(res["rounds"], 1):
        cells = " | ".join(f"{r[f'{arm}_{name}']:.2f}" for name in PERCENTILES for arm in ARMS)
        lines.append(f"| {i} | {r['requests']:,} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--experiment", type=Path, default=Path("benchmarks/experiments/serve-overhead.yaml"))
    ap.add_argument("--rounds", type=int, default=4, help="Fresh server pairs, one after the other.")
    ap.add_argument("--seconds", type=float, default=60.0, help="Measured seconds per round.")
    ap.add_argument("--warmup", type=float, default=5.0, help="Seconds of paired requests before measuring.")
    ap.add_argument("--history-len", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--deadline-ms", type=float, default=200.0)
    ap.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the intervals.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.bootstrap < 10 or args.history_len < 1:
        ap.error("--rounds and --history-len must be >= 1, --seconds > 0, --bootstrap >= 10")
    for path in (args.bundle, args.experiment):
        if not path.exists():
            ap.error(f"{path}: no such file or folder")
    given = {"bundle": str(args.bundle), "experiment": str(args.experiment)}  # as the command line names them
    args.bundle, args.experiment = args.bundle.resolve(), args.experiment.resolve()
    catalog, rng, start, rounds = Catalog(args.bundle), np.random.default_rng(args.seed), time.perf_counter(), []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="genrec-overhead-") as tmp:
            try:
                rounds.append(paired_round(args, catalog, rng, args.seconds, Path(tmp)))
            except httpx.HTTPError as e:
                sys.exit(f"round {i + 1}: {type(e).__name__}: {e}")
        print(f"round {i + 1}: {per_round(rounds[-1:])[0]}", flush=True)
    res = {"benchmark": "experiment_overhead", "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "commit": git_commit(), "machine": machine(), "created": dt.datetime.now(dt.UTC).isoformat(),
           "wall_seconds": time.perf_counter() - start, **given, "history_len": args.history_len, "k": args.k,
           "seconds": args.seconds, "bootstrap": args.bootstrap,
           "requests": sum(len(r["plain"]) for r in rounds), "rounds": per_round(rounds),
           "summary": summary(rounds, args.bootstrap, args.seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "experiment_overhead.json", res)
    write_text(args.out / "experiment_overhead.md", render(res))
    print(render(res))


if __name__ == "__main__":
    main()
