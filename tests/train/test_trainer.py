"""Trainer: determinism, exact resume, best-weights selection, safetensors checkpoints, and 2-process DDP
matching single-process training for the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from genrec.data import prepare
from genrec.errors import ConfigError
from genrec.train.config import RunConfig, load_config
from genrec.train.trainer import Trainer


def tiny_rows(n_users: int = 40, n_items: int = 30, seed: int = 0) -> list[tuple[int, int]]:
    """Users walk a ring of items with small random jumps, so the next item is learnable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        item = int(rng.integers(0, n_items))
        for _ in range(int(rng.integers(6, 14))):
            rows.append((u, item + 1))
            item = (item + int(rng.integers(1, 3))) % n_items
    return rows


def tiny_dataset():
    rows = tiny_rows()
    table = pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]})
    return prepare(table, name="tiny")


def config(model: str = "hstu", **train) -> RunConfig:
    base = {"epochs": 4, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "patience": 10, "seed": 3}
    base.update(train)
    return RunConfig.model_validate({
        "dataset": "tiny", "model": {"name": model, "dim": 16, "blocks": 1, "heads": 2, "max_len": 12,
                                     "dropout": 0.1},
        "train": base, "eval": {"n_boot": 20, "ks": [5, 10]}})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_same_seed_same_result(tmp_path, model):
    ds = tiny_dataset()
    a = Trainer(config(model), tmp_path / "a", dataset=ds, show_progress=False).fit()
    b = Trainer(config(model), tmp_path / "b", dataset=ds, show_progress=False).fit()
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert a.test.summary == b.test.summary
    for k, v in weights(tmp_path / "a").items():
        assert torch.equal(v, weights(tmp_path / "b")[k])


def test_resume_continues_to_the_same_result(tmp_path):
    ds = tiny_dataset()
    full = Trainer(config(), tmp_path / "full", dataset=ds, show_progress=False).fit()

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tmp_path / "cut", dataset=ds, show_progress=False).fit(on_epoch_end=interrupt)
    resumed = Trainer(config(), tmp_path / "cut", dataset=ds, show_progress=False).fit(resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert resumed.test.summary == full.test.summary
    w_full, w_cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(v, w_cut[k]) for k, v in w_full.items())


def test_validation_in_train_adds_each_users_validation_item():
    from genrec.data import leave_one_out, with_validation_in_train

    ds = tiny_dataset()
    split = leave_one_out(ds)
    refit = with_validation_in_train(split)
    assert refit.valid is split.valid and refit.test is split.test
    rows = dict(zip(refit.train_users.tolist(), refit.train.to_lists(), strict=True))
    before = dict(zip(split.train_users.tolist(), split.train.to_lists(), strict=True))
    for u, target, hist in zip(split.valid.users, split.valid.targets, split.valid.history.to_lists(), strict=True):
        assert rows[int(u)] == [*hist, int(target)] == before[int(u)] + [int(target)]
    assert all(rows[u] == r for u, r in before.items() if u not in set(split.test.users.tolist()))
    assert int(refit.train.lengths.sum()) == int(split.train.lengths.sum()) + len(split.valid)


def test_refit_trains_on_validation_items_for_the_selected_epochs_and_resumes(tmp_path):
    ds = tiny_dataset()
    cfg = config("sasrec", epochs=4, refit=True)
    full = Trainer(cfg, tmp_path / "full", dataset=ds, show_progress=False).fit()
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    refit = metrics["info"]["refit"]
    assert refit["epochs"] == refit["selected_epoch"] == full.best_epoch
    assert len((tmp_path / "full" / "refit" / "metrics.jsonl").read_text().splitlines()) == full.best_epoch
    plain = Trainer(config("sasrec", epochs=4), tmp_path / "plain", dataset=ds, show_progress=False).fit()
    assert plain.best_epoch == full.best_epoch and plain.test.summary != full.test.summary

    # a run stopped during the refit continues it to the same model
    import genrec.train.trainer as trainer

    calls = {"n": 0}
    original = trainer.Trainer._say

    def stop_in_refit(self, record):
        original(self, record)
        if record.get("refit") and record["epoch"] == 1:
            calls["n"] += 1
            raise KeyboardInterrupt

    trainer.Trainer._say = stop_in_refit
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, tmp_path / "cut", dataset=ds, show_progress=False).fit()
    finally:
        trainer.Trainer._say = original
    resumed = Trainer(cfg, tmp_path / "cut", dataset=ds, show_progress=False).fit(resume=True)
    assert calls["n"] == 1 and resumed.test.summary == full.test.summary
    w_full, w_cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(v, w_cut[k]) for k, v in w_full.items())
    with pytest.raises(Exception, match="train.refit applies"):
        RunConfig.model_validate({"dataset": "tiny", "split": "temporal", "model": {"name": "sasrec"},
                                  "train": {"refit": True}})


def test_best_validation_weights_are_tested_and_files_are_safe(tmp_path):
    ds = tiny_dataset()
    res = Trainer(config(epochs=5), tmp_path, dataset=ds, show_progress=False).fit()
    valid = [r["valid_ndcg@10"] for r in res.history]
    assert res.best_epoch == int(np.argmax(valid)) + 1
    assert res.best_valid == pytest.approx(max(valid))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["info"]["best_epoch"] == res.best_epoch and metrics["part"] == "test"
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json", "best.safetensors"):
        assert (tmp_path / "checkpoint" / name).is_file()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and "tokens_per_s" in json.loads(lines[0])


def test_learns_beyond_popularity(tmp_path):
    from genrec.data import leave_one_out
    from genrec.eval import rank_cases
    from genrec.models import Popularity

    ds = tiny_dataset()
    res = Trainer(config(epochs=30), tmp_path, dataset=ds,
                  show_progress=False).fit()
    split = leave_one_out(ds)
    pop = Popularity().fit(split.train, ds.n_items)
    pop_hr = rank_cases(pop, split.test, ds.n_items, ks=[10], show_progress=False).per_case["hr@10"].mean()
    assert res.test.mean("hr@10") > pop_hr + 0.2


def test_bad_configs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nmodel: {name: hstu, dimm: 3}\n")
    with pytest.raises(ConfigError, match="dimm"):
        load_config(bad)
    bad.write_text("dataset: x\nmodel: {name: transformer}\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(bad)
    bad.write_text("dataset: x\nmodel: {name: sasrec}\ntrain: {lr: -1}\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("dataset: x\nmodel: {name: sasrec}\n")
    cfg = load_config(good, {"train.epochs": "7", "model.dim": "64"})
    assert cfg.train.epochs == 7 and cfg.model.dim == 64


def _write_cli_inputs(tmp_path: Path) -> Path:
    rows = tiny_rows(n_users=24)
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id\n" + "\n".join(f"{u},{i}" for u, i in rows) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"dataset: {csv}\n"
        "model: {name: hstu, dim: 16, blocks: 1, heads: 1, max_len: 10, dropout: 0.0}\n"
        "train: {epochs: 2, batch_size: 6, lr: 0.01, warmup_steps: 1, seed: 1}\n"
        "eval: {n_boot: 20, ks: [10]}\n")
    return cfg


def test_two_process_ddp_matches_single_process(tmp_path):
    cfg = _write_cli_inputs(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENREC_DATA_DIR": ""}
    single = subprocess.run([sys.executable, "-m", "genrec", "train", "--config", str(cfg), "--out",
                             str(tmp_path / "single"), "--quiet"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "genrec", "train", "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    w1, w2 = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k} differs")
    m1 = json.loads((tmp_path / "single" / "metrics.json").read_text())["metrics"]["hr@10"]["mean"]
    m2 = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["metrics"]["hr@10"]["mean"]
    assert m1 == pytest.approx(m2)


def test_all_windows_cover_every_target_once():
    from genrec.data import Jagged, leave_one_out
    from genrec.train.trainer import training_windows

    ds = tiny_dataset()
    split = leave_one_out(ds)
    last, _ = training_windows(split, 4, "last")
    every, _ = training_windows(split, 4, "all")
    assert last.lengths.max() <= 5 and every.lengths.max() <= 5
    # Targets (all but each window's first item) are exactly each training sequence's items after its first.
    targets = sorted(int(v) for i in range(len(every)) for v in every.row(i)[1:])
    expected = sorted(int(v) for i in range(len(split.train)) for v in split.train.row(i)[1:])
    assert targets == expected
    assert isinstance(every, Jagged) and len(every) > len(last)


def test_existing_run_is_never_overwritten(tmp_path):
    from genrec.errors import GenrecError

    ds = tiny_dataset()
    Trainer(config(epochs=1), tmp_path, dataset=ds, show_progress=False).fit()
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(GenrecError, match="--resume"):
        Trainer(config(epochs=1), tmp_path, dataset=ds, show_progress=False).fit()
    assert (tmp_path / "metrics.json").read_bytes() == before
