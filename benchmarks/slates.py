"""Slates from the semantic-ID generator against the top-N of an ID model: Recall@N, NDCG@N and intra-list
diversity on the test split (leave-one-out, full catalog, seen items excluded).

Lists compared, each cut to N after removing the user's seen items:

- the ID model's top-N (e.g. SASRec) by score over the whole catalog;
- the generator's plain constrained beam search (``beam`` beams, the model's validation width by default);
- the generator's slates (``genrec.nn.beam.slate_search``) for each prefix length p: ``slate`` items whose
  IDs pairwise differ in their first p codes, from ``slate-beam`` prefixes with ``group-beams`` beams each.

Diversity of a list, averaged over users: content distance = mean over item pairs of 1 - cosine of the items'
content embeddings (runs/content/<dataset>, pairs with a missing embedding left out); prefix diversity at p =
the share of pairs whose IDs differ in their first p codes (1 = no two items share a prefix). Coverage = the
share of the catalog in any list. Intervals: 95% normal intervals over users.

Writes benchmarks/results/slates[_TAG].{json,md} with commit, machine, load averages and wall time.

    GENREC_DATA_DIR=../shared/data python benchmarks/slates.py --generator RUN --id-model RUN [--users 3000]

The committed results use CPU runs trained under a wall-time budget (2 shared cores):

    genrec train --config configs/amazon-beauty/tiger-items.yaml --out runs/slates/tiger-items \
        --set train.max_minutes=20 --set train.threads=1
    genrec train --config configs/amazon-beauty/sasrec.yaml --out runs/slates/sasrec \
        --set train.max_minutes=15 --set train.schedule_by=time --set train.threads=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genrec.content.store import ItemEmbeddings
from genrec.data import load_dataset, make_split
from genrec.data.stream import sample_cases
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text
from genrec.serve.model_io import load_model

RESULTS = Path(__file__).parent / "results"


def unseen_top(items: torch.Tensor, scores: torch.Tensor, seen: list[np.ndarray], n: int) -> np.ndarray:
    """Per row the first ``n`` items (best first) that are real (finite score) and not seen; 0 pads."""
    out = np.zeros((len(seen), n), dtype=np.int64)
    for row, (cand, val) in enumerate(zip(items.tolist(), scores.tolist(), strict=True)):
        drop = set(seen[row].tolist())
        keep = [i for i, s in zip(cand, val, strict=True) if np.isfinite(s) and i > 0 and i not in drop][:n]
        out[row, :len(keep)] = keep
    return out


def id_model_lists(model, hist, users: np.ndarray, seen: list[np.ndarray], n: int, batch: int) -> np.ndarray:
    out = []
    for start in range(0, len(users), batch):
        rows = np.arange(start, min(start + batch, len(users)))
        with torch.no_grad():
            scores = model.score(hist.take(rows), users[rows]).float()
        scores[:, 0] = -torch.inf
        for j, r in enumerate(rows):
            scores[j, torch.from_numpy(seen[r])] = -torch.inf
        val, top = scores.topk(n, dim=1)
        out.append(unseen_top(top, val, [seen[r] for r in rows], n))
    return np.concatenate(out)


def generator_lists(decode, hist, seen: list[np.ndarray], n: int, batch: int, max_len: int) -> np.ndarray:
    """``decode(history [B, L]) -> items, scores``, over batches of similar history length."""
    capped = hist.tail(max_len)
    order = np.argsort(capped.lengths, kind="stable")
    out = np.zeros((len(seen), n), dtype=np.int64)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        items, scores = decode(capped.take(rows).to_padded(left=True))
        out[rows] = unseen_top(items, scores, [seen[r] for r in rows], n)
    return out


def pair_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per list the mean of values [U, N, N] over the item pairs i < j that ``mask`` [U, N, N] keeps (nan if none)."""
    upper = np.triu(np.ones(values.shape[1:], dtype=bool), k=1)[None]
    keep = mask & upper
    total, count = (values * keep).sum(axis=(1, 2)), keep.sum(axis=(1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def list_metrics(lists: np.ndarray, targets: np.ndarray, codes: np.ndarray, emb: np.ndarray, has_emb: np.ndarray,
                 prefixes: list[int], n_items: int) -> dict:
    real = lists > 0
    hit_at = (lists == targets[:, None]) & real
    rank = np.where(hit_at.any(axis=1), hit_at.argmax(axis=1), -1)
    pair_real = real[:, :, None] & real[:, None, :]
    vec = emb[lists]  # rows normalised; row 0 (padding) zero
    cos = np.einsum("und,umd->unm", vec, vec)
    content = pair_mean(1.0 - cos, pair_real & has_emb[lists][:, :, None] & has_emb[lists][:, None, :])
    ndcg = np.where(rank >= 0, 1 / np.log2(np.maximum(rank, 0) + 2), 0.0)
    per_user = {"recall": (rank >= 0).astype(float), "ndcg": ndcg, "content_distance": content,
                "list_length": real.sum(axis=1).astype(float)}
    for p in prefixes:
        c = codes[lists][:, :, :p]
        differ = (c[:, :, None, :] != c[:, None, :, :]).any(axis=-1).astype(float)
        per_user[f"prefix_diversity@{p}"] = pair_mean(differ, pair_real)
    out = {}
    for name, v in per_user.items():
        v = v[np.isfinite(v)]
        half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        out[name] = {"mean": float(v.mean()), "ci_low": float(v.mean() - half), "ci_high": float(v.mean() + half)}
    out["coverage"] = float(len(np.unique(lists[real])) / n_items)
    return out


def run_summary(folder: Path) -> dict:
    m = read_json(folder / "metrics.json")
    info = m.get("info", {})
    return {"run": str(folder), "test_hr@10": m["metrics"]["hr@10"]["mean"], "epochs_run": info.get("epochs_run"),
            "train_minutes": round(info.get("train_seconds", 0) / 60, 1), "stopped": info.get("stopped"),
            "commit": m.get("run", {}).get("commit")}


def markdown(result: dict) -> str:
    n, prefixes = result["n"], result["prefixes"]
    lines = [f"# Slates vs the ID model's top-{n} ({result['dataset']}, test split)", "",
             f"- {result['cases']:,} test users (seeded sample of {result['all_cases']:,}); leave-one-out, full "
             f"catalog, seen items excluded; content embeddings: {result['embeddings']}",
             *[f"- {k}: `{v['run']}` (test Recall@10 {v['test_hr@10']:.4f}, {v['epochs_run']} epochs in "
               f"{v['train_minutes']} min, {v['stopped'] or 'converged'})" for k, v in result["models"].items()],
             f"- commit {result['commit']}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, "
             f"{result['threads']} threads; load average (1 min) {result['load_average_start'][0]:.1f} at start, "
             f"{result['load_average_end'][0]:.1f} at end; wall {result['wall_seconds']:.0f} s",
             f"- command: `{result['command']}`", "",
             f"| list | Recall@{n} | NDCG@{n} | content distance | "
             + " | ".join(f"prefix diversity@{p}" for p in prefixes) + " | coverage | items / list | ms / user |",
             "|---" * (6 + len(prefixes)) + "|---|"]
    for row in result["rows"]:
        m = row["metrics"]
        ci = f" [{m['recall']['ci_low']:.4f}, {m['recall']['ci_high']:.4f}]"
        lines.append(f"| {row['name']} | {m['recall']['mean']:.4f}{ci} | {m['ndcg']['mean']:.4f} | "
                     f"{m['content_distance']['mean']:.3f} | "
                     + " | ".join(f"{m[f'prefix_diversity@{p}']['mean']:.3f}" for p in prefixes)
                     + f" | {m['coverage']:.3f} | {m['list_length']['mean']:.2f} | {row['ms_per_user']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", type=Path, required=True, help="Trained generator (tiger) run folder.")
    ap.add_argument("--id-model", type=Path, required=True, help="Trained ID model (sasrec, hstu) run folder.")
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--embeddings", type=Path, help="Content embeddings (default runs/content/<dataset>).")
    ap.add_argument("--users", type=int, default=3000, help="Seeded sample of test users (0: all).")
    ap.add_argument("--n", type=int, default=10, help="List length N.")
    ap.add_argument("--prefixes", type=int, nargs="+", default=[1, 2, 3], help="Slate prefix lengths.")
    ap.add_argument("--beam", type=int, help="Beams of the plain search (default: the model's beam_width).")
    ap.add_argument("--slate", type=int, help="Slate items decoded before removing seen ones (default: beam).")
    ap.add_argument("--slate-beam", type=int, help="Prefixes searched per slate (default: the slate size).")
    ap.add_argument("--group-beams", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wall, load_start = time.perf_counter(), list(os.getloadavg())
    ds = load_dataset(args.dataset)
    all_cases = make_split(ds, "loo").test
    cases = sample_cases(all_cases, args.users or None, args.seed)
    seen = [cases.history.row(i) for i in range(len(cases))]
    gen, idm = load_model(args.generator), load_model(args.id_model)
    codes = gen.codes.cpu().numpy()
    emb_dir = args.embeddings or Path("runs/content") / args.dataset
    table = ItemEmbeddings.load(emb_dir)
    emb = table.vectors / np.maximum(np.linalg.norm(table.vectors, axis=1, keepdims=True), 1e-12)
    has_emb = np.linalg.norm(table.vectors, axis=1) > 0
    has_emb[table.missing] = False
    has_emb[0] = False
    beam = args.beam or gen.config.beam_width
    slate = args.slate or beam
    decoders = {f"ID model top-{args.n} ({read_json(args.id_model / 'model.json')['name']})": None,
                f"generator, plain beam search ({beam} beams)": lambda h: gen.recommend(h, k=beam, beam=beam,
                                                                                         epsilon=0, slate=0)}
    for p in args.prefixes:
        decoders[f"generator slate, prefix {p} ({slate} items, {args.slate_beam or slate} prefixes x "
                 f"{args.group_beams} beams)"] = (lambda h, p=p: gen.recommend_slate(
                     h, n=slate, prefix=p, beam=args.slate_beam or slate, group_beams=args.group_beams))
    rows = []
    for name, decode in decoders.items():
        t0 = time.perf_counter()
        if decode is None:
            lists = id_model_lists(idm, cases.history, cases.users, seen, args.n, args.batch)
        else:
            lists = generator_lists(decode, cases.history, seen, args.n, args.batch, gen.config.max_len)
        ms = 1000 * (time.perf_counter() - t0) / len(cases)
        invalid = int(((lists < 0) | (lists > gen.n_items)).sum())
        metrics = list_metrics(lists, cases.targets, codes, emb, has_emb, args.prefixes, gen.n_items)
        rows.append({"name": name, "metrics": metrics, "ms_per_user": ms, "invalid_ids": invalid})
        print(f"{name}: recall {metrics['recall']['mean']:.4f} content {metrics['content_distance']['mean']:.3f} "
              f"{ms:.1f} ms/user", flush=True)
    result = {"benchmark": "slates", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "machine": machine(), "threads": torch.get_num_threads(), "dataset": args.dataset, "n": args.n,
              "prefixes": args.prefixes, "cases": len(cases), "all_cases": len(all_cases),
              "embeddings": str(emb_dir), "models": {"generator": run_summary(args.generator),
                                                     "ID model": run_summary(args.id_model)},
              "settings": {"beam": beam, "slate": slate, "slate_beam": args.slate_beam or slate,
                           "group_beams": args.group_beams, "seed": args.seed},
              "command": " ".join(["python", "benchmarks/slates.py", *sys.argv[1:]]),
              "load_average_start": load_start, "load_average_end": list(os.getloadavg()), "rows": rows,
              "wall_seconds": time.perf_counter() - wall}
    stem = "slates" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{stem}.json", result)
    write_text(RESULTS / f"{stem}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
