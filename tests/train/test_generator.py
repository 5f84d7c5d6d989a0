"""Generator training: sliding windows, a tiny end-to-end train + decode that recovers a deterministic next
item, exact resume, honest ranking of beams (targets outside them are misses), config errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from genrec.cli import app
from genrec.data import Jagged, make_split, prepare
from genrec.data.splits import EvalCases
from genrec.errors import ConfigError, DataError
from genrec.semantic_ids import SemanticIds
from genrec.train.config import RunConfig
from genrec.train.generator import GeneratorTrainer, load_generator, rank_beams, sliding_windows

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


def config(**train) -> RunConfig:
    base = {"epochs": 8, "batch_size": 32, "lr": 0.01, "warmup_steps": 10, "windows": "all", "seed": 0}
    base.update(train)
    return RunConfig.model_validate({
        "dataset": "follow",
        "model": {"name": "tiger", "dim": 32, "heads": 2, "head_dim": 16, "ffn_dim": 64, "encoder_layers": 1,
                  "decoder_layers": 1, "max_len": 5, "dropout": 0.0, "beam_width": 10},
        "train": base, "eval": {"n_boot": 20, "ks": [1, 5, 10, 50]}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = follow_dataset()
    run = tmp_path_factory.mktemp("tiger") / "run"
    result = GeneratorTrainer(config(), run, dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                              show_progress=False).fit()
    return ds, run, result


def test_sliding_windows_predict_every_training_item_from_its_capped_history():
    ds = prepare(pa.table({"user": [1] * 7 + [2] * 4, "item": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}), name="w")
    split = make_split(ds, "loo")  # train: user 1 -> items 1..5, user 2 -> items 8, 9
    hist, targets = sliding_windows(split, max_len=3)
    pairs = [(ds.items.decode(row), ds.items.decode([t])[0])
             for row, t in zip(hist.to_lists(), targets.tolist(), strict=True)]
    assert sorted((tuple(h), t) for h, t in pairs) == sorted([
        ((1,), 2), ((1, 2), 3), ((1, 2, 3), 4), ((2, 3, 4), 5), ((8,), 9)])
    last_h, last_t = sliding_windows(split, max_len=3, windows="last")
    assert sorted(ds.items.decode(last_t)) == [5, 9]
    assert sorted(len(r) for r in last_h.to_lists()) == [1, 3]


def test_tiny_end_to_end_learns_the_next_item(trained):
    ds, run, result = trained
    hist = result.history
    assert hist[-1]["loss"] < hist[0]["loss"] / 3
    assert result.best_valid > 0.5
    ev = result.test
    assert ev.mean("hr@10") > 0.8  # chance is 10 / 40
    assert ev.info["invalid_ids"] == 0 and ev.info["beam_width"] == 10
    assert "hr@50" not in ev.summary and ev.info["ks_dropped_beyond_beam"] == [50]
    for name in ("metrics.json", "per_user.parquet", "report.md", "model.safetensors", "model.json",
                 "items.parquet", "metrics.jsonl", "checkpoint/trainer.json"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(hist)
    assert "valid_ndcg@10" in hist[0] and "valid_decode_ms_per_user" in hist[0]


def test_saved_generator_decodes_like_the_trained_one(trained):
    ds, run, result = trained
    loaded = load_generator(run)
    hist = torch.tensor([[0, 3, 4], [7, 8, 9]])
    a, b = result.model.recommend(hist, k=5), loaded.recommend(hist, k=5)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert json.loads((run / "model.json").read_text())["sizes"] == [4, 4, 4]


def test_resume_continues_to_the_same_result(tmp_path):
    ds = follow_dataset(60)
    sids = semantic_ids(ds.n_items)
    cfg = config(epochs=3)
    full = GeneratorTrainer(cfg, tmp_path / "full", dataset=ds, semantic_ids=sids, show_progress=False).fit()

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GeneratorTrainer(cfg, tmp_path / "cut", dataset=ds, semantic_ids=sids,
                         show_progress=False).fit(on_epoch_end=interrupt)
    resumed = GeneratorTrainer(cfg, tmp_path / "cut", dataset=ds, semantic_ids=sids,
                               show_progress=False).fit(resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert resumed.test.summary == full.test.summary
    w_full = load_file(tmp_path / "full" / "model.safetensors")
    w_cut = load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(v, w_cut[k]) for k, v in w_full.items())


def test_targets_outside_the_beams_are_misses_at_every_k():
    # Two beams each; case 0's target is in its beams (second place), case 1's is not, and one of case 1's two
    # beam items is in its history (excluded), so only one finite score is left: the tie order among the -inf
    # items would have put the target (id 2) at rank 1 < 5.
    cases = EvalCases(np.array([1, 2]), Jagged.from_lists([[9], [7]]), np.array([4, 2]))
    items = np.array([[3, 4], [7, 5]])
    scores = np.array([[-0.1, -0.5], [-0.2, -0.3]], dtype=np.float32)
    r = rank_beams(items, scores, cases, n_items=10, ks=[1, 2, 5])
    assert r.ranks.tolist() == [1, 10]
    assert r.per_case["hr@2"].tolist() == [1.0, 0.0] and r.per_case["hr@5"].tolist() == [1.0, 0.0]
    assert r.per_case["mrr"].tolist() == [0.5, 0.0]
    assert r.info["targets_outside_beams"] == 1


def test_config_errors(tmp_path):
    ds = follow_dataset(20)
    with pytest.raises(ConfigError, match="full_ce"):
        GeneratorTrainer(config(loss="sampled_softmax"), tmp_path / "a", dataset=ds)
    with_features = RunConfig.model_validate({**config().model_dump(), "features": {"content": "emb"}})
    with pytest.raises(ConfigError, match="features"):
        GeneratorTrainer(with_features, tmp_path / "f", dataset=ds)
    bad_k = config().model_copy(update={"eval": config().eval.model_copy(update={"select_metric": "ndcg@20"})})
    with pytest.raises(ConfigError, match="beam_width"):
        GeneratorTrainer(bad_k, tmp_path / "b", dataset=ds, semantic_ids=semantic_ids(ds.n_items)).fit()
    with pytest.raises(DataError, match="no semantic IDs"):
        GeneratorTrainer(config(), tmp_path / "c", dataset=ds, show_progress=False).fit()  # default folder absent
    with pytest.raises(DataError, match="30 items"):
        GeneratorTrainer(config(), tmp_path / "e", dataset=ds, semantic_ids=semantic_ids(30)).fit()
    small = semantic_ids(30).save(tmp_path / "sids")
    cfg = config().model_copy(update={"model": config().model.model_copy(update={"semantic_ids": str(small)})})
    with pytest.raises(DataError, match="30 items"):
        GeneratorTrainer(cfg, tmp_path / "d", dataset=ds, show_progress=False).fit()


def test_cli_train_dispatches_to_the_generator(tmp_path):
    ds = follow_dataset(40)
    ds.save(tmp_path / "data")
    sids = semantic_ids(ds.n_items).save(tmp_path / "sids")
    raw = config(epochs=1).model_dump(mode="json")
    raw["dataset"] = str(tmp_path / "data")
    raw["model"]["semantic_ids"] = str(sids)
    (tmp_path / "tiger.yaml").write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "tiger.yaml"), "--out", str(tmp_path / "run"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "tiger" in res.output and "hr@10" in res.output
    assert (tmp_path / "run" / "per_user.parquet").is_file()
