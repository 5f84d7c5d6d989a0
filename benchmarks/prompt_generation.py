"""Prompt-conditioned generation against score blending: test cases whose query describes the target item.

A generator trained with ``model.query`` (configs/amazon-beauty/tiger-query.yaml) is trained (or reused) under a
wall-time budget, then every sampled test case (leave-one-out, full catalog, seen items excluded) gets a query
built from its target item alone, one per kind:

- ``title``: ``--words`` words drawn at random from the target's title, kept in title order;
- ``attributes``: the target's brand + category attribute ids as the catalog's text has them
  (``attributes: 173 1 162``); Beauty's category names are not in the data, so this is the category query.

The lists compared on the same cases (each cut to 10 after removing seen items; a target outside it is a miss):

- ``history only``: constrained beam search without the query (``--beam`` beams);
- ``blend`` (today's serving): the same beams re-ranked by (1 - w) z(log-probability) + w z(cosine(query, item)),
  z-scored among the beam items (``genrec.content.query.blend_with_query``, w = ``--weight``);
- ``conditioned``: beam search with the query's content vector as an extra encoder token (``model.query``);
- ``conditioned + blend``: the conditioned beams re-ranked like ``blend``;
- ``query alone``: the catalog ranked by cosine(query, item content) (no history).

Queries are embedded like a served query (``genrec.content.query.to_content_space``). Intervals: 95% percentile
bootstrap over cases; differences: paired (bootstrap interval, t-test and Wilcoxon p, ``genrec.eval.stats``).
Writes benchmarks/results/prompt_generation[_TAG].{json,md}.

    GENREC_DATA_DIR=../shared/data python benchmarks/prompt_generation.py --threads 1 [--sample 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genrec.content.query import ContentTable, blend_with_query, to_content_space
from genrec.content.store import ItemEmbeddings
from genrec.content.text import text_encoder
from genrec.data import load_dataset
from genrec.eval.report import git_commit, machine
from genrec.eval.stats import bootstrap_ci, paired_test
from genrec.io import read_json, write_json, write_text
from genrec.train import parse_params
from genrec.train.config import RunConfig
from genrec.train.generator import load_generator, rank_beams
from genrec.train.loop import run_split
from quality import train_one

ARMS = ("history only", "blend", "conditioned", "conditioned + blend", "query alone")
PAIRS = (("blend", "conditioned"), ("history only", "conditioned"), ("history only", "blend"),
         ("blend", "conditioned + blend"))
METRICS = ("hr@10", "ndcg@10")
WORD = re.compile(r"[A-Za-z0-9][\w'&.-]*")


def queries(kind: str, targets: np.ndarray, catalog: dict[str, dict[int, str]], words: int,
            rng: np.random.Generator) -> list[str | None]:
    """One query per target (None where the target has no such text)."""
    out: list[str | None] = []
    for t in targets.tolist():
        if kind == "title":
            w = WORD.findall(catalog["title"].get(t) or "")
            pick = np.sort(rng.choice(len(w), min(words, len(w)), replace=False)) if w else []
            out.append(" ".join(w[j] for j in pick) or None)
        else:
            ids = (catalog["attributes"].get(t) or "").strip()
            out.append(f"attributes: {ids}" if ids else None)
    return out


def embed(texts: list[str], content: ContentTable, model: str, batch: int = 256) -> torch.Tensor:
    """Queries in the content table's space, L2-normalised, as a served query is embedded."""
    encoder = text_encoder(model)
    parts = [np.asarray(encoder.encode(texts[i:i + batch]), dtype=np.float32) for i in range(0, len(texts), batch)]
    return F.normalize(torch.from_numpy(to_content_space(np.concatenate(parts), content)), dim=1)


def decode(model, history, query: torch.Tensor | None, beam: int, batch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Beam search per case (batches of similar history length): items, log-probabilities [N, beam], seconds."""
    hist = history.tail(model.config.max_len)
    order = np.argsort(hist.lengths, kind="stable")
    items = np.zeros((len(hist), beam), dtype=np.int64)
    scores = np.full((len(hist), beam), -np.inf, dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        q = None if query is None else query[torch.from_numpy(rows)]
        top, val = model.recommend(hist.take(rows).to_padded(left=True), k=beam, beam=beam, query=q)
        items[rows], scores[rows] = top.numpy(), val.float().numpy()
    return items, scores, time.perf_counter() - t0


def blend(items: np.ndarray, scores: np.ndarray, sim: torch.Tensor, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's beams re-ranked as serving blends a query into a generator's candidates."""
    out_i, out_s = np.zeros_like(items), np.full_like(scores, -np.inf)
    for r in range(len(items)):
        keep = np.isfinite(scores[r]) & (items[r] > 0)
        ids = torch.from_numpy(items[r][keep])
        if not len(ids):
            continue
        mixed = blend_with_query(torch.from_numpy(scores[r][keep]).double(), sim[r].double(), weight, ids)
        order = torch.argsort(mixed, descending=True, stable=True)
        out_i[r, :len(ids)], out_s[r, :len(ids)] = ids[order].numpy(), mixed[order].float().numpy()
    return out_i, out_s


def content_top(sim: torch.Tensor, history, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most similar unseen items per case by query cosine alone."""
    s = sim.clone()
    s[:, 0] = -torch.inf
    for r, seen in enumerate(history.to_lists()):
        s[r, seen] = -torch.inf
    val, top = s.topk(n, dim=1)
    return top.numpy(), val.numpy()


def evaluate(args: argparse.Namespace, run: Path) -> dict:
    raw = read_json(run / "config.json")
    raw.pop("run", None)
    cfg = RunConfig.model_validate(raw)
    ds = load_dataset(cfg.dataset)
    split = run_split(cfg, ds)
    model = load_generator(run)
    if model.query_token is None:
        raise SystemExit(f"{run}: the generator was trained without model.query")
    rng = np.random.default_rng(args.seed)
    rows = np.arange(len(split.test))
    if args.sample and args.sample < len(rows):
        rows = np.sort(rng.choice(len(rows), args.sample, replace=False))
    cases = split.test.take(rows)
    table = ds.item_table
    idx = table.column("item_idx").to_numpy().tolist()
    catalog = {c: dict(zip(idx, table.column(c).to_pylist(), strict=True)) for c in ("title", "attributes")}
    emb = ItemEmbeddings.load(model.config.query.content)
    projection = Path(model.config.query.content) / "projection.safetensors"
    content = ContentTable.from_vectors(torch.from_numpy(emb.vectors), emb.meta,
                                        load_file(projection) if projection.is_file() else None)
    counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
    plain = decode(model, cases.history, None, args.beam, args.batch)
    out = {"cases": len(cases), "test_cases": len(split.test), "kinds": {}}
    for kind in args.kinds:
        texts = queries(kind, cases.targets, catalog, args.words, np.random.default_rng([args.seed, len(kind)]))
        have = np.array([t is not None for t in texts])
        sub = cases.take(np.flatnonzero(have))
        q = embed([t for t in texts if t is not None], content, str(emb.meta.get("text_model")))
        sim = q @ content.vectors.T  # [n, n_items + 1]
        base = (plain[0][have], plain[1][have])
        cond = decode(model, sub.history, q, args.beam, args.batch)
        lists = {"history only": base, "blend": blend(*base, sim, args.weight), "conditioned": cond[:2],
                 "conditioned + blend": blend(*cond[:2], sim, args.weight),
                 "query alone": content_top(sim, sub.history, args.beam)}
        per = {arm: rank_beams(*lists[arm], sub, ds.n_items, [10], True, counts).per_case for arm in ARMS}
        target_cos = sim.gather(1, torch.from_numpy(sub.targets)[:, None])[:, 0]
        out["kinds"][kind] = {
            "cases": int(have.sum()), "examples": [t for t in texts if t][:5],
            "query_target_cosine_median": float(target_cos.median()),
            "decode_ms_per_case": {"history only": 1000 * plain[2] / len(cases),
                                   "conditioned": 1000 * cond[2] / len(sub)},
            "arms": {arm: bootstrap_ci({m: per[arm][m] for m in METRICS}, n_boot=args.n_boot, seed=args.seed)
                     for arm in ARMS},
            "paired": {f"{a} -> {b}": {m: paired_test(per[a][m], per[b][m], n_boot=args.n_boot, seed=args.seed)
                                       for m in METRICS} for a, b in PAIRS}}
        print(kind, {arm: round(float(per[arm]["hr@10"].mean()), 4) for arm in ARMS}, flush=True)
    return out


def _cell(m: dict) -> str:
    return f"{m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def render(res: dict) -> str:
    t = res["training"]
    lines = ["# Prompt-conditioned generation vs score blending (semantic-ID generator)", "",
             f"- commit {res['commit']}, {res['created']}; {res['machine']['processor']}, {res['machine']['cpus']} "
             f"CPUs, {res['threads']} thread(s); load average at start {res['load_start']}; wall "
             f"{res['wall_seconds'] / 60:.1f} min; command: `{res['command']}`",
             f"- generator: `{t['config']}` trained at commit {t['commit']} on {t['device']}: {t['minutes']:.1f} min "
             f"(budget {t['budget_minutes']} min, {t['threads']} thread), {t['epochs']} epochs "
             f"(best {t['best_epoch']}); "
             f"its standard test (no query): Recall@10 {t['hr@10']:.4f}, NDCG@10 {t['ndcg@10']:.4f}; run `{t['run']}`",
             f"- {res['eval']['cases']:,} test cases drawn uniformly (seed {res['seed']}) of "
             f"{res['eval']['test_cases']:,}; leave-one-out, full catalog, seen items excluded; {res['beam']} beams; "
             f"a target outside the list is a miss; blend weight {res['weight']} (serving's default)",
             "- Recall@10 = HR@10; [95% bootstrap interval over cases]; paired: difference of means with its bootstrap "
             "interval and paired t-test p", ""]
    for kind, r in res["eval"]["kinds"].items():
        ex = "; ".join(f"`{e}`" for e in r["examples"][:3])
        lines += [f"## Query = the target's {kind}", "",
                  f"{r['cases']:,} cases; e.g. {ex}; median cosine(query, target content) "
                  f"{r['query_target_cosine_median']:.3f}; beam search {r['decode_ms_per_case']['history only']:.1f} "
                  f"ms/case without the query, {r['decode_ms_per_case']['conditioned']:.1f} with it", "",
                  "| list | Recall@10 | NDCG@10 |", "|---|---|---|"]
        for arm, m in r["arms"].items():
            lines.append(f"| {arm} | {_cell(m['hr@10'])} | {_cell(m['ndcg@10'])} |")
        lines += ["", "| paired | Recall@10 difference | p | NDCG@10 difference | p |", "|---|---|---|---|---|"]
        for pair, m in r["paired"].items():
            h, n = m["hr@10"], m["ndcg@10"]
            lines.append(f"| {pair} | {h['diff']:+.4f} [{h['ci_low']:+.4f}, {h['ci_high']:+.4f}] | {h['p_value']:.2g} "
                         f"| {n['diff']:+.4f} [{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | {n['p_value']:.2g} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def training_info(run: Path, config: Path) -> dict:
    m, cfg = read_json(run / "metrics.json"), read_json(run / "config.json")
    info = m["info"]
    return {"run": str(run), "config": str(config), "commit": m["run"]["commit"], "device": info.get("device"),
            "minutes": (info.get("train_seconds") or 0) / 60, "budget_minutes": cfg["train"].get("max_minutes"),
            "threads": cfg["train"].get("threads"), "epochs": info.get("epochs_run"),
            "best_epoch": info.get("best_epoch"), **{k: m["metrics"][k]["mean"] for k in METRICS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/amazon-beauty/tiger-query.yaml"))
    p.add_argument("--seed", type=int, default=0, help="training seed and the draw of cases and title words")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=Path, default=Path("runs/bench-sid"))
    p.add_argument("--sample", type=int, default=5000, help="test cases drawn uniformly (0: all)")
    p.add_argument("--kinds", nargs="+", default=["title", "attributes"], choices=["title", "attributes"])
    p.add_argument("--words", type=int, default=3, help="title words per title query")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--weight", type=float, default=0.5, help="blend weight of the query similarity")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="", help="results file suffix (prompt_generation_TAG), e.g. for another config")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override a training config field, "
                   "e.g. train.max_minutes=1 (a smoke run; the committed results use the config as it is)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    run = train_one(args.config, args.seed, args.threads, runs=args.runs, overrides=parse_params(args.overrides))
    with torch.no_grad():  # not inference_mode: the decoder caches fused weights keyed on their versions
        ev = evaluate(args, run)
    res = {"commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
           "command": "python " + shlex.join(["benchmarks/prompt_generation.py", *sys.argv[1:]]),
           "threads": args.threads, "load_start": load_start, "seed": args.seed, "beam": args.beam,
           "weight": args.weight, "words": args.words, "training": training_info(run, args.config), "eval": ev,
           "wall_seconds": time.perf_counter() - start}
    stem = "prompt_generation" + (f"_{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", res)
    write_text(args.out / f"{stem}.md", render(res))
    print(f"wrote {args.out / stem}.md")


if __name__ == "__main__":
    main()
