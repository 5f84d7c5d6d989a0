"""Per-user candidate pools from a retrieval run: each user's top-K items from the retrieval model given the
items they rated before the ranker's validation period, in the ranker log's item space. A ranking config names
the file under ``negatives.pools`` to train on retrieval's candidates as negatives (hard negatives), the
candidates it reorders in two-stage serving.

    python benchmarks/retrieval_pools.py --retrieval runs/bench/movielens-1m/hstu-large/seed0 \\
        --out runs/movielens-1m/retrieval_pools.parquet

Only ratings before the first rating of the ranker log's validation part are read, so no validation or test
interaction shapes a training negative; seen items are excluded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.data.impression_readers import load_impressions
from genrec.data.impression_splits import default_split
from genrec.data.jagged import Jagged
from genrec.eval.two_stage import TwoStageCases, item_map, retrieve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from two_stage import load_retrieval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retrieval", type=Path, required=True, help="finished retrieval run folder")
    ap.add_argument("--dataset", default="movielens-1m", help="the retrieval run's dataset")
    ap.add_argument("--log", default="movielens-1m-ratings", help="the ranker's impression log (no negatives)")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    wall = time.perf_counter()
    torch.set_grad_enabled(False)
    model, ds, _ = load_retrieval(args.retrieval, args.dataset, torch.device("cpu"))
    log = load_impressions(args.log)
    split = default_split(log)
    cut = int(log.time[split.part("valid") | split.part("test")].min())
    to_log = item_map(ds.items.raw, log.items)  # retrieval dense -> log dense
    to_ret = np.zeros(log.n_items + 1, dtype=np.int64)
    to_ret[to_log[1:]] = np.arange(1, len(to_log))
    to_ret[0] = 0
    rows = np.flatnonzero(log.context & (log.time < cut))  # rows are grouped by user, in time order
    users = np.unique(log.user[rows])
    hist = to_ret[log.item[rows]]
    keep = hist > 0
    rows, hist = rows[keep], hist[keep]
    counts = np.bincount(np.searchsorted(users, log.user[rows]), minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = len(users)
    cases = TwoStageCases(users=np.zeros(n, dtype=np.int64), history=Jagged(hist, offsets),
                          targets=np.zeros(n, dtype=np.int64), time=np.full(n, cut, dtype=np.int64),
                          log_users=users)
    ids, _ = retrieve(model, cases, ds.n_items, args.k, show_progress=True)
    pools = to_log[ids]
    table = pa.table({"user": pa.array([str(x) for x in log.users.raw.to_pylist()])
                      .take(pa.array(users - 1)),
                      "items": pa.array([[str(log.items.raw[int(i) - 1]) for i in row if i > 0] for row in pools],
                                        type=pa.list_(pa.string()))})
    meta = {"retrieval": str(args.retrieval), "dataset": args.dataset, "log": args.log, "k": str(args.k),
            "history_before_ms": str(cut), "users": str(n)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({f"genrec.{k}": v for k, v in meta.items()}), args.out)
    print(f"{args.out}: top-{args.k} pools of {n} users from {args.retrieval} (history before {cut} ms), "
          f"{time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
