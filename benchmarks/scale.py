"""Scaling curves: preparation, training, evaluation and serving from 10^6 to 10^9 events on one machine.

Each stage runs the real command lines (``genrec data synth`` / ``genrec data expand`` / ``genrec data prepare``
/ the streaming trainer / full-catalog evaluation) as child processes, samples the resident memory of the whole
process tree every 50 ms, and merges its rows into ``benchmarks/results/scale.json``; ``--render`` (always run
at the end) writes ``scale.md`` with the table, each quantity's growth exponent (log-log slope) and the targets
met or missed, and ``scale.png`` with the curves. Stages can be run separately, so the large sizes can run when
the machine is free::

    python benchmarks/scale.py --stage data --sizes 1e6 1e7 1e8 --sources synth ml1m
    python benchmarks/scale.py --stage train --sizes 1e7 1e8
    python benchmarks/scale.py --stage eval --sizes 1e6 1e7
    python benchmarks/scale.py --stage serve        # reads benchmarks/results/serve_scale.json
    python benchmarks/scale.py --render

Generated data and prepared folders go to ``--work`` (default ``runs/scale``), never into the repository.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_render import plot, render, render_docs  # noqa: E402

RESULTS = Path("benchmarks/results")
GENREC = [sys.executable, "-m", "genrec"]


class PeakMemory:
    """Peak resident memory of a process and all its descendants, sampled from /proc every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def _rss(self) -> int:
        total = 0
        for p in self._tree():
            try:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``, return wall seconds and the peak memory (GiB) of its process tree; fail loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        mem = PeakMemory(proc.pid)
        rc = proc.wait()
    peak = mem.stop()
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"command failed ({rc}), see {log}: {shlex.join(cmd)}")
    return {"seconds": seconds, "peak_gb": peak, "command": shlex.join(cmd)}


def size_label(n: float) -> str:
    return f"1e{round(math.log10(n))}"


def synth_shape(events: float, fixed_items: int | None = None) -> dict[str, int]:
    """Users and items of a synthetic log of ``events`` events: the proportions of a 10M-event log with 166k users
    and 1M items, or (``fixed_items``) a catalog that does not grow with the log (training rows)."""
    items = fixed_items or max(1000, int(events / 10))
    return {"events": int(events), "users": max(1000, int(events / 60)), "items": items}


def stage_data(args: argparse.Namespace, rows: list[dict]) -> None:
    for source in args.sources:
        for n in args.sizes:
            label = f"{source}-{size_label(n)}"
            raw, prepared = args.work / "raw" / label, args.work / "prepared" / label
            if not (raw / "_SUCCESS").exists():
                if source in ("synth", "synth1m"):
                    s = synth_shape(n, fixed_items=1_000_000 if source == "synth1m" else None)
                    cmd = [*GENREC, "data", "synth", "--events", str(s["events"]), "--items", str(s["items"]),
                           "--users", str(s["users"]), "--out", str(raw), "--overwrite"]
                else:
                    cmd = [*GENREC, "data", "expand", "movielens-1m", "--factor", str(n / 1e6), "--out", str(raw),
                           "--overwrite"]
                gen = measure(cmd, args.work / "logs" / f"generate-{label}.log")
                (raw / "_SUCCESS").write_text(json.dumps(gen))
            gen = json.loads((raw / "_SUCCESS").read_text())
            if prepared.exists():
                subprocess.run(["rm", "-rf", str(prepared)], check=True)
            cmd = [*GENREC, "data", "prepare", str(raw), "--out", str(prepared), "--engine", args.engine,
                   "--memory-limit", args.memory_limit, "--temp-dir", str(args.work / "tmp"), "--time-col", "timestamp"]
            if source == "synth1m":  # training rows: equal shard sizes, so only the log's length differs
                cmd += ["--shards", str(math.ceil(n / args.shard_events))]
            prep = measure(cmd, args.work / "logs" / f"prepare-{label}.log")
            manifest = json.loads((prepared / "manifest.json").read_text())
            rows.append({"stage": "data", "source": source, "events": manifest["interactions"],
                         "nominal_events": n, "users": manifest["users"], "items": manifest["items"],
                         "generate_seconds": gen["seconds"], "generate_command": gen["command"],
                         "prepare_seconds": prep["seconds"], "prepare_peak_gb": prep["peak_gb"],
                         "prepare_command": prep["command"], "engine": args.engine,
                         "memory_limit": args.memory_limit, "raw_bytes": _bytes(raw),
                         "prepared_bytes": _bytes(prepared)})
            print(json.dumps(rows[-1]), flush=True)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _train_row(args: argparse.Namespace, label: str, config: str, sets: list[str], processes: int) -> dict:
    """One training run (`genrec train`, under torchrun with 2 processes) with a wall-time budget; its throughput
    comes from the run's metrics.jsonl, its memory from the process tree."""
    out = args.work / "train" / f"{label}-p{processes}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    threads = max(1, (os.cpu_count() or 2) // processes)
    tail = ["--config", config, *[x for kv in sets for x in ("--set", kv)], "--set", f"train.threads={threads}",
            "--set", f"train.max_minutes={args.train_minutes}", "--out", str(out), "--quiet"]
    if processes == 1:
        cmd = [*GENREC, "train", *tail]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "genrec", "train", *tail]
    res = measure(cmd, args.work / "logs" / f"train-{label}-p{processes}.log")
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = epochs[0]
    return {"stage": "train", "processes": processes, "tokens_per_s": first["tokens_per_s"],
            "trained_seconds": first["epoch_seconds"], "steps": first["step"], "train_peak_gb": res["peak_gb"],
            "run_seconds": res["seconds"], "command": res["command"]}


def stage_train(args: argparse.Namespace, rows: list[dict]) -> None:
    """Streamed HSTU on synthetic logs with a fixed 1M-item catalog (memory must not grow with events), 1 and 2
    processes (``--sources synth1m``); and MovieLens-1M trained in memory and streamed, for the throughput of the
    two paths (``--sources ml1m``)."""
    for n in args.sizes if "synth1m" in args.sources else []:
        label = f"synth1m-{size_label(n)}"
        prepared = args.work / "prepared" / label
        if not (prepared / "manifest.json").exists():
            raise SystemExit(f"{prepared} is missing: run --stage data --sizes {size_label(n)} --sources synth1m")
        manifest = json.loads((prepared / "manifest.json").read_text())
        for processes in (1, 2):
            row = _train_row(args, label, "configs/synthetic/hstu-stream.yaml", [f"dataset={prepared}"], processes)
            rows.append({"source": "synth1m", "data": "stream", "events": manifest["interactions"],
                         "nominal_events": n, "items": manifest["items"], **row})
            print(json.dumps(rows[-1]), flush=True)
    if "ml1m" not in args.sources:
        return
    for mode in ("memory", "stream"):  # one lane: each pass reads the same number of windows as in memory
        sets = [f"train.data={mode}", "train.epochs=1", "train.stream.lanes=1", "train.batch_size=32"]
        row = _train_row(args, f"ml1m-{mode}", "configs/movielens-1m/hstu.yaml", sets, 1)
        rows.append({"source": "ml1m", "data": mode, "events": 1000209, "nominal_events": 1e6, **row})
        print(json.dumps(rows[-1]), flush=True)


def stage_eval(args: argparse.Namespace, rows: list[dict]) -> None:
    """Popularity, full catalog, leave-one-out test, through the `genrec eval` command on prepared data."""
    for n in args.sizes:
        label = f"synth-{size_label(n)}"
        prepared = args.work / "prepared" / label
        if not (prepared / "manifest.json").exists():
            raise SystemExit(f"{prepared} is missing: run --stage data --sizes {size_label(n)} --sources synth")
        out = args.work / "eval" / label
        cmd = [*GENREC, "eval", "--model", "popularity", "--dataset", str(prepared), "--out", str(out),
               "--json", "--bootstrap", "200"]
        res = measure(cmd, args.work / "logs" / f"eval-popularity-{label}.log")
        manifest = json.loads((prepared / "manifest.json").read_text())
        report = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
        cases = report.get("info", {}).get("cases")
        pairs = cases * manifest["items"] if cases else None
        rows.append({"stage": "eval", "model": "popularity", "events": manifest["interactions"], "nominal_events": n,
                     "users": manifest["users"], "items": manifest["items"], "cases": cases,
                     "popularity_eval_seconds": res["seconds"], "eval_peak_gb": res["peak_gb"],
                     "seconds_per_1e9_pairs": res["seconds"] / pairs * 1e9 if pairs else None,
                     "command": res["command"]})
        print(json.dumps(rows[-1]), flush=True)


def stage_serve(args: argparse.Namespace, rows: list[dict]) -> None:
    """Serving rows come from benchmarks/serve_scale.py's results (its own command, commit and machine)."""
    src = RESULTS / "serve_scale.json"
    if not src.exists():
        raise SystemExit(f"{src} is missing: run python benchmarks/serve_scale.py first")
    data = json.loads(src.read_text())
    for r in data.get("rows", []):
        rows.append({"stage": "serve", "from": str(src), "from_commit": data.get("commit"), **r})


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """New rows replace old rows of the same stage, source/model and nominal size."""
    def key(r: dict) -> tuple:
        return (r.get("stage"), r.get("source"), r.get("model"), r.get("processes"), r.get("data"),
                r.get("nominal_events"),
                r.get("items") if r.get("stage") == "serve" else None, r.get("index"))

    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["data", "train", "eval", "serve"], action="append", default=[])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    p.add_argument("--sources", nargs="+", choices=["synth", "synth1m", "ml1m"], default=["synth"])
    p.add_argument("--train-minutes", type=float, default=2.0, help="training budget of each train row")
    p.add_argument("--shard-events", type=int, default=625_000, help="events per shard of the training datasets")
    p.add_argument("--engine", default="duckdb", choices=["duckdb", "spark", "memory"])
    p.add_argument("--memory-limit", default="4GB")
    p.add_argument("--work", type=Path, default=Path("runs/scale"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite scale.md / scale.png from scale.json")
    p.add_argument("--note", help="append a dated note to scale.json (a run that could not finish, and why)")
    p.add_argument("--allow-dirty", action="store_true", help="record results from a modified checkout (marked)")
    args = p.parse_args()
    commit = git_commit()
    if commit and commit.endswith("-dirty") and not args.allow_dirty and not args.render:
        raise SystemExit("the checkout has uncommitted changes; commit first (or pass --allow-dirty)")
    path = args.out / "scale.json"
    result = load(path)
    rows: list[dict] = []
    start = time.perf_counter()
    for stage in args.stage:
        {"data": stage_data, "train": stage_train, "eval": stage_eval, "serve": stage_serve}[stage](args, rows)
    for r in rows:
        r.update(commit=commit, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if args.note:
        result.setdefault("notes", []).append({"date": dt.date.today().isoformat(), "text": args.note})
        write_json(path, result)
    if rows:
        result.update(rows=merge(result.get("rows", []), rows), commit=commit, machine=machine(),
                      created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      last_command=shlex.join(["python", *sys.argv]),
                      last_wall_seconds=time.perf_counter() - start)
        write_json(path, result)
    plot(result, args.out / "scale.png")
    write_text(args.out / "scale.md", render(result))
    if args.render:  # the docs are tracked: updating them from a stage run would dirty the checkout it measures
        render_docs(result)
    print(f"wrote {path}, {args.out / 'scale.md'}")


if __name__ == "__main__":
    main()
