"""What a per-user counter alone scores on the streaming protocol: GAUC of -(the user's positives of a task
among their strictly earlier impressions) on the validation and test impressions of a ranking log, and paired
GAUC against finished ranking runs.

Within one user's test window the count only grows, so this score orders a user's impressions by time. For a rare
signal it is close to an oracle of the protocol rather than of the items: a user's impressions after their
(only) like all carry a higher count than the like itself, so the like ranks above them. A served request scores
all its candidates with one history, where this score is a constant and orders nothing; a model's streaming
GAUC above this reference is what it learned beyond the position in the window.

    python benchmarks/ranking_counters.py --runs runs/kuairand/ranker-ta runs/kuairand/din-listwise
writes benchmarks/results/ranking_counters_<log>.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import default_split
from genrec.eval import ctr
from item_prior import header, paired_lines, provenance, run_predictions, write_result

RESULTS = Path(__file__).resolve().parent / "results"
MAIN_TASKS = ("click", "long_view", "like")


def earlier_positives(user: np.ndarray, times: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: the user's positives among their rows strictly earlier in time (same-time rows not counted)."""
    order = np.lexsort((times, user))
    u, t, y = user[order], times[order], labels[order].astype(np.int64)
    before = np.concatenate([[0], np.cumsum(y)[:-1]])  # positives in the rows before, in sorted order
    new_group = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])]  # first row of each (user, time)
    first = np.maximum.accumulate(np.where(new_group, np.arange(len(u)), 0))
    user_start = np.maximum.accumulate(np.where(np.r_[True, u[1:] != u[:-1]], np.arange(len(u)), 0))
    out = np.empty(len(u), dtype=np.int64)
    out[order] = before[first] - before[user_start]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", default="kuairand-pure", help="built-in impression log")
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished ranking runs to pair against (test)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    log = load_impressions(args.log)
    split = default_split(log)
    tasks = [t for t in MAIN_TASKS if t in log.binary_tasks] or list(log.binary_tasks)
    scores = {t: -earlier_positives(log.user, log.time, log.labels[t]).astype(np.float64) for t in tasks}
    parts = {p: np.flatnonzero(split.part(p)) for p in ("valid", "test")}
    gauc = {p: {t: ctr.gauc(log.user[rows], log.labels[t][rows], scores[t][rows])[0] for t in tasks}
            for p, rows in parts.items()}
    test_rows, paired = parts["test"], {}
    for folder in args.runs:
        name, preds = run_predictions(folder, test_rows, args.log)
        for t in tasks:
            paired[f"{name} - counter:{t}"] = ctr.paired_gauc(
                log.user[test_rows], log.labels[t][test_rows], scores[t][test_rows], np.asarray(preds[f"pred_{t}"]),
                n_boot=args.n_boot)
    result = {**header("ranking_counters", args.log, split), "gauc": gauc, "paired_test": paired,
              "wall_seconds": time.perf_counter() - wall}
    write_result(args.out, f"ranking_counters_{args.log}", result, markdown(result, tasks))


def markdown(result: dict, tasks: list[str]) -> str:
    lines = [f"# A per-user counter alone on {result['log']} (streaming protocol, no learning)", "",
             provenance(result) + " Score of an impression for task t: minus the number of the user's "
             "strictly earlier impressions with t positive (any part of the log). It orders each user's impressions "
             "by time only; in a served request it is one constant for every candidate. GAUC: per-user AUC, "
             "impression-weighted.", "",
             "| part | " + " | ".join(f"{t} GAUC" for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for part, g in result["gauc"].items():
        lines.append(f"| {part} | " + " | ".join(f"{g[t]:.4f}" for t in tasks) + " |")
    lines += ["", "Paired on the test impressions (run minus counter; 95% bootstrap over users, sign-flip p):", "",
              *paired_lines(result["paired_test"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
