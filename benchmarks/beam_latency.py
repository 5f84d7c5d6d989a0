"""Per-user latency of trie-constrained beam search (TIGER-style generator) at beam 10 and 50, one user per
call and batched, on this machine's CPU threads.

By default the model is randomly initialised with TIGER's shape (4+4 layers, d 128, 6 heads x 64, MLP 1024)
over Beauty-sized random semantic IDs: 12,101 items, 3 levels x 256 codes plus a uniqueness code. Latency
does not depend on the weights, only on the shape, the history length and the codes' branching; pass
``--run`` to time a trained run instead (its codes and weights). Histories are Amazon Beauty's validation
histories (capped at 20 items) when the dataset is on this machine, else random lengths 1..20.

Writes benchmarks/results/beam_latency.{json,md} with commit, machine, config and wall time.

    GENREC_DATA_DIR=../shared/data python benchmarks/beam_latency.py [--run runs/tiger-beauty] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from genrec.models.tiger import TIGER, TigerConfig

RESULTS = Path(__file__).parent / "results"


def random_semantic_ids(n_items: int, levels: int, codebook: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Random content codes plus a uniqueness code numbering the items that share them (row 0 = padding)."""
    rng = np.random.default_rng(seed)
    content = rng.integers(0, codebook, (n_items, levels))
    _, group = np.unique(content, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items) - np.repeat(starts, np.diff(np.r_[starts, n_items]))
    codes = np.concatenate([np.full((1, levels + 1), -1), np.column_stack([content, rank])])
    return codes, [codebook] * levels + [int(rank.max()) + 1]


def histories(n_items: int, n_users: int, max_len: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    try:
        from genrec.data import get_builtin, make_split

        ds = get_builtin("amazon-beauty").load()
        if ds.n_items == n_items:
            valid = make_split(ds, "loo").valid.history.tail(max_len)
            rows = np.random.default_rng(seed).choice(len(valid), min(n_users, len(valid)), replace=False)
            return [valid.row(int(r)) for r in rows], "amazon-beauty validation histories"
    except Exception:  # noqa: BLE001 - no local copy: fall back to random histories
        pass
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, int(rng.integers(1, max_len + 1))) for _ in range(n_users)], "random"


def left_pad(rows: list[np.ndarray]) -> torch.Tensor:
    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, out.shape[1] - len(r):] = r
    return torch.from_numpy(out)


def time_beam(model: TIGER, hist: list[np.ndarray], beam: int, batch: int) -> dict:
    trie = model.trie()
    model.recommend(left_pad(hist[:batch]), k=beam, beam=beam)  # warm-up
    calls, invalid, returned = [], 0, 0
    t0 = time.perf_counter()
    for start in range(0, len(hist), batch):
        rows = hist[start:start + batch]
        t = time.perf_counter()
        items, scores = model.recommend(left_pad(rows), k=beam, beam=beam)
        calls.append(time.perf_counter() - t)
        real = torch.isfinite(scores)
        returned += int(real.sum())
        invalid += int((trie.lookup(model.codes[items[real]]) != items[real]).sum() + (items[real] == 0).sum())
    total = time.perf_counter() - t0
    calls_ms = 1000 * np.array(calls)
    return {"beam": beam, "batch": batch, "users": len(hist), "ms_per_user": 1000 * total / len(hist),
            "ms_per_call_p50": float(np.percentile(calls_ms, 50)),
            "ms_per_call_p99": float(np.percentile(calls_ms, 99)),
            "users_per_s": len(hist) / total, "items_returned": returned, "invalid_ids": invalid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="Trained tiger run folder (default: random weights).")
    ap.add_argument("--items", type=int, default=12101)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--beams", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--batched", type=int, default=64, help="Users per call in the batched setting.")
    ap.add_argument("--users", type=int, default=100, help="Users timed one per call.")
    ap.add_argument("--batched-users", type=int, default=512, help="Users timed in batches.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="Suffix of the result files.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wall = time.perf_counter()
    if args.run:
        from genrec.train.generator import load_generator

        model, source = load_generator(args.run), f"trained run {args.run}"
    else:
        codes, sizes = random_semantic_ids(args.items, args.levels, args.codebook)
        model, source = TIGER(TigerConfig(), codes, sizes).eval(), "random weights"
    hist, hist_source = histories(model.n_items, max(args.users, args.batched_users), model.config.max_len)
    rows = []
    for beam in args.beams:
        for batch, n in ((1, args.users), (args.batched, args.batched_users)):
            row = time_beam(model, hist[:n], beam, batch)
            print(row, flush=True)
            rows.append(row)
    result = {"benchmark": "beam_latency", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "machine": machine(), "threads": torch.get_num_threads(), "model": source,
              "config": model.config.model_dump(mode="json"), "codebook_sizes": model.sizes,
              "n_items": model.n_items, "histories": hist_source,
              "mean_history_items": float(np.mean([len(h) for h in hist])),
              "load_average_at_end": list(__import__("os").getloadavg()), "rows": rows,
              "wall_seconds": time.perf_counter() - wall}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "beam_latency" + (f"_{args.tag}" if args.tag else "")
    write_json(RESULTS / f"{stem}.json", result)
    lines = [f"# Constrained beam-search latency ({source})", "",
             f"- {model.n_items:,} items, codebooks {model.sizes}; TIGER shape (enc {model.config.encoder_layers} + "
             f"dec {model.config.decoder_layers} layers, d {model.config.dim}, {model.config.heads} heads x "
             f"{model.config.head_dim}, MLP {model.config.ffn_dim}, encoder tokens: {model.config.encoder_tokens}); "
             f"histories: {hist_source} "
             f"(mean {result['mean_history_items']:.1f} items, cap {model.config.max_len})",
             f"- commit {result['commit']}, {result['threads']} torch threads, {result['machine']['cpus']} CPUs, "
             f"torch {result['machine']['torch']}, load average at end {result['load_average_at_end'][0]:.1f}, "
             f"wall {result['wall_seconds']:.0f} s", "",
             "| beam | users per call | ms / user | p50 ms / call | p99 ms / call | users / s | invalid IDs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['beam']} | {r['batch']} | {r['ms_per_user']:.2f} | {r['ms_per_call_p50']:.1f} | "
                     f"{r['ms_per_call_p99']:.1f} | {r['users_per_s']:.0f} | {r['invalid_ids']} / "
                     f"{r['items_returned']:,} |")
    write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
