"""The shared training loop on a toy model: exact mid-epoch resume, early stopping with best-weights restore,
the wall-time budget, metrics.jsonl, and that a run folder is never trained over."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec.errors import GenrecError
from genrec.train.config import RunConfig
from genrec.train.loop import Loop, Steps

torch.set_num_threads(1)
X = torch.from_numpy(np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
BATCH = 8


def config(**train) -> RunConfig:
    base = {"epochs": 3, "batch_size": BATCH, "lr": 0.05, "warmup_steps": 2, "patience": 5, "seed": 1}
    return RunConfig.model_validate({"dataset": "toy", "model": {"name": "sasrec"}, "train": {**base, **train}})


def toy_steps(model: torch.nn.Module, seed: int = 1, fail_at: int | None = None) -> Steps:
    """Shuffled batches of a regression with dropout (so a resume must restore the generator state too)."""
    calls = {"n": 0}

    def batches(epoch, start):
        order = np.random.default_rng([seed, epoch]).permutation(len(X))
        return [order[i:i + BATCH] for i in range(int(start["step"]) * BATCH if start else 0, len(X), BATCH)]

    def step(rows, opt, sched):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        rows = torch.from_numpy(rows)
        loss = ((model(X[rows]) - Y[rows]) ** 2).sum()
        opt.zero_grad()
        (loss / len(rows)).backward()
        opt.step()
        sched.step()
        return float(loss.detach()), len(rows)

    return Steps(model, len(X) // BATCH, batches, step)


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))


def validate(model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {"valid_ndcg@10": -float(((model(X) - Y) ** 2).mean())}


def run(cfg, folder, resume=False, fail_at=None, validate=validate):
    model = toy_model()
    loop = Loop(cfg, model, len(X) // BATCH, folder, resume, show_progress=False)
    loop.run(toy_steps(model, fail_at=fail_at), cfg.train.epochs, validate=validate)
    return loop, model


def test_a_mid_epoch_checkpoint_resumes_exactly(tmp_path):
    cfg = config(checkpoint_every=3)
    full, model = run(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", fail_at=8)  # step 3 of epoch 2: its last checkpoint is after step 6 (epoch 2, 1)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "trainer.json").read_text())
    assert saved["epoch"] == 1 and saved["position"] == {"epoch": 2, "step": 1, "loss": saved["position"]["loss"],
                                                         "tokens": BATCH, "seconds": saved["position"]["seconds"]}
    resumed, again = run(cfg, tmp_path / "cut", resume=True)
    assert [r["loss"] for r in resumed.state["history"]] == [r["loss"] for r in full.state["history"]]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and {"loss", "tokens_per_s", "lr", "valid_ndcg@10"} <= set(lines[0])


def test_early_stopping_keeps_and_restores_the_best_weights(tmp_path):
    values = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    kept = {}

    def falling(model):
        value = next(values)
        if value == 0.9:
            kept.update({k: v.clone() for k, v in model.state_dict().items()})
        return {"valid_ndcg@10": value}

    loop, model = run(config(epochs=10, patience=2), tmp_path, validate=falling)
    state = loop.state
    assert state["stopped"] == "early stopping" and state["epoch"] == 4
    assert state["best_epoch"] == 2 and state["best"] == 0.9
    loop.restore_best()
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    result = loop.result(model, None)
    assert (result.best_epoch, result.best_valid, len(result.history)) == (2, 0.9, 4)
    assert loop.summary()["stopped"] == "early stopping"


def test_the_wall_time_budget_ends_the_epoch_and_the_run(tmp_path):
    loop, _ = run(config(epochs=5, max_minutes=1e-9), tmp_path)
    state = loop.state
    assert state["epoch"] == 1 and state["stopped"].startswith("wall-time budget")
    assert "valid_ndcg@10" in state["history"][0]  # a budget stop validates the epoch it cut


def test_a_run_folder_is_never_trained_over(tmp_path):
    run(config(epochs=1), tmp_path)
    with pytest.raises(GenrecError, match="--resume"):
        run(config(epochs=1), tmp_path)
    with pytest.raises(GenrecError, match="no checkpoint"):
        run(config(epochs=1), tmp_path / "empty", resume=True)
