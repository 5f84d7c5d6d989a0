"""Speed of the generative ranker: one-pass (M-FALCON) scoring of M candidates against one user history, versus
one forward pass per candidate, on this machine's CPU.

For each candidate count M (default 200 and 1,000) one request is scored three ways, each timed over
--repeats runs after a warm-up (median reported):

- one pass: ``model(batch)``: the history is encoded once and its K/V reused by every candidate micro-batch;
- per candidate, sequential: ``model.score_one_by_one(batch)``: a full pass over [user, history, candidate] for
  each candidate in turn (what a ranker without target-aware caching does per request);
- per candidate, batched: the M passes of the previous line stacked into one batch of M sequences (the best a
  per-candidate model can do with batching; same FLOPs as sequential, better kernels).

All three give the same scores (checked). With --run the trained weights of a ranking run folder are used
(``runs/kuairand/ranker``); otherwise a model of the KuaiRand config's size with random weights (speed does not
depend on the weights). Writes benchmarks/results/ranking_speed.{json,md}.

    python benchmarks/ranking_speed.py --run runs/kuairand/ranker --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from genrec.models.ranker import GenerativeRanker, RankerConfig
from genrec.models.ranking import RankBatch, RankSpec
from genrec.serve.model_io import load_ranking_model

RESULTS = Path(__file__).parent / "results"


def load_model(run: Path | None, config: Path) -> tuple[GenerativeRanker, str]:
    if run is not None and (run / "model.json").is_file():
        return load_ranking_model(run), f"trained weights of {run}"
    cfg = RankerConfig.model_validate(yaml.safe_load(config.read_text())["model"])
    spec = RankSpec(n_items=7000, n_users=27000, binary_tasks=("click", "long_view", "like", "follow", "comment",
                                                               "forward"), regression_tasks=("watch_time",),
                    action_sizes={"signals": 129, "watch": 17})
    return GenerativeRanker(cfg, spec).eval(), f"random weights, {config} size"


def request(model: GenerativeRanker, history: int, m: int, seed: int = 0) -> RankBatch:
    spec, rng = model.spec, np.random.default_rng(seed)
    t = 1_651_000_000_000 + np.sort(rng.integers(0, 10**9, history))
    sizes = list((spec.action_sizes or {}).values())
    actions = np.stack([rng.integers(1, s, history) for s in sizes], axis=-1)
    return RankBatch(
        user=torch.tensor([1]), hist_items=torch.from_numpy(rng.integers(1, spec.n_items + 1, (1, history))),
        hist_actions=torch.from_numpy(actions[None]), hist_time=torch.from_numpy(t[None]),
        hist_len=torch.tensor([history]), cand_items=torch.from_numpy(rng.integers(1, spec.n_items + 1, (1, m))),
        cand_time=torch.full((1, m), int(t[-1]) + 1000), visible=torch.full((1, m), history))


def per_candidate_batch(b: RankBatch) -> RankBatch:
    """M copies of the request, one candidate each."""
    m = b.cand_items.shape[1]

    def rep(x: torch.Tensor) -> torch.Tensor:
        return x.expand(m, *x.shape[1:]).contiguous()

    return RankBatch(user=rep(b.user), hist_items=rep(b.hist_items), hist_actions=rep(b.hist_actions),
                     hist_time=rep(b.hist_time), hist_len=rep(b.hist_len), cand_items=b.cand_items.T.contiguous(),
                     cand_time=b.cand_time.T.contiguous(), visible=b.visible.T.contiguous())


def timed(fn, repeats: int) -> tuple[float, dict]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/kuairand/ranker"))
    ap.add_argument("--config", type=Path, default=Path("configs/kuairand/ranker.yaml"))
    ap.add_argument("--candidates", default="200,1000")
    ap.add_argument("--history", type=int, default=0, help="History length (default: the model's max_len).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sequential-repeats", type=int, default=2, help="Repeats of the slow sequential baseline.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    model, source = load_model(args.run, args.config)
    history = args.history or model.config.max_len
    rows = []
    with torch.no_grad():
        for m in (int(c) for c in args.candidates.split(",")):
            b = request(model, history, m)
            one, ref = timed(lambda b=b: model(b), args.repeats)
            seq, out_seq = timed(lambda b=b: model.score_one_by_one(b), args.sequential_repeats)
            pb = per_candidate_batch(b)
            bat, out_bat = timed(lambda pb=pb: model(pb), args.repeats)
            err = max(max(float((ref[t] - out_seq[t]).abs().max()), float((ref[t][0] - out_bat[t][:, 0]).abs().max()))
                      for t in ref)
            rows.append({"candidates": m, "history": history, "one_pass_ms": 1000 * one,
                         "per_candidate_sequential_ms": 1000 * seq, "per_candidate_batched_ms": 1000 * bat,
                         "one_pass_candidates_per_s": m / one, "speedup_vs_sequential": seq / one,
                         "speedup_vs_batched": bat / one, "max_abs_diff": err})
            print(rows[-1], flush=True)
    result = {"benchmark": "ranking_speed", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "machine": machine(), "model": source, "config": model.config.model_dump(mode="json"),
              "threads": args.threads, "rows": rows, "wall_seconds": time.perf_counter() - wall}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ranking_speed.json", result)
    mach = result["machine"]
    lines = ["# Generative ranker: one-pass (M-FALCON) scoring vs one pass per candidate", "",
             f"- one request, history {history}, {source}; {args.threads} torch threads; median of {args.repeats} "
             f"(sequential: {args.sequential_repeats}) timed runs after a warm-up; commit {result['commit']}, "
             f"{mach['cpus']} CPUs, torch {mach['torch']}, wall {result['wall_seconds']:.0f} s", "",
             "| candidates | one pass ms | candidates/s | per-candidate sequential ms | ratio | "
             "per-candidate batched ms | ratio | max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidates']:,} | {r['one_pass_ms']:.1f} | {r['one_pass_candidates_per_s']:,.0f} | "
                     f"{r['per_candidate_sequential_ms']:.0f} | {r['speedup_vs_sequential']:.1f}x | "
                     f"{r['per_candidate_batched_ms']:.0f} | {r['speedup_vs_batched']:.1f}x | "
                     f"{r['max_abs_diff']:.1e} |")
    write_text(args.out / "ranking_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
