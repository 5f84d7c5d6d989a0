"""Evaluation speed: exact full-catalog ranking against this machine's matrix-multiply rate, and popularity on a
10M-event log end to end.

- matmul rate: float32 ``torch.matmul`` of [256, D] x [D, 65536], best of five, with torch's threads;
- an embedding scorer (random item table and queries, D = 64 and 50, 100k and 1M items) ranked by
  ``genrec.eval.rank_cases``: user-item pairs per second and that rate as a share of the matmul rate
  (pairs/s x 2D FLOP / matmul FLOP/s); the dense path on a few users for comparison;
- popularity on a synthetic log (166k users, 1M items, 10M events, power-law popularity), leave-one-out, through
  ``genrec.train.run_baseline`` (split, fit, ranking, bootstrap intervals, run folder), wall time.

Writes benchmarks/results/eval_speed.{json,md} with command, commit, machine and wall time. Refuses a tree with
uncommitted changes to tracked files unless --allow-dirty (the result is then marked dirty).

    python benchmarks/eval_speed.py [--allow-dirty] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from genrec.data import make_split
from genrec.data.dataset import SequenceDataset, Vocab
from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval import DEFAULT_KS, fast, rank_cases
from genrec.eval.report import machine
from genrec.io import write_json, write_text
from genrec.models import Popularity
from genrec.train import run_baseline

EMBEDDING_PAIRS = 1_000_000_000  # user-item pairs ranked per embedding setting
TARGET_SHARE = 0.5
TARGET_POPULARITY_SECONDS = 60.0


class RandomEmbeddings:
    """An embedding scorer: a random item table and one random query per history."""

    def __init__(self, n_items: int, dim: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(n_items + 1, dim, generator=gen)
        self.queries = torch.randn(4096, dim, generator=gen)

    def item_table(self) -> torch.Tensor:
        return self.table

    def last_hidden(self, history: Jagged, timestamps: Jagged | None = None) -> torch.Tensor:
        last = history.values[np.maximum(history.offsets[1:] - 1, 0)] if len(history.values) else history.lengths
        return self.queries[torch.from_numpy((last + history.lengths) % len(self.queries))]

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        return self.last_hidden(history) @ self.table.T


def random_cases(n_users: int, n_items: int, seed: int = 0) -> EvalCases:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n_users)
    history = Jagged.from_lengths(rng.integers(1, n_items + 1, int(lengths.sum())), lengths)
    return EvalCases(np.arange(1, n_users + 1), history, rng.integers(1, n_items + 1, n_users))


def matmul_rate(dim: int, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP/s of float32 torch.matmul [256, dim] x [dim, 65536], best of ``repeats`` (wall clock, or ``clock``)."""
    a, b = torch.randn(256, dim), torch.randn(dim, 65536)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        torch.matmul(a, b)
        best = min(best, clock() - start)
    return 2 * 256 * 65536 * dim / best


class MatmulRates:
    """The best matmul rate seen at each D, measured before and after every run: on a shared machine a single
    measurement can fall in a busy moment, and the machine's rate is what it reaches when it is not."""

    def __init__(self) -> None:
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    def measure(self, dim: int, repeats: int = 10) -> None:
        self.wall[dim] = max(self.wall.get(dim, 0.0), matmul_rate(dim, repeats))
        self.cpu[dim] = max(self.cpu.get(dim, 0.0), matmul_rate(dim, repeats, clock=time.process_time))


def matmul_floor(table: torch.Tensor, users: int) -> float:
    """Seconds of the matrix products alone that ranking ``users`` against ``table`` performs (the same
    [batch, D] x [D, block] shapes, back to back): the evaluation's own floor, timed under the same load."""
    batch, block = fast.EMBEDDING_BATCH["cpu"], fast.ITEM_BLOCK["cpu"]
    out = torch.empty(batch, block)
    start = time.perf_counter()
    for first in range(0, users, batch):
        q = torch.randn(min(batch, users - first), table.shape[1])
        for a in range(0, table.shape[0], block):
            w = table[a:a + block]
            torch.mm(q, w.T, out=out[:len(q), :len(w)] if len(q) == batch and len(w) == block else None)
    return time.perf_counter() - start


def bench_embedding(n_items: int, dim: int, pairs: int, rates: MatmulRates) -> dict:
    scorer = RandomEmbeddings(n_items, dim)
    users = max(1, pairs // n_items)
    cases = random_cases(users, n_items)
    rates.measure(dim)
    start, cpu_start = time.perf_counter(), time.process_time()
    rank_cases(scorer, cases, n_items, ks=DEFAULT_KS, show_progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rates.measure(dim)
    floor = matmul_floor(scorer.table, users)
    dense_users = max(1, min(users, 30_000_000 // n_items))  # about a second on the dense path
    start = time.perf_counter()
    rank_cases(scorer, cases.take(np.arange(dense_users)), n_items, ks=DEFAULT_KS, fast=False, show_progress=False)
    dense_seconds = time.perf_counter() - start
    return {"items": n_items, "dim": dim, "users": users, "seconds": seconds, "pairs_per_s": users * n_items / seconds,
            "cpu_seconds": cpu_seconds, "cpu_pairs_per_s": users * n_items / cpu_seconds,
            "matmul_only_seconds": floor, "share_of_own_matmul": floor / seconds,
            "dense": {"users": dense_users, "seconds": dense_seconds,
                      "pairs_per_s": dense_users * n_items / dense_seconds}}


def add_shares(rows: list[dict], rates: MatmulRates) -> None:
    """Each run's rate as a share of the best matmul rate at its D (wall clock, and CPU time over CPU time)."""
    for e in rows:
        e["matmul_flops"], e["cpu_matmul_flops"] = rates.wall[e["dim"]], rates.cpu[e["dim"]]
        e["share_of_matmul"] = e["pairs_per_s"] * 2 * e["dim"] / e["matmul_flops"]
        e["cpu_share_of_matmul"] = e["cpu_pairs_per_s"] * 2 * e["dim"] / e["cpu_matmul_flops"]


def synthetic_log(n_users: int, n_items: int, n_events: int, seed: int = 0) -> SequenceDataset:
    """Power-law item popularity (exponent 0.9, popularity independent of the id), log-normal history lengths
    (at least 3, so every user is evaluated)."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.0, n_users)
    lengths = np.maximum(3, np.round(weight / weight.sum() * n_events)).astype(np.int64)
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1) ** 0.9)
    draws = np.searchsorted(cdf / cdf[-1], rng.random(int(lengths.sum())))
    items = (rng.permutation(n_items) + 1)[draws]
    return SequenceDataset("synthetic", Vocab(pa.array(np.arange(1, n_users + 1))),
                           Vocab(pa.array(np.arange(1, n_items + 1))), Jagged.from_lengths(items, lengths))


def bench_popularity(n_users: int, n_items: int, n_events: int) -> dict:
    start = time.perf_counter()
    ds = synthetic_log(n_users, n_items, n_events)
    generate = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = run_baseline("popularity", ds, out=Path(tmp) / "run", show_progress=False)
        seconds = time.perf_counter() - start
    cases = run.evaluation.info["cases"]
    # The dense path on a few users, for comparison (its time grows with users x items).
    split = make_split(ds, "loo")
    model = Popularity().fit(split.train, n_items)
    few = min(64, len(split.test))
    start = time.perf_counter()
    rank_cases(model, split.test.take(np.arange(few)), n_items, fast=False, show_progress=False)
    dense_per_case = (time.perf_counter() - start) / few
    return {"users": n_users, "items": n_items, "events": ds.n_interactions, "cases": cases,
            "generate_seconds": generate, "run_baseline_seconds": seconds,
            "hr@10": run.evaluation.mean("hr@10"), "ndcg@10": run.evaluation.mean("ndcg@10"),
            "coverage@10": run.evaluation.aggregate["coverage@10"],
            "dense_estimate_seconds": dense_per_case * cases, "dense_measured_cases": few}


def git_state() -> tuple[str, bool]:
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, cwd=root).stdout.strip()
    return head, bool(status)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["# Evaluation speed: exact full-catalog ranking", "",
             f"- command: `{r['command']}`", f"- commit {r['commit']}{' (DIRTY TREE)' if r['dirty'] else ''}, "
             f"{r['created']}",
             f"- machine: {m['cpu_model']}, {m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} threads; "
             f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
             + (" (the machine was shared: timings are contended)" if r["contended"] else ""),
             f"- wall time {r['wall_seconds']:.0f} s", "",
             "## Embedding scorer (random item table and queries), seen items excluded, K up to 200", "",
             f"Matmul rate (float32 [256, D] x [D, 65536], the best of 10 repeats measured before and after every "
             f"run): D=64 {r['matmul_gflops']['64']:.0f} GFLOP/s, D=50 {r['matmul_gflops']['50']:.0f} GFLOP/s "
             f"(CPU time: {r['matmul_cpu_gflops']['64']:.0f} and {r['matmul_cpu_gflops']['50']:.0f}). "
             "Share = pairs/s x 2D / the matmul rate at the same D; the CPU-time share divides CPU seconds by CPU "
             "seconds (less sensitive to other work on the machine); the share of its own matmuls is the time of "
             "the bare matrix products the evaluation performs (same shapes, back to back) over its whole time.", "",
             "| items | D | users | seconds | pairs/s | share of matmul | CPU s | share (CPU time) "
             "| share of its own matmuls | dense path pairs/s | speed-up |", "|---" * 11 + "|"]
    for e in r["embedding"]:
        lines.append(f"| {e['items']:,} | {e['dim']} | {e['users']:,} | {e['seconds']:.1f} | {e['pairs_per_s']:.3g} "
                     f"| {e['share_of_matmul']:.0%} | {e['cpu_seconds']:.1f} | {e['cpu_share_of_matmul']:.0%} "
                     f"| {e['share_of_own_matmul']:.0%} | {e['dense']['pairs_per_s']:.3g} "
                     f"| {e['pairs_per_s'] / e['dense']['pairs_per_s']:.1f}x |")
    p = r["popularity"]
    lines += ["", f"## Popularity, leave-one-out test split, synthetic log ({p['users']:,} users, {p['items']:,} "
              f"items, {p['events']:,} events)", "",
              f"- `run_baseline` end to end (split, fit, ranking of {p['cases']:,} cases, 1000 bootstrap resamples, "
              f"run folder): **{p['run_baseline_seconds']:.1f} s** (log generated in {p['generate_seconds']:.1f} s, "
              "not counted)",
              f"- HR@10 {p['hr@10']:.4f}, NDCG@10 {p['ndcg@10']:.4f}, coverage@10 {p['coverage@10']:.2e}",
              f"- the dense path, timed on {p['dense_measured_cases']} cases, would take about "
              f"{p['dense_estimate_seconds'] / 60:.0f} minutes for all of them", "", "## Targets", ""]
    for t in r["targets"]:
        lines.append(f"- {t['name']}: {t['value']} (target {t['target']}): **{'met' if t['met'] else 'missed'}**"
                     + (f" ({t['note']})" if t.get("note") else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--allow-dirty", action="store_true", help="run with uncommitted changes (marked in the result)")
    p.add_argument("--quick", action="store_true", help="a hundredth of every size (a smoke test, not a result)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit, dirty = git_state()
    if dirty and not args.allow_dirty:
        sys.exit("tracked files have uncommitted changes: commit them, or pass --allow-dirty (marked in the result)")
    scale = 100 if args.quick else 1
    start = time.perf_counter()
    load_before = os.getloadavg()
    info = {**machine(), "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads()}
    result = {"command": "python benchmarks/eval_speed.py" + " ".join([""] + sys.argv[1:]), "commit": commit,
              "dirty": dirty, "created": dt.datetime.now(dt.UTC).isoformat(), "machine": info,
              "load_before": load_before, "quick": args.quick, "embedding": []}
    rates = MatmulRates()
    for n_items in (100_000 // scale, 1_000_000 // scale):
        for dim in (64, 50):
            row = bench_embedding(n_items, dim, EMBEDDING_PAIRS // scale**2, rates)
            result["embedding"].append(row)
            print(f"embedding {n_items:,} items D={dim}: {row['pairs_per_s']:.3g} pairs/s", flush=True)
    add_shares(result["embedding"], rates)
    result["matmul_gflops"] = {str(d): v / 1e9 for d, v in rates.wall.items()}
    result["matmul_cpu_gflops"] = {str(d): v / 1e9 for d, v in rates.cpu.items()}
    result["popularity"] = bench_popularity(166_000 // scale, 1_000_000 // scale, 10_000_000 // scale)
    print(f"popularity: {result['popularity']['run_baseline_seconds']:.1f} s", flush=True)
    worst = min(result["embedding"], key=lambda e: e["share_of_matmul"])
    result["targets"] = [
        {"name": "embedding evaluation, lowest share of the matmul rate "
                 f"({worst['items']:,} items, D={worst['dim']})", "value": f"{worst['share_of_matmul']:.0%}",
         "target": f">= {TARGET_SHARE:.0%}", "met": worst["share_of_matmul"] >= TARGET_SHARE,
         "note": f"its share of its own matmuls: {worst['share_of_own_matmul']:.0%}"},
        {"name": "popularity evaluation of the 10M-event log", "target": f"< {TARGET_POPULARITY_SECONDS:.0f} s",
         "value": f"{result['popularity']['run_baseline_seconds']:.1f} s",
         "met": result["popularity"]["run_baseline_seconds"] < TARGET_POPULARITY_SECONDS},
    ]
    result["load_after"] = os.getloadavg()
    result["contended"] = max(result["load_before"][0], result["load_after"][0]) > (os.cpu_count() or 1)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(args.out / "eval_speed.json", result)
    write_text(args.out / "eval_speed.md", render(result))
    print(f"wrote {args.out / 'eval_speed.json'} and {args.out / 'eval_speed.md'}")


if __name__ == "__main__":
    main()
