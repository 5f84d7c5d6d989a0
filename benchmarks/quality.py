"""Quality table: sequential models against the baselines and the published numbers, on the public protocol
(full catalog, leave-one-out, seen items excluded, test split read once after validation-based selection).

Each (config, seed) trains into runs/bench/<dataset>/<config stem>/seed<k>; finished runs are reused, so the
table can be built up over several invocations. Per config: the mean over seeds with a 95% t-interval across
seeds (when >= 2 seeds), each seed's bootstrap interval over users, and a paired test of seed 0 against
each baseline (popularity, item-kNN). Writes benchmarks/results/quality.{json,md}, keeping the rows of the previous
table whose run folders are not on this machine.

    GENREC_DATA_DIR=../shared/data python benchmarks/quality.py --config configs/movielens-1m/hstu.yaml --seeds 0 1 2
    python benchmarks/quality.py --collect      # rebuild the table from finished runs only
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
from scipy import stats

from genrec.data import load_dataset
from genrec.eval import compare_runs
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.train import parse_params, run_baseline, trainer_class
from genrec.train.config import load_config

RUNS = Path("runs/bench")
SHOWN = ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200"]
PUBLISHED = {
    "movielens-1m": {"SASRec (generative-recommenders)": {"hr@10": .2853, "ndcg@10": .1603, "hr@50": .5474,
                                                          "ndcg@50": .2185, "hr@200": .7528, "ndcg@200": .2498},
                     "HSTU (generative-recommenders)": {"hr@10": .3097, "ndcg@10": .1720, "hr@50": .5754,
                                                        "ndcg@50": .2307, "hr@200": .7716, "ndcg@200": .2606},
                     "HSTU-large (generative-recommenders)": {"hr@10": .3294, "ndcg@10": .1893, "hr@50": .5935,
                                                              "ndcg@50": .2481, "hr@200": .7839,
                                                              "ndcg@200": .2771}},
    "amazon-beauty": {"SASRec, sampled softmax, tuned": {"hr@10": .0921, "ndcg@10": .0531},
                      "TIGER": {"hr@5": .0454, "ndcg@5": .0321, "hr@10": .0648, "ndcg@10": .0384}},
}


def train_one(config: Path, seed: int, threads: int | None = None, device: str | None = None,
              runs: Path = RUNS, overrides: dict | None = None) -> Path:
    """Train (or reuse, or resume) ``config`` with ``seed`` into runs/<dataset>/<stem>[-<device>]/seed<k>."""
    extra = {"train.seed": seed} | ({"train.threads": threads} if threads else {})
    extra |= ({"train.device": device} if device else {}) | (overrides or {})
    cfg = load_config(config, extra)
    stem = config.stem + (f"-{device.split(':')[0]}" if device and device != "cpu" else "")
    folder = runs / cfg.dataset / stem / f"seed{seed}"
    if (folder / "metrics.json").is_file():
        print(f"reusing {folder}", flush=True)
        return folder
    resume = (folder / "checkpoint" / "trainer.json").is_file()
    trainer_class(cfg)(cfg, folder, show_progress=True).fit(resume=resume)
    return folder


BASELINES = ("popularity", "itemknn")


def ensure_baselines(dataset: str) -> None:
    for name in BASELINES:
        folder = RUNS / dataset / name
        if not (folder / "metrics.json").is_file():
            run_baseline(name, load_dataset(dataset), out=folder, show_progress=False)


def summarise(dataset_dir: Path) -> dict:
    out = {}
    for model_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        seeds = sorted(p for p in model_dir.glob("seed*") if (p / "metrics.json").is_file())
        if model_dir.name in BASELINES:
            seeds = [model_dir] if (model_dir / "metrics.json").is_file() else []
        if not seeds:
            continue
        runs = [read_json(s / "metrics.json") for s in seeds]
        entry = {"seeds": [s.name for s in seeds], "per_seed": [], "mean": {}, "across_seeds_ci95": {}}
        for r in runs:
            entry["per_seed"].append({"metrics": {k: r["metrics"][k] for k in SHOWN if k in r["metrics"]},
                                      "best_epoch": r["info"].get("best_epoch"),
                                      "train_seconds": r["info"].get("train_seconds"),
                                      "stopped": r["info"].get("stopped"), "commit": r["run"]["commit"],
                                      "device": r["info"].get("device", "cpu"),
                                      "gpu": r["run"]["machine"].get("gpu"),
                                      "commit_at_start": r["info"].get("commit_at_start"),
                                      "refit": r["info"].get("refit")})
        for k in SHOWN:
            vals = np.array([r["metrics"][k]["mean"] for r in runs])
            entry["mean"][k] = float(vals.mean())
            if len(vals) >= 2:
                half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
                entry["across_seeds_ci95"][k] = [float(vals.mean() - half), float(vals.mean() + half)]
        if model_dir.name not in BASELINES:
            entry["paired_seed0"] = {b: compare_runs(dataset_dir / b, seeds[0], ["hr@10", "ndcg@10"])["metrics"]
                                     for b in BASELINES if (dataset_dir / b / "metrics.json").is_file()}
        entry["config"] = read_json(seeds[0] / "config.json")
        out[model_dir.name] = entry
    return out


def keep_previous(datasets: dict, previous: Path) -> dict:
    """Rows of the existing table whose run folders are not on this machine stay as they were (each records its
    own commits, machine-independent metrics and minutes), so a run added on one machine does not drop the
    rows trained on another; rows found here replace theirs."""
    if not previous.is_file():
        return datasets
    merged = {ds: dict(models) for ds, models in read_json(previous).get("datasets", {}).items()}
    for ds, models in datasets.items():
        merged.setdefault(ds, {}).update(models)
    return {ds: dict(sorted(models.items())) for ds, models in sorted(merged.items())}


def render(res: dict) -> str:
    lines = ["# Quality: full catalog, leave-one-out, seen items excluded, test split", "",
             f"- commit {res['commit']} (each run records its own commit below), {res['created']}",
             f"- machine: {res['machine']['processor']}, {res['machine']['cpus']} CPUs, torch "
             f"{res['machine']['torch']}",
             "- model selection and early stopping on the validation item (NDCG@10); the test item is read once",
             "- genrec rows: mean over seeds; [95% t-interval across seeds] when >= 2 seeds, otherwise the 95% "
             "bootstrap interval over users of the single run",
             "- rows accumulate: a collect keeps the rows of the previous table whose run folders are not on the "
             "machine that rebuilt it (each row names the commits its runs trained at)", ""]
    for ds, models in res["datasets"].items():
        lines += [f"## {ds}", "", "| model | seeds | " + " | ".join(SHOWN) + " | train min (mean) |",
                  "|---" * (len(SHOWN) + 3) + "|"]
        for name, e in models.items():
            cells = []
            for k in SHOWN:
                m = e["mean"][k]
                ci = e["across_seeds_ci95"].get(k) or [e["per_seed"][0]["metrics"][k]["ci_low"],
                                                       e["per_seed"][0]["metrics"][k]["ci_high"]]
                cells.append(f"{m:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]")
            minutes = [s["train_seconds"] / 60 for s in e["per_seed"] if s.get("train_seconds")]
            lines.append(f"| {name} | {len(e['seeds'])} | " + " | ".join(cells) +
                         f" | {np.mean(minutes):.1f} |" if minutes else f"| {name} | {len(e['seeds'])} | " +
                         " | ".join(cells) + " | |")
        for name, row in PUBLISHED.get(ds, {}).items():
            lines.append(f"| {name} (published) | | " + " | ".join(f"{row[k]:.4f}" if k in row else "" for k in SHOWN)
                         + " | |")
        lines.append("")
        for name, e in models.items():
            for base, paired in e.get("paired_seed0", {}).items():
                lines.append(f"- {name} seed 0 minus {base}: " + "; ".join(
                    f"{m} {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}], p={v['p_value']:.2g}"
                    for m, v in paired.items()))
            for s, seed in zip(e["per_seed"], e["seeds"], strict=True):
                if s.get("best_epoch"):
                    where = f"{s['device']} ({s['gpu']})" if s.get("gpu") else s.get("device", "cpu")
                    lines.append(f"- {name} {seed} on {where}: best epoch {s['best_epoch']}, "
                                 f"stopped by {s['stopped']}, "
                                 f"{(s['train_seconds'] or 0) / 60:.1f} min training, commit at the end "
                                 f"{s['commit']}" + (f", at the start {s['commit_at_start']}"
                                                     if s.get("commit_at_start") else "")
                                 + (f"; then refit on the validation items, {s['refit']['epochs']} epochs in "
                                    f"{s['refit']['train_seconds'] / 60:.1f} min (the selection minutes are those "
                                    "of the run it resumed, if any)" if s.get("refit") else ""))
        lines.append("")
    lines.append("Leave-one-out has one target per user, so HR@K equals Recall@K (the Amazon papers' name).")
    if "movielens-1m" in res["datasets"]:
        lines.append("Published ML-1M rows used 3,706 items and read the test item every epoch without a "
                     "validation split; genrec uses SASRec's 3,416-item form and validation-based selection.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, action="append", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads per training run (default: all)")
    p.add_argument("--device", default=None, help="train.device for every run (cpu, cuda, auto); a non-cpu device "
                   "writes to runs/bench/<dataset>/<config stem>-<device>")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override a config field for "
                   "every run, e.g. train.max_minutes=6 (repeatable)")
    p.add_argument("--collect", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--skip-baselines", action="store_true", help="do not fit the baselines here (parallel jobs "
                   "sharing one runs/ folder; fit them once beforehand)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    start = time.perf_counter()
    if not args.collect:
        for config in args.config:
            if not args.skip_baselines:
                ensure_baselines(load_config(config).dataset)
            for seed in args.seeds:
                train_one(config, seed, args.threads, args.device, overrides=parse_params(args.overrides))
    datasets = {d.name: summarise(d) for d in sorted(RUNS.iterdir()) if d.is_dir()} if RUNS.is_dir() else {}
    datasets = keep_previous(datasets, args.out / "quality.json")
    res = {"commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
           "command": "python benchmarks/quality.py " + " ".join(
               [f"--config {c}" for c in args.config] + (["--seeds", *map(str, args.seeds)] if args.config else [])
               + (["--collect"] if args.collect else [])),
           "wall_seconds_this_invocation": time.perf_counter() - start, "datasets": datasets}
    write_json(args.out / "quality.json", res)
    write_text(args.out / "quality.md", render(res))
    print(f"wrote {args.out / 'quality.md'}")


if __name__ == "__main__":
    main()
