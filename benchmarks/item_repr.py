"""What an item representation that does not grow with the catalog costs: HSTU with the item id table
(``model.item_repr: id``) against semantic-ID code embeddings alone (``sid``) and codes plus hashed id buckets
(``sid_hash``), same architecture and training budget, on MovieLens-1M and Amazon Beauty.

Each variant trains into runs/item_repr/<dataset>/<variant>/seed<k> (a finished run whose stored config equals
the one this script builds is reused). Per variant: test metrics with their bootstrap intervals over users, the
item representation's parameter count, and a paired test against the id table on the same test users.
Writes benchmarks/results/item_repr.{json,md}.

    genrec content encode --dataset amazon-beauty && genrec tokenize --dataset amazon-beauty --method rqkmeans
    python benchmarks/item_repr.py --datasets movielens-1m amazon-beauty --minutes 27 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from safetensors import safe_open

from genrec.eval import compare_runs
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.train import trainer_class
from genrec.train.config import load_config

RUNS = Path("runs/item_repr")
OUT = Path("benchmarks/results/item_repr")
SHOWN = ["hr@10", "ndcg@10", "hr@50", "ndcg@50"]
CONFIGS = {"movielens-1m": ("configs/movielens-1m/hstu.yaml", "configs/movielens-1m/hstu-sid-only.yaml", 1024),
           "amazon-beauty": ("configs/amazon-beauty/hstu.yaml", "configs/amazon-beauty/hstu-sid-only.yaml", 4096)}


def variants(dataset: str) -> dict[str, tuple[str, dict]]:
    """Variant -> (config, overrides); sid_hash is the sid config with hashed id buckets added."""
    id_config, sid_config, buckets = CONFIGS[dataset]
    return {"id": (id_config, {}), "sid": (sid_config, {}),
            "sid_hash": (sid_config, {"model.item_repr": "sid_hash", "model.hash_buckets": buckets})}


def train(dataset: str, name: str, args: argparse.Namespace) -> Path:
    config, overrides = variants(dataset)[name]
    cfg = load_config(config, overrides | {"train.seed": args.seed, "train.threads": args.threads,
                                           "train.max_minutes": args.minutes})
    folder = RUNS / dataset / name / f"seed{args.seed}"
    if (folder / "metrics.json").is_file():
        stored = {k: v for k, v in read_json(folder / "config.json").items() if k != "run"}
        if stored != cfg.model_dump(mode="json"):
            raise SystemExit(f"{folder} was trained with another config: remove it to retrain")
        print(f"reusing {folder}", flush=True)
        return folder
    resume = (folder / "checkpoint" / "trainer.json").is_file()
    trainer_class(cfg)(cfg, folder, show_progress=True).fit(resume=resume)
    return folder


def item_parameters(folder: Path) -> dict[str, int]:
    """Parameters of the item representation (every tensor whose name says item, code or hash)."""
    with safe_open(folder / "model.safetensors", "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    item = sum(_numel(s) for k, s in shapes.items() if any(w in k for w in ("item", "code", "hash")))
    return {"item_params": item, "all_params": sum(_numel(s) for s in shapes.values())}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def summarise(dataset: str, folders: dict[str, Path]) -> dict:
    out = {}
    for name, folder in folders.items():
        m = read_json(folder / "metrics.json")
        row = {"metrics": {k: m["metrics"][k] for k in SHOWN}, "run": str(folder), "commit": m["run"]["commit"],
               "train_seconds": m["info"].get("train_seconds"), "best_epoch": m["info"].get("best_epoch"),
               "stopped": m["info"].get("stopped"), "config": read_json(folder / "config.json")["model"],
               **item_parameters(folder)}
        if name != "id":
            row["paired_vs_id"] = compare_runs(folders["id"], folder, ["hr@10", "ndcg@10"])["metrics"]
        out[name] = row
    return out


def render(res: dict) -> str:
    lines = ["# Item representation: id table vs semantic-ID codes (HSTU, full catalog, leave-one-out, test)", "",
             f"- {res['created']}, commit {res['commit']} (each run records its own), {res['machine']['processor']}, "
             f"{res['machine']['cpus']} CPUs, torch {res['machine']['torch']}",
             f"- command: `{res['command']}`",
             f"- each variant trained for at most {res['config']['minutes']} minutes on {res['config']['threads']} "
             "thread(s), early stopping on validation NDCG@10; intervals: 95% bootstrap over test users; "
             "difference: paired over the same users against the id table", ""]
    for ds, rows in res["datasets"].items():
        lines += [f"## {ds}", "", "| item repr | item params | " + " | ".join(SHOWN) +
                  " | HR@10 vs id [95% CI], p | NDCG@10 vs id [95% CI], p | train min | run commit |",
                  "|---" * (len(SHOWN) + 6) + "|"]
        for name, r in rows.items():
            cells = [f"{r['metrics'][k]['mean']:.4f} [{r['metrics'][k]['ci_low']:.4f}, "
                     f"{r['metrics'][k]['ci_high']:.4f}]" for k in SHOWN]
            diffs = [_diff(r["paired_vs_id"][k]) if "paired_vs_id" in r else "-" for k in ("hr@10", "ndcg@10")]
            minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
            lines.append(f"| {name} | {r['item_params']:,} | " + " | ".join(cells) + f" | {' | '.join(diffs)} | "
                         f"{minutes} | {r['commit']} |")
        lines.append("")
    return "\n".join(lines)


def _diff(d: dict) -> str:
    return f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], p={d['p_value']:.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["id", "sid", "sid_hash"], choices=["id", "sid", "sid_hash"])
    p.add_argument("--minutes", type=float, default=27.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    datasets = {}
    for ds in args.datasets:
        names = ["id", *[v for v in args.variants if v != "id"]]
        datasets[ds] = summarise(ds, {name: train(ds, name, args) for name in names})
    previous = read_json(OUT.with_suffix(".json")).get("datasets", {}) if OUT.with_suffix(".json").is_file() else {}
    res = {"command": "python " + " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "config": {"minutes": args.minutes, "threads": args.threads, "seed": args.seed},
           "wall_seconds": time.perf_counter() - start, "datasets": previous | datasets}
    write_json(OUT.with_suffix(".json"), res)
    write_text(OUT.with_suffix(".md"), render(res))
    print(render(res))


if __name__ == "__main__":
    main()
