"""How far counting alone goes: per-task GAUC of the item prior (each binary task's smoothed per-item rate on
the training impressions strictly earlier than the candidate, genrec.models.ranking.ItemPrior) on the
validation and test impressions of a ranking log, and paired GAUC against finished ranking runs.

    python benchmarks/item_prior.py --runs runs/kuairand/ranker runs/kuairand/gbdt
writes benchmarks/results/item_prior_<log>.{json,md}. A strong count-only reference for rare signals (likes)
that any learned ranker should at least match.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import default_split
from genrec.eval import ctr
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.models.ranking import ItemPrior

RESULTS = Path(__file__).resolve().parent / "results"


def prior_scores(log, rows: np.ndarray, train: np.ndarray, strength: float) -> dict[str, np.ndarray]:
    prior = ItemPrior(log.n_items, log.binary_tasks, strength)
    prior.fit(torch.as_tensor(log.item[train]), torch.as_tensor(log.time[train]),
              {t: torch.as_tensor(log.labels[t][train]) for t in log.binary_tasks})
    with torch.no_grad():
        out = prior(torch.as_tensor(log.item[rows]), torch.as_tensor(log.time[rows]))
    return {t: v.numpy() for t, v in out.items()}


def run_predictions(folder: Path, test_rows: np.ndarray, log_name: str) -> tuple[str, dict]:
    """(display name, test predictions sorted by row) of a finished ranking run tested on ``test_rows``."""
    preds = pq.read_table(folder / "predictions_test.parquet").sort_by("row").to_pydict()
    if not np.array_equal(np.asarray(preds["row"]), test_rows):
        raise SystemExit(f"{folder}: tested on other impressions than {log_name}'s test part")
    return read_json(folder / "metrics.json")["run"]["model"] + f" ({folder.name})", preds


def paired_lines(paired: dict) -> list[str]:
    """Markdown rows of paired GAUC results (B minus A)."""
    lines = ["| comparison | difference | 95% CI | p |", "|---|---|---|---|"]
    for key, r in paired.items():
        g = r["gauc"]
        lines.append(f"| {key} ({g['b']:.4f} vs {g['a']:.4f}) | {g['diff']:+.4f} | [{g['ci_low']:+.4f}, "
                     f"{g['ci_high']:+.4f}] | {g['p_value']:.3g} |")
    return lines


def header(benchmark: str, log: str, split) -> dict:
    """The provenance fields of a result: benchmark, time, commit, machine, log and split."""
    return {"benchmark": benchmark, "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
            "machine": machine(), "log": log, "split": split.describe()}


def provenance(result: dict) -> str:
    return (f"Commit {result['commit']}, {result['created'][:10]}, {result['machine'].get('cpus', '?')} CPUs, "
            f"{result['wall_seconds']:.0f} s.")


def write_result(out: Path, stem: str, result: dict, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    write_text(out / f"{stem}.md", text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", default="kuairand-pure", help="built-in impression log")
    ap.add_argument("--strengths", type=float, nargs="+", default=[5.0, 20.0, 100.0])
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished ranking runs to pair against (test)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    log = load_impressions(args.log)
    split = default_split(log)
    train = np.flatnonzero(split.part("train"))
    parts = {p: np.flatnonzero(split.part(p)) for p in ("valid", "test")}
    gauc = {p: {} for p in parts}
    scores = {}
    for s in args.strengths:
        for p, rows in parts.items():
            sc = prior_scores(log, rows, train, s)
            gauc[p][f"{s:g}"] = {t: ctr.gauc(log.user[rows], log.labels[t][rows], sc[t])[0] for t in log.binary_tasks}
            if p == "test":
                scores[s] = sc
    # the strength chosen on validation (mean GAUC over click, long_view, like when present)
    main_tasks = [t for t in ("click", "long_view", "like") if t in log.binary_tasks] or list(log.binary_tasks)
    best = max(args.strengths, key=lambda s: np.mean([gauc["valid"][f"{s:g}"][t] for t in main_tasks]))
    paired = {}
    test_rows = parts["test"]
    for folder in args.runs:
        name, preds = run_predictions(folder, test_rows, args.log)
        for t in main_tasks:
            paired[f"item prior - {name}:{t}"] = ctr.paired_gauc(
                log.user[test_rows], log.labels[t][test_rows], np.asarray(preds[f"pred_{t}"]), scores[best][t],
                n_boot=args.n_boot)
    result = {**header("item_prior", args.log, split), "gauc": gauc, "strength_chosen_on_valid": best,
              "paired_test": paired, "wall_seconds": time.perf_counter() - wall}
    write_result(args.out, f"item_prior_{args.log}", result, markdown(result, main_tasks))


def markdown(result: dict, tasks: list[str]) -> str:
    lines = [f"# Item prior alone on {result['log']} (counts, no learning)", "",
             provenance(result) + " Score of an impression: the smoothed rate of each task on its item "
             "over the training impressions strictly earlier (ItemPrior; rate = (positives + strength x base) / "
             "(impressions + strength)). GAUC: per-user AUC, impression-weighted.", "",
             "| part | strength | " + " | ".join(f"{t} GAUC" for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for part, by_s in result["gauc"].items():
        for s, g in by_s.items():
            lines.append(f"| {part} | {s} | " + " | ".join(f"{g[t]:.4f}" for t in tasks) + " |")
    lines += ["", f"Strength chosen on validation: {result['strength_chosen_on_valid']:g}. Paired against runs "
              "on the test impressions (item prior minus run; 95% bootstrap over users, sign-flip p):", "",
              *paired_lines(result["paired_test"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
