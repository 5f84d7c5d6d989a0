"""What an experiment adds to a request: `benchmarks/serve_load.py` without and with `--experiment`, alternated.

Each round runs serve_load twice on the same bundle (a fresh server each time): plain, then serving the experiment
file with its durable exposure log. Alternating the two, round after round, spreads slow drifts of the machine
over both, and the per-round differences of p50 / p99 at each concurrency give the overhead and its spread.
Writes benchmarks/results/experiment_overhead.{json,md} with the command lines, commit, machine and wall time.

    python benchmarks/experiment_overhead.py --bundle runs/kuairand/bundle-2stage-d16 \
        --experiment benchmarks/experiments/serve-overhead.yaml [--rounds 3] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text

RESULTS = Path(__file__).parent / "results"
SERVE_LOAD = Path(__file__).parent / "serve_load.py"
STATS = ("per_s", "p50_ms", "p99_ms")


def serve_load(args: argparse.Namespace, experiment: bool, out: Path) -> dict:
    cmd = ["--bundle", str(args.bundle), "--concurrency", args.concurrency, "--history-len", str(args.history_len),
           "--seconds", f"{args.seconds:g}", "--reloads", "0", "--reload-concurrency", "1"]
    cmd += ["--experiment", str(args.experiment)] if experiment else []
    subprocess.run([sys.executable, str(SERVE_LOAD), *cmd, "--out", str(out), "--tag", "x"], check=True,
                   stdout=subprocess.DEVNULL)
    res = read_json(out / "serve_load_x.json")
    return {"command": "python benchmarks/serve_load.py " + " ".join(cmd),
            "load_average": res["load_average_at_start"][0],
            **{c: {s: v["recommend_history"][s] for s in STATS} for c, v in res["steady"].items()}}


def summary(runs: list[dict], levels: list[str]) -> dict:
    """Per concurrency: each arm's mean of every statistic, and the mean, median and range of the per-round
    differences."""
    out = {}
    for c in levels:
        plain = {s: np.array([r["plain"][c][s] for r in runs]) for s in STATS}
        exp = {s: np.array([r["experiment"][c][s] for r in runs]) for s in STATS}
        out[c] = {s: {"plain": float(plain[s].mean()), "experiment": float(exp[s].mean()),
                      "difference": float((exp[s] - plain[s]).mean()),
                      "median": float(np.median(exp[s] - plain[s])),
                      "min": float((exp[s] - plain[s]).min()), "max": float((exp[s] - plain[s]).max())}
                  for s in STATS}
    return out


def render(res: dict) -> str:
    lines = ["# What serving an experiment adds to a request", "", f"`{res['command']}`", "",
             f"- commit {res['commit']}, {res['created'][:10]}; {res['machine'].get('cpus')} CPUs, torch "
             f"{res['machine'].get('torch')}; wall {res['wall_seconds']:.0f} s; {len(res['runs'])} rounds, each "
             "serve_load without, then with the experiment (assignment, answer fields, durable exposure log)",
             f"- bundle `{res['bundle']}`, experiment `{res['experiment']}`, recommend by a history of "
             f"{res['history_len']} items, {res['seconds']:g} s per phase", "",
             "| clients | statistic | plain (mean) | experiment (mean) | difference (mean) | difference (median) "
             "| difference (range) |", "|---|---|---|---|---|---|---|"]
    for c, stats in res["summary"].items():
        for s, v in stats.items():
            lines.append(f"| {c} | {s} | {v['plain']:.1f} | {v['experiment']:.1f} | {v['difference']:+.2f} | "
                         f"{v['median']:+.2f} | {v['min']:+.2f} to {v['max']:+.2f} |")
    lines += ["", "| round | arm | load average | " + " | ".join(f"{s} ({c})" for c in res["summary"] for s in STATS)
              + " |", "|---|---|---|" + "---|" * (len(STATS) * len(res["summary"]))]
    for i, r in enumerate(res["runs"], 1):
        for arm in ("plain", "experiment"):
            cells = " | ".join(f"{r[arm][c][s]:.1f}" for c in res["summary"] for s in STATS)
            lines.append(f"| {i} | {arm} | {r[arm]['load_average']:.1f} | {cells} |")
    lines += ["", *(f"- `{r[arm]['command']}`" for r in res["runs"][:1] for arm in ("plain", "experiment")), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--experiment", type=Path, default=Path("benchmarks/experiments/serve-overhead.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1", help="Client counts, a comma list (as serve_load.py).")
    ap.add_argument("--history-len", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    start, runs = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="genrec-overhead-") as tmp:
        for i in range(args.rounds):
            runs.append({arm: serve_load(args, arm == "experiment", Path(tmp) / f"{i}-{arm}")
                         for arm in ("plain", "experiment")})
            print(f"round {i + 1}: {runs[-1]}", flush=True)
    levels = [c for c in runs[0]["plain"] if c not in ("command", "load_average")]
    res = {"command": "python " + " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
           "created": dt.datetime.now(dt.UTC).isoformat(), "wall_seconds": time.perf_counter() - start,
           "bundle": str(args.bundle), "experiment": str(args.experiment), "history_len": args.history_len,
           "seconds": args.seconds, "load_average_at_end": os.getloadavg()[0], "runs": runs,
           "summary": summary(runs, levels)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "experiment_overhead.json", res)
    write_text(args.out / "experiment_overhead.md", render(res))
    print(render(res))


if __name__ == "__main__":
    main()
