"""Results pages of the retrieval models: full-catalog quality (quality.json, baselines.json, the MovieLens
curves) and semantic IDs with the generator (semantic_ids*.json, beam_latency*.json)."""

from __future__ import annotations

from typing import Any

from genrec.docs_gen.md import count, diff_ci, fixed, num, page, pvalue, table, with_ci
from genrec.docs_gen.results_common import Results, provenance

DATASETS = {"movielens-1m": "MovieLens-1M", "amazon-beauty": "Amazon Beauty", "microlens-50k": "MicroLens-50K"}
SHOWN = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200")


def _ordered(datasets: dict[str, Any]) -> dict[str, Any]:
    """Datasets in the order of DATASETS, others after."""
    order = list(DATASETS)
    return dict(sorted(datasets.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def config_name(res: Results, dataset: str, key: str) -> str:
    """The shipped config a quality row trained (`configs/<dataset>/<key>.yaml`), or the row's own name."""
    path = f"configs/{dataset}/{key}.yaml"
    if (res.root / path).is_file():
        return f"`{path}`"
    return {"hstu-quickstart": "`make quickstart`", "popularity": "popularity", "itemknn": "item-kNN"}.get(key, key)


def train_minutes(row: dict[str, Any]) -> str:
    seconds = [s.get("train_seconds") for s in row.get("per_seed", []) if s.get("train_seconds")]
    return fixed(sum(seconds) / len(seconds) / 60) if seconds else ""


def quality_value(row: dict[str, Any], metric: str) -> str:
    """Mean with the interval: across seeds when there are several, else the single run's bootstrap one."""
    if len(row.get("seeds", [])) > 1 and metric in row.get("across_seeds_ci95", {}):
        low, high = row["across_seeds_ci95"][metric]
        return with_ci({"mean": row["mean"][metric], "ci_low": low, "ci_high": high})
    return with_ci(row["per_seed"][0]["metrics"].get(metric)) if row.get("per_seed") else num(row["mean"].get(metric))


def _quality_tables(res: Results) -> list[str]:
    data, published = res.load("quality"), res.published()
    blocks = [provenance(data, "quality")]
    for dataset, rows in _ordered(data["datasets"]).items():
        rows = {k: rows[k] for k in sorted(rows, key=lambda k: (k not in ("popularity", "itemknn"), k))}
        body = [[config_name(res, dataset, key), len(row.get("seeds", [])),
                 *(quality_value(row, m) for m in SHOWN), train_minutes(row)] for key, row in rows.items()]
        body += [[f"{name} (published)", "", *(num(fig.get(m)) for m in SHOWN), ""]
                 for name, fig in published.get(dataset, {}).items()]
        paired = [[config_name(res, dataset, key), base, diff_ci(t["hr@10"]), pvalue(t["hr@10"]["p_value"]),
                   diff_ci(t["ndcg@10"]), pvalue(t["ndcg@10"]["p_value"])]
                  for key, row in rows.items() for base, t in row.get("paired_seed0", {}).items()]
        blocks += [f"### {DATASETS.get(dataset, dataset)}",
                   table(["model / config", "seeds", *SHOWN, "train min"], body),
                   "Paired against the baselines (seed 0, per-user differences, bootstrap 95% interval, paired "
                   "t-test p):",
                   table(["model / config", "minus", "HR@10", "p", "NDCG@10", "p"], paired)]
    return blocks


def _baseline_grid(res: Results) -> list[str]:
    if not res.has("baselines"):
        return []
    data = res.load("baselines")
    blocks = ["## Baselines: item-kNN settings chosen on validation", provenance(data, "baselines")]
    for dataset, d in data["datasets"].items():
        params = d["test"]["itemknn"]["params"]
        grid = [[g["window"], g["history_decay"], num(g["hr@10"]), num(g["ndcg@10"]), fixed(g["seconds"])]
                for g in d["validation_grid"]]
        blocks += [f"### {DATASETS.get(dataset, dataset)}",
                   "Chosen: " + ", ".join(f"`{k}={v}`" for k, v in params.items()) + ".",
                   table(["window", "history_decay", "valid HR@10", "valid NDCG@10", "s"], grid)]
    return blocks


def _curves(res: Results) -> list[str]:
    blocks = ["## MovieLens-1M: validation against wall time",
              "Validation HR@10 of each epoch against training minutes, and when each run first crossed the "
              "published HR@10 of SASRec and of HSTU-large.",
              res.image("ml1m_curves.png", "MovieLens-1M validation curves"),
              res.image("ml1m_curves_refit.png", "MovieLens-1M validation curves with refit")]
    for stem in ("ml1m_curves_time_to_quality", "ml1m_curves_refit_time_to_quality"):
        if not res.has(stem):
            continue
        data = res.load(stem)
        targets = data["targets"]
        rows = [[r["label"], *(fixed(r["valid_reached_min"].get(str(t))) if isinstance(
                    r["valid_reached_min"].get(str(t)), float) else r["valid_reached_min"].get(str(t), "")
                    for t in targets),
                 num(r["test"]["hr@10"]), num(r["test"]["ndcg@10"]), fixed(r["train_min"]), r["best_epoch"]]
                for r in data["runs"]]
        blocks += [table(["run", *(f"valid HR@10 >= {num(t)} at (min)" for t in targets), "test HR@10",
                          "test NDCG@10", "train min", "best epoch"], rows), provenance(data, stem)]
    return blocks


def retrieval_page(res: Results) -> str:
    return page(
        "Retrieval quality",
        "Full catalog, leave-one-out (each user's last item is the test target, the one before the validation "
        "target), items already in the history excluded, the epoch chosen on validation NDCG@10 and the test item "
        "read once. Intervals: across seeds (t-interval) when a row has several seeds, else the bootstrap "
        "interval over users of its single run. HR@K equals Recall@K with one target per user. The published "
        "rows come from the papers and repositories cited in [References](../reference/papers.md); their "
        "protocols differ (see [evaluation](../concepts/evaluation.md)). Reproduce a row with "
        "`python benchmarks/quality.py --config CONFIG --seeds 0 1 2`.",
        "## Sequential models against the baselines", *_quality_tables(res), *_baseline_grid(res), *_curves(res))


# --- semantic IDs ----------------------------------------------------------------------------------------

def _sid_row(name: str, run: dict[str, Any]) -> list[str]:
    m = run["metrics"]
    budget = f" ({fixed(run['budget_minutes'])} budget)" if run.get("budget_minutes") else ""
    return [name, run.get("device", ""), with_ci(m.get("hr@10")), with_ci(m.get("ndcg@10")), with_ci(m.get("hr@5")),
            "" if run.get("invalid_ids") is None else run["invalid_ids"],
            f"{run.get('epochs_run', '')} (best {run.get('best_epoch', '')})", fixed(run.get("train_minutes")) + budget]


def _cold_row(name: str, run: dict[str, Any]) -> list[str]:
    cold, warm = run["cold_start"]["cold"], run["cold_start"]["warm"]
    return [name, count(cold.get("cases")), with_ci(cold.get("hr@10")), with_ci(cold.get("ndcg@10")),
            with_ci(warm.get("hr@10")), fixed(run.get("train_minutes"))]


def _sid_tables(res: Results) -> list[str]:
    data, published = res.load("semantic_ids"), res.published()
    blocks = [provenance(data, "semantic_ids")]
    for dataset, rows in _ordered(data["datasets"]).items():
        runs = [(name, run) for name, group in rows.items() for run in group]
        standard = [_sid_row(n, r) for n, r in runs if not r.get("cold_start")]
        standard += [[f"{n} (published)", "", num(f.get("hr@10")), num(f.get("ndcg@10")), num(f.get("hr@5")), "",
                      "", ""] for n, f in published.get(dataset, {}).items() if "hr@5" in f]
        cold = [_cold_row(n, r) for n, r in runs if r.get("cold_start")]
        blocks += [f"### {DATASETS.get(dataset, dataset)}",
                   table(["run", "device", "Recall@10", "NDCG@10", "Recall@5", "invalid IDs", "epochs",
                          "train min"], standard)]
        if cold:
            blocks += ["Cold start: items held out of training entirely; *cold* = test cases whose target is one "
                       "of them, *warm* = the others.",
                       table(["run", "cold cases", "cold Recall@10", "cold NDCG@10", "warm Recall@10", "train min"],
                             cold)]
    return blocks


def _cold_mixing(res: Results) -> list[str]:
    if not res.has("semantic_ids_cold_mixing"):
        return []
    data = res.load("semantic_ids_cold_mixing")
    blocks = ["## Cold-start mixing in the generator's beams",
              "Items absent from training whose semantic ID shares a beam's first `prefix` codes join the list "
              "right below that beam, at most ceil(epsilon n) of every top n (`model.cold_mixing`), evaluated "
              "again on a trained generator without retraining.", provenance(data, "semantic_ids_cold_mixing")]
    for run in data["runs"]:
        rows = [[r["epsilon"], r["prefix"] or "", num(r["test"]["hr@10"]["mean"]), with_ci(r["cold"]["hr@10"]),
                 with_ci(r["warm"]["hr@10"]), fixed(r.get("cold_per_list@10"), 2)] for r in run.get("results", [])]
        if rows:
            blocks += [f"`{run['run']}` ({count(run['cold_cases'])} cold cases)",
                       table(["epsilon", "prefix", "test Recall@10", "cold Recall@10", "warm Recall@10",
                              "cold items per top 10"], rows)]
    return blocks


def _beam_latency(res: Results) -> list[str]:
    blocks = ["## Constrained beam search latency"]
    for stem in res.stems("beam_latency"):
        data = res.load(stem)
        rows = [[r.get("impl", ""), r.get("threads", data.get("threads")), r["beam"], r["batch"],
                 fixed(r["ms_per_user"], 2), fixed(r["ms_per_call_p50"]), fixed(r["ms_per_call_p99"]),
                 fixed(r.get("cpu_ms_per_user"), 2), fixed(r["users_per_s"], 0), r["invalid_ids"]]
                for r in data["rows"]]
        layout = data.get("config", {}).get("encoder_tokens", "codes")
        blocks += [f"Encoder layout `{layout}`, {count(data['n_items'])} items; {data.get('model', '')}.",
                   table(["code", "threads", "beam", "users per call", "ms / user", "p50 ms / call", "p99 ms / call",
                          "CPU ms / user", "users / s", "invalid IDs"], rows), provenance(data, stem)]
    return blocks


def semantic_ids_page(res: Results) -> str:
    return page(
        "Semantic IDs and the generator",
        "Item text embedded with all-MiniLM-L6-v2, 3 levels of 256 codes plus a uniqueness code (RQ-KMeans unless "
        "the run says RQ-VAE); the generator decodes with beam search constrained to valid IDs, so a target "
        "outside the beams is a miss and invalid IDs stay 0. One seed per row; runs stopped by a time budget say "
        "so. Reproduce with `python benchmarks/semantic_ids.py --config CONFIG [--device cuda]`.",
        "## Quality", *_sid_tables(res), *_cold_mixing(res), *_beam_latency(res))
