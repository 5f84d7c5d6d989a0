"""Training the decoder-only generator (hstu-gen): a tiny end-to-end run that learns a deterministic next item,
its run files and a reload that decodes alike, the trainer chosen from a config, and config errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from typer.testing import CliRunner

from genrec.cli import app
from genrec.data import prepare
from genrec.errors import ConfigError, GenrecError
from genrec.semantic_ids import SemanticIds
from genrec.train import trainer_class
from genrec.train.config import RunConfig
from genrec.train.hstu_generator import HSTUGeneratorTrainer, load_hstu_generator

N_ITEMS = 40


def follow_dataset(n_users: int = 150, seed: int = 0):
    """The next item is a fixed permutation of the last one: a model that learns it reaches HR@10 ~ 1."""
    rng = np.random.default_rng(seed)
    nxt = rng.permutation(N_ITEMS) + 1
    rows = []
    for u in range(n_users):
        item = int(rng.integers(1, N_ITEMS + 1))
        for _ in range(int(rng.integers(5, 10))):
            rows.append((u, item))
            item = int(nxt[item - 1])
    return prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="follow")


def semantic_ids(n_items: int, seed: int = 0) -> SemanticIds:
    flat = np.random.default_rng(seed).choice(64, n_items, replace=False)
    codes = np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)
    return SemanticIds(np.concatenate([np.full((1, 3), -1), codes]), [4, 4, 4], {"method": "random"})


def config(model: dict | None = None, **train) -> RunConfig:
    base = {"epochs": 12, "batch_size": 16, "lr": 0.01, "warmup_steps": 5, "windows": "all", "seed": 0}
    return RunConfig.model_validate({
        "dataset": "follow",
        "model": {"name": "hstu-gen", "dim": 32, "blocks": 1, "heads": 2, "max_len": 5, "dropout": 0.0,
                  "head_hidden": 32, "beam_width": 10, **(model or {})},
        "train": base | train, "eval": {"n_boot": 20, "ks": [1, 5, 10, 50]}})


@pytest.mark.parametrize("model", [{}, {"item_id": False, "item_loss": 0.5}])
def test_tiny_end_to_end_learns_the_next_item_and_reloads(tmp_path, model):
    torch.set_num_threads(1)
    ds = follow_dataset()
    cfg = config(model)
    assert trainer_class(cfg) is HSTUGeneratorTrainer
    result = HSTUGeneratorTrainer(cfg, tmp_path / "run", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                                  show_progress=False).fit()
    hist, ev = result.history, result.test
    assert hist[-1]["loss"] < hist[0]["loss"] / 2
    assert ev.mean("hr@10") > 0.8  # chance is 10 / 40
    assert ev.info["invalid_ids"] == 0 and "hr@50" not in ev.summary
    for name in ("metrics.json", "config.json", "model.safetensors", "model.json", "items.parquet"):
        assert (tmp_path / "run" / name).is_file(), name
    assert json.loads((tmp_path / "run" / "model.json").read_text())["name"] == "hstu-gen"
    loaded = load_hstu_generator(tmp_path / "run")
    history = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    a, b = result.model.recommend(history, k=5), loaded.recommend(history, k=5)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.loss"):
        HSTUGeneratorTrainer(config(loss="sampled_softmax"), tmp_path)
    with pytest.raises(ValueError, match="train.refit"):
        config(refit=True)
    with pytest.raises(ConfigError, match="beam_width"):
        HSTUGeneratorTrainer(config({"beam_width": 5}), tmp_path, dataset=follow_dataset(20),
                             semantic_ids=semantic_ids(N_ITEMS), show_progress=False).fit()
    (tmp_path / "tiger").mkdir()
    (tmp_path / "tiger" / "model.json").write_text(json.dumps({"name": "tiger"}))
    with pytest.raises(GenrecError, match="not hstu-gen"):
        load_hstu_generator(tmp_path / "tiger")


def test_cli_train_dispatches_to_hstu_gen(tmp_path):
    ds = follow_dataset(40)
    ds.save(tmp_path / "data")
    raw = config(epochs=1).model_dump(mode="json")
    raw["dataset"] = str(tmp_path / "data")
    raw["model"]["semantic_ids"] = str(semantic_ids(ds.n_items).save(tmp_path / "sids"))
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "gen.yaml"), "--out", str(tmp_path / "run"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "hstu-gen" in res.output and "hr@10" in res.output
    assert json.loads((tmp_path / "run" / "model.json").read_text())["name"] == "hstu-gen"
