"""Training speed on MovieLens-1M shapes: tokens/s and seconds per epoch for SASRec, HSTU and HSTU-large, at
D 50 and D 256 with history 200, fast path versus the plain per-sequence reference path.

Batches are the real ML-1M training windows (last 201 items of each user's training sequence), grouped by
length as the trainer does; a step is forward + backward + AdamW. Loss: sampled softmax with 128 uniform
negatives shared across the batch and batch 128 users (the generative-recommenders ML-1M recipe, whose
reference timings, meta-recsys/generative-recommenders at commit db1bf8f,
were taken on a 2-core machine), and full-catalog cross-entropy at batch 32 (genrec's quality recipe).
The fast path of D 50 is also timed over one whole epoch; other rows extrapolate from timed steps.
``--trainer`` also times one epoch of ``genrec train`` itself (configs/movielens-1m/<model>.yaml with the
sampled recipe) with the training windows in memory and streamed (``train.data``), from the run's
metrics.jsonl: what a user's epoch costs, loader included.

    GENREC_DATA_DIR=../shared/data python benchmarks/train_speed.py [--steps 6] [--quick] [--trainer]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genrec.data import leave_one_out, load_dataset
from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text
from genrec.models import HSTU, HSTUConfig, SASRec, SASRecConfig
from genrec.nn.losses import full_cross_entropy, sampled_softmax
from genrec.train import trainer_class
from genrec.train.allocator import tune_glibc_malloc
from genrec.train.config import load_config
from genrec.train.trainer import epoch_batches, training_windows

MODELS = {
    "SASRec": (SASRec, SASRecConfig, {"blocks": 2, "heads": 1}),
    "HSTU": (HSTU, HSTUConfig, {"blocks": 2, "heads": 1}),
    "HSTU-large": (HSTU, HSTUConfig, {"blocks": 8, "heads": 2}),
}
RECIPES = {"sampled-128/b128": ("sampled", 128), "full-ce/b32": ("full", 32)}
CONFIGS = {"HSTU": "configs/movielens-1m/hstu.yaml", "HSTU-large": "configs/movielens-1m/hstu-large.yaml",
           "SASRec": "configs/movielens-1m/sasrec.yaml"}
# Meta's generative-recommenders (github.com/facebookresearch/generative-recommenders) on a 2-core CPU machine,
# s/epoch, as reported for that repository's ML-1M recipe: glibc malloc, jemalloc.
REFERENCE = {"SASRec": (90, 42), "HSTU": (97, 35), "HSTU-large": (205, 76)}


def step_fn(model, loss: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(items: torch.Tensor, lengths: torch.Tensor) -> int:
        inputs, targets = items[:, :-1], items[:, 1:].clone()
        targets[torch.arange(targets.shape[1])[None, :] >= (lengths - 1)[:, None]] = 0
        h = model(inputs, (lengths - 1).clamp(min=1))
        mask = targets > 0
        table = model.item_table()
        if loss == "full":
            value = full_cross_entropy(h[mask], targets[mask], table)
        else:
            value = sampled_softmax(h[mask], targets[mask], table, 128)
        n = int(mask.sum())
        opt.zero_grad(set_to_none=True)
        (value / max(n, 1)).backward()
        opt.step()
        return n

    return step


def trainer_epoch(name: str, data: str, out: Path) -> dict:
    """One epoch of the real trainer (sampled-128/b128, 2 threads) with ``train.data`` = memory or stream."""
    sets = {"train.loss": "sampled_softmax", "train.batch_size": 128, "train.negatives": 128, "train.epochs": 1,
            "train.data": data, "train.threads": torch.get_num_threads(), "train.max_minutes": None,
            "eval.valid_users": 256, "eval.test_users": 256}
    cfg = load_config(CONFIGS[name], sets)
    folder = out / f"{name}-{data}"
    trainer_class(cfg)(cfg, folder, show_progress=False).fit()
    first = [x for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()][0]
    record = json.loads(first)
    return {"recipe": "sampled-128/b128", "model": name, "dim": cfg.model.dim, "heads": cfg.model.heads,
            "path": f"trainer, {data}", "tokens_per_s": record["tokens_per_s"],
            "s_per_epoch_measured": record["epoch_seconds"], "overrides": sets}


def trainer_epoch_fresh(name: str, data: str, out: Path) -> dict:
    """:func:`trainer_epoch` in a new process, as ``genrec train`` runs: no allocator or thread-pool state left by
    the rows timed before it."""
    done = subprocess.run([sys.executable, __file__, "--trainer-epoch", name, data, str(out)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def trainer_rows(name: str, data: str, out: Path, repeats: int) -> dict:
    """:func:`trainer_epoch_fresh` ``repeats`` times: the median epoch, and every run's."""
    runs = [trainer_epoch_fresh(name, data, out / f"repeat-{i}" if repeats > 1 else out) for i in range(repeats)]
    seconds = [r["s_per_epoch_measured"] for r in runs]
    mid = runs[int(np.argsort(seconds)[len(seconds) // 2])]
    return {**mid, "epoch_seconds_runs": seconds} if repeats > 1 else mid


def time_steps(step, batches, windows, n_steps: int, warmup: int = 2) -> tuple[float, int]:
    tokens, start = 0, None
    for i, rows in enumerate(batches[: n_steps + warmup]):
        if i == warmup:
            tokens, start = 0, time.perf_counter()
        tokens += step(windows.take(rows).to_padded(left=False), torch.from_numpy(windows.lengths[rows]))
    return time.perf_counter() - start, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row (after 2 warm-up steps)")
    p.add_argument("--reference-steps", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="skip whole-epoch timings")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--dims", nargs="+", type=int, default=[50, 256])
    p.add_argument("--no-reference", action="store_true", help="time only the fast path")
    p.add_argument("--trainer", action="store_true", help="also time one epoch of the trainer, in memory and "
                   "streamed (sampled recipe)")
    p.add_argument("--trainer-repeats", type=int, default=1, help="trainer epochs per row (the row shows the "
                   "median and lists every run), since single epochs vary by several percent on a shared CPU")
    p.add_argument("--work", type=Path, default=Path("runs/train_speed"), help="run folders of --trainer")
    p.add_argument("--tag", default="", help="suffix of the output files (e.g. the allocator)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--trainer-epoch", nargs=3, metavar=("MODEL", "DATA", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    allocator = tune_glibc_malloc()
    if args.trainer_epoch:  # one trainer row, in a process of its own (trainer_epoch_fresh)
        name, data, work = args.trainer_epoch
        print(json.dumps(trainer_epoch(name, data, Path(work))))
        return
    torch.manual_seed(0)
    ds = load_dataset("movielens-1m")
    windows, _ = training_windows(leave_one_out(ds), 200)
    epoch_tokens = int((windows.lengths - 1).sum())
    rows, start = [], time.perf_counter()
    for (recipe, (loss, batch)), (name, (cls, cfg_cls, kw)), dim in (
            ((r, RECIPES[r]), (m, MODELS[m]), d)
            for r in args.recipes for m in args.models for d in args.dims):
        batches = epoch_batches(windows.lengths, batch, np.random.default_rng(0))
        heads = kw["heads"]
        for path in ("fast",) if args.no_reference else ("fast", "reference"):
            model = cls(cfg_cls(dim=dim, max_len=200, dropout=0.2, **kw), ds.n_items)
            model.reference = path == "reference"
            steps = args.steps if path == "fast" else args.reference_steps
            seconds, tokens = time_steps(step_fn(model, loss), batches, windows, steps,
                                         warmup=2 if path == "fast" else 1)
            tps = tokens / seconds
            row = {"recipe": recipe, "model": name, "dim": dim, "heads": heads, "path": path,
                   "tokens_per_s": tps, "s_per_epoch_extrapolated": epoch_tokens / tps, "timed_steps": steps}
            if path == "fast" and dim == 50 and not args.quick:
                t0 = time.perf_counter()
                fresh = step_fn(cls(cfg_cls(dim=dim, max_len=200, dropout=0.2, **kw), ds.n_items), loss)
                for b in batches:
                    fresh(windows.take(b).to_padded(left=False), torch.from_numpy(windows.lengths[b]))
                row["s_per_epoch_measured"] = time.perf_counter() - t0
            rows.append(row)
            print(row, flush=True)
    for name in args.models if args.trainer else []:
        for data in ("memory", "stream"):
            rows.append(trainer_rows(name, data, args.work, args.trainer_repeats))
            rows[-1]["s_per_epoch_extrapolated"] = epoch_tokens / rows[-1]["tokens_per_s"]
            print(rows[-1], flush=True)
    for r in rows:
        ref = next((x for x in rows if x["path"] == "reference" and all(
            x[k] == r[k] for k in ("recipe", "model", "dim"))), None)
        if r["path"] == "fast" and ref is not None:
            r["speedup_vs_reference_path"] = r["tokens_per_s"] / ref["tokens_per_s"]

    result = {"command": "python " + " ".join(sys.argv),
              "commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
              "allocator": allocator, "threads": torch.get_num_threads(), "epoch_tokens": epoch_tokens,
              "wall_seconds": time.perf_counter() - start, "rows": rows,
              "meta_reference_s_per_epoch": {k: {"glibc": v[0], "jemalloc_no_decay": v[1]}
                                             for k, v in REFERENCE.items()}}
    stem = "train_speed" + (f"_{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", result)
    write_text(args.out / f"{stem}.md", render(result))
    print(f"wrote {args.out / stem}.md")


def render(res: dict) -> str:
    lines = ["# Training speed, MovieLens-1M shapes (history 200)", "",
             f"- command: `{res['command']}`; commit {res['commit']}; {res['created']}",
             f"- machine: {res['machine']['processor']}, {res['machine']['cpus']} CPUs, torch "
             f"{res['machine']['torch']}, {res['threads']} threads; allocator: **{res['allocator']}**",
             f"- an epoch = {res['epoch_tokens']:,} training tokens (the last 200 targets of each user's training "
             "sequence); a step = forward + backward + AdamW", "",
             "| recipe | model | D | path | tokens/s | s/epoch (extrapolated) | s/epoch (measured) "
             "| fast / reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        measured = f"{r['s_per_epoch_measured']:.1f}" if "s_per_epoch_measured" in r else ""
        if "epoch_seconds_runs" in r:
            measured += " (median of " + ", ".join(f"{x:.1f}" for x in r["epoch_seconds_runs"]) + ")"
        ratio = f"{r['speedup_vs_reference_path']:.1f}x" if "speedup_vs_reference_path" in r else ""
        lines.append(f"| {r['recipe']} | {r['model']} | {r['dim']} | {r['path']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['s_per_epoch_extrapolated']:.1f} | {measured} | {ratio} |")
    lines += ["", "Meta's generative-recommenders (github.com/facebookresearch/generative-recommenders) on a "
              "2-core CPU machine (batch 128, 128 sampled negatives, D 50), s/epoch:", "",
              "| model | glibc malloc | jemalloc, no decay | genrec, same recipe (trainer streamed, else fast path) "
              "| ratio vs glibc | ratio vs jemalloc |", "|---|---|---|---|---|---|"]
    for name, ref in res["meta_reference_s_per_epoch"].items():
        ours = next((r for r in res["rows"] if r["model"] == name and r["dim"] == 50 and r["path"] == "trainer, stream"
                     and r["recipe"].startswith("sampled")), None) or next(
                    (r for r in res["rows"] if r["model"] == name and r["dim"] == 50 and r["path"] == "fast"
                     and r["recipe"].startswith("sampled")), None)
        if ours:
            s = ours.get("s_per_epoch_measured", ours["s_per_epoch_extrapolated"])
            lines.append(f"| {name} | {ref['glibc']} | {ref['jemalloc_no_decay']} | {s:.1f} | "
                         f"{ref['glibc'] / s:.1f}x | {ref['jemalloc_no_decay'] / s:.1f}x |")
    lines.append("")
    lines.append("genrec's allocator row says what ran; Meta's figures were measured by others on the same kind "
                 "of machine, not re-run here.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
