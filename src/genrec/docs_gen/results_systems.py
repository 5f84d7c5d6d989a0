"""Results pages of the systems side: serving load tests (serve_load_*.json, serve_scale.json), training and
evaluation speed (train_speed*.json, eval_speed.json) and scale (scale.json, expand_quality.json)."""

from __future__ import annotations

from typing import Any

from genrec.docs_gen.md import count, diff_ci, fixed, num, page, pvalue, table, with_ci
from genrec.docs_gen.results_common import Results, provenance


def _load_rows(stem: str, data: dict[str, Any]) -> list[list[str]]:
    cfg = data["config"]
    client = cfg.get("client", "httpx")
    label = f"`{stem.removeprefix('serve_load_')}`"
    phases = [(f"{c}", r) for c, r in data["steady"].items()]
    if data.get("during_reloads", {}).get("reloads_sent"):
        phases.append((f"{cfg.get('reload_concurrency')}, {data['during_reloads']['reloads_sent']} reloads "
                       f"({cfg.get('reload_via')})", data["during_reloads"]))
    rows = []
    for clients, phase in phases:
        for kind, r in phase.items():
            if not isinstance(r, dict) or "p50_ms" not in r or kind == "reload":
                continue
            fallbacks = sum(r.get("fallbacks", {}).values())
            rows.append([label, count(data["n_items"]), cfg["workers"], client, clients, kind, fixed(r["per_s"], 0),
                         fixed(r["p50_ms"]), fixed(r["p99_ms"]), r["errors"], fallbacks or ""])
    return rows


def serving_page(res: Results) -> str:
    rows, sources = [], []
    for stem in res.stems("serve_load_"):
        data = res.load(stem)
        rows += _load_rows(stem, data)
        sources.append(f"- `{stem}`: bundle `{data['bundle']}`, {data['mix']}, history length "
                       f"{data['config'].get('history_len') or 'mixed'}; {provenance(data, stem)[8:]}")
    blocks = ["## Load tests",
              "`python benchmarks/serve_load.py --bundle BUNDLE --concurrency 1,8,32 --history-len 200 --seconds 20 "
              "--reloads 5 [--workers 2] [--client stdlib|httpx]` starts `genrec serve` and a load generator on the "
              "same machine, runs one steady phase per number of concurrent clients and one under reloads, and "
              "counts every error (a fallback answer is not an error; the fallbacks column counts them).",
              table(["run", "items", "workers", "client", "clients", "requests", "req/s", "p50 ms", "p99 ms",
                     "errors", "fallbacks"], rows), "\n".join(sources)]
    if res.has("serve_scale"):
        data = res.load("serve_scale")
        scale = [[count(r["items"]), r["index"], r["params"], num(r["recall_at_10"], 3), fixed(r["load_seconds"]),
                  fixed(r["p50_ms_c1"]), fixed(r["p99_ms_c1"]), fixed(r["p50_ms_c8"]), fixed(r["p99_ms_c8"]),
                  count(r.get("pss_mb_2w"))] for r in data["rows"]]
        blocks += ["## Large catalogs",
                   "Bundles of 10^5 to 10^7 items exported with `--ann auto` (exact, IVF or IVF-PQ with an exact "
                   "re-ranking of its shortlist), served over HTTP: recall@10 against exact search, load time, "
                   "latency at 1 and 8 clients, and the memory each of 2 workers adds (PSS: shared pages counted "
                   "once).",
                   provenance(data, "serve_scale"),
                   table(["items", "index", "parameters", "recall@10", "load s", "p50 ms c1", "p99 ms c1", "p50 ms c8",
                          "p99 ms c8", "PSS MB per worker"], scale)]
    blocks += _api_contract(res)
    return page("Serving", "Every request a recommendation from an explicit history unless the run says otherwise; "
                "k 10. The server and the load generator share the machine's cores.", *blocks)


def _api_contract(res: Results) -> list[str]:
    if not res.has("api_contract"):
        return []
    data = res.load("api_contract")
    statuses = sorted({s for r in data["runs"].values() for s in r.get("statuses", {})})
    rows = [[name, count(r["cases"]), r.get("operations", ""), len(r.get("failures", [])), r.get("server_errors", ""),
             *(count(r.get("statuses", {}).get(s)) for s in statuses)] for name, r in data["runs"].items()]
    return ["## API contract",
            f"`{data['command']}`: schemathesis {data.get('schemathesis', '')} with every check, generated requests "
            f"against `genrec serve` over {data.get('bundle', 'a bundle')}, with and without an API key: every "
            "answer must match the OpenAPI schema the server publishes ([HTTP API](../reference/http-api.md)).",
            provenance(data, "api_contract"),
            table(["server", "cases", "operations", "failures", "5xx", *(f"{s} answers" for s in statuses)], rows)]


def _train_speed(res: Results) -> list[str]:
    blocks = ["## Training speed",
              "Seconds per epoch of MovieLens-1M at the stated shapes (`benchmarks/train_speed.py`); *fast* is "
              "genrec's training path, *reference* the plain per-sequence one that tests compare against."]
    for stem in res.stems("train_speed"):
        data = res.load(stem)
        rows = [[r["model"], r["recipe"], r["dim"], r["heads"], r["path"], count(r["tokens_per_s"]),
                 fixed(r.get("s_per_epoch_measured") or r.get("s_per_epoch_extrapolated"))] for r in data["rows"]]
        blocks += [f"### `{stem}` (allocator: {data.get('allocator', '')})", provenance(data, stem),
                   table(["model", "recipe", "D", "heads", "path", "tokens/s", "s / epoch"], rows)]
        if stem == "train_speed" and data.get("meta_reference_s_per_epoch"):
            ref = [[m, *v.values()] for m, v in data["meta_reference_s_per_epoch"].items()]
            keys = list(next(iter(data["meta_reference_s_per_epoch"].values())))
            blocks += ["The reference implementation (generative-recommenders) on the same kind of machine, "
                       "s / epoch:", table(["model", *keys], ref)]
    return blocks


def _eval_speed(res: Results) -> list[str]:
    if not res.has("eval_speed"):
        return []
    data = res.load("eval_speed")
    rows = [[count(r["items"]), r["dim"], count(r["users"]), fixed(r["seconds"]), f"{r['pairs_per_s']:.3g}",
             f"{r['share_of_matmul']:.0%}"] for r in data["embedding"]]
    pop = data["popularity"]
    targets = [[t["name"], t["value"], t["target"], "met" if t["met"] else "not met"] for t in data["targets"]]
    return ["## Evaluation speed",
            "Exact full-catalog ranking of an embedding model, one item block at a time: scored (user, item) "
            "pairs per second, and that rate as a share of the machine's plain matrix-multiply rate.",
            provenance(data, "eval_speed"),
            table(["items", "D", "users", "s", "pairs / s", "share of matmul rate"], rows),
            f"Popularity on a generated log of {count(pop['events'])} events ({count(pop['users'])} users, "
            f"{count(pop['items'])} items): {fixed(pop['run_baseline_seconds'])} s end to end.",
            table(["target", "value", "bar", ""], targets)]


def speed_page(res: Results) -> str:
    return page("Training and evaluation speed", "Measured on CPUs unless the row says otherwise.",
                *_train_speed(res), *_eval_speed(res))


def _expansion(res: Results) -> list[str]:
    if not res.has("expand_quality"):
        return []
    data = res.load("expand_quality")
    shapes = [[name, count(s["users"]), count(s["items"]), count(s["events"]), num(s["popularity"]["gini"], 3),
               num(s["popularity"]["slope_1_50"], 3), fixed(s["history"]["mean"]), num(s["history"]["gini"], 3)]
              for name, s in data["shapes"].items()]
    models = data["models"]
    metrics = [[name, with_ci(m["metrics"]["hr@10"]) if "ci_low" in m["metrics"]["hr@10"] else
                num(m["metrics"]["hr@10"]["mean"]), with_ci(m["metrics"]["ndcg@10"]) if "ci_low" in
                m["metrics"]["ndcg@10"] else num(m["metrics"]["ndcg@10"]["mean"])]
               for name, m in models["models"].items()]
    paired = [[f"sasrec - {base}", diff_ci(t["hr@10"]), pvalue(t["hr@10"]["p_value"])]
              for base, t in models.get("paired_sasrec_minus", {}).items()]
    return ["## Fractal expansion",
            f"`genrec data expand {data['source']}` (mode {data['mode']}) against its source: popularity curve "
            "(Gini, log-log slope of the top 50 ranks) and history lengths; then the baselines and SASRec trained on "
            f"{data['train_label']}.",
            provenance(data, "expand_quality"), res.image("expand_quality.png", "expansion against its source"),
            table(["log", "users", "items", "events", "popularity Gini", "slope 1-50", "mean history",
                   "history Gini"], shapes),
            table(["model", "HR@10", "NDCG@10"], metrics), table(["", "HR@10", "p"], paired)]


def scale_page(res: Results) -> str:
    blocks = ["## From 10^6 to 10^8 events",
              "Preparation, streamed training, evaluation and serving at growing sizes: the table is in "
              "[the scaling guide](../scaling.md#measured), generated by `python benchmarks/scale.py --render` "
              "from `benchmarks/results/scale.json`.",
              res.image("scale.png", "time and memory against log size")]
    return page("Scale", *blocks, *_expansion(res))
