"""Per-user latency of trie-constrained beam search (the semantic-ID generator) at beam 10, one user per call
and batched, on 1 and 2 torch threads; with ``--before-src`` the same timings for another source tree (e.g. a
worktree of an older commit), interleaved round by round with this tree's, so both see the same machine load.

Each (source tree, thread count) runs in a fresh worker process (``--worker``) with ``PYTHONPATH`` set to
that tree's ``src``. Per call the worker records wall and CPU time (all threads of the process) and checks
that every returned item is a real item whose ID the trie maps back to it. By default the model is randomly
initialised with TIGER's shape (4+4 layers, d 128, 6 heads x 64, MLP 1024) over Amazon Beauty's RQ-KMeans
semantic IDs when they are on this machine (else random IDs of the same shape: 12,101 items, 3 x 256 codes
plus a uniqueness code); ``--run`` times a trained run or a bundle instead (its codes and weights; tiger or
hstu-gen, the decoder-only generator, whichever its model.json names). Histories are Amazon
Beauty's validation histories (capped at the model's max_len) when the dataset is here, else random.

Writes benchmarks/results/beam_latency[_TAG].{json,md} with commit, machine, load averages and wall time.

    GENREC_DATA_DIR=../shared/data python benchmarks/beam_latency.py [--run RUN] [--before-src OLD/src] [--tag T]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
BEAUTY_IDS = "runs/semantic_ids/amazon-beauty/rqkmeans/semantic_ids.safetensors"


# --- worker: runs against whichever genrec is on PYTHONPATH (only APIs every version has) ----------------

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


def build_model(run: str | None, ids: str):
    import torch

    from genrec.models.tiger import TIGER, TigerConfig

    if run:
        if json.loads((Path(run) / "model.json").read_text())["name"] == "hstu-gen":
            from genrec.train.hstu_generator import load_hstu_generator

            return load_hstu_generator(run), f"trained hstu-gen {run}"
        from genrec.train.generator import load_generator

        return load_generator(run), f"trained run {run}"
    torch.manual_seed(0)
    if Path(ids).is_file():
        from safetensors.torch import load_file

        codes = load_file(ids)["codes"].numpy()
        sizes = [int(c) + 1 for c in codes[1:].max(axis=0)]
        return TIGER(TigerConfig(), codes, sizes).eval(), f"random weights over the IDs in {Path(ids).parent}"
    codes, sizes = random_semantic_ids(12101, 3, 256)
    return TIGER(TigerConfig(), codes, sizes).eval(), "random weights over random IDs"


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


def left_pad(rows: list[np.ndarray]):
    import torch

    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, out.shape[1] - len(r):] = r
    return torch.from_numpy(out)


def time_calls(model, hist: list[np.ndarray], beam: int, batch: int) -> dict:
    """Per call: wall and process CPU seconds, users; and how many returned items are not valid items."""
    import torch

    trie = model.trie()
    model.recommend(left_pad(hist[:batch]), k=beam, beam=beam)  # warm-up
    wall, cpu, users, invalid, returned = [], [], [], 0, 0
    for start in range(0, len(hist), batch):
        rows = left_pad(hist[start:start + batch])
        w, c = time.perf_counter(), time.process_time()
        items, scores = model.recommend(rows, k=beam, beam=beam)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        users.append(len(rows))
        real = torch.isfinite(scores)
        returned += int(real.sum())
        got = items[real]
        invalid += int(((got < 1) | (got > model.n_items)).sum())
        got = got.clamp(1, model.n_items)
        invalid += int((trie.lookup(model.codes[got]) != got).sum())
    return {"wall": wall, "cpu": cpu, "users": users, "invalid_ids": invalid, "items_returned": returned}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads[0])
    model, source = build_model(args.run, args.ids)
    n = max(args.users, args.batched_users)
    hist, hist_source = histories(model.n_items, n, model.config.max_len)
    cells = []
    for beam in args.beams:
        for batch, users in ((1, args.users), (args.batched, args.batched_users)):
            cells.append({"beam": beam, "batch": batch, **time_calls(model, hist[:users], beam, batch)})
    print(json.dumps({"model": source, "histories": hist_source, "n_items": model.n_items,
                      "config": model.config.model_dump(mode="json"), "codebook_sizes": model.sizes,
                      "mean_history_items": float(np.mean([len(h) for h in hist])), "cells": cells}))


# --- driver -------------------------------------------------------------------------------------------

def run_worker(src: Path, threads: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--users", str(args.users),
           "--batched", str(args.batched), "--batched-users", str(args.batched_users),
           "--ids", args.ids, "--beams", *map(str, args.beams)] + (["--run", str(args.run)] if args.run else [])
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": str(threads)}
    if args.wait_policy:
        env["OMP_WAIT_POLICY"] = args.wait_policy
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"worker for {src} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(impl: str, threads: int, cells: list[dict]) -> dict:
    """Rows of one (implementation, threads, beam, batch) pooled over rounds: per-user latency = a call's wall
    time over its users."""
    wall = np.concatenate([c["wall"] for c in cells])
    cpu = np.concatenate([c["cpu"] for c in cells])
    users = np.concatenate([c["users"] for c in cells])
    per_user = 1000 * wall / users
    return {"impl": impl, "threads": threads, "beam": cells[0]["beam"], "batch": cells[0]["batch"],
            "users": int(users.sum()), "ms_per_user": float(1000 * wall.sum() / users.sum()),
            "ms_per_user_p50": float(np.percentile(per_user, 50)),
            "ms_per_user_p99": float(np.percentile(per_user, 99)),
            "cpu_ms_per_user": float(1000 * cpu.sum() / users.sum()),
            "ms_per_call_p50": float(np.percentile(1000 * wall, 50)),
            "ms_per_call_p99": float(np.percentile(1000 * wall, 99)),
            "users_per_s": float(users.sum() / wall.sum()),
            "invalid_ids": int(sum(c["invalid_ids"] for c in cells)),
            "items_returned": int(sum(c["items_returned"] for c in cells))}


def markdown(result: dict) -> str:
    m, cfg = result["machine"], result["config"]
    if cfg.get("name") == "hstu-gen":
        shape = (f"hstu-gen: {cfg['blocks']} HSTU blocks, d {cfg['dim']}, {cfg['heads']} heads, head MLP "
                 f"{cfg['head_hidden']}, item id rows: {cfg['item_id']}")
    else:
        shape = (f"enc {cfg['encoder_layers']} + dec {cfg['decoder_layers']} layers, d {cfg['dim']}, {cfg['heads']} "
                 f"heads x {cfg['head_dim']}, MLP {cfg['ffn_dim']}, encoder tokens: {cfg['encoder_tokens']}")
    lines = [f"# Constrained beam-search latency ({result['model']})", "",
             f"- {result['n_items']:,} items, codebooks {result['codebook_sizes']}; {shape}; histories: "
             f"{result['histories']} (mean {result['mean_history_items']:.1f} items, cap {cfg['max_len']})",
             f"- this tree: commit {result['commit']}" + (f"; before: {result['before']}" if result["before"] else ""),
             f"- {m['cpus']} CPUs, torch {m['torch']}, OMP_WAIT_POLICY {result['omp_wait_policy']}; "
             f"{result['rounds']} interleaved rounds, one worker process "
             f"per (tree, threads, round); load average (1 min) {result['load_average_start'][0]:.1f} at start, "
             f"{result['load_average_end'][0]:.1f} at end; wall {result['wall_seconds']:.0f} s",
             "- per-user latency = a call's wall time / users in the call; CPU = process time of all threads "
             "(under load, wall time also counts waiting for a core)", "",
             "| code | threads | beam | users per call | ms / user | p50 ms / user | p99 ms / user | CPU ms / user | "
             "p50 ms / call | users / s | invalid IDs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['impl']} | {r['threads']} | {r['beam']} | {r['batch']} | {r['ms_per_user']:.2f} | "
                     f"{r['ms_per_user_p50']:.2f} | {r['ms_per_user_p99']:.2f} | {r['cpu_ms_per_user']:.2f} | "
                     f"{r['ms_per_call_p50']:.1f} | {r['users_per_s']:.0f} | {r['invalid_ids']} / "
                     f"{r['items_returned']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="Trained generator run folder or bundle, tiger or hstu-gen (default: "
                    "random TIGER weights).")
    ap.add_argument("--ids", default=BEAUTY_IDS, help="Semantic IDs for the random-weight model (default: "
                    "Beauty's RQ-KMeans IDs; random IDs where the file is missing).")
    ap.add_argument("--before-src", type=Path, help="src folder of the tree to compare with (e.g. a worktree).")
    ap.add_argument("--beams", type=int, nargs="+", default=[10])
    ap.add_argument("--batched", type=int, default=64, help="Users per call in the batched setting.")
    ap.add_argument("--users", type=int, default=60, help="Users timed one per call, per round.")
    ap.add_argument("--batched-users", type=int, default=256, help="Users timed in batches, per round.")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wait-policy", choices=["ACTIVE", "PASSIVE"], help="OMP_WAIT_POLICY of the workers "
                    "(PASSIVE: idle OpenMP threads sleep instead of spinning, which matters on a loaded machine).")
    ap.add_argument("--tag", default="", help="Suffix of the result files.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from genrec.eval.report import git_commit, machine
    from genrec.io import write_json, write_text

    here = Path(__file__).resolve().parent.parent / "src"
    trees = [("after", here)] + ([("before", args.before_src)] if args.before_src else [])
    wall, load_start = time.perf_counter(), list(os.getloadavg())
    cells: dict[tuple, list[dict]] = {}
    info: dict = {}
    for rnd in range(args.rounds):
        for threads in args.threads:
            for impl, src in trees if rnd % 2 == 0 else trees[::-1]:  # alternate who goes first
                info = run_worker(src, threads, args)
                for c in info["cells"]:
                    cells.setdefault((impl, threads, c["beam"], c["batch"]), []).append(c)
                print(f"round {rnd} {impl} threads {threads}: load {os.getloadavg()[0]:.1f}", flush=True)
    rows = [summarise(key[0], key[1], group) for key, group in sorted(cells.items(), key=lambda kv: (
        kv[0][2], kv[0][3], kv[0][1], kv[0][0] != "before"))]
    before = None
    if args.before_src:
        sha = subprocess.run(["git", "-C", str(args.before_src), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
        before = f"commit {sha or '?'} ({args.before_src})"
    result = {"benchmark": "beam_latency", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "before": before, "machine": machine(), "threads": "/".join(map(str, args.threads)),
              "model": info["model"], "config": info["config"], "codebook_sizes": info["codebook_sizes"],
              "n_items": info["n_items"], "histories": info["histories"],
              "mean_history_items": info["mean_history_items"], "rounds": args.rounds,
              "omp_wait_policy": args.wait_policy or os.environ.get("OMP_WAIT_POLICY") or "default",
              "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
              "command": " ".join(["python", "benchmarks/beam_latency.py", *sys.argv[1:]]), "rows": rows,
              "wall_seconds": time.perf_counter() - wall}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "beam_latency" + (f"_{args.tag}" if args.tag else "")
    write_json(RESULTS / f"{stem}.json", result)
    write_text(RESULTS / f"{stem}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
