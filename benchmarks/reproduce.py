"""Do the committed quality numbers reproduce? Retrains one retrieval and one ranking config from scratch into
fresh run folders, on today's code, and sets each test metric beside the committed one.

A metric reproduces when the rerun's value lies inside the committed run's 95% interval (bootstrap over users) and
the committed value inside the rerun's. Retrieval rows come from benchmarks/results/quality.json (the config's
seed-0 run), ranking rows from benchmarks/results/ranking_<dataset>.json (the config's run); both reruns use the
configs' own seeds, epochs and thread counts, so only the code (and float reduction order) differs.

Writes benchmarks/results/reproduce.{json,md} with the command line, commit, machine and wall time.

    GENREC_DATA_DIR=../shared/data python benchmarks/reproduce.py \
        [--retrieval configs/movielens-1m/hstu.yaml] [--ranking configs/kuairand/ranker.yaml]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.train.config import load_config

RESULTS = Path(__file__).parent / "results"
RETRIEVAL_METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200")
RANKING_TASKS, RANKING_METRICS = ("click", "long_view", "like"), ("auc", "gauc")


def train(config: Path, folder: Path, *sets: str) -> float:
    """``genrec train`` as a user runs it, with ``--set`` overrides (reusing a finished run folder); the wall
    seconds it took."""
    if (folder / "metrics.json").is_file():
        print(f"reusing {folder}", flush=True)
        return 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genrec", "train", "--config", str(config), "--out", str(folder),
                    *(a for kv in sets for a in ("--set", kv))], check=True)
    return time.perf_counter() - start


def row(name: str, committed: dict, rerun: dict) -> dict:
    """One metric: both values with their intervals, and whether each lies in the other's interval."""
    inside = (committed["ci_low"] <= rerun["value"] <= committed["ci_high"]
              and rerun["ci_low"] <= committed["value"] <= rerun["ci_high"])
    return {"metric": name, "committed": committed, "rerun": rerun, "reproduces": bool(inside),
            "difference": rerun["value"] - committed["value"]}


def retrieval(config: Path, work: Path) -> dict:
    cfg = load_config(config)
    entry = read_json(RESULTS / "quality.json")["datasets"][cfg.dataset][config.stem]
    committed = entry["per_seed"][entry["seeds"].index(f"seed{cfg.train.seed}")]
    folder = work / cfg.dataset / config.stem
    seconds = train(config, folder)
    metrics = read_json(folder / "metrics.json")
    rows = []
    for k in RETRIEVAL_METRICS:
        old, new = committed["metrics"][k], metrics["metrics"][k]
        rows.append(row(k, {"value": old["mean"], "ci_low": old["ci_low"], "ci_high": old["ci_high"]},
                        {"value": new["mean"], "ci_low": new["ci_low"], "ci_high": new["ci_high"]}))
    return {"config": str(config), "dataset": cfg.dataset, "seed": cfg.train.seed, "folder": str(folder),
            "committed_source": "benchmarks/results/quality.json", "committed_commit": committed["commit"],
            "committed_best_epoch": committed["best_epoch"], "best_epoch": metrics["info"].get("best_epoch"),
            "train_seconds": metrics["info"].get("train_seconds"), "wall_seconds": seconds, "rows": rows}


def ranking(config: Path, work: Path) -> dict:
    cfg = load_config(config)
    source = RESULTS / f"ranking_{cfg.dataset}.json"
    committed = read_json(source)
    run = committed["runs"][config.stem]
    folder = work / cfg.dataset / config.stem
    seconds = train(config, folder, "requests=streaming")  # the committed table's protocol
    metrics = read_json(folder / "metrics.json")
    rows = [row(f"{t} {m}", run["tasks"][t]["metrics"][m], metrics["tasks"][t]["metrics"][m])
            for t in RANKING_TASKS for m in RANKING_METRICS]
    return {"config": str(config), "dataset": cfg.dataset, "seed": cfg.train.seed, "folder": str(folder),
            "committed_source": str(source.relative_to(RESULTS.parent.parent)),
            "committed_commit": committed["commit"], "best_epoch": metrics.get("info", {}).get("best_epoch"),
            "wall_seconds": seconds, "rows": rows}


def render(res: dict) -> str:
    lines = ["# Reproduction: committed quality numbers against a fresh retraining", "",
             f"- command: `{res['command']}`",
             f"- commit {res['commit']}, {res['created']}; machine: {res['machine'].get('processor')}, "
             f"{res['machine'].get('cpus')} CPUs, torch {res['machine'].get('torch')}; "
             f"wall {res['wall_seconds']:.0f} s",
             "- a metric reproduces when each value lies inside the other run's 95% interval (bootstrap over users)",
             ""]
    for part in res["parts"]:
        ok = sum(r["reproduces"] for r in part["rows"])
        lines += [f"## {part['config']} ({part['dataset']}, seed {part['seed']})", "",
                  f"Committed in `{part['committed_source']}` (trained at {part['committed_commit']}); rerun into "
                  f"`{part['folder']}` in {part['wall_seconds'] / 60:.1f} min. **{ok} of {len(part['rows'])} "
                  "metrics reproduce.**", "",
                  "| metric | committed [95% CI] | rerun [95% CI] | difference | reproduces |", "|---|---|---|---|---|"]
        for r in part["rows"]:
            c, n = r["committed"], r["rerun"]
            lines.append(f"| {r['metric']} | {c['value']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}] | "
                         f"{n['value']:.4f} [{n['ci_low']:.4f}, {n['ci_high']:.4f}] | {r['difference']:+.4f} | "
                         f"{'yes' if r['reproduces'] else 'no'} |")
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in res["notes"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retrieval", type=Path, default=Path("configs/movielens-1m/hstu.yaml"))
    ap.add_argument("--ranking", type=Path, default=Path("configs/kuairand/ranker.yaml"))
    ap.add_argument("--work", type=Path, default=Path("runs/reproduce"), help="fresh run folders")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", choices=("ranking", "retrieval"), help="retrain only this part")
    ap.add_argument("--tag", default="", help="suffix of the result files (reproduce_TAG.json)")
    ap.add_argument("--render", action="store_true", help="only rewrite reproduce.md from --out's reproduce.json")
    args = ap.parse_args()
    if args.render:
        stem = "reproduce" + (f"_{args.tag}" if args.tag else "")
        write_text(args.out / f"{stem}.md", render(read_json(args.out / f"{stem}.json")))
        return
    start = time.perf_counter()
    parts = ([ranking(args.ranking, args.work)] if args.only != "retrieval" else []) + \
        ([retrieval(args.retrieval, args.work)] if args.only != "ranking" else [])
    res = {"command": "python " + " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
           "created": dt.datetime.now(dt.UTC).isoformat(), "wall_seconds": time.perf_counter() - start,
           "parts": parts}
    stem = "reproduce" + (f"_{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", res)
    write_text(args.out / f"{stem}.md", render(res))
    print(render(res))


if __name__ == "__main__":
    main()
