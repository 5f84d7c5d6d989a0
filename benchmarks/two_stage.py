"""Two-stage recommendation: HSTU retrieval proposes the top-200, the multi-task ranker reorders them.

Reads two trained run folders: a retrieval run of `genrec train` (model.json, model.safetensors, items.parquet,
config.json) and a ranking run of `genrec train` with a ranking model (model.json {name, config, spec},
model.safetensors), and evaluates retrieval alone against retrieval + ranker on the same cases with
:func:`genrec.eval.two_stage.two_stage_eval`: the fusion weight w of z(retrieval) + w * z(ranker) is chosen on
validation cases, applied once to test cases, and the per-case HR@10 / NDCG@10 differences get a bootstrap
interval and paired t / Wilcoxon p-values.

Cases (the ranker never trained on a target; see genrec.eval.two_stage):
  movielens-1m  retrieval dataset movielens-1m (leave-one-out run), ranker log movielens-1m-ratings(-neg); test cases
                are leave-one-out test targets rated in the ranker's test period, validation cases leave-one-out
                validation targets rated in its validation period (a ranker with split: loo holds out every
                user's last two ratings, so every user is a case); ranker score: the `rate` logit.
  kuairand      retrieval dataset kuairand-pure-clicks (temporal run), ranker log kuairand-pure; each user's first
                click in the ranker's test (validation) period, retrieval history = the user's earlier clicks;
                ranker score: the `click` logit.

    python benchmarks/two_stage.py --dataset movielens-1m --retrieval runs/bench/movielens-1m/hstu-large/seed0 \\
        --ranker runs/movielens-1m/ranker
    python benchmarks/two_stage.py --dataset kuairand --retrieval runs/kuairand/hstu-retrieval \\
        --ranker runs/kuairand/ranker

Writes benchmarks/results/two_stage_<dataset>.{json,md} with the commit, machine, protocol, chosen w and the table
(two_stage_<dataset>-loo.* for a ranker trained with split: loo, whose cases are every user's leave-one-out targets;
--tag T appends -T).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from genrec.data import load_dataset, make_split
from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import iso_time, ranking_split
from genrec.errors import GenrecError
from genrec.eval.report import git_commit, machine
from genrec.eval.two_stage import (
    DEFAULT_WEIGHTS,
    TwoStageResult,
    first_positive_cases,
    item_map,
    leave_one_out_cases,
    two_stage_eval,
)
from genrec.io import read_json, write_json, write_text
from genrec.models.ranking import RankBatch
from genrec.serve.model_io import load_model, load_ranking_model
from genrec.train.loop import resolve_device

RESULTS = Path(__file__).parent / "results"
PRESETS: dict[str, dict[str, Any]] = {
    "movielens-1m": {"retrieval_dataset": "movielens-1m", "log": "movielens-1m-ratings-neg", "cases": "loo",
                     "task_blend": {"rate": 1.0}},
    "kuairand": {"retrieval_dataset": "kuairand-pure-clicks", "log": "kuairand-pure", "cases": "first_click",
                 "task_blend": {"click": 1.0}},
}


def load_retrieval(folder: Path, dataset: str, device: torch.device):
    """The retrieval model of a run folder, its dataset (checked against the run's item table) and config."""
    for name in ("model.json", "model.safetensors", "items.parquet", "config.json"):
        if not (folder / name).is_file():
            sys.exit(f"{folder}: no {name} (a finished `genrec train` retrieval run folder is needed)")
    config = read_json(folder / "config.json")
    if config.get("dataset") != dataset:
        sys.exit(f"{folder} was trained on {config.get('dataset')!r}, not {dataset!r}")
    ds = load_dataset(dataset)
    raw = pq.read_table(folder / "items.parquet").sort_by("item_idx").column("raw_id").to_pylist()
    if [str(x) for x in ds.items.raw.to_pylist()] != raw:
        sys.exit(f"{folder}/items.parquet does not match the item vocabulary of {dataset} on this machine")
    return load_model(folder).to(device), ds, config


def load_ranker(folder: Path, log, device: torch.device):
    """The ranking run's model (checked against the impression log on this machine) and its model.json."""
    try:
        model = load_ranking_model(folder, device)
    except GenrecError as e:
        sys.exit(str(e))
    spec = model.spec
    if (spec.n_items, spec.n_users, spec.tasks) != (log.n_items, log.n_users, log.tasks):
        sys.exit(f"{folder} was trained on another impression log than {log.name} on this machine "
                 f"(items/users/tasks {spec.n_items}/{spec.n_users}/{spec.tasks} vs {log.n_items}/{log.n_users}/"
                 f"{log.tasks})")
    return model, read_json(folder / "model.json")


def fmt_weight(w: float | None) -> str:
    return "ranker only" if w is None else f"{w:g}"


def markdown(result: dict[str, Any], res: TwoStageResult) -> str:
    ks = res.info["ks"]
    w = fmt_weight(res.weight)
    hw = f"{result['machine'].get('gpu') or result['machine']['processor']} ({result['machine']['cpus']} CPUs)"
    lines = [f"# Two-stage: retrieval top-{res.info['k_retrieve']} reordered by the ranker ({result['dataset']})", "",
             f"Commit {result['commit']}, {result['created'][:10]}, {hw}, device {result['device']}, "
             f"{result['wall_seconds']:.0f} s.", "",
             f"Retrieval: `{result['retrieval']['folder']}` ({result['retrieval']['model']}); ranker: "
             f"`{result['ranker']['folder']}` ({result['ranker']['model']}, score = "
             + " + ".join(f"{v:g} x logit({t})" for t, v in res.info["task_blend"].items()) + ").", "",
             f"**Protocol.** {result['protocol']}", "",
             f"Chosen on validation ({res.info['valid_cases']} cases, {res.select_metric}): **w = {w}**. "
             f"Test: {res.info['test_cases']} cases; the target is in the retrieved top-{res.info['k_retrieve']} for "
             f"{res.info['test_recall_at_k']:.1%} of them (the ceiling of any reordering).", "",
             "| metric | retrieval alone | two-stage | difference [95% CI] | paired t p | Wilcoxon p |",
             "|---|---|---|---|---|---|"]
    for k in ks:
        for m in (f"hr@{k}", f"ndcg@{k}"):
            p = res.paired[m]
            lines.append(f"| {m.upper()} | {p['mean_a']:.4f} | {p['mean_b']:.4f} | {p['diff']:+.4f} "
                         f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['p_value']:.3g} | {p['p_wilcoxon']:.3g} |")
    lines += ["", "Validation (selects w):", "", "| w | " + " | ".join(f"{m}" for m in res.valid["retrieval"]) + " |",
              "|---|" + "---|" * len(res.valid["retrieval"])]
    for name, row in res.valid.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    lines += ["", "Test at every w (diagnostic only; the result is the chosen w above):", "",
              "| w | " + " | ".join(f"{m}" for m in res.test["retrieval"]) + " |",
              "|---|" + "---|" * len(res.test["retrieval"])]
    for name, row in res.test.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    if result.get("notes"):
        lines += ["", "Notes:", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--retrieval", type=Path, required=True, help="retrieval run folder (HSTU / SASRec)")
    ap.add_argument("--ranker", type=Path, required=True, help="ranking run folder (ranker / dcn / din)")
    ap.add_argument("--k", type=int, default=200, help="items retrieved per case")
    ap.add_argument("--weights", type=str, default=",".join(fmt_weight(w).replace("ranker only", "none")
                                                             for w in DEFAULT_WEIGHTS),
                    help="comma-separated fusion weights; 'none' = ranker only")
    ap.add_argument("--select-metric", default="ndcg@10")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--ranker-batch", type=int, default=32, help="cases per ranker forward pass")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-cases", type=int, default=None,
                    help="smoke runs only: evaluate a random subset of at most this many cases per part")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the result files (two_stage_<dataset>[-loo]-<tag>), to keep "
                    "several pairings of retrieval and ranker side by side")
    args = ap.parse_args()
    wall = time.perf_counter()
    preset = PRESETS[args.dataset]
    device = resolve_device(args.device)
    weights = [None if w.strip().lower() == "none" else float(w) for w in args.weights.split(",")]
    torch.set_grad_enabled(False)

    retrieval, ds, retrieval_config = load_retrieval(args.retrieval, preset["retrieval_dataset"], device)
    log = load_impressions(preset["log"])
    ranker_split = (read_json(args.ranker / "config.json").get("split", "temporal")
                    if (args.ranker / "config.json").is_file() else "temporal")
    split = ranking_split(log, ranker_split)  # the ranker's own parts: it never trained on a case's target
    ranker, ranker_json = load_ranker(args.ranker, log, device)
    items = item_map(ds.items.raw, log.items)
    notes = []
    if preset["cases"] == "loo":
        if retrieval_config.get("split") != "loo":
            sys.exit(f"{args.retrieval}: the movielens-1m protocol needs a leave-one-out retrieval run")
        cases = leave_one_out_cases(ds, log, split)
        period = ("rating lies in the ranker's test period (the source's last 10 % of ratings by time; validation: "
                  "its validation period)" if ranker_split == "temporal" else "rating is held out of the ranker's "
                  "training (the ranker's split: loo, each user's last rating for test and the one before for "
                  "validation, with every rating at the same time as either)")
        protocol = ("Cases are the leave-one-out targets of the retrieval dataset (movielens-1m, SASRec form) whose "
                    f"{period}, so the ranker never trained on a target. Retrieval (seen items "
                    f"excluded) scores the full catalog of {ds.n_items} items from the leave-one-out history and "
                    f"keeps its top {args.k}; the ranker scores them at the target's time with the user's ratings "
                    "strictly earlier as history (sampled negatives are never history).")
    else:
        cases = first_positive_cases(ds, log, split, task="click")
        kind = retrieval_config.get("split", "temporal")
        rsplit = make_split(ds, kind, **(retrieval_config.get("temporal") or {}) if kind == "temporal" else {})
        protocol = ("Cases are each user's first click in the ranker's test period (validation: its validation "
                    "period); retrieval's history is the user's clicks strictly before it, the ranker's the user's "
                    "impressions strictly before it. Retrieval (seen items excluded) scores the full catalog of "
                    f"{ds.n_items} clicked videos and keeps its top {args.k}.")
        if rsplit.kind == "temporal":
            vs, ts = rsplit.info["valid_start"], rsplit.info["test_start"]
            test_t = cases["test"].time
            cuts = split.describe()
            notes.append(f"retrieval split cuts (from its config): train < {iso_time(int(vs))}, its own "
                         f"validation to {iso_time(int(ts))}; ranker cuts: valid from {cuts['valid']['first_time']}, "
                         f"test from {cuts['test']['first_time']}.")
            notes.append(f"{int((cases['valid'].time < vs).sum() + (test_t < vs).sum())} two-stage validation/test "
                         f"targets precede the retrieval model's training cut (must be 0); {int((test_t < ts).sum())} "
                         f"of {len(test_t)} test targets fall in the retrieval run's own validation window (used only "
                         "to select its epoch).")
    if args.max_cases is not None:
        rng = np.random.default_rng(args.seed)
        for part, c in list(cases.items()):
            if len(c) > args.max_cases:
                cases[part] = c.take(np.sort(rng.choice(len(c), args.max_cases, replace=False)))
                cases[part].info.update(subset_of=len(c), cases=args.max_cases)
        notes.append(f"SMOKE RUN: at most {args.max_cases} random cases per part (--max-cases), not the benchmark.")
    res = two_stage_eval(retrieval, lambda f: ranker(RankBatch(**f)), log, cases, items, k_retrieve=args.k,
                         weights=weights, task_blend=preset["task_blend"], select_metric=args.select_metric,
                         ks=(10, 20, 50), ranker_max_len=int(ranker_json["config"].get("max_len", 200)),
                         device=device, ranker_batch=args.ranker_batch, n_boot=args.n_boot, seed=args.seed,
                         show_progress=True)
    ranker_metrics = read_json(args.ranker / "metrics.json") if (args.ranker / "metrics.json").is_file() else {}
    retrieval_metrics = (read_json(args.retrieval / "metrics.json")
                         if (args.retrieval / "metrics.json").is_file() else {})
    result = {
        "benchmark": "two_stage", "dataset": args.dataset, "created": dt.datetime.now(dt.UTC).isoformat(),
        "commit": git_commit(), "machine": machine(), "device": str(device), "protocol": protocol,
        "retrieval": {"folder": str(args.retrieval), "model": read_json(args.retrieval / "model.json")["name"],
                      "dataset": preset["retrieval_dataset"], "split": retrieval_config.get("split"),
                      "config": retrieval_config.get("model"), "commit": retrieval_metrics.get("run", {}).get("commit"),
                      "test_metrics": {m: v for m, v in retrieval_metrics.get("metrics", {}).items()
                                       if m in ("hr@10", "ndcg@10")}},
        "ranker": {"folder": str(args.ranker), "model": ranker_json["name"], "log": log.name,
                   "config": ranker_json["config"], "commit": ranker_metrics.get("run", {}).get("commit"),
                   "split": split.describe()["rule"]},
        "weight": fmt_weight(res.weight), "select_metric": res.select_metric,
        "valid": res.valid, "test": res.test, "paired": res.paired, "info": res.info, "notes": notes,
        "wall_seconds": time.perf_counter() - wall,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"two_stage_{args.dataset}" + ("" if ranker_split == "temporal" else f"-{ranker_split}")
            + (f"-{args.tag}" if args.tag else ""))
    write_json(args.out / f"{stem}.json", result)
    md = markdown(result, res)
    write_text(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
