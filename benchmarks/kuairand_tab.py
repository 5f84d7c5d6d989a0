"""How much KuaiRand's impression context `tab` (the app surface an impression was shown on) would add to
finished ranking runs' click scores. No genrec model reads `tab` yet; this measures what it holds.

For each run: the test GAUC of its click score, of the tab's click log-odds alone (rates per tab over the
log's rows before the run's first test impression, add-one smoothed), and of their sum (the model's logit plus the
tab's log-odds: the least a model reading `tab` should reach). Reads `tab` from the window copy's parquet files
(`kuairand-pure-window`), matched to the log's rows by (user, video, time).

    python benchmarks/kuairand_tab.py --runs runs/kuairand/ranker-frozen* runs/kuairand/gbdt-frozen*
writes benchmarks/results/kuairand_tab.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import default_split
from genrec.eval import ctr
from genrec.io import read_json
from item_prior import header, provenance, write_result

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_LOGS = ("log_standard_20220425_20220430", "log_standard_20220501_20220508")


def row_tabs(log) -> np.ndarray:
    """The `tab` of every row of the kuairand-pure log (in the log's row order)."""
    if log.meta.get("layout") != "window":
        raise SystemExit("this probe reads `tab` from the kuairand-pure-window copy only")
    folder = Path(log.meta["source"]) / "log"
    raw = pa.concat_tables([pq.read_table(folder / f"{f}.parquet", columns=["user_id", "video_id", "time_ms", "tab"])
                            for f in WINDOW_LOGS])
    users = log.users.encode(raw.column("user_id").combine_chunks())
    items = log.items.encode(raw.column("video_id").combine_chunks())
    keys = {(int(u), int(i), int(t)): int(tab) for u, i, t, tab in zip(
        users, items, raw.column("time_ms").to_numpy(), raw.column("tab").to_numpy(), strict=True)}
    return np.array([keys[(int(u), int(i), int(t))] for u, i, t in zip(log.user, log.item, log.time, strict=True)])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def probe(log, tabs: np.ndarray, folder: Path) -> dict:
    preds = pq.read_table(folder / "predictions_test.parquet").to_pydict()
    rows = np.asarray(preds["row"])
    score = logit(preds["raw_click"] if "raw_click" in preds else preds["pred_click"])
    click = log.labels["click"]
    before = log.time < log.time[rows].min()
    n_tabs = int(tabs.max()) + 1
    pos = np.bincount(tabs[before], weights=click[before], minlength=n_tabs)
    rate = (pos + 1) / (np.bincount(tabs[before], minlength=n_tabs) + 2)
    prior = logit(rate)[tabs[rows]]
    users, y = log.user[rows], click[rows]
    many = [len(np.unique(tabs[rows][users == u])) > 1 for u in np.unique(users)]
    return {"run": folder.name, "model": read_json(folder / "metrics.json")["run"]["model"],
            "gauc_model": ctr.gauc(users, y, score)[0], "gauc_tab": ctr.gauc(users, y, prior)[0],
            "gauc_model_plus_tab": ctr.gauc(users, y, score + prior)[0],
            "users_with_several_tabs": float(np.mean(many))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished kuairand-pure ranking runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    log = load_impressions("kuairand-pure")
    tabs = row_tabs(log)
    counts = np.bincount(tabs)
    rates = np.bincount(tabs, weights=log.labels["click"]) / np.maximum(counts, 1)
    runs = [probe(log, tabs, f) for f in args.runs if (f / "predictions_test.parquet").is_file()]
    result = {**header("kuairand_tab", "kuairand-pure", default_split(log)), "tabs": {"rows": counts.tolist(),
              "click_rate": rates.round(4).tolist()}, "runs": runs, "wall_seconds": time.perf_counter() - wall}
    write_result(args.out, "kuairand_tab", result, markdown(result))


def markdown(result: dict) -> str:
    tabs = result["tabs"]
    lines = ["# KuaiRand-Pure: what the impression's `tab` adds to click scores (test GAUC)", "",
             provenance(result) + " Rows and click rate per tab, whole log: " + ", ".join(
                 f"{k}: {n} ({r:.3f})" for k, (n, r) in enumerate(zip(tabs["rows"], tabs["click_rate"], strict=True))
                 if n) + ".", "",
             "| run | model | click GAUC | tab alone | model + tab | users with > 1 tab |", "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['run']} | {r['model']} | {r['gauc_model']:.4f} | {r['gauc_tab']:.4f} | "
                     f"{r['gauc_model_plus_tab']:.4f} | {r['users_with_several_tabs']:.2f} |")
    by_model: dict[str, list] = {}
    for r in result["runs"]:
        by_model.setdefault(r["model"], []).append(r)
    lines += ["", "| model | runs | mean click GAUC | mean model + tab | gain |", "|---|---|---|---|---|"]
    for m, rs in by_model.items():
        a, b = np.mean([r["gauc_model"] for r in rs]), np.mean([r["gauc_model_plus_tab"] for r in rs])
        lines.append(f"| {m} | {len(rs)} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
