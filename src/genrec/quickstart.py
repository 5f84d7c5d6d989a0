"""The main job behind ``make quickstart``: train HSTU on MovieLens-1M under a wall-time budget, evaluate the
test split once, export a servable bundle, and show the numbers next to the published ones plus sample
recommendations with titles. Everything here calls public functions a user could call themselves."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.data import leave_one_out, load_dataset
from genrec.eval import Evaluation
from genrec.serve import Recommender, export_bundle
from genrec.train import run_baseline
from genrec.train.config import RunConfig
from genrec.train.trainer import Trainer

# Embedded defaults (override with `genrec quickstart --config FILE`). Full-catalog cross-entropy was the
# fastest route to quality on 2 CPU cores; the schedule is sized to the time budget.
DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "movielens-1m",
    "split": "loo",
    "model": {"name": "hstu", "dim": 50, "blocks": 2, "heads": 1, "max_len": 200, "dropout": 0.2},
    "train": {"loss": "full_ce", "batch_size": 32, "lr": 0.003, "warmup_steps": 200, "schedule": "linear",
              "epochs": 24, "max_minutes": 12.0, "patience": 5, "seed": 0},
    "eval": {"select_metric": "ndcg@10"},
}

# meta-recsys/generative-recommenders README: 3,706 items, no validation split, test read
# every epoch. genrec's protocol is stricter: 3,416 items (SASRec form), validation-based model selection.
PUBLISHED = {
    "SASRec (published)": {"hr@10": .2853, "ndcg@10": .1603, "hr@50": .5474, "ndcg@50": .2185,
                           "hr@200": .7528, "ndcg@200": .2498},
    "HSTU (published)": {"hr@10": .3097, "ndcg@10": .1720, "hr@50": .5754, "ndcg@50": .2307,
                         "hr@200": .7716, "ndcg@200": .2606},
    "HSTU-large (published)": {"hr@10": .3294, "ndcg@10": .1893, "hr@50": .5935, "ndcg@50": .2481,
                               "hr@200": .7839, "ndcg@200": .2771},
}


@dataclass
class QuickstartResult:
    config: RunConfig
    test: Evaluation
    baselines: dict[str, Evaluation]
    best_epoch: int
    train_seconds: float
    bundle: Path
    samples: list[dict[str, Any]]


def run_quickstart(out: str | Path = "runs/quickstart", config: RunConfig | None = None,
                   show_progress: bool = True, n_samples: int = 3) -> QuickstartResult:
    out = Path(out)
    cfg = config or RunConfig.model_validate(DEFAULT_CONFIG)
    ds = load_dataset(cfg.dataset)
    baselines = {name: run_baseline(name, ds, out=out / name, show_progress=show_progress).evaluation
                 for name in ("popularity", "itemknn")}
    run_dir = out / cfg.model.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run each time; use `genrec train --resume` to continue one
    result = Trainer(cfg, run_dir, dataset=ds, show_progress=show_progress).fit()
    bundle = out / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)  # the quickstart's own output folder; real bundles are never overwritten
    export_bundle(run_dir, bundle)
    samples = sample_recommendations(Recommender.load(bundle), ds, n_samples)
    return QuickstartResult(cfg, result.test, baselines, result.best_epoch,
                            result.history[-1]["elapsed_s"] if result.history else 0.0, bundle, samples)


def sample_recommendations(rec: Recommender, ds, n: int, k: int = 5, shown_history: int = 5) -> list[dict]:
    """For the first ``n`` test users: their latest items, the top-``k`` from the bundle, and what came next."""
    split = leave_one_out(ds)
    titles = ds.item_titles() or [str(x) for x in [""] + ds.items.raw.to_pylist()]
    out = []
    for row in range(min(n, len(split.test))):
        hist = split.test.history.row(row)
        raw_hist = [str(x) for x in ds.items.decode(hist)]
        recs = rec.recommend(raw_hist, k=k)
        target = int(split.test.targets[row])
        out.append({"user": ds.users.decode([split.test.users[row]])[0],
                    "history": [titles[i] for i in hist[-shown_history:]],
                    "recommended": [r.get("title") or r["item_id"] for r in recs.items],
                    "next": titles[target],
                    "hit": str(ds.items.decode([target])[0]) in {r["item_id"] for r in recs.items}})
    return out
