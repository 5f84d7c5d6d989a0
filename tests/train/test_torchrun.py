"""Beyond one machine: two torchrun agents ("nodes", one process each) rendezvous on loopback and train the
same run as one process, in memory and streamed from a prepared folder; the weights and test metrics agree up
to the order of float reductions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_stream import timed_dataset, write_prepared  # tests/train is on sys.path (no __init__.py)

from genrec.train.config import load_config
from genrec.train.trainer import Trainer

torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(config: Path, out: Path) -> None:
    """``genrec train`` under two torchrun agents, node ranks 0 and 1, one process each."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_DATA_DIR": ""}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                                str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
                                str(port), "-m", "genrec", "train", "--config", str(config), "--out", str(out),
                                "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for rank in (0, 1)]
    try:
        results = [a.communicate(timeout=120) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    for a, (_, err) in zip(agents, results, strict=True):
        assert a.returncode == 0, err[-3000:]


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_two_nodes_train_like_one_process(tmp_path, data):
    ds = timed_dataset()
    folder = write_prepared(ds, tmp_path / "prepared", shards=4)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"dataset: {folder}\n"
        "model: {name: hstu, dim: 16, blocks: 1, heads: 2, max_len: 12, dropout: 0.0}\n"
        f"train: {{epochs: 2, batch_size: 8, lr: 0.01, warmup_steps: 2, seed: 1, windows: all, data: {data},\n"
        "        stream: {lanes: 2}}\n"
        "eval: {n_boot: 20, ks: [10]}\n")
    one = Trainer(load_config(config), tmp_path / "one", show_progress=False).fit()
    two_nodes(config, tmp_path / "two")
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=f"parameter {k} differs")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["info"].get("data", {}).get("mode", "memory") == data
    for name, value in metrics["metrics"].items():
        assert value["mean"] == pytest.approx(one.test.summary[name]["mean"], abs=1e-6), (name, value, one.test.summary)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["loss"] for r in one.history], rel=1e-6)
