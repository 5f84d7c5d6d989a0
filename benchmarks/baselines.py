"""Baselines on the public protocol: popularity and item-kNN, full catalog, leave-one-out, seen items excluded.

Item-kNN settings are chosen on the validation split (NDCG@10); the test split is read once with the
chosen settings. Writes benchmarks/results/baselines.{json,md} with commit, machine and wall time.
Run folders (with per-user values) go to runs/benchmarks/, which is not committed: per-user targets are
derived from the datasets, whose licences forbid redistribution.

    GENREC_DATA_DIR=../shared/data python benchmarks/baselines.py [--datasets movielens-1m amazon-beauty]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import time
from pathlib import Path

from genrec.data import get_builtin
from genrec.eval import compare_runs
from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from genrec.train import run_baseline

GRID = {"window": [None, 5, 20], "history_decay": [0.5, 0.8, 1.0]}
SHOWN = ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "hr@50", "ndcg@50", "hr@200", "ndcg@200",
         "mrr", "popularity@10"]


def bench_dataset(name: str, runs: Path, n_boot: int) -> dict:
    ds = get_builtin(name).load()
    out: dict = {"dataset": ds.stats(), "validation_grid": [], "test": {}}
    best, best_ndcg = None, -1.0
    for window, decay in itertools.product(GRID["window"], GRID["history_decay"]):
        params = {"window": window, "history_decay": decay}
        t = time.perf_counter()
        ev = run_baseline("itemknn", ds, params=params, part="valid", n_boot=n_boot, show_progress=False).evaluation
        row = {**params, "hr@10": ev.mean("hr@10"), "ndcg@10": ev.mean("ndcg@10"),
               "seconds": time.perf_counter() - t}
        out["validation_grid"].append(row)
        print(name, "valid", row, flush=True)
        if row["ndcg@10"] > best_ndcg:
            best, best_ndcg = params, row["ndcg@10"]
    for model, params in (("popularity", {}), ("itemknn", best)):
        t = time.perf_counter()
        run = run_baseline(model, ds, params=params, part="test", n_boot=n_boot, out=runs / name / model,
                           show_progress=False)
        ev = run.evaluation
        out["test"][model] = {"params": run.config["params"], "metrics": {k: ev.summary[k] for k in SHOWN},
                              "aggregate": ev.aggregate, "cases": ev.info["cases"],
                              "seconds": time.perf_counter() - t}
        print(name, "test", model, {k: round(ev.mean(k), 4) for k in ("hr@10", "ndcg@10")}, flush=True)
    cmp = compare_runs(runs / name / "popularity", runs / name / "itemknn", ["hr@10", "ndcg@10"], n_boot=n_boot)
    out["paired_itemknn_minus_popularity"] = cmp["metrics"]
    return out


def _cell(v: dict) -> str:
    return f"{v['mean']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]"


def render(result: dict) -> str:
    lines = ["# Baselines: full-catalog ranking, leave-one-out (test split)", "",
             f"- command: `{result['command']}`", f"- commit {result['commit']}, {result['created']}",
             f"- machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs, "
             f"torch {result['machine']['torch']}; wall time {result['wall_seconds']:.0f} s",
             "- protocol: last item test, second-to-last validation, rest train; full catalog; seen items excluded;"
             " ties by item id; means with 95% bootstrap intervals over users (" f"{result['n_boot']} resamples)",
             "- item-kNN settings chosen on validation NDCG@10 over window x history_decay; test read once", ""]
    for name, r in result["datasets"].items():
        s = r["dataset"]
        lines += [f"## {name} ({s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions)",
                  "", "| model | " + " | ".join(SHOWN) + " | coverage@10 |",
                  "|---" * (len(SHOWN) + 2) + "|"]
        for model, t in r["test"].items():
            cells = [_cell(t["metrics"][k]) for k in SHOWN]
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {t['aggregate']['coverage@10']:.4f} |")
        knn = r["test"]["itemknn"]["params"]
        lines += ["", f"item-kNN chosen: window={knn['window']}, history_decay={knn['history_decay']}, "
                  f"neighbors={knn['neighbors']}, shrink={knn['shrink']}, max_history={knn['max_history']}", "",
                  "Paired test, item-kNN minus popularity: " + "; ".join(
                      f"{m} {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}], p={v['p_value']:.2g}"
                      for m, v in r["paired_itemknn_minus_popularity"].items()), "",
                  "Validation grid (item-kNN):", "", "| window | history_decay | HR@10 | NDCG@10 | s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['window']} | {g['history_decay']} | {g['hr@10']:.4f} | {g['ndcg@10']:.4f} "
                  f"| {g['seconds']:.1f} |" for g in r["validation_grid"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["movielens-1m", "amazon-beauty"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args()
    start = time.perf_counter()
    result = {"command": "python benchmarks/baselines.py --datasets " + " ".join(args.datasets),
              "commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
              "n_boot": args.bootstrap, "datasets": {}}
    for name in args.datasets:
        if not get_builtin(name).available():
            print(f"skipping {name}: no copy under GENREC_DATA_DIR", flush=True)
            continue
        result["datasets"][name] = bench_dataset(name, args.runs, args.bootstrap)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(args.out / "baselines.json", result)
    write_text(args.out / "baselines.md", render(result))
    print(f"wrote {args.out / 'baselines.json'} and {args.out / 'baselines.md'}")


if __name__ == "__main__":
    main()
