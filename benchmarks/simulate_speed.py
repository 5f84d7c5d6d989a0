"""How fast `genrec simulate` drives a server: requests per second and latency of one simulated stream, for each
server worker count given.

Runs `genrec simulate BUNDLE --experiment FILE --requests N --concurrency C --workers W` once per W into a fresh
folder and reads its summary.json. Writes benchmarks/results/simulate_speed.{json,md} with the command lines,
commit, machine, load averages and wall time.

    GENREC_DATA_DIR=../shared/data python benchmarks/simulate_speed.py --bundle runs/sim/bundle-q-id \
        --experiment runs/sim/bench/aa.yaml [--workers 1 2] [--requests 6000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text

RESULTS = Path(__file__).parent / "results"


def run(args: argparse.Namespace, workers: int, folder: Path) -> dict:
    cmd = ["genrec", "simulate", str(args.bundle), "--experiment", str(args.experiment), "--out", str(folder),
           "--requests", str(args.requests), "--concurrency", str(args.concurrency), "--workers", str(workers),
           "--seed", "0"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genrec", *cmd[1:]], check=True)
    summary = read_json(folder / "summary.json")
    return {"command": " ".join(cmd), "workers": workers, "wall_seconds": time.perf_counter() - start,
            "load_before": load, "load_after": os.getloadavg()[0], "requests": summary["answered"],
            "errors": summary["errors"], "requests_per_s": summary["requests_per_s"],
            "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"]}


def render(res: dict) -> str:
    rows = [f"| {r['workers']} | {r['requests']:,} | {r['errors']} | {r['requests_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['load_before']:.1f} -> {r['load_after']:.1f} |"
            for r in res["runs"]]
    return "\n".join([
        "# genrec simulate: requests per second", "", f"`{res['command']}`", "",
        f"- commit {res['commit']}, {res['created'][:10]}; {res['machine'].get('cpus')} CPUs, torch "
        f"{res['machine'].get('torch')}; wall {res['wall_seconds']:.0f} s; the simulated clients and the server share "
        "the machine's cores",
        f"- bundle `{res['bundle']}`, experiment `{res['experiment']}`, {res['concurrency']} concurrent clients", "",
        "| server workers | requests | errors | requests/s | p50 ms | p99 ms | load average before -> after |",
        "|---|---|---|---|---|---|---|", *rows,
        "", *(f"- `{r['command']}`" for r in res["runs"]), ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--experiment", type=Path, required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    start = time.perf_counter()
    runs = []
    for w in args.workers:
        folder = Path(tempfile.mkdtemp(prefix="genrec-simulate-speed-"))
        try:
            runs.append(run(args, w, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(runs[-1], flush=True)
    res = {"command": "python " + " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
           "created": dt.datetime.now(dt.UTC).isoformat(), "wall_seconds": time.perf_counter() - start,
           "bundle": str(args.bundle), "experiment": str(args.experiment), "concurrency": args.concurrency,
           "runs": runs}
    write_json(args.out / "simulate_speed.json", res)
    write_text(args.out / "simulate_speed.md", render(res))
    print(render(res))


if __name__ == "__main__":
    main()
