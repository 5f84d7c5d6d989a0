"""Ranking quality on an impression log: the generative ranker against its baselines, per task, with paired tests.

Trains (with --train) or reads the run folders of the committed configs (default: configs/kuairand/{ranker,dcn,
din,gbdt}.yaml -> runs/kuairand/<model>), then tabulates each run's test metrics per task (AUC, GAUC with its 95%
user-bootstrap interval, log loss, normalised entropy, ECE) and, for every baseline, the paired GAUC difference
ranker - baseline on the same test impressions (user-bootstrap interval, sign-flip permutation p-value,
:func:`genrec.eval.ctr.paired_gauc`). Writes benchmarks/results/ranking_<dataset>.{json,md} with the split
(exact cut times), commit, machine and wall times. ``--protocol frozen`` compares runs trained and tested with
frozen requests (``requests: frozen``; folders <out>-frozen) and writes ranking_<dataset>-frozen.{json,md}.
``--seeds 0 1 2`` reads (or trains) every config at each training seed (seed s > 0 in <folder>-seed<s>) and reports
the mean over seeds, each seed's GAUC, and paired tests of the seed-averaged per-user AUCs; ``--ensemble`` instead
scores each model by its seed ensemble (every impression's predicted probability averaged over the seeds), reports
the ensemble's GAUC per task and pairs the ensembles (written with an -ensemble suffix). ``--folds default
20220504,20220505,20220507 ...`` adds earlier temporal folds (each VALID_DAY,TEST_DAY,END_DAY; runs in
<folder>-fold<TEST_DAY>, trained with --set temporal.valid_day=... etc.) and pools their test windows: more test
users for the paired tests, and the per-fold GAUC shows whether a lead holds in every window (-foldsN suffix).

    python benchmarks/ranking.py [--train] [--protocol frozen] [--seeds 0 1 2] [--folds default V,T,E ...]
        [--ensemble] [--configs configs/kuairand/ranker.yaml ...]
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


def run_folder(config: Path, protocol: str = "streaming", seed: int | None = None, fold: dict | None = None) -> Path:
    """Where a config's run lives: its `out`, then -<protocol> unless streaming, then -fold<test_day> for an earlier
    fold (``fold``: its valid_day / test_day / end_day), then -seed<s> for seed s > 0."""
    cfg = load_config(config)
    folder = Path(cfg.out or Path("runs") / config.stem)
    suffix = ("" if protocol == "streaming" else f"-{protocol}") + (f"-fold{fold['test_day']}" if fold else "")
    return folder.with_name(folder.name + suffix + (f"-seed{seed}" if seed else ""))


def parse_fold(text: str) -> dict | None:
    """``default`` (the log's own cuts) or VALID_DAY,TEST_DAY,END_DAY (YYYYMMDD each)."""
    if text == "default":
        return None
    try:
        valid, test, end = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold {text!r}: give default or VALID_DAY,TEST_DAY,END_DAY") from None
    if not valid < test < end:
        raise argparse.ArgumentTypeError(f"fold {text!r}: days must increase (valid < test < end)")
    return {"valid_day": valid, "test_day": test, "end_day": end}


def fold_overrides(fold: dict | None) -> list[str]:
    """The `genrec train --set` arguments of a fold."""
    return [a for k, v in (fold or {}).items() for a in ("--set", f"temporal.{k}={v}")]


def load_run(config: Path, folder: Path, protocol: str, seed: int | None) -> dict:
    if not (folder / "metrics.json").is_file():
        sys.exit(f"{folder}: no finished run (train it: genrec train --config {config}, or pass --train)")
    metrics = read_json(folder / "metrics.json")
    if metrics.get("requests", "streaming") != protocol:
        sys.exit(f"{folder} was tested with {metrics.get('requests', 'streaming')} requests, not {protocol}")
    trained_seed = metrics["run"]["config"]["train"]["seed"]
    if seed is not None and trained_seed != seed:
        sys.exit(f"{folder} was trained with seed {trained_seed}, not {seed}")
    preds = pq.read_table(folder / "predictions_test.parquet").sort_by("row").to_pydict()
    return {"folder": str(folder), "seed": trained_seed, "metrics": metrics,
            "preds": {k: np.asarray(v) for k, v in preds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=Path, nargs="+", default=[Path(f"configs/kuairand/{m}.yaml")
                                                                 for m in ("ranker", "dcn", "din", "gbdt")],
                    help="The first is the model under test; the others are its baselines.")
    ap.add_argument("--train", action="store_true", help="Train every config first, each fold and seed, reusing "
                    "finished runs (else only read the run folders).")
    ap.add_argument("--protocol", choices=("streaming", "frozen"), default="streaming",
                    help="Requests the runs trained and were tested with (the run config's `requests`): frozen "
                         "runs live in <out>-frozen and are trained with --set requests=frozen.")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="Training seeds of every config (default: the run each config names, one seed).")
    ap.add_argument("--available", action="store_true",
                    help="With --seeds: use the seeds each config has finished runs for (at least one), not all.")
    ap.add_argument("--ensemble", action="store_true",
                    help="With --seeds: score every model by the mean of its seeds' predicted probabilities.")
    ap.add_argument("--tag", default="", help="Suffix of the result files' names (keeps another table's files).")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--folds", type=parse_fold, nargs="+", default=[None], metavar="FOLD",
                    help="Temporal folds to pool: `default` (the log's own cuts) and/or VALID_DAY,TEST_DAY,END_DAY "
                         "(earlier test windows; runs in <folder>-fold<TEST_DAY>). With several, every model's test "
                         "impressions of all folds are pooled, a user in one fold's test window being one unit.")
    args = ap.parse_args()
    if args.ensemble and len(args.seeds or []) < 2:
        ap.error("--ensemble needs --seeds with two or more seeds")
    wall = time.perf_counter()
    seeds = args.seeds or [None]
    if args.train:
        for fold in args.folds:
            for config in args.configs:
                for seed in seeds:
                    folder = run_folder(config, args.protocol, seed, fold)
                    if (folder / "metrics.json").is_file():
                        continue  # finished runs are reused
                    subprocess.run([sys.executable, "-m", "genrec", "train", "--config", str(config), "--out",
                                    str(folder), "--set", f"requests={args.protocol}", *fold_overrides(fold)]
                                   + ([] if seed is None else ["--set", f"train.seed={seed}"]), check=True)
    folds = [load_fold(args.configs, args.protocol, seeds, args.available, fold) for fold in args.folds]
    runs = folds[0]
    names = list(runs)
    if any(list(f) != names for f in folds):
        sys.exit("every fold needs the same models")
    base = runs[names[0]]["seeds"][0]
    tasks = [t for t, r in base["metrics"]["tasks"].items() if r["kind"] == "binary"]
    users, labels, scores = pooled_arrays(folds, names, tasks, args.ensemble)
    paired = {}
    for name in names[1:]:
        for t in tasks:
            paired[f"{names[0]} - {name}:{t}"] = ctr.paired_gauc(users, labels[t], scores[name][t],
                                                                   scores[names[0]][t], n_boot=args.n_boot)
    dataset = base["metrics"]["dataset"]
    result = {"benchmark": "ranking", "protocol": args.protocol, "created": dt.datetime.now(dt.UTC).isoformat(),
              "commit": git_commit(), "machine": machine(), "dataset": dataset, "split": base["metrics"]["split"],
              "seeds": {n: [r["seed"] for r in runs[n]["seeds"]] for n in names},
              "runs": {n: {"config": r["config"], **run_summary(r["seeds"], args.seeds is not None)}
                       for n, r in runs.items()},
              "paired": paired, "wall_seconds": time.perf_counter() - wall}
    if len(folds) > 1:
        result["folds"] = [{"cuts": fold or "default", "split": f[names[0]]["seeds"][0]["metrics"]["split"],
                            "runs": {n: run_summary(r["seeds"], True) for n, r in f.items()}}
                           for fold, f in zip(args.folds, folds, strict=True)]
        result["pooled"] = {n: {t: [ctr.gauc(users, labels[t], s)[0] for s in scores[n][t]] for t in tasks}
                            for n in names}
    if args.ensemble:
        result["ensemble"] = {n: {t: ctr.gauc(users, labels[t], scores[n][t][0])[0] for t in tasks} for n in names}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ranking_{dataset['name']}" + ("" if args.protocol == "streaming" else f"-{args.protocol}")
    stem += "" if len(folds) == 1 else f"-folds{len(folds)}"
    stem += ("" if len(seeds) == 1 else f"-seeds{len(seeds)}") + ("-ensemble" if args.ensemble else "")
    stem += f"-{args.tag}" if args.tag else ""
    text = markdown(result, names, tasks) if len(folds) == 1 else folds_markdown(result, names, tasks)
    write_json(args.out / f"{stem}.json", result, compact=True)  # per-user arrays of every fold
    write_text(args.out / f"{stem}.md", text)
    print(text)


def load_fold(configs: list[Path], protocol: str, seeds: list, available: bool, fold: dict | None) -> dict:
    """Every config's runs of one fold (one per seed), keyed by model; all tested on the same impressions."""
    runs = {}
    for config in configs:
        have = [s for s in seeds if not available or
                (run_folder(config, protocol, s, fold) / "metrics.json").is_file()] or seeds[:1]
        per_seed = [load_run(config, run_folder(config, protocol, s, fold), protocol, s) for s in have]
        model = per_seed[0]["metrics"]["run"]["model"]
        # a model trained under two configs (din, din-listwise) is told apart by its config's name
        runs[model if model == config.stem else f"{model} ({config.stem})"] = {"config": str(config),
                                                                              "seeds": per_seed}
    base = next(iter(runs.values()))["seeds"][0]
    for r in (r for v in runs.values() for r in v["seeds"]):
        if not np.array_equal(r["preds"]["row"], base["preds"]["row"]):
            sys.exit(f"{r['folder']} and {base['folder']} were tested on different impressions: not comparable")
    return runs


def pooled_arrays(folds: list[dict], names: list[str], tasks: list[str], ensemble: bool):
    """Users, labels and every model's scores (one array per seed, or the ensemble) over the folds' test
    impressions, concatenated; a user of fold k becomes the unit (k, user), so each test window's GAUC is its own."""
    bases = [f[names[0]]["seeds"][0]["preds"] for f in folds]
    span = max(int(b["user"].max()) for b in bases) + 1
    users = np.concatenate([k * span + b["user"].astype(np.int64) for k, b in enumerate(bases)])
    labels = {t: np.concatenate([b[f"label_{t}"] for b in bases]) for t in tasks}
    scores = {}
    for n in names:
        scores[n] = {}
        for t in tasks:
            per_fold = [scores_of(f[n]["seeds"], t, ensemble) for f in folds]
            if len({len(p) for p in per_fold}) > 1:
                sys.exit(f"{n}: the folds have different numbers of seeds")
            scores[n][t] = [np.concatenate(parts) for parts in zip(*per_fold, strict=True)]
    return users, labels, scores


def scores_of(per_seed: list[dict], task: str, ensemble: bool) -> list[np.ndarray]:
    """A model's test scores of ``task``: one array per seed, or (``ensemble``) their mean as the only one."""
    preds = [r["preds"][f"pred_{task}"] for r in per_seed]
    return [np.mean(preds, axis=0)] if ensemble else preds


def run_summary(per_seed: list[dict], seeded: bool) -> dict:
    """The first run (folder, tasks, run); with --seeds also every seed's folder, run and task metrics."""
    first = per_seed[0]
    out = {"folder": first["folder"], "tasks": first["metrics"]["tasks"], "run": first["metrics"]["run"]}
    if seeded:
        out["by_seed"] = [{"seed": r["seed"], "folder": r["folder"], "tasks": r["metrics"]["tasks"],
                           "run": r["metrics"]["run"]} for r in per_seed]
    return out


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
    seeded = any("by_seed" in r for r in result["runs"].values())
    lines += seed_table(result, names, tasks) if seeded else single_table(result, names, tasks)
    lines += ["", "## Paired GAUC differences (same test impressions; user-bootstrap 95% CI; sign-flip "
              "permutation p, two-sided)", "", "| comparison | task | GAUC A | GAUC B | B - A [95% CI] | p | "
              "users better / worse |", "|---|---|---|---|---|---|---|"]
    lines += paired_rows(result)
    lines += ["", "(A = the baseline, B = the first model; ** marks the issue's target tasks)"]
    if "ensemble" in result:
        lines += ["", "## Seed ensembles (each impression's predicted probability averaged over a model's seeds)", "",
                  "| model | " + " | ".join(f"{t} GAUC" for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {n} | " + " | ".join(f"{result['ensemble'][n][t]:.4f}" for t in tasks) + " |" for n in names]
        lines += ["", "The paired tests above compare these ensembles (GAUC A / B: the ensembles' GAUC)."]
    elif seeded:
        seeds = "; ".join(f"{n} {', '.join(map(str, s))}" for n, s in result["seeds"].items())
        lines += ["", f"Training seeds ({seeds}): GAUC A / B and B - A are means over seeds; each user's AUC "
                  "is averaged over a model's seeds before the paired test, so the test "
                  "compares the seed-averaged models on these users and seed-to-seed variation is shown in the "
                  "per-seed column above, not tested."]
    return "\n".join(lines) + "\n"


def single_table(result: dict, names: list[str], tasks: list[str]) -> list[str]:
    lines = ["| model | task | AUC | GAUC [95% CI] | log loss | NE | ECE | epochs (best) | train min |",
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
    return lines


def seed_table(result: dict, names: list[str], tasks: list[str]) -> list[str]:
    """Means over seeds, with each seed's GAUC; epochs and minutes per seed."""
    lines = ["| model | task | AUC | GAUC mean (per seed) | log loss | NE | ECE | best epoch per seed | train min "
             "per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        by_seed = result["runs"][name]["by_seed"]
        epochs = " / ".join(str(r["run"]["best_epoch"]) for r in by_seed)
        minutes = " / ".join(f"{r['run']['train_seconds'] / 60:.0f}" for r in by_seed)
        for t in tasks:
            def mean(metric: str, t: str = t, by_seed: list = by_seed) -> float:
                return float(np.mean([r["tasks"][t]["metrics"][metric]["value"] for r in by_seed]))
            each = " / ".join(f"{r['tasks'][t]['metrics']['gauc']['value']:.4f}" for r in by_seed)
            lines.append(f"| {name} | {t} | {mean('auc'):.4f} | {mean('gauc'):.4f} ({each}) | {mean('log_loss'):.4f} "
                         f"| {mean('normalized_entropy'):.4f} | {mean('ece'):.4f} | {epochs} | {minutes} |")
    return lines


def folds_markdown(result: dict, names: list[str], tasks: list[str]) -> str:
    """Pooled folds: each fold's cuts and per-seed GAUC, the pooled GAUC, and the paired tests on the pool."""
    m = result["machine"]
    lines = [f"# Ranking on {result['dataset']['name']}: {len(result['folds'])} temporal folds pooled", "",
             "- requests: " + PROTOCOLS[result.get("protocol", "streaming")], "",
             "- folds (each trained, selected on its validation day and tested once; test windows do not overlap):"]
    for f in result["folds"]:
        sp = f["split"]
        test = sp.get("test", {})
        lines.append(f"  - {sp.get('rule', {}).get('text', '')}: test rows {test.get('rows')}, users "
                     f"{test.get('users')}, train rows {sp.get('train', {}).get('rows')}")
    lines += ["", f"- commit {result['commit']}, {m['cpus']} CPUs, torch {m['torch']}; seeds: "
              + "; ".join(f"{n} {', '.join(map(str, s))}" for n, s in result["seeds"].items()), "",
              "| model | task | pooled GAUC (mean over seeds) | per fold: GAUC mean over seeds | ECE (run mean) |",
              "|---|---|---|---|---|"]
    for n in names:
        for t in tasks:
            pooled = result["pooled"][n][t]
            per_fold = " / ".join(f"{fold_gauc(f['runs'][n], t):.4f}" for f in result["folds"])
            ece = np.mean([r["tasks"][t]["metrics"]["ece"]["value"] for f in result["folds"]
                           for r in f["runs"][n]["by_seed"]])
            lines.append(f"| {n} | {t} | {np.mean(pooled):.4f} | {per_fold} | {ece:.4f} |")
    lines += ["", "## Paired GAUC differences on the pooled test impressions (unit: a user in one fold's test window; "
              "unit-bootstrap 95% CI; sign-flip permutation p, two-sided)", "",
              "| comparison | task | GAUC A | GAUC B | B - A [95% CI] | p | units better / worse |",
              "|---|---|---|---|---|---|---|"]
    lines += paired_rows(result)
    lines += ["", "(A = the baseline, B = the first model; ** marks the issue's target tasks; each unit's AUC is "
              "averaged over a model's seeds" + (", here the seed ensemble's" if "ensemble" in result else "")
              + " before the paired test)"]
    return "\n".join(lines) + "\n"


def paired_rows(result: dict) -> list[str]:
    """One table row per paired comparison and task (the issue's target tasks flagged **)."""
    lines = []
    for key, p in result["paired"].items():
        pair, task = key.rsplit(":", 1)
        g = p["gauc"]
        flag = " **" if task in MAIN_TASKS else ""
        lines.append(f"| {pair} | {task}{flag} | {g['a']:.4f} | {g['b']:.4f} | {g['diff']:+.4f} [{g['ci_low']:+.4f}, "
                     f"{g['ci_high']:+.4f}] | {g['p_value']:.4g} | {p['users_better']} / {p['users_worse']} |")
    return lines


def fold_gauc(run: dict, task: str) -> float:
    """A model's test GAUC of one fold, the mean over its seeds."""
    return float(np.mean([r["tasks"][task]["metrics"]["gauc"]["value"] for r in run["by_seed"]]))


if __name__ == "__main__":
    main()
