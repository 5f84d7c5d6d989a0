"""Ranking split across torch.distributed ranks (two gloo processes on loopback) gives every rank exactly what one
process gives, on each path: dense, embedding blocks, global order, sparse rows."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_fast import EmbeddingStub, GlobalStub, SparseStub, random_cases, random_sparse  # noqa: E402

from genrec.eval.retrieval import rank_cases  # noqa: E402

KS = (1, 5, 20)


class TableStub:
    """Dense only: one score row per user."""

    def __init__(self, n_users: int, n_items: int):
        rng = np.random.default_rng(3)
        self.table = torch.from_numpy(rng.integers(0, 5, (n_users + 1, n_items + 1)).astype(np.float32))

    def score(self, history, users, timestamps=None):
        return self.table[torch.from_numpy(np.asarray(users, dtype=np.int64))]


def problems():
    n_items = 140
    global_scores = np.random.default_rng(1).integers(0, 7, n_items + 1).astype(np.float32)
    return {
        "dense": (TableStub(61, n_items), 61),
        "embedding": (EmbeddingStub(n_items, 3, 0, special=True), 61),
        "global": (GlobalStub(global_scores), 61),
        "sparse": (SparseStub(random_sparse(0, 61, n_items)), 61),
        "one_case": (GlobalStub(global_scores), 1),  # one rank has nothing to rank
    }, n_items


def run_all(distributed: bool) -> dict[str, np.ndarray]:
    found, n_items = problems()
    counts = np.arange(n_items + 1) % 11
    out = {}
    for name, (scorer, n_cases) in found.items():
        r = rank_cases(scorer, random_cases(7, n_items, n_cases), n_items, ks=KS, item_counts=counts,
                       item_block=64, batch_size=8, distributed=distributed, show_progress=False)
        out[f"{name}/ranks"] = r.ranks
        for metric, values in r.per_case.items():
            out[f"{name}/{metric}"] = values
        out[f"{name}/aggregate"] = np.array([r.aggregate[f"coverage@{k}"] for k in KS])
        out[f"{name}/excluded"] = np.array([r.info["targets_in_history_excluded"], r.info["cases"]])
    return out


def worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        np.savez(Path(folder) / f"rank{rank}.npz", **run_all(distributed=True))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    single = run_all(distributed=False)
    assert run_all(distributed=True).keys() == single.keys()  # without a process group it is one process
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz", allow_pickle=False) as got:
            assert set(got.files) == set(single)
            for key, values in single.items():
                np.testing.assert_array_equal(got[key], values, err_msg=f"rank {rank}: {key}")
