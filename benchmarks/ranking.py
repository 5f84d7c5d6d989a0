"""Ranking quality on an impression log: the generative ranker against its baselines, per task, with paired tests.

Trains (with --train) or reads the run folders of the committed configs (default: configs/kuairand/{ranker,dcn,
din,gbdt}.yaml -> runs/kuairand/<model>), then tabulates each run's test metrics per task (AUC, GAUC with its 95%
user-bootstrap interval, log loss, normalised entropy, ECE) and, for every baseline, the paired GAUC difference
ranker - baseline on the same test impressions (user-bootstrap interval, sign-flip permutation p-value,
:func:`genrec.eval.ctr.paired_gauc`). Writes benchmarks/results/ranking_<dataset>.{json,md} with the split
(exact cut times), commit, machine and wall times. ``--protocol frozen`` compares runs trained and tested with
frozen requests (``requests: frozen``; folders <out>-frozen) and writes ranking_<dataset>-frozen.{json,md}.

    python benchmarks/ranking.py [--train] [--protocol frozen] [--configs configs/kuairand/ranker.yaml ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.eval import ctr
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.train.config import load_config

RESULTS = Path(__file__).parent / "results"
MAIN_TASKS = ("click", "long_view", "like")  # the issue's targets; the other tasks are reported too
PROTOCOLS = {
    "streaming": "streaming (each test impression reads all of the user's strictly earlier impressions; a per-user "
                 "counter of earlier positives scores this protocol well, see ranking_counters_<log>.md)",
    "frozen": "frozen (a user's test impressions form requests of up to max_len; every candidate reads the history "
              "and time of its request's first impression, as a served request does; trained the same way)"}


def run_folder(config: Path, protocol: str = "streaming") -> Path:
    cfg = load_config(config)
    folder = Path(cfg.out or Path("runs") / config.stem)
    return folder if protocol == "streaming" else folder.with_name(f"{folder.name}-{protocol}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=Path, nargs="+", default=[Path(f"configs/kuairand/{m}.yaml")
                                                                 for m in ("ranker", "dcn", "din", "gbdt")],
                    help="The first is the model under test; the others are its baselines.")
    ap.add_argument("--train", action="store_true", help="Train every config first (else read the run folders).")
    ap.add_argument("--protocol", choices=("streaming", "frozen"), default="streaming",
                    help="Requests the runs trained and were tested with (the run config's `requests`): frozen "
                         "runs live in <out>-frozen and are trained with --set requests=frozen.")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    folders = [run_folder(c, args.protocol) for c in args.configs]
    if args.train:
        for config, folder in zip(args.configs, folders, strict=True):
            subprocess.run([sys.executable, "-m", "genrec", "train", "--config", str(config), "--out", str(folder),
                            "--set", f"requests={args.protocol}"], check=True)
    runs = {}
    for config, folder in zip(args.configs, folders, strict=True):
        if not (folder / "metrics.json").is_file():
            sys.exit(f"{folder}: no finished run (train it: genrec train --config {config}, or pass --train)")
        metrics = read_json(folder / "metrics.json")
        if metrics.get("requests", "streaming") != args.protocol:
            sys.exit(f"{folder} was tested with {metrics.get('requests', 'streaming')} requests, not {args.protocol}")
        preds = pq.read_table(folder / "predictions_test.parquet").sort_by("row").to_pydict()
        model = metrics["run"]["model"]
        # a model trained under two configs (din, din-listwise) is told apart by its config's name
        name = model if model == config.stem else f"{model} ({config.stem})"
        runs[name] = {"config": str(config), "folder": str(folder), "metrics": metrics,
                      "preds": {k: np.asarray(v) for k, v in preds.items()}}
    names = list(runs)
    main_name, base = names[0], runs[names[0]]
    for name in names[1:]:
        if not np.array_equal(runs[name]["preds"]["row"], base["preds"]["row"]):
            sys.exit(f"{name} and {main_name} were tested on different impressions: not comparable")
    tasks = [t for t, r in base["metrics"]["tasks"].items() if r["kind"] == "binary"]
    users = base["preds"]["user"]
    paired = {}
    for name in names[1:]:
        for t in tasks:
            labels = base["preds"][f"label_{t}"]
            paired[f"{main_name} - {name}:{t}"] = ctr.paired_gauc(
                users, labels, runs[name]["preds"][f"pred_{t}"], base["preds"][f"pred_{t}"], n_boot=args.n_boot)
    dataset = base["metrics"]["dataset"]
    result = {"benchmark": "ranking", "protocol": args.protocol, "created": dt.datetime.now(dt.UTC).isoformat(),
              "commit": git_commit(),
              "machine": machine(), "dataset": dataset, "split": base["metrics"]["split"],
              "runs": {n: {"config": r["config"], "folder": r["folder"], "tasks": r["metrics"]["tasks"],
                           "run": r["metrics"]["run"]} for n, r in runs.items()},
              "paired": paired, "wall_seconds": time.perf_counter() - wall}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ranking_{dataset['name']}" + ("" if args.protocol == "streaming" else f"-{args.protocol}")
    write_json(args.out / f"{stem}.json", result)
    write_text(args.out / f"{stem}.md", markdown(result, names, tasks))
    print(markdown(result, names, tasks))


def markdown(result: dict, names: list[str], tasks: list[str]) -> str:
    split, m = result["split"], result["machine"]
    lines = [f"# Ranking on {result['dataset']['name']}: test impressions, per task", "",
             f"- split: {split.get('rule', {}).get('text', split.get('rule'))}", "",
             "- requests: " + PROTOCOLS[result.get("protocol", "streaming")], ""]
    for part in ("train", "valid", "test"):
        p = split.get(part)
        if isinstance(p, dict):
            lines.append(f"  - {part}: " + ", ".join(f"{k} {v}" for k, v in p.items()
                                                     if k in ("rows", "users", "first_time", "last_time")))
    lines += ["", f"- commit {result['commit']}, {m['cpus']} CPUs, torch {m['torch']}; every run: best validation "
              "epoch by GAUC (users-weighted mean over the binary tasks), test scored once", ""]
    lines += ["| model | task | AUC | GAUC [95% CI] | log loss | NE | ECE | epochs (best) | train min |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = result["runs"][name]
        run = r["run"]
        for t in tasks:
            x = r["tasks"][t]["metrics"]
            g = x["gauc"]
            lines.append(f"| {name} | {t} | {x['auc']['value']:.4f} | {g['value']:.4f} [{g['ci_low']:.4f}, "
                         f"{g['ci_high']:.4f}] | {x['log_loss']['value']:.4f} | {x['normalized_entropy']['value']:.4f} "
                         f"| {x['ece']['value']:.4f} | {run['epochs_run']} ({run['best_epoch']}) | "
                         f"{run['train_seconds'] / 60:.1f} |")
        for t, rep in r["tasks"].items():
            if rep["kind"] == "regression":
                x = rep["metrics"]
                lines.append(f"| {name} | {t} (regression) | MSE {x['mse']['value']:.4f} | Pearson "
                             f"{x['pearson']['value']:.4f} | | | | | |")
    lines += ["", "## Paired GAUC differences (same test impressions; user-bootstrap 95% CI; sign-flip "
              "permutation p, two-sided)", "", "| comparison | task | GAUC A | GAUC B | B - A [95% CI] | p | "
              "users better / worse |", "|---|---|---|---|---|---|---|"]
    for key, p in result["paired"].items():
        pair, task = key.rsplit(":", 1)
        g = p["gauc"]
        flag = " **" if task in MAIN_TASKS else ""
        lines.append(f"| {pair} | {task}{flag} | {g['a']:.4f} | {g['b']:.4f} | {g['diff']:+.4f} [{g['ci_low']:+.4f}, "
                     f"{g['ci_high']:+.4f}] | {g['p_value']:.4g} | {p['users_better']} / {p['users_worse']} |")
    lines += ["", "(A = the baseline, B = the first model; ** marks the issue's target tasks)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
