"""Semantic-ID table: the TIGER-style generator with RQ-KMeans and RQ-VAE IDs, SASRec/HSTU with semantic-ID
features, and the cold-start comparison (generator, SID-HSTU, ID-only HSTU, content-kNN) on items held out
of training, on the public protocol (full catalog, leave-one-out, seen items excluded, test read once).

Each (config, seed) trains into runs/bench-sid/<dataset>/<config stem>[-<device>]/seed<k>; finished runs are
reused. Content-kNN needs no training: it is evaluated here (loo and cold splits) from runs/content/<dataset>.
Writes benchmarks/results/semantic_ids.{json,md}.

    GENREC_DATA_DIR=../shared/data python benchmarks/semantic_ids.py \\
        --config configs/amazon-beauty/tiger.yaml --config configs/amazon-beauty/tiger-cold.yaml ... \\
        --content-knn amazon-beauty
    python benchmarks/semantic_ids.py --collect        # rebuild the table from finished runs

Cold mixing (TIGER's cold start, ``model.cold_mixing``) re-evaluates trained generator runs (by default the
cold-split ones; their folders must still hold model.safetensors) at each epsilon, without retraining, from
one beam search per run, and writes benchmarks/results/semantic_ids_cold_mixing.{json,md}:

    GENREC_DATA_DIR=../shared/data python benchmarks/semantic_ids.py --cold-mixing 0.1 0.2 0.3 \\
        --cold-prefix 3 2 [--run runs/bench-sid/amazon-beauty/tiger-cold-cuda/seed0] [--sample 2000 --all-cold-cases]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from genrec.content.store import ItemEmbeddings
from genrec.data import load_dataset, make_split
from genrec.eval import evaluate, write_run
from genrec.eval.report import git_commit, machine, subset_summary
from genrec.io import read_json, write_json, write_text
from genrec.models.content_knn import ContentKNN
from genrec.train import parse_params
from genrec.train.generator import reevaluate_cold_mixing
from quality import keep_previous, train_one

RUNS = Path("runs/bench-sid")
REFERENCE = Path("runs/bench")  # ID-only SASRec/HSTU rows of the quality table
WARM = ["hr@5", "ndcg@5", "hr@10", "ndcg@10"]
PUBLISHED = {"amazon-beauty": {"TIGER (published)": {"hr@5": .0454, "ndcg@5": .0321, "hr@10": .0648,
                                                     "ndcg@10": .0384},
                               "MaskGR, best published semantic-ID result": {"hr@10": .0815}}}
COLD_FRACTION, COLD_SEED = 0.05, 0


def content_knn(runs: Path, dataset: str, split: str) -> Path | None:
    """Content-kNN on the loo or cold split (no training), from runs/content/<dataset>; None without it."""
    folder = runs / dataset / ("content-knn" if split == "loo" else "content-knn-cold")
    emb_dir = Path("runs/content") / dataset
    if (folder / "metrics.json").is_file() or not (emb_dir / "embeddings.safetensors").is_file():
        return folder if (folder / "metrics.json").is_file() else None
    ds = load_dataset(dataset)
    kwargs = {"fraction": COLD_FRACTION, "seed": COLD_SEED} if split == "cold" else {}
    sp = make_split(ds, split, **kwargs)
    start = time.perf_counter()
    model = ContentKNN(embeddings=ItemEmbeddings.load(emb_dir)).fit(sp.train, ds.n_items)
    counts = np.bincount(sp.train.values, minlength=ds.n_items + 1)
    ev = evaluate(model, sp.test, ds, ks=[5, 10, 20], item_counts=counts)
    if split == "cold":
        ev.info["cold_start"] = {"held_out_items": len(sp.cold_items), "fraction": COLD_FRACTION,
                                 "draw_seed": COLD_SEED,
                                 **{name: {"cases": int(mask.sum()), **subset_summary(ev, mask)}
                                    for name, mask in (("cold", sp.test_cold), ("warm", ~sp.test_cold))}}
    config = {"model": "content-knn", "split": split, "params": model.config.model_dump(), "embeddings": str(emb_dir)}
    return write_run(folder, config, ev, ds, time.perf_counter() - start)


def row(folder: Path) -> dict:
    m = read_json(folder / "metrics.json")
    info, cfg = m["info"], read_json(folder / "config.json")
    out = {"run": str(folder), "metrics": {k: m["metrics"][k] for k in WARM if k in m["metrics"]},
           "device": info.get("device", "cpu"), "best_epoch": info.get("best_epoch"),
           "epochs_run": info.get("epochs_run"), "stopped": info.get("stopped"),
           "train_minutes": (info.get("train_seconds") or 0) / 60, "commit": m["run"]["commit"],
           "ids": (cfg.get("model") or {}).get("semantic_ids") if isinstance(cfg.get("model"), dict) else None,
           "features": cfg.get("features"), "invalid_ids": info.get("invalid_ids"),
           "decode_ms_per_user": info.get("decode_ms_per_user"), "cold_start": info.get("cold_start"),
           "budget_minutes": (cfg.get("train") or {}).get("max_minutes"),
           "schedule_by": (cfg.get("train") or {}).get("schedule_by"), "note": m["run"].get("note")}
    if load := info.get("load_average"):  # a shared CPU: how busy it was around the run
        shared = (f"history cap {cfg['model']['max_len']}, {info.get('threads')} torch threads, 1-min load average "
                  f"{load['start']:.1f} at the start, {load['end']:.1f} at the end")
        tiger = PUBLISHED.get(cfg.get("dataset"), {}).get("TIGER (published)", {})
        margin = ", ".join(f"{name} {out['metrics'][k]['mean'] - tiger[k]:+.4f}"
                           for k, name in (("hr@10", "Recall@10"), ("ndcg@10", "NDCG@10"))
                           if k in tiger and k in out["metrics"])
        out["note"] = "; ".join(filter(None, [out["note"], shared, margin and f"against TIGER (published): {margin}"]))
    if refit := info.get("refit"):  # the test read the refit model: show its epochs and time
        chose = ("an earlier selection run chose (selection not repeated)" if refit.get("selection_skipped")
                 else "its selection run chose")
        cut = str(refit.get("stopped", "")).startswith("wall-time")  # the budget ended the refit first
        stopped = (f"the {refit['stopped']} of its refit (training + validation targets), after {refit['epochs']} of "
                   f"the {refit['selected_epoch']} epochs {chose}" if cut else
                   f"the end of its refit (training + validation targets) after the {refit['selected_epoch']} epochs "
                   f"{chose}")
        out.update(best_epoch="refit", epochs_run=refit["epochs"], stopped=stopped,
                   train_minutes=(refit["train_seconds"] + (info.get("train_seconds") or 0)) / 60)
    return out


def collect(runs: Path = RUNS) -> dict:
    datasets: dict[str, dict] = {}
    for root in (runs, REFERENCE):
        for ds_dir in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
            if root == REFERENCE and ds_dir.name not in datasets:
                continue
            for model_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir()):
                if root == REFERENCE and model_dir.name.split("-")[0] not in ("sasrec", "hstu"):
                    continue
                runs = [s for s in sorted(model_dir.glob("seed*")) if (s / "metrics.json").is_file()]
                runs = runs or ([model_dir] if (model_dir / "metrics.json").is_file() else [])
                if runs:
                    name = model_dir.name + (" (ID only)" if root == REFERENCE else "")
                    for r in runs:  # several seeds of one config: a row each, named by its seed
                        label = f"{name} ({r.name})" if len(runs) > 1 else name
                        datasets.setdefault(ds_dir.name, {})[label] = [row(r)]
    return datasets


def _cell(m: dict | None) -> str:
    return f"{m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if m else ""


def _minutes(r: dict) -> str:
    if not r["train_minutes"]:
        return ""
    if not r["budget_minutes"]:
        return f"{r['train_minutes']:.1f}"
    decay = ", decay over it" if r["schedule_by"] == "time" else ""
    return f"{r['train_minutes']:.1f} ({r['budget_minutes']:g}{decay})"


def render(res: dict) -> str:
    lines = ["# Semantic IDs: generator, SID-augmented ID models, cold start", "",
             f"- commit {res['commit']} (each run records its own), {res['created']}; table built on "
             f"{res['machine']['processor']}, {res['machine']['cpus']} CPUs; the device each run trained on is "
             "in its row",
             "- protocol: full catalog, leave-one-out, seen items excluded, selection on validation NDCG@10, test "
             "read once; generator: history cap 20, constrained beam search, a target outside the beams is a miss",
             "- Recall@K = HR@K (one target per user); [95% bootstrap interval over users]; one seed per row",
             "- rows accumulate: a rebuild keeps the previous table's rows whose run folders are not on the machine "
             "that rebuilt it (each row names its commit and run folder)",
             "- prompt-conditioned generation (`tiger-query`: model.query; its row here is decoded without a query) "
             "against score blending, on queries built from the target item: "
             "[prompt_generation.md](prompt_generation.md) (benchmarks/prompt_generation.py); with training queries "
             "noised twice as far (`tiger-query-noisy`): [prompt_generation_noisy.md](prompt_generation_noisy.md)",
             "- cold-blend rows: a trained ID model for the items it knows plus content scores of the held-out items, "
             "weights chosen on validation; paired ratios against content-kNN and the ID model: "
             "[cold_blend.md](cold_blend.md) (benchmarks/cold_blend.py)",
             "- beam-search latency (beam 10, one user per call and batched, invalid IDs counted): hstu-gen "
             "[beam_latency_hstu_gen.md](beam_latency_hstu_gen.md), tiger [beam_latency.md](beam_latency.md) "
             "(benchmarks/beam_latency.py); slates against the ID model's top-N: [slates.md](slates.md) "
             "(benchmarks/slates.py); text, cover and video-frame content ablations: "
             "[content_modalities.md](content_modalities.md) (benchmarks/content_modalities.py)", ""]
    for ds, models in res["datasets"].items():
        lines += [f"## {ds}", "", "### Standard protocol", "",
                  "| model | device | " + " | ".join(k.replace("hr", "Recall") for k in WARM)
                  + " | invalid IDs | decode ms/user | epochs (best) | train min (budget) |",
                  "|---" * (len(WARM) + 6) + "|"]
        for name, runs in models.items():
            for r in (r for r in runs if not r["cold_start"]):
                lines.append(f"| {name} | {r['device']} | " + " | ".join(_cell(r["metrics"].get(k)) for k in WARM)
                             + f" | {'' if r['invalid_ids'] is None else r['invalid_ids']} | "
                             + (f"{r['decode_ms_per_user']:.2f}" if r["decode_ms_per_user"] else "")
                             + f" | {r['epochs_run'] or ''} ({r['best_epoch'] or ''}) | {_minutes(r)} |")
        for name, pub in PUBLISHED.get(ds, {}).items():
            lines.append(f"| {name} | | " + " | ".join(f"{pub[k]:.4f}" if k in pub else "" for k in WARM)
                         + " | | | | |")
        cold = {n: [r for r in rs if r["cold_start"]] for n, rs in models.items()}
        cold = {n: rs for n, rs in cold.items() if rs}
        if cold:
            first = next(iter(cold.values()))[0]["cold_start"]
            lines += ["", f"### Cold start: {first['held_out_items']:,} items ({first['fraction']:.0%}, uniform "
                      f"draw, seed {first['draw_seed']}) never in training; {first['cold']['cases']:,} test cases "
                      "have one as target", "",
                      "| model | device | cold Recall@10 | cold NDCG@10 | cold Recall@20 | warm Recall@10 | "
                      "warm NDCG@10 | train min (budget) |", "|---" * 8 + "|"]
            for name, runs in cold.items():
                for r in runs:
                    c, w = r["cold_start"]["cold"], r["cold_start"]["warm"]
                    lines.append(f"| {name} | {r['device']} | {_cell(c.get('hr@10'))} | {_cell(c.get('ndcg@10'))} | "
                                 f"{_cell(c.get('hr@20'))} | {_cell(w.get('hr@10'))} | {_cell(w.get('ndcg@10'))} | "
                                 f"{_minutes(r)} |")
        lines.append("")
        for name, runs in models.items():
            for r in runs:
                if r["stopped"]:
                    lines.append(f"- {name}: stopped by {r['stopped']}, {r['epochs_run']} epochs, commit {r['commit']}"
                                 f", {r['run']}" + (f"; {r['note']}" if r["note"] else ""))
                elif r["note"]:  # nothing trained here (e.g. a cold blend over a trained ID model)
                    lines.append(f"- {name}: commit {r['commit']}, {r['run']}; {r['note']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def cold_generator_runs(runs: Path) -> list[Path]:
    """Every generator run folder on the cold split under ``runs`` (<dataset>/<config>/seed<k>)."""
    found = []
    for config in sorted(runs.glob("*/*/seed*/config.json")):
        raw = read_json(config)
        if raw.get("split") == "cold" and (raw.get("model") or {}).get("name") == "tiger":
            found.append(config.parent)
    return found


def cold_mixing(folders: list[Path], epsilons: list[float], prefixes: list[int | None], sample: int | None,
                all_cold_cases: bool, device: str) -> list[dict]:
    """Each run's test metrics (all cases, cold cases, the rest) at epsilon 0 and each of ``epsilons``."""
    rows = []
    for folder in folders:
        if not (folder / "model.safetensors").is_file():
            rows.append({"run": str(folder), "skipped": "no model.safetensors in the run folder (its weights were "
                         "not kept); retrain it to evaluate the mixing"})
            print(f"skip {folder}: no model.safetensors")
            continue
        start = time.perf_counter()
        evs = reevaluate_cold_mixing(folder, [0.0, *epsilons], prefixes=prefixes, sample=sample,
                                     all_cold_cases=all_cold_cases, device=device)
        wall = time.perf_counter() - start
        first = next(iter(evs.values())).info
        results = []
        for (eps, prefix), ev in evs.items():
            if eps == 0 and prefix != next(iter(evs))[1]:
                continue  # epsilon 0 is the same list whatever the prefix
            test = ({k: ev.summary[k] for k in ("hr@10", "ndcg@10")} if ev.info["sample"] is None
                    else {k: {"mean": ev.info["test_estimate"][k]} for k in ("hr@10", "ndcg@10")})
            results.append({"epsilon": eps, "prefix": prefix if eps > 0 else None, "test": test,
                            **{part: {k: ev.info[f"{part}_cases"].get(k) for k in ("hr@10", "ndcg@10")}
                               for part in ("cold", "warm")},
                            "cold_per_list@10": (ev.info.get("cold_mixing") or {}).get("cold_per_list", {}).get(
                                "@10", 0.0)})
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
        rows.append({"run": str(folder), "dataset": read_json(folder / "config.json")["dataset"],
                     "split": first["split"], "trained_at_commit": (metrics.get("run") or {}).get("commit"),
                     "trained_on": (metrics.get("info") or {}).get("device"),
                     "test_cases": first["test_cases"], "evaluated_cases": first["evaluated_cases"],
                     "sample": first["sample"], "cold_cases": first["cold_cases"]["test_cases"],
                     "cold_cases_evaluated": first["cold_cases"]["evaluated"],
                     "cold_case_definition": first["cold_cases"]["definition"],
                     "unseen_items": first["unseen_items"], "held_out_items": first.get("held_out_items"),
                     "device": first["device"], "decode_seconds": first["decode_seconds"],
                     "wall_seconds": wall, "results": results})
        print(f"{folder}: {wall:.0f} s")
    return rows


def render_cold_mixing(res: dict) -> str:
    lines = ["# Semantic-ID generator: cold-start mixing (TIGER, epsilon)", "",
             f"- commit {res['commit']}, {res['created']}; evaluated on {res['machine']['processor']}, "
             f"{res['machine']['cpus']} CPUs; command: `{res['command']}`",
             "- protocol: the run's own test evaluation again (full catalog, seen items excluded, constrained beam "
             "search, a target outside the list is a miss); items absent from training whose semantic ID shares a "
             "beam's first `prefix` codes join the list right below that beam, at most ceil(epsilon n) of every "
             "top n; epsilon 0 = the beams as trained",
             "- Recall@K = HR@K; [95% bootstrap interval over users]; 'test' without an interval = the cold and warm "
             "parts weighed by their share of the test set (when only a sample of warm cases was evaluated)", ""]
    for r in res["runs"]:
        lines += [f"## {r['run']}", ""]
        if "skipped" in r:
            lines += [f"skipped: {r['skipped']}", ""]
            continue
        held = f" ({r['held_out_items']:,} held out)" if r["held_out_items"] else ""
        lines += [f"- split {r['split']}; {r['unseen_items']:,} items absent from training{held}; trained on "
                  f"{r['trained_on']} at commit {r['trained_at_commit']}",
                  f"- cold cases ({r['cold_case_definition']}): {r['cold_cases_evaluated']:,} of {r['cold_cases']:,} "
                  f"evaluated; {r['evaluated_cases']:,} of {r['test_cases']:,} test cases in all"
                  + (f" ({r['sample']})" if r["sample"] else ""),
                  f"- beam search on {r['device']}: {r['decode_seconds']:.0f} s; {r['wall_seconds']:.0f} s in all", "",
                  "| epsilon | prefix | test Recall@10 | test NDCG@10 | cold Recall@10 | cold NDCG@10 | "
                  "warm Recall@10 | warm NDCG@10 | cold items per top 10 |", "|---" * 9 + "|"]
        for x in r["results"]:
            t = {k: (_cell(v) if "ci_low" in v else f"{v['mean']:.4f}") for k, v in x["test"].items()}
            lines.append(f"| {x['epsilon']:g} | {x['prefix'] or ''} | {t['hr@10']} | {t['ndcg@10']} | "
                         f"{_cell(x['cold']['hr@10'])} | {_cell(x['cold']['ndcg@10'])} | {_cell(x['warm']['hr@10'])} | "
                         f"{_cell(x['warm']['ndcg@10'])} | {x['cold_per_list@10']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, action="append", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="train.device for every run (cpu, cuda, auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override a config field of "
                   "every run, e.g. train.max_minutes=6 (repeatable)")
    p.add_argument("--content-knn", action="append", default=[], metavar="DATASET", help="evaluate content-kNN "
                   "(loo and cold splits) on DATASET, from runs/content/DATASET (repeatable)")
    p.add_argument("--collect", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--runs", type=Path, default=RUNS, help="run folders' root (default runs/bench-sid)")
    p.add_argument("--cold-mixing", type=float, nargs="+", metavar="EPS", help="only re-evaluate the trained "
                   "cold-split generator runs with cold mixing at each EPS (no training); writes "
                   "semantic_ids_cold_mixing.{json,md}")
    p.add_argument("--cold-prefix", type=int, nargs="+", default=[None], metavar="P", help="with --cold-mixing: "
                   "shared leading codes (default all but the final uniqueness code)")
    p.add_argument("--run", type=Path, action="append", default=[], help="with --cold-mixing: this generator run "
                   "folder, any split (repeatable; default every cold-split generator run under --runs)")
    p.add_argument("--sample", type=int, default=None, help="with --cold-mixing: a uniform sample of this many "
                   "test cases (default all)")
    p.add_argument("--all-cold-cases", action="store_true", help="with --sample: every cold case plus SAMPLE warm "
                   "ones")
    p.add_argument("--eval-device", default="cpu", help="with --cold-mixing: where to run the beam search")
    args = p.parse_args()
    runs = args.runs
    start = time.perf_counter()
    if args.cold_mixing:
        res = {"commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
               "command": "python " + shlex.join(["benchmarks/semantic_ids.py", *sys.argv[1:]]),
               "runs": cold_mixing(args.run or cold_generator_runs(runs), args.cold_mixing, args.cold_prefix,
                                   args.sample, args.all_cold_cases, args.eval_device),
               "wall_seconds_this_invocation": time.perf_counter() - start}
        write_json(args.out / "semantic_ids_cold_mixing.json", res)
        write_text(args.out / "semantic_ids_cold_mixing.md", render_cold_mixing(res))
        print(f"wrote {args.out / 'semantic_ids_cold_mixing.md'}")
        return
    if not args.collect:
        for config in args.config:
            for seed in args.seeds:
                train_one(config, seed, args.threads, args.device, runs=runs, overrides=parse_params(args.overrides))
        for dataset in args.content_knn:
            content_knn(runs, dataset, "loo")
            content_knn(runs, dataset, "cold")
    res = {"commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
           "wall_seconds_this_invocation": time.perf_counter() - start,
           "datasets": keep_previous(collect(runs), args.out / "semantic_ids.json")}
    write_json(args.out / "semantic_ids.json", res)
    write_text(args.out / "semantic_ids.md", render(res))
    print(f"wrote {args.out / 'semantic_ids.md'}")


if __name__ == "__main__":
    main()
