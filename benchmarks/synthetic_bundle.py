"""A servable bundle with a synthetic catalog of N items (default 1,000,000), to load-test the FAISS path.

The model is an untrained HSTU (ML-1M quickstart size: D 50, 2 blocks, history 200) whose item embeddings are
drawn from a mixture of Gaussians (items cluster by topic, as trained embeddings do; isotropic noise would make
every index look bad). Titles are "Item <id>", popularity Zipf-like. The bundle is exported with ``ann="on"``:
the manifest reports the index's recall@10 / @100 against exact search, as for a real export.

    python benchmarks/synthetic_bundle.py --items 1000000 --out runs/synth-1m
    python benchmarks/serve_load.py --bundle runs/synth-1m/bundle --history-len 200 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from genrec.eval.report import git_commit
from genrec.io import write_json
from genrec.models import HSTU, HSTUConfig
from genrec.serve import export_bundle, load_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--topics", type=int, default=2000, help="Mixture components of the item embeddings.")
    ap.add_argument("--out", type=Path, default=Path("runs/synth-1m"))
    ap.add_argument("--ann-recall", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = HSTUConfig(dim=50, blocks=2, heads=1, max_len=200, dropout=0.2)
    model = HSTU(cfg, args.items, use_timestamps=False)
    centres = rng.normal(size=(args.topics, cfg.dim)).astype(np.float32)
    emb = centres[rng.integers(0, args.topics, args.items)] + 0.5 * rng.normal(size=(args.items, cfg.dim))
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy((0.1 * emb).astype(np.float32))
    run = args.out / "run"
    if args.out.exists():
        shutil.rmtree(args.out)
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    write_json(run / "model.json", {"name": "hstu", "config": cfg.model_dump(), "n_items": args.items,
                                    "use_timestamps": False})
    ids = np.arange(1, args.items + 1)
    counts = (1e5 / ids ** 0.8).astype(np.int64)  # Zipf-like training popularity
    pq.write_table(pa.table({"item_idx": ids, "raw_id": [f"i{i}" for i in ids], "train_count": counts,
                             "title": [f"Item {i}" for i in ids]}), run / "items.parquet")
    write_json(run / "metrics.json", {"dataset": {"name": f"synthetic-{args.items}"}, "metrics": {},
                                      "run": {"commit": git_commit()}})
    print(f"run written in {time.perf_counter() - t0:.0f} s; exporting with an approximate index ...", flush=True)
    bundle = export_bundle(run, args.out / "bundle", ann="on", ann_recall=args.ann_recall)
    ann = load_manifest(bundle)["ann"]
    print(f"{bundle}: nlist {ann['nlist']}, nprobe {ann['nprobe']}, recall@10 {ann['recall@10']:.3f}, "
          f"recall@100 {ann['recall@100']:.3f}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
