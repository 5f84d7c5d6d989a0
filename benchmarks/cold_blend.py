"""Cold start that beats content search: a trained ID model for the items it knows, blended with content-based
scores of items never in training (genrec.models.cold_blend), weights chosen on validation only; against
content-kNN and the ID model alone, on the cold split (5% of items held out of training, seed 0).

Per dataset: the ID model is a finished cold-split run (default runs/bench-sid/<dataset>/hstu-cold/seed0, e.g.
from ``benchmarks/semantic_ids.py --config configs/<dataset>/hstu-cold.yaml``); content vectors come from
runs/content/<dataset>. Variants (each selected on the validation cases, then tested once):

- ``cold-blend``: predicted embedding + content cosine, no prior;
- ``cold-blend-prior``: plus the fresh-item prior over content-only semantic IDs (runs/semantic_ids/<dataset>/rqkmeans,
  made here when missing);
- ``cold-blend-prior-collab``: the prior over collaborative semantic IDs (content fused with the ID model's item
  embeddings, genrec.semantic_ids.collaborative; made here into runs/semantic_ids/<dataset>/rqkmeans-collab);
- ``--overall`` adds ``cold-blend-overall``: like cold-blend-prior, chosen for the best overall validation NDCG@10.

Each variant writes a run folder under runs/bench-sid/<dataset>/ (so ``semantic_ids.py --collect`` lists it in the
cold-start table) and benchmarks/results/cold_blend.{json,md} gets the paired comparisons with intervals.

    GENREC_DATA_DIR=../shared/data python benchmarks/cold_blend.py --dataset amazon-beauty --dataset microlens-50k
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from genrec.content.store import ItemEmbeddings
from genrec.data import load_dataset, make_split
from genrec.eval import evaluate, write_run
from genrec.eval.report import git_commit, machine, subset_summary
from genrec.io import read_json, write_json, write_text
from genrec.models.cold_blend import ColdBlend
from genrec.semantic_ids import SemanticIds, TokenizerConfig, tokenize
from genrec.semantic_ids.collaborative import CollaborativeConfig
from genrec.serve.model_io import load_model
from genrec.train.cold_blend import select_blend
from semantic_ids import COLD_FRACTION, COLD_SEED, RUNS, content_knn

KS = [5, 10, 20]
N_BOOT = 1000


def semantic_ids(dataset: str, emb_dir: Path, id_run: Path | None) -> SemanticIds:
    """Content-only RQ-KMeans IDs (``id_run`` None) or collaborative ones, made once and reused."""
    out = Path("runs/semantic_ids") / dataset / ("rqkmeans" if id_run is None else "rqkmeans-collab")
    if (out / "semantic_ids.json").is_file():
        ids = SemanticIds.load(out)
        recorded = (ids.meta.get("collaborative") or {}).get("id_model")
        if id_run is None or recorded == str(id_run):
            return ids
    collab = CollaborativeConfig(id_model=id_run) if id_run is not None else None
    ids, _ = tokenize(emb_dir, config=TokenizerConfig(collaborative=collab), out=out)
    return ids


def paired_ratio(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """mean(a) / mean(b) over the same cases, with a 95% percentile bootstrap interval (cases resampled)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(N_BOOT, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
    return {"ratio": float(a.mean() / max(b.mean(), 1e-12)), "ci_low": float(np.quantile(ratios, 0.025)),
            "ci_high": float(np.quantile(ratios, 0.975))}


def run_variant(name: str, blend: ColdBlend, sp, ds, counts: np.ndarray, selection: dict, id_run: Path,
                note: str, folder: Path, seconds: float) -> dict:
    start = time.perf_counter()
    ev = evaluate(blend, sp.test, ds, ks=KS, item_counts=counts, n_boot=N_BOOT, seed=0)
    ev.info["cold_start"] = {"held_out_items": len(sp.cold_items), "fraction": COLD_FRACTION,
                             "draw_seed": COLD_SEED,
                             **{part: {"cases": int(mask.sum()), **subset_summary(ev, mask, N_BOOT, 0)}
                                for part, mask in (("cold", sp.test_cold), ("warm", ~sp.test_cold))}}
    ev.info.update(selection=selection, id_model_run=str(id_run), device="cpu")
    config = {"model": {"name": "cold-blend", **blend.config.model_dump(mode="json")}, "split": "cold",
              "id_model": str(id_run), "note": note}
    write_run(folder, config, ev, ds, seconds + time.perf_counter() - start)
    metrics = read_json(folder / "metrics.json")
    metrics["run"]["note"] = note
    write_json(folder / "metrics.json", metrics)
    return {"run": str(folder), "per_case": ev.per_user.column("hr@10").to_numpy(),
            "ndcg": ev.per_user.column("ndcg@10").to_numpy(), "cold_start": ev.info["cold_start"],
            "selection": selection, "config": blend.config.model_dump(mode="json")}


def id_model_alone(model, sp, ds, counts: np.ndarray) -> np.ndarray:
    ev = evaluate(model, sp.test, ds, ks=[10], item_counts=counts, n_boot=10, seed=0)
    return ev.per_user.column("hr@10").to_numpy()


def dataset_rows(dataset: str, id_run: Path, max_warm_loss: float, warm_sample: int | None,
                 overall: bool, variants: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    sp = make_split(ds, "cold", fraction=COLD_FRACTION, seed=COLD_SEED)
    counts = np.bincount(sp.train.values, minlength=ds.n_items + 1)
    emb_dir = Path("runs/content") / dataset
    emb = ItemEmbeddings.load(emb_dir)
    torch.manual_seed(0)
    model = load_model(id_run)
    knn_dir = content_knn(RUNS, dataset, "cold")
    knn_hr = pq.read_table(knn_dir / "per_user.parquet", columns=["hr@10"]).column("hr@10").to_numpy()
    alone = id_model_alone(model, sp, ds, counts)
    plans = [("cold-blend", "none", "cold_recall"), ("cold-blend-prior", "content", "cold_recall"),
             ("cold-blend-prior-collab", "collab", "cold_recall")] + (
                 [("cold-blend-overall", "content", "overall")] if overall else [])
    plans = [p for p in plans if not variants or p[0] in variants]
    out = {"id_model_run": str(id_run), "id_model_metrics": read_json(id_run / "metrics.json")["info"].get(
        "cold_start"), "content_knn_run": str(knn_dir), "variants": {}}
    cold, warm = sp.test_cold, ~sp.test_cold
    codes = {"none": None}
    if any(p[1] == "content" for p in plans):
        codes["content"] = semantic_ids(dataset, emb_dir, None).codes
    if any(p[1] == "collab" for p in plans):
        codes["collab"] = semantic_ids(dataset, emb_dir, id_run).codes
    for name, prior, objective in plans:
        start = time.perf_counter()
        blend = ColdBlend(id_model=model, embeddings=emb, codes=codes[prior]).fit(sp.train, ds.n_items)
        chosen, selection = select_blend(blend, sp.valid, objective=objective, max_warm_loss=max_warm_loss,
                                         warm_sample=warm_sample)
        note = (f"ID model {id_run}; prior: {prior} semantic IDs; chosen on validation ({objective}, warm loss "
                f"<= {max_warm_loss:g})")
        r = run_variant(name, chosen, sp, ds, counts, selection, id_run, note, RUNS / dataset / name / "seed0",
                        time.perf_counter() - start)
        r["vs_content_knn_cold_hr@10"] = paired_ratio(r.pop("per_case")[cold], knn_hr[cold])
        hr = pq.read_table(Path(r["run"]) / "per_user.parquet", columns=["hr@10"]).column("hr@10").to_numpy()
        r["vs_id_model_warm_hr@10"] = paired_ratio(hr[warm], alone[warm])
        r["vs_content_knn_warm_hr@10"] = paired_ratio(hr[warm], knn_hr[warm])
        r.pop("ndcg")
        out["variants"][name] = r
        print(f"{dataset} {name}: cold {r['cold_start']['cold']['hr@10']['mean']:.4f} warm "
              f"{r['cold_start']['warm']['hr@10']['mean']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    knn = read_json(knn_dir / "metrics.json")["info"]["cold_start"]
    out.update(content_knn=knn, id_model_alone_warm_hr10=float(alone[warm].mean()),
               id_model_alone_cold_hr10=float(alone[cold].mean()), wall_seconds=time.perf_counter() - t0)
    return out


def _cell(m: dict) -> str:
    return f"{m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def _ratio(r: dict) -> str:
    return f"{r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def render(res: dict) -> str:
    lines = ["# Cold start: ID model + content blend vs content-kNN (cold split)", "",
             f"- last run: commit {res['commit']}, {res['created']}; {res['machine']['processor']}, "
             f"{res['machine']['cpus']} CPUs, 1 thread; wall {res['wall_seconds']:.0f} s; command: `{res['command']}`",
             f"- split: {COLD_FRACTION:.0%} of the items (uniform draw, seed {COLD_SEED}) never in training; "
             "full catalog, seen items excluded; test read once",
             "- blend weights chosen on the validation cases only (grid over offset, spread, embedding share, prior "
             "weight, warm content); `cold_recall`: the most validation cold hits keeping validation warm HR@10 "
             "within the stated loss of the ID model alone (each dataset's line says the loss and the validation "
             "cases read)",
             "- Recall@10 = HR@10; [95% bootstrap interval over cases]; ratios are paired (same cases resampled)", ""]
    for ds, d in res["datasets"].items():
        knn = d["content_knn"]
        sel = next(iter(d["variants"].values()))["selection"]
        lines += [f"## {ds}", "", f"- commit {d.get('commit', res['commit'])}; command: "
                  f"`{d.get('command', res['command'])}`",
                  f"- ID model: {d['id_model_run']} (alone: warm Recall@10 "
                  f"{d['id_model_alone_warm_hr10']:.4f}, cold {d['id_model_alone_cold_hr10']:.4f}); "
                  f"{knn['cold']['cases']:,} cold and {knn['warm']['cases']:,} warm test cases; "
                  f"{d['wall_seconds'] / 60:.1f} min",
                  f"- selection: warm loss <= {sel['max_warm_loss']:.0%} on validation; {sel['cases']['cold']:,} cold "
                  f"and {sel['cases']['warm']:,} warm validation cases"
                  + (f" (a uniform sample, seed {sel['sample_seed']})" if sel.get("warm_sample") else ""), "",
                  "| model | cold Recall@10 | cold NDCG@10 | warm Recall@10 | cold vs content-kNN | warm vs ID model "
                  "| warm vs content-kNN | chosen (offset, spread, share, prior, warm content) |", "|---" * 8 + "|",
                  f"| content-kNN | {_cell(knn['cold']['hr@10'])} | {_cell(knn['cold']['ndcg@10'])} | "
                  f"{_cell(knn['warm']['hr@10'])} | 1 | | 1 | |"]
        for name, v in d["variants"].items():
            c, w, ch = v["cold_start"]["cold"], v["cold_start"]["warm"], v["selection"]["chosen"]
            lines.append(f"| {name} | {_cell(c['hr@10'])} | {_cell(c['ndcg@10'])} | {_cell(w['hr@10'])} | "
                         f"{_ratio(v['vs_content_knn_cold_hr@10'])} | {_ratio(v['vs_id_model_warm_hr@10'])} | "
                         f"{_ratio(v['vs_content_knn_warm_hr@10'])} | "
                         f"{ch['offset']:g}, {ch['spread']:g}, {ch['embedding_share']:g}, {ch['prior_weight']:g}, "
                         f"{ch['warm_content']:g} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", default=[])
    p.add_argument("--id-run", type=Path, action="append", default=[], help="the ID-model run of each --dataset, "
                   "in order (default runs/bench-sid/<dataset>/hstu-cold/seed0)")
    p.add_argument("--max-warm-loss", type=float, default=0.04, help="validation warm HR@10 loss allowed")
    p.add_argument("--warm-sample", type=int, default=6000, help="warm validation cases the search reads (0: all)")
    p.add_argument("--overall", action="store_true", help="also the variant chosen for overall validation NDCG@10")
    p.add_argument("--variant", action="append", default=[], help="only these variants (repeatable; default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--render", action="store_true", help="only rebuild cold_blend.md from cold_blend.json")
    args = p.parse_args()
    if args.render:
        write_text(args.out / "cold_blend.md", render(read_json(args.out / "cold_blend.json")))
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = args.id_run or [RUNS / d / "hstu-cold" / "seed0" for d in args.dataset]
    res = {"commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
           "command": "python " + shlex.join(["benchmarks/cold_blend.py", *sys.argv[1:]]),
           "max_warm_loss": args.max_warm_loss, "warm_sample": args.warm_sample or None,
           "datasets": {d: dataset_rows(d, r, args.max_warm_loss, args.warm_sample or None, args.overall, args.variant)
                        for d, r in zip(args.dataset, runs, strict=True)}}
    res["wall_seconds"] = time.perf_counter() - start
    for d in res["datasets"].values():
        d["commit"] = res["commit"]
    previous = args.out / "cold_blend.json"
    if previous.is_file():  # datasets not rerun keep their rows (each names its commit and command)
        old = read_json(previous)
        for name, d in old["datasets"].items():
            if name not in res["datasets"]:
                res["datasets"][name] = {"commit": old["commit"], "command": old["command"], **d}
    write_json(args.out / "cold_blend.json", res)
    write_text(args.out / "cold_blend.md", render(res))
    print(f"wrote {args.out / 'cold_blend.md'}")


if __name__ == "__main__":
    main()
