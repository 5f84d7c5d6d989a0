"""Time-to-quality curves: validation HR@10 and NDCG@10 against training wall time, one line per run, read
from each run's metrics.jsonl. Writes a PNG (needs the `bench` extra: matplotlib).

    python benchmarks/plot_curves.py runs/bench/movielens-1m/hstu/seed0 runs/bench/movielens-1m/sasrec/seed0 \
        --target 0.2853 --out benchmarks/results/ml1m_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(run: Path) -> tuple[list[float], list[float], list[float]]:
    minutes, hr, ndcg = [], [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "valid_hr@10" in r:
            minutes.append(r["elapsed_s"] / 60)
            hr.append(r["valid_hr@10"])
            ndcg.append(r["valid_ndcg@10"])
    return minutes, hr, ndcg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--label", action="append", default=None, help="one per run (default: the run path)")
    p.add_argument("--target", type=float, action="append", default=[], help="HR@10 reference lines")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/curves.png"))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_hr, ax_ndcg) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = args.label or [str(r) for r in args.runs]
    for run, label in zip(args.runs, labels, strict=True):
        minutes, hr, ndcg = read_curve(run)
        ax_hr.plot(minutes, hr, marker=".", label=label)
        ax_ndcg.plot(minutes, ndcg, marker=".", label=label)
    for t in args.target:
        ax_hr.axhline(t, ls="--", lw=0.8, color="grey")
        ax_hr.text(0, t, f" {t:.4f}", va="bottom", fontsize=8, color="grey")
    for ax, name in ((ax_hr, "validation HR@10"), (ax_ndcg, "validation NDCG@10")):
        ax.set_xlabel("training wall time (min, 2 CPU cores)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_hr.legend(fontsize=8)
    fig.suptitle("Full catalog, leave-one-out validation item; test is read once at the end")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
