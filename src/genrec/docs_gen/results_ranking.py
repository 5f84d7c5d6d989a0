"""Results pages of the ranking models (KuaiRand-Pure: ranking*.json and the probes beside them) and of two-stage
retrieval + ranking (two_stage_*.json)."""

from __future__ import annotations

from typing import Any

from genrec.docs_gen.md import count, diff_ci, fixed, num, page, pvalue, table, with_ci
from genrec.docs_gen.results_common import Results, mean, provenance

TASKS = ("click", "long_view", "like")
PREFIX = "ranking_kuairand-pure"
FAMILIES = {  # file tag -> what the file measures (its figures come from the file)
    "": "Streaming requests, one seed: each test impression reads every strictly earlier impression of its user, "
        "outcomes included.",
    "-frozen": "Frozen requests, one seed: every candidate of a request reads the history and time of the "
               "request's first impression, as a served request does.",
    "-frozen-seeds3": "Frozen requests, trained and tested, seeds 0-2; GAUC is the mean over seeds.",
    "-frozen-seeds3-rerun": "The same configs retrained at a later commit, seeds 0-2 (a reproduction check).",
    "-frozen-seeds3-ensemble": "Seed ensembles: every impression's probability averaged over a model's seeds.",
    "-frozen-seeds3-like3": "The like task weighted 3x (`ranker-like3.yaml`); not adopted, see the "
                            "[results log](../results-log.md).",
    "-frozen-folds3-seeds3": "Three temporal folds (non-overlapping test windows) x three seeds, pooled: each "
                             "user of each window is one unit of the paired test.",
    "-frozen-folds3-seeds3-ensemble": "Seed ensembles on the three pooled folds.",
    "-frozen-folds3-seeds3-all": "Three folds pooled, with DIN and DCN-v2 trained with BCE as well.",
    "-frozen-folds3-seeds3-context": "Request-context embeddings on the ranker (`ranker-context.yaml`); not adopted, "
                                     "see the [results log](../results-log.md).",
    "-frozen-folds3-seeds3-tab": "The app tab of each impression as context (`ranker-tab.yaml`, `gbdt-tab.yaml`).",
    "-frozen-folds3-seeds3-tab-all": "Every model reading the tab, and a per-tab logit offset (`ranker-tab-bias`).",
    "-frozen-folds3-seeds3-refit": "Refit on the training and validation days for the selected epochs or rounds.",
}


def _seed_runs(run: dict[str, Any]) -> list[dict[str, Any]]:
    return run.get("by_seed") or [run]


def _gauc(data: dict[str, Any], name: str, task: str) -> float | None:
    """Pooled GAUC over folds when the file has folds, else the mean over seeds of the test GAUC."""
    if "pooled" in data:
        values = data["pooled"].get(name, {}).get(task)
        return mean(values) if values else None
    values = [r["tasks"][task]["metrics"]["gauc"]["value"] for r in _seed_runs(data["runs"][name])
              if task in r.get("tasks", {})]
    return mean(values) if values else None


def _ece(data: dict[str, Any], name: str) -> str:
    values = [r["tasks"]["click"]["metrics"]["ece"]["value"] for r in _seed_runs(data["runs"][name])
              if "click" in r.get("tasks", {})]
    return num(mean(values), 3) if values else ""


def paired_table(paired: dict[str, Any]) -> str:
    """One row per comparison, GAUC difference [interval] and p for each main task."""
    rows: dict[str, list[str]] = {}
    for key, test in paired.items():
        pair, _, task = key.rpartition(":")
        if task in TASKS:
            g = test["gauc"]
            rows.setdefault(pair, [pair, *[""] * (2 * len(TASKS))])
            i = 1 + 2 * TASKS.index(task)
            rows[pair][i:i + 2] = [diff_ci(g), pvalue(g.get("p_value"))]
    return table(["A - B", *(h for t in TASKS for h in (f"{t} GAUC", "p"))], rows.values())


def _family(res: Results, stem: str) -> list[str]:
    data = res.load(stem)
    tag = stem.removeprefix(PREFIX)
    models = list(data["runs"])
    pooled = "pooled" in data
    rows = [[m, f"`{data['runs'][m].get('config', '')}`", ", ".join(map(str, data.get("seeds", {}).get(m, [0]))),
             *(num(_gauc(data, m, t)) for t in TASKS), "" if pooled else _ece(data, m)] for m in models]
    blocks = [f"### `{stem}`", FAMILIES.get(tag, ""), provenance(data, stem),
              table(["model", "config", "seeds", *(f"{t} GAUC" for t in TASKS), "click ECE"], rows)]
    if "ensemble" in data:
        ensemble = [[m, *(num(v.get(t)) for t in TASKS)] for m, v in data["ensemble"].items()]
        blocks += ["Seed ensembles:", table(["model", *(f"{t} GAUC" for t in TASKS)], ensemble)]
    blocks += ["Paired GAUC differences (users as units; bootstrap 95% interval, sign-flip permutation p):",
               paired_table(data.get("paired", {}))]
    return blocks


def _streaming_intervals(res: Results) -> list[str]:
    data = res.load(PREFIX)
    rows = [[m, *(with_ci(r["tasks"][t]["metrics"]["gauc"], 3) for t in TASKS),
             num(r["tasks"]["click"]["metrics"]["auc"]["value"], 3), _ece(data, m)] for m, r in data["runs"].items()]
    split = data["split"]
    parts = [[p, count(split[p]["rows"]), count(split[p]["users"]), split[p]["first_day"], split[p]["last_day"]]
             for p in ("train", "valid", "test")]
    return ["## The log and its split", provenance(data, PREFIX), split["rule"].get("text", ""),
            table(["part", "impressions", "users", "first day", "last day"], parts),
            "## Streaming requests, one seed (95% bootstrap intervals over users)",
            table(["model", *(f"{t} GAUC" for t in TASKS), "click AUC", "click ECE"], rows)]


def _probes(res: Results) -> list[str]:
    blocks = ["## What streaming GAUC rewards"]
    if res.has(f"ranking_frozen_{PREFIX[8:]}"):
        stem = f"ranking_frozen_{PREFIX[8:]}"
        data = res.load(stem)
        rows = [[m, *(num(r["streaming_gauc"].get(t), 3) for t in TASKS), *(num(r["gauc"].get(t), 3) for t in TASKS)]
                for m, r in data["runs"].items()]
        blocks += ["Runs trained on streaming requests, scored again with frozen ones: the frozen columns measure "
                   "only how a model orders items.", provenance(data, stem),
                   table(["model", *(f"{t} streaming" for t in TASKS), *(f"{t} frozen" for t in TASKS)], rows),
                   paired_table(data["paired"])]
    for stem, text in ((f"ranking_counters_{PREFIX[8:]}", "A per-user counter of earlier positives, no model:"),
                       (f"item_prior_{PREFIX[8:]}", "Each item's smoothed rate over earlier training impressions, "
                                                    "no model (strength chosen on validation):")):
        if res.has(stem):
            data = res.load(stem)
            gauc = data["gauc"]["test"]
            chosen = data.get("strength_chosen_on_valid")
            values = gauc[str(int(chosen))] if chosen is not None and str(int(chosen)) in gauc else gauc
            blocks += [text, provenance(data, stem),
                       table([f"{t} GAUC" for t in TASKS], [[num(values.get(t), 3) for t in TASKS]]),
                       paired_table(data["paired_test"])]
    return blocks


def _tab_probe(res: Results) -> list[str]:
    if not res.has("kuairand_tab"):
        return []
    data = res.load("kuairand_tab")
    runs = [[r["run"], r["model"], num(r["gauc_model"]), num(r["gauc_tab"]), num(r["gauc_model_plus_tab"]),
             num(r["users_with_several_tabs"], 3)] for r in data["runs"]]
    tabs = [[i, count(n), num(rate, 3)] for i, (n, rate) in enumerate(zip(data["tabs"]["rows"],
                                                                         data["tabs"]["click_rate"], strict=True))]
    return ["## The app tab as context",
            "Click GAUC of each frozen run, of the tab's click log-odds alone, and of their sum.",
            provenance(data, "kuairand_tab"),
            table(["run", "model", "model", "tab alone", "model + tab", "users with several tabs"], runs),
            table(["tab", "impressions", "click rate"], tabs)]


def _speed(res: Results) -> list[str]:
    if not res.has("ranking_speed"):
        return []
    data = res.load("ranking_speed")
    rows = [[count(r["candidates"]), r["history"], fixed(r["one_pass_ms"]), fixed(r["per_candidate_sequential_ms"]),
             fixed(r["per_candidate_batched_ms"]), count(r["one_pass_candidates_per_s"]),
             f"{r['max_abs_diff']:.1g}"] for r in data["rows"]]
    return ["## One-pass scoring speed",
            "One request: the history's keys and values are computed once and every candidate attends to them "
            "(M-FALCON), against one pass per candidate, sequential or batched; the three give the same scores.",
            provenance(data, "ranking_speed"),
            table(["candidates", "history", "one pass ms", "per candidate ms", "per candidate, batched ms",
                   "candidates / s", "max abs diff"], rows)]


def ranking_page(res: Results) -> str:
    families = [b for stem in res.stems(PREFIX) if stem != PREFIX for b in _family(res, stem)]
    return page(
        "Ranking on KuaiRand-Pure",
        "Multi-task ranking models on the KuaiRand-Pure impression log, split by time. GAUC is each user's AUC "
        "weighted by their impressions, over users with both outcomes. *Streaming* requests let a candidate read "
        "the outcomes of the user's other impressions of the same window; *frozen* requests read one history, as "
        "a served request does, so only frozen GAUC measures how a model orders items (see "
        "[two-stage ranking](../tutorials/kuairand-ranking.md)). Reproduce with `python benchmarks/ranking.py "
        "--protocol frozen --seeds 0 1 2 --configs ...` (the command of each file is in its Markdown report).",
        *_streaming_intervals(res), *_probes(res), "## Benchmarks by protocol", *families, *_tab_probe(res),
        *_speed(res))


# --- two stages ------------------------------------------------------------------------------------------

def _two_stage(res: Results, stem: str) -> list[str]:
    data = res.load(stem)
    info, chosen = data["info"], str(data["weight"])
    metrics = [m for m in ("hr@10", "ndcg@10", "ndcg@50") if m in data["test"]["retrieval"]]
    valid = [[w, *(num(data["valid"].get(w, {}).get(m)) for m in metrics), "chosen" if w == chosen else ""]
             for w in ["retrieval", *info["weights"]] if w in data["valid"]]
    paired = [[m, num(t["mean_a"]), num(t["mean_b"]), diff_ci(t), pvalue(t["p_value"]), pvalue(t.get("p_wilcoxon"))]
              for m, t in data["paired"].items() if m in metrics]
    return [f"### `{stem}`", data.get("protocol", ""), provenance(data, stem),
            f"Retrieval `{data['retrieval']['folder']}` ({data['retrieval']['model']}), ranker "
            f"`{data['ranker']['folder']}`; {count(info.get('test_cases'))} test cases, top "
            f"{info.get('k_retrieve')} reordered, weight chosen on validation: **{chosen}**.",
            table(["weight", *(f"valid {m}" for m in metrics), ""], valid),
            "Test, retrieval alone (A) against the two stages at the chosen weight (B):",
            table(["metric", "A", "B", "B - A", "paired t p", "Wilcoxon p"], paired)]


def two_stage_page(res: Results) -> str:
    blocks = [b for stem in res.stems("two_stage_") for b in _two_stage(res, stem)]
    return page(
        "Two-stage retrieval and ranking",
        "Retrieval's top candidates reordered by `final = z(retrieval score) + W * z(ranker score)` (z-scores "
        "over each request's candidates), with W chosen on validation among the listed weights and the test read "
        "once. Reproduce with `python benchmarks/two_stage.py --dataset NAME --retrieval RUN --ranker RUN`.",
        *blocks)
