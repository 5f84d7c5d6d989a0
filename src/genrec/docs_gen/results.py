"""The results overview and the headline table (shared by the README and the docs), and the list of results
pages the build writes."""

from __future__ import annotations

from collections.abc import Callable

from genrec.docs_gen import results_experiments, results_ranking, results_retrieval, results_systems
from genrec.docs_gen.md import num, page, table, with_ci
from genrec.docs_gen.results_common import Results, mean
from genrec.docs_gen.results_retrieval import DATASETS, quality_value

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
# (dataset, model, quality.json row, published row of benchmarks/quality.py): the best adopted config per model
RETRIEVAL_HEADLINE = [
    ("movielens-1m", "popularity", "popularity", None),
    ("movielens-1m", "item-kNN", "itemknn", None),
    ("movielens-1m", "SASRec", "sasrec-all", "SASRec (generative-recommenders)"),
    ("movielens-1m", "HSTU", "hstu", "HSTU (generative-recommenders)"),
    ("movielens-1m", "HSTU-large", "hstu-large-all", "HSTU-large (generative-recommenders)"),
    ("amazon-beauty", "popularity", "popularity", None),
    ("amazon-beauty", "item-kNN", "itemknn", None),
    ("amazon-beauty", "SASRec", "sasrec-refit", "SASRec, sampled softmax, tuned"),
    ("amazon-beauty", "HSTU", "hstu-refit", None),
    ("microlens-50k", "popularity", "popularity", None),
    ("microlens-50k", "item-kNN", "itemknn", None),
    ("microlens-50k", "SASRec", "sasrec", None),
    ("microlens-50k", "HSTU", "hstu", None),
]
GENERATOR_HEADLINE = ("amazon-beauty", "semantic-ID generator", "tiger-refit-cuda (seed0)", "TIGER")
RANKING_HEADLINE = ("ranking_kuairand-pure-frozen-folds3-seeds3-all",
                    [("generative ranker", "ranker"), ("LightGBM", "gbdt"), ("DIN", "din"), ("DCN-v2", "dcn")])
PAGES: dict[str, tuple[str, Callable[[Results], str]]] = {
    "retrieval.md": ("Retrieval quality", results_retrieval.retrieval_page),
    "semantic-ids.md": ("Semantic IDs and the generator", results_retrieval.semantic_ids_page),
    "ranking.md": ("Ranking on KuaiRand-Pure", results_ranking.ranking_page),
    "two-stage.md": ("Two-stage retrieval and ranking", results_ranking.two_stage_page),
    "serving.md": ("Serving", results_systems.serving_page),
    "speed.md": ("Training and evaluation speed", results_systems.speed_page),
    "scale.md": ("Scale", results_systems.scale_page),
    "experiments.md": ("Online experiments", results_experiments.experiments_page),
}


def _short(config: str) -> str:
    """`configs/<dataset>/<stem>.yaml` as `<stem>` (the dataset is in its own column)."""
    if not config.startswith("`configs/"):
        return config
    return f"`{config.strip('`').rsplit('/', 1)[-1].removesuffix('.yaml')}`"


def _published(res: Results, dataset: str, key: str | None) -> str:
    fig = res.published().get(dataset, {}).get(key or "", {})
    return f"{num(fig['hr@10'])} / {num(fig['ndcg@10'])}" if fig else ""


def headline(res: Results, link: Callable[[str], str]) -> str:
    """The headline tables: one row per model and dataset; ``link(stem)`` is where a row's full table lives."""
    quality = res.load("quality")["datasets"]
    rows = []
    for dataset, model, key, published in RETRIEVAL_HEADLINE:
        row = quality[dataset][key]
        rows.append([DATASETS[dataset], model, _short(results_retrieval.config_name(res, dataset, key)),
                     quality_value(row, "hr@10"), quality_value(row, "ndcg@10"), _published(res, dataset, published),
                     f"[quality]({link('quality')})"])
    dataset, model, key, published = GENERATOR_HEADLINE
    run = res.load("semantic_ids")["datasets"][dataset][key][0]
    last = max(i for i, (d, *_) in enumerate(RETRIEVAL_HEADLINE) if d == dataset)
    rows.insert(last + 1, [DATASETS[dataset], model, "`tiger-refit`",
                           with_ci(run["metrics"]["hr@10"]), with_ci(run["metrics"]["ndcg@10"]),
                           _published(res, dataset, published), f"[semantic IDs]({link('semantic_ids')})"])
    retrieval = table(["dataset", "model", "config", "HR@10", "NDCG@10", "published HR@10 / NDCG@10", "full table"],
                      rows)
    stem, models = RANKING_HEADLINE
    data = res.load(stem)
    ranking = table(["model", "config", "seeds", "click GAUC", "long view GAUC", "like GAUC", "full table"],
                    [[label, _short(f"`{data['runs'][key]['config']}`"), len(data["seeds"][key]),
                      *(num(mean(data["pooled"][key][t])) for t in results_ranking.TASKS),
                      f"[ranking]({link(stem)})"] for label, key in models])
    return ("Retrieval: full catalog, leave-one-out, seen items excluded, model chosen on validation, test read "
            "once; mean [95% interval]; configs under `configs/DATASET/`. The published figures used protocols "
            "that differ from genrec's (see the evaluation protocol).\n\n" + retrieval +
            "\nRanking (KuaiRand-Pure, frozen requests, three temporal folds pooled, mean over seeds):\n\n" + ranking)


def index_page(res: Results) -> str:
    files = [[f"`{stem}.json`", str(d.get("created", ""))[:10],
              f"`{str(d.get('commit') or d.get('checkout', {}).get('commit', ''))[:7]}`"]
             for stem in res.stems() for d in [res.load(stem)]]
    pages = [[f"[{title}]({name})"] for name, (title, _) in PAGES.items()]
    return page(
        "Results",
        "Every figure on these pages is read from the result files in `benchmarks/results/` when the site is "
        "built: each benchmark script in `benchmarks/` writes one JSON file (with its commit, date, machine and "
        "configuration) and a Markdown report beside it. Measured on CPUs unless a row says otherwise. Variants "
        "that were measured and not adopted are in the [results log](../results-log.md).",
        "## Headline", headline(res, lambda stem: f"{_page_of(stem)}"),
        *results_experiments.reproduction_block(res),
        "## Pages", table(["page"], pages), "## Result files", table(["file", "date", "commit"], files))


def _page_of(stem: str) -> str:
    if stem.startswith(("ranking", "item_prior", "kuairand_tab")):
        return "ranking.md"
    return {"quality": "retrieval.md", "semantic_ids": "semantic-ids.md", "experiments": "experiments.md"}.get(
        stem, "index.md")


def readme_block(res: Results) -> str:
    """The README's headline block, linking to the committed Markdown reports of the benchmarks."""
    body = headline(res, lambda stem: f"benchmarks/results/{stem}.md")
    return f"{README_BEGIN}\n<!-- generated by `make docs` from benchmarks/results; do not edit -->\n{body}{README_END}"
