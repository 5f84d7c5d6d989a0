"""Time-to-quality curves: validation HR@10 and NDCG@10 against training wall time, one line per run, read
from each run's metrics.jsonl. Writes a PNG (needs the `bench` extra: matplotlib) and, beside it, a time-to-
quality table (JSON + Markdown): for each run and --target, the first training minute at which validation
HR@10 reached the target, and the test HR@10 / NDCG@10 of the run's selected checkpoint with its training time
(the test item is read once, so "test reached the target" is only known for the run as a whole).

    python benchmarks/plot_curves.py runs/bench/movielens-1m/hstu/seed0 runs/bench/movielens-1m/sasrec/seed0 \
        --target 0.2853 --out benchmarks/results/ml1m_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genrec.eval.report import git_commit, machine
from genrec.io import write_json, write_text


def read_curve(run: Path) -> tuple[list[float], list[float], list[float]]:
    minutes, hr, ndcg = [], [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "valid_ndcg@10" in r:  # runs from before HR@10 was logged have NDCG@10 only
            minutes.append(r["elapsed_s"] / 60)
            hr.append(r.get("valid_hr@10", float("nan")))
            ndcg.append(r["valid_ndcg@10"])
    return minutes, hr, ndcg


def time_to_quality(runs: list[Path], labels: list[str], targets: list[float]) -> list[dict]:
    rows = []
    for run, label in zip(runs, labels, strict=True):
        minutes, hr, _ = read_curve(run)
        final = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
        row = {"run": str(run), "label": label, "valid_reached_min": {}}
        for t in targets:
            row["valid_reached_min"][f"{t:.4f}"] = (next((m for m, h in zip(minutes, hr, strict=True) if h >= t),
                                                          "not reached")
                                                    if any(h == h for h in hr) else "HR@10 not logged")
        if final:
            row["test"] = {k: final["metrics"][k]["mean"] for k in ("hr@10", "ndcg@10")}
            refit = final["info"].get("refit") or {}
            # train.refit: the tested model trained after the selection run, so its minutes count too
            row["train_min"] = ((final["info"].get("train_seconds") or 0) + (refit.get("train_seconds") or 0)) / 60
            row["best_epoch"] = final["info"].get("best_epoch")
            if refit:
                row["refit"] = {"epochs": refit.get("epochs"), "minutes": (refit.get("train_seconds") or 0) / 60}
        rows.append(row)
    return rows


def render(rows: list[dict], targets: list[float]) -> str:
    head = ["run"] + [f"valid HR@10 >= {t:.4f} at (min)" for t in targets] + ["test HR@10", "test NDCG@10",
                                                                              "train min", "best epoch"]
    lines = ["# Time to quality, MovieLens-1M (2 CPU cores)", "", "| " + " | ".join(head) + " |",
             "|---" * len(head) + "|"]
    for r in rows:
        reached = [f"{v:.1f}" if isinstance(v, float) else v for v in r["valid_reached_min"].values()]
        test = r.get("test", {})
        lines.append(f"| {r['label']} | " + " | ".join(reached) + " | " +
                     " | ".join([f"{test['hr@10']:.4f}", f"{test['ndcg@10']:.4f}", f"{r['train_min']:.1f}",
                                 str(r["best_epoch"])] if test else ["", "", "", ""]) + " |")
    lines += ["", "Test trails validation by about .015-.02 HR@10 on this split, so the validation crossing is an "
              "early estimate; the test columns are what the run reached."]
    for r in rows:
        if r.get("refit"):
            lines.append(f"\n{r['label']}: train.refit, so the test columns are those of the model refit on the "
                         f"validation items for {r['refit']['epochs']} epochs ({r['refit']['minutes']:.1f} min, "
                         "included in train min); the validation curve is the selection run's.")
    return "\n".join(lines) + "\n"


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
    rows = time_to_quality(args.runs, labels, args.target)
    stem = args.out.with_suffix("")
    write_json(f"{stem}_time_to_quality.json", {"commit": git_commit(), "machine": machine(), "targets": args.target,
                                               "runs": rows})
    write_text(f"{stem}_time_to_quality.md", render(rows, args.target))
    print(f"wrote {args.out} and {stem}_time_to_quality.{{json,md}}")


if __name__ == "__main__":
    main()
