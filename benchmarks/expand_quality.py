"""Does fractal expansion keep a real dataset's shape, and is the expanded data still worth learning from?

Shape: MovieLens-1M and its expansions (``genrec data expand``, by default x4 and x16, plus x4 exactly as in the
paper for reference: rows and columns shuffled uniformly per block): the item popularity curve (log-log slope
of the normalised rank-frequency curve, Gini) and the history-length distribution (quantiles over the mean,
log-log slope of its tail), with both curves overlaid in a plot.

Models (``--train-minutes M``, 0 = skip): popularity and item-kNN (MovieLens-1M's validated settings) and a
SASRec run (configs/movielens-1m/sasrec.yaml, stopped after M minutes, validation on a fixed user sample) on
the x``--train-factor`` expansion, leave-one-out, full catalog, seen items excluded; the test split is read once.

Writes benchmarks/results/expand_quality.{json,md,png} with the command line, commit, machine and wall time;
refuses a checkout whose code (src/, this script) has uncommitted changes unless --allow-dirty (then marked).
The expanded shards and run folders go to --work (not committed: they derive from licensed data).

    GENREC_DATA_DIR=../shared/data python benchmarks/expand_quality.py [--factors 4 16] [--train-minutes 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data import REGISTRY, SequenceDataset, get_builtin, load_dataset, prepare
from genrec.data.expand import expand, expand_config
from genrec.io import write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
SHOWN = ["hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200"]
KNN = {"window": 5, "history_decay": 0.5}  # chosen on MovieLens-1M's validation split (benchmarks/baselines.py)


# --- provenance ---------------------------------------------------------------------------------------------

def checkout() -> dict:
    """HEAD and the tracked files that differ from it; the run is dirty when code that ran (src/, this
    script) differs."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    code = [f for f in changed if f.startswith("src/") or f == "benchmarks/expand_quality.py"]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(code), "modified_code": code,
            "modified_other": [f for f in changed if f not in code]}


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}


# --- shape ----------------------------------------------------------------------------------------------------

def loglog_slope(counts: np.ndarray, lo: float, hi: float) -> float:
    """Slope of log(count / mean) against log(rank / n) over the ranks between fractions lo and hi."""
    c = np.sort(counts[counts > 0])[::-1].astype(np.float64)
    r = np.arange(int(lo * len(c)), max(int(hi * len(c)), int(lo * len(c)) + 2))
    return float(np.polyfit(np.log((r + 1) / len(c)), np.log(c[r] / c.mean()), 1)[0])


def tail_slope(lengths: np.ndarray) -> float:
    """Log-log slope of the complementary CDF of history lengths between their median and 99th percentile."""
    x = np.sort(lengths).astype(np.float64)
    ccdf = 1.0 - np.arange(len(x)) / len(x)
    sel = (x >= np.quantile(x, 0.5)) & (x <= np.quantile(x, 0.99))
    return float(np.polyfit(np.log(x[sel]), np.log(ccdf[sel]), 1)[0])


def gini(counts: np.ndarray) -> float:
    c = np.sort(counts).astype(np.float64)
    return float((2 * np.arange(1, len(c) + 1) - len(c) - 1) @ c / (len(c) * c.sum()))


def shape(item_counts: np.ndarray, lengths: np.ndarray) -> dict:
    item_counts, lengths = item_counts[item_counts > 0], lengths[lengths > 0]
    return {
        "users": len(lengths), "items": len(item_counts), "events": int(lengths.sum()),
        "popularity": {"slope_1_50": loglog_slope(item_counts, 0.01, 0.5),
                       "slope_head_01_10": loglog_slope(item_counts, 0.001, 0.1), "gini": gini(item_counts),
                       "top1pct_share": float(np.sort(item_counts)[::-1][: max(1, len(item_counts) // 100)].sum()
                                              / item_counts.sum())},
        "history": {"mean": float(lengths.mean()), "quantiles": dict(zip(map(str, QUANTILES),
                                                                         np.quantile(lengths, QUANTILES).tolist(),
                                                                         strict=True)),
                    "quantiles_over_mean": dict(zip(map(str, QUANTILES),
                                                    (np.quantile(lengths, QUANTILES) / lengths.mean()).tolist(),
                                                    strict=True)),
                    "tail_slope": tail_slope(lengths), "gini": gini(lengths)},
    }


def read_counts(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(folder, columns=["user_id", "item_id"])
    return (np.bincount(table.column("item_id").to_numpy()), np.bincount(table.column("user_id").to_numpy()))


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, (items, lengths) in curves.items():
        style = {"color": "black", "lw": 2.5} if label == "source" else {"lw": 1.3}
        if "paper" in label:
            style["ls"] = "--"
        for ax, c in zip(axes, (items, lengths), strict=True):
            c = np.sort(c[c > 0])[::-1].astype(np.float64)
            ax.loglog(np.arange(1, len(c) + 1) / len(c), c / c.mean(), label=label, **style)
    axes[0].set(title="item popularity (rank-frequency)", xlabel="rank / items", ylabel="interactions / mean")
    axes[1].set(title="history length (rank-frequency)", xlabel="rank / users", ylabel="length / mean")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- models ---------------------------------------------------------------------------------------------------

def load_expanded(folder: Path) -> SequenceDataset:
    t = pq.read_table(folder)
    return prepare(pa.table({"user": t.column("user_id"), "item": t.column("item_id"),
                             "timestamp": t.column("timestamp")}), name=folder.name)


def _earlier_run(folder: Path, ds: SequenceDataset, params: dict, n_boot: int) -> dict | None:
    """The metric summary of a baseline run already in ``folder`` on the same data (same counts), settings and
    resamples, else None: item-kNN on an expansion takes minutes and the expansion is deterministic."""
    try:
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same_data = all(metrics["dataset"][k] == ds.stats()[k] for k in ("users", "items", "interactions"))
    same_run = config["n_boot"] == n_boot and all(config["params"].get(k) == v for k, v in params.items())
    return metrics["metrics"] if same_data and same_run and config["part"] == "test" else None


def evaluate_models(folder: Path, runs: Path, minutes: float, valid_users: int, n_boot: int,
                    epochs: int = 0) -> dict:
    """Popularity and item-kNN, then SASRec on the expanded folder: ``epochs`` epochs (its learning-rate schedule
    spans them) when given, else as many as fit in ``minutes``; neither: baselines only."""
    from genrec.eval import compare_runs
    from genrec.train import run_baseline
    from genrec.train.config import load_config
    from genrec.train.trainer import Trainer

    ds = load_expanded(folder)
    out: dict = {"dataset": ds.stats(), "models": {}}
    for name, params in (("popularity", {}), ("itemknn", KNN)):
        t = time.perf_counter()
        summary, run = _earlier_run(runs / name, ds, params, n_boot), None
        if summary is None:
            run = run_baseline(name, ds, params=params, part="test", n_boot=n_boot, out=runs / name,
                               show_progress=False)
            summary = run.evaluation.summary
        else:
            print(f"reusing {runs / name} (same data, settings and resamples)", flush=True)
        out["models"][name] = {"params": params, "seconds": time.perf_counter() - t, "reused": run is None,
                               "metrics": {k: summary[k] for k in SHOWN}}
        print(name, {k: round(summary[k]["mean"], 4) for k in SHOWN[:2]}, flush=True)
    if minutes <= 0 and epochs <= 0:
        return out
    config = ROOT / "configs/movielens-1m/sasrec.yaml"
    cfg = load_config(config, {"dataset": str(folder), "train.max_minutes": minutes or None,
                               "train.epochs": epochs or 1000, "eval.valid_users": valid_users,
                               "eval.n_boot": n_boot})
    t = time.perf_counter()
    res = Trainer(cfg, runs / "sasrec", dataset=ds, show_progress=False).fit()
    out["models"]["sasrec"] = {"config": str(config.relative_to(ROOT)), "max_minutes": minutes or None,
                               "max_epochs": epochs or None,
                               "valid_users": valid_users, "best_epoch": res.best_epoch,
                               "epochs": len(res.history), "seconds": time.perf_counter() - t,
                               "metrics": {k: res.test.summary[k] for k in SHOWN}}
    print("sasrec", {k: round(res.test.mean(k), 4) for k in SHOWN[:2]}, flush=True)
    out["paired_sasrec_minus"] = {}
    for name in ("popularity", "itemknn"):
        try:
            out["paired_sasrec_minus"][name] = compare_runs(runs / name, runs / "sasrec", ["hr@10", "ndcg@10"],
                                                            n_boot=n_boot)["metrics"]
        except Exception as e:  # a report without the paired test is still worth writing
            out["paired_sasrec_minus"][name] = {"error": str(e)}
    return out


# --- report ---------------------------------------------------------------------------------------------------

def _budget(sas: dict) -> str:
    if sas.get("max_epochs"):
        return f"{sas['max_epochs']} epochs (learning-rate schedule over them)"
    return f"stopped after {sas['max_minutes']} min"


def render(r: dict) -> str:
    co, m = r["checkout"], r["machine"]
    lines = ["# Fractal expansion: does the expanded data keep the source's shape?", "",
             f"- command: `{r['command']}`",
             f"- commit {co['commit']}" + (" (**dirty**: uncommitted changes in " + ", ".join(co["modified_code"])
                                           + ")" if co["dirty"] else "") + f", {r['created']}",
             f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; wall time {r['wall_seconds']:.0f} s",
             f"- source: {r['source']} ({r['shapes']['source']['users']:,} users, "
             f"{r['shapes']['source']['items']:,} items, {r['shapes']['source']['events']:,} events); "
             f"expansion: mode={r['mode']}, strata={r['strata']}, seed {r['seed']}",
             "- popularity slope: log-log slope of interactions/mean against rank/items over ranks 1%-50% "
             "(head: 0.1%-10%); history tail: log-log slope of the length CCDF between the median and p99", "",
             "| data | users | items | events | x users / items / events | pop. slope | head slope | pop. Gini "
             "| top-1% share | len p10/p50/p90/p99 over mean | len tail slope | len Gini | s |",
             "|---" * 13 + "|"]
    for label, s in r["shapes"].items():
        f = r["expansions"].get(label, {}).get("factors")
        q = s["history"]["quantiles_over_mean"]
        lines.append(
            f"| {label} | {s['users']:,} | {s['items']:,} | {s['events']:,} | "
            + (f"{f['users']:.2f} / {f['items']:.2f} / {f['events']:.3f}" if f else "-")
            + f" | {s['popularity']['slope_1_50']:.3f} | {s['popularity']['slope_head_01_10']:.3f} "
            f"| {s['popularity']['gini']:.3f} | {s['popularity']['top1pct_share']:.3f} "
            f"| {q['0.1']:.2f} / {q['0.5']:.2f} / {q['0.9']:.2f} / {q['0.99']:.2f} "
            f"| {s['history']['tail_slope']:.2f} | {s['history']['gini']:.3f} "
            f"| {r['expansions'].get(label, {}).get('seconds', 0):.1f} |")
    lines += ["", f"![rank-frequency curves]({Path(r['plot']).name})", ""]
    for label, e in r["expansions"].items():
        lines.append(f"- {label}: {e['blocks']['users']} x {e['blocks']['items']} blocks, expected event factor "
                     f"{e['expected_event_factor']:.3f}, strata={e['config']['strata']}, "
                     f"mode={e['config']['mode']}, `{e['command']}`")
    mr = r.get("models")
    if mr is None:
        lines += ["", "Models: not run (`--train-minutes 0`; the model part needs `--train-minutes M`, or "
                  "`--baselines-only`)."]
    else:
        d, sas = mr["dataset"], mr["models"].get("sasrec")
        sas_text = (f" SASRec: {sas['config']}, {_budget(sas)}: {sas['epochs']} epochs in {sas['seconds'] / 60:.0f} "
                    f"min, best {sas['best_epoch']}, validated on {sas['valid_users']} sampled users." if sas else "")
        lines += ["", f"## Models on {r['train_label']} ({d['users']:,} users, {d['items']:,} items, "
                  f"{d['interactions']:,} interactions)", "",
                  "Leave-one-out, full catalog, seen items excluded, test read once; means with 95% bootstrap "
                  f"intervals ({r['n_boot']} resamples). Item-kNN uses MovieLens-1M's validated settings "
                  f"{KNN}.{sas_text}", "", "| model | " + " | ".join(SHOWN) + " | s |",
                  "|---" * (len(SHOWN) + 2) + "|"]
        for name, mm in mr["models"].items():
            cells = [f"{mm['metrics'][k]['mean']:.4f} [{mm['metrics'][k]['ci_low']:.4f}, "
                     f"{mm['metrics'][k]['ci_high']:.4f}]" for k in SHOWN]
            took = "reused" if mm.get("reused") else f"{mm['seconds']:.0f}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {took} |")
        if "sasrec" not in mr["models"]:
            lines.append("\nSASRec: not run (`--baselines-only`).")
        for name, cmp in mr.get("paired_sasrec_minus", {}).items():
            if "error" in cmp:
                lines.append(f"\nPaired test SASRec minus {name}: not available ({cmp['error']})")
                continue
            lines.append(f"\nPaired test, SASRec minus {name}: " + "; ".join(
                f"{k} {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}], p={v['p_value']:.2g}"
                for k, v in cmp.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="movielens-1m", help="built-in dataset or prepared folder to expand")
    p.add_argument("--factors", nargs="+", type=float, default=[4.0, 16.0])
    p.add_argument("--mode", default="timeline", choices=["timeline", "kronecker", "shuffled"])
    p.add_argument("--strata", type=int, default=4)
    p.add_argument("--no-paper", action="store_true",
                   help="skip the reference run exactly as in the paper (mode shuffled, uniform shuffles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-minutes", type=float, default=0.0, help="SASRec time budget (0: none)")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="SASRec epochs, its schedule spanning them (0: as many as --train-minutes allows); "
                        "neither set skips the model part")
    p.add_argument("--baselines-only", action="store_true", help="model part without SASRec")
    p.add_argument("--train-factor", type=float, default=4.0)
    p.add_argument("--valid-users", type=int, default=1000)
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--work", type=Path, default=Path("runs/expand_quality"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--allow-dirty", action="store_true", help="record results from modified code (marked)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args()
    if args.render:
        result = json.loads((args.out / "expand_quality.json").read_text())
        write_text(args.out / "expand_quality.md", render(result))
        return
    co = checkout()
    if co["dirty"] and not args.allow_dirty:
        raise SystemExit(f"uncommitted changes in {', '.join(co['modified_code'])}; commit first "
                         "(or pass --allow-dirty)")
    start = time.perf_counter()
    if args.dataset in REGISTRY and not get_builtin(args.dataset).available():
        raise SystemExit(f"{args.dataset} is not under GENREC_DATA_DIR")
    ds = load_dataset(args.dataset)
    curves = {"source": (np.bincount(ds.sequences.values)[1:], ds.sequences.lengths)}
    result = {"command": shlex.join(["python", *sys.argv]), "checkout": co, "created": dt.datetime.now(dt.UTC)
              .isoformat(), "machine": machine(), "source": ds.name, "mode": args.mode, "strata": args.strata,
              "seed": args.seed, "n_boot": args.bootstrap, "shapes": {"source": shape(*curves["source"])},
              "expansions": {}}
    runs = [(f"x{f:g}", f, args.mode, args.strata) for f in args.factors]
    if not args.no_paper:
        runs.append((f"x{args.factors[0]:g} as in the paper (shuffled, uniform)", args.factors[0], "shuffled", 0))
    for label, factor, mode, strata in runs:
        folder = args.work / (f"x{factor:g}" + ("" if (mode, strata) == (args.mode, args.strata) else "-paper"))
        t = time.perf_counter()
        meta = expand(ds, expand_config(factor=factor, mode=mode, strata=strata, seed=args.seed), folder,
                      overwrite=True, show_progress=False)
        cmd = f"genrec data expand {args.dataset} --factor {factor:g} --mode {mode} --strata {strata} " \
              f"--seed {args.seed} --out {folder}"
        result["expansions"][label] = {**{k: meta[k] for k in ("blocks", "expected_event_factor", "factors",
                                                                 "config", "users", "items", "events")},
                                       "seconds": time.perf_counter() - t, "command": cmd}
        curves[label] = read_counts(folder)
        result["shapes"][label] = shape(*curves[label])
        print(label, result["shapes"][label]["popularity"], result["shapes"][label]["history"]["tail_slope"],
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(args.out / "expand_quality.png")
    plot(curves, args.out / "expand_quality.png")
    if args.train_minutes > 0 or args.train_epochs > 0 or args.baselines_only:
        folder = args.work / f"x{args.train_factor:g}"
        if not (folder / "_expand.json").is_file():
            expand(ds, expand_config(factor=args.train_factor, mode=args.mode, strata=args.strata,
                                     seed=args.seed), folder, overwrite=True, show_progress=False)
        result["train_label"] = f"{ds.name} x{args.train_factor:g}"
        minutes, epochs = (0.0, 0) if args.baselines_only else (args.train_minutes, args.train_epochs)
        result["models"] = evaluate_models(folder, args.work / "runs", minutes, args.valid_users, args.bootstrap,
                                           epochs)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(args.out / "expand_quality.json", result)
    write_text(args.out / "expand_quality.md", render(result))
    print(f"wrote {args.out / 'expand_quality.json'}, .md and .png")


if __name__ == "__main__":
    main()
