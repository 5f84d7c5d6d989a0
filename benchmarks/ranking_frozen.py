"""Ranking GAUC with each request's history and time frozen: what a model gets from ordering items, without
what it reads from the user's actions earlier in the same test stretch.

The standard protocol (genrec.train.ranking) scores every test impression with the user's impressions strictly
before it as history, so a model can learn *when* a user engages (e.g. fewer likes right after a like) as
well as *what* they engage with, and per-user GAUC rewards both. A served ranker orders one request's
candidates against one history at one time, where only the item-dependent part counts. Here the test
impressions are grouped per user into requests of up to ``max_len`` (in time order), and every candidate of a
request reads the history and time of the request's first impression. Models that read a RankBatch (the
generative ranker, DCN, DIN) are re-scored; LightGBM's per-impression features cannot be frozen this way.

    python benchmarks/ranking_frozen.py --runs runs/kuairand/ranker runs/kuairand/dcn runs/kuairand/din
writes benchmarks/results/ranking_frozen_<log>.{json,md}; the first run is paired against the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import default_split
from genrec.data.requests import Requests, collate, ranking_requests
from genrec.eval import ctr
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.models.ranking import RankBatch
from genrec.train.ranking import EVAL_BATCH, apply_platt
from two_stage import load_ranker

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("click", "long_view", "like")


@torch.no_grad()
def predict_frozen(model, log, requests: Requests, tasks: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    rows, preds = [], {t: [] for t in tasks}
    for start in range(0, len(requests), EVAL_BATCH):
        idx = np.arange(start, min(start + EVAL_BATCH, len(requests)))
        fields = collate(log, requests, idx)
        batch = RankBatch(**{k: torch.as_tensor(v) for k, v in fields.items() if k != "labels"})
        out = model(batch)
        mask = fields["cand_items"] > 0
        rows.append(requests.candidates.take(idx).values)
        for t in tasks:
            preds[t].append(out[t].float().numpy()[mask])
    return np.concatenate(rows), {t: np.concatenate(v) for t, v in preds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="ranking run folders; the first is tested")
    ap.add_argument("--log", default="kuairand-pure")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    torch.set_num_threads(1)
    log = load_impressions(args.log)
    split = default_split(log)
    tasks = tuple(t for t in TASKS if t in log.binary_tasks)
    scores, runs = {}, {}
    for folder in args.runs:
        model, info = load_ranker(folder, log, torch.device("cpu"))
        max_len = int(info["config"].get("max_len", 200))
        requests = ranking_requests(log, split.part("test"), max_len, stride=max_len, frozen=True)
        rows, logits = predict_frozen(model, log, requests, tasks)
        order = np.argsort(rows)
        rows = rows[order]
        calibration = {t: tuple(ab) for t, ab in info.get("calibration", {}).items()}
        probs = {t: torch.sigmoid(torch.as_tensor(logits[t][order])).numpy() for t in tasks}
        probs = {t: apply_platt(p, calibration[t]) if t in calibration else p for t, p in probs.items()}
        name = f"{info['name']} ({folder.name})"
        users = log.user[rows]
        runs[name] = {"folder": str(folder), "config": info["config"], "max_len": max_len,
                      "gauc": {t: ctr.gauc(users, log.labels[t][rows], probs[t])[0] for t in tasks},
                      "streaming_gauc": {t: read_json(folder / "metrics.json")["tasks"][t]["metrics"]["gauc"]["value"]
                                         for t in tasks if (folder / "metrics.json").is_file()}}
        scores[name] = (rows, probs)
    names = list(runs)
    rows0, base = scores[names[0]]
    paired = {}
    for other in names[1:]:
        rows1, probs1 = scores[other]
        if not np.array_equal(rows0, rows1):
            raise SystemExit(f"{other} scored other impressions than {names[0]}")
        for t in tasks:
            paired[f"{names[0]} - {other}:{t}"] = ctr.paired_gauc(log.user[rows0], log.labels[t][rows0], probs1[t],
                                                                  base[t], n_boot=args.n_boot)
    result = {"benchmark": "ranking_frozen", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "machine": machine(), "log": args.log, "split": split.describe(), "runs": runs, "paired": paired,
              "wall_seconds": time.perf_counter() - wall}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"ranking_frozen_{args.log}.json", result)
    text = markdown(result, names, tasks)
    write_text(args.out / f"ranking_frozen_{args.log}.md", text)
    print(text)


def markdown(result: dict, names: list[str], tasks: tuple[str, ...]) -> str:
    lines = [f"# Ranking with frozen request histories ({result['log']}, test impressions)", "",
             f"Commit {result['commit']}, {result['created'][:10]}, {result['machine'].get('cpus', '?')} CPUs, "
             f"{result['wall_seconds']:.0f} s. Each user's test impressions form requests of up to max_len in time "
             "order; every candidate of a request reads the history and time of its first impression (see the "
             "script's docstring). Streaming: the standard protocol, each impression reading everything before it.",
             "", "| model | " + " | ".join(f"{t} GAUC frozen (streaming)" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for name in names:
        r = result["runs"][name]
        lines.append(f"| {name} | " + " | ".join(
            f"{r['gauc'][t]:.4f} ({r['streaming_gauc'].get(t, float('nan')):.4f})" for t in tasks) + " |")
    lines += ["", "Paired (frozen; first model minus the other; 95% bootstrap over users, sign-flip p):", "",
              "| comparison | difference | 95% CI | p |", "|---|---|---|---|"]
    for key, r in result["paired"].items():
        g = r["gauc"]
        lines.append(f"| {key} | {g['diff']:+.4f} | [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] | {g['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
