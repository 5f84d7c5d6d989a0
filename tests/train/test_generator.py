"""Generator training: sliding windows, a tiny end-to-end train + decode that recovers a deterministic next
item, exact resume, honest ranking of beams (targets outside them are misses), config errors, the CLI, and
cold mixing (the cold split's report with it on, and re-evaluating a trained run at other epsilons)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from genrec.cli import app
from genrec.data import Jagged, make_split, prepare
from genrec.data.splits import EvalCases
from genrec.errors import ConfigError, DataError, GenrecError
from genrec.nn.beam import cold_quota
from genrec.semantic_ids import SemanticIds
from genrec.train.config import RunConfig
from genrec.train.generator import (
    GeneratorTrainer,
    load_generator,
    rank_beams,
    reevaluate_cold_mixing,
    sliding_windows,
    unseen_items,
)

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


def test_item_token_encoder_learns_and_saves_its_layout(tmp_path):
    ds = follow_dataset()
    cfg = config()
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoder_tokens": "items"})})
    result = GeneratorTrainer(cfg, tmp_path / "run", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                              show_progress=False).fit()
    assert result.test.mean("hr@10") > 0.8 and result.test.info["invalid_ids"] == 0
    loaded = load_generator(tmp_path / "run")
    assert loaded.config.encoder_tokens == "items"
    hist = torch.tensor([[0, 3, 4], [7, 8, 9]])
    assert torch.equal(result.model.recommend(hist, k=5)[0], loaded.recommend(hist, k=5)[0])


def test_saved_generator_decodes_like_the_trained_one(trained):
    ds, run, result = trained
    loaded = load_generator(run)
    hist = torch.tensor([[0, 3, 4], [7, 8, 9]])
    a, b = result.model.recommend(hist, k=5), loaded.recommend(hist, k=5)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert json.loads((run / "model.json").read_text())["sizes"] == [4, 4, 4]


def test_refit_trains_on_validation_items_and_refit_epochs_skips_selection(tmp_path):
    ds = follow_dataset(60)
    sids = semantic_ids(ds.n_items)
    full = GeneratorTrainer(config(epochs=3, refit=True), tmp_path / "full", dataset=ds, semantic_ids=sids,
                            show_progress=False).fit()
    refit = json.loads((tmp_path / "full" / "metrics.json").read_text())["info"]["refit"]
    plain_windows = len(sliding_windows(make_split(ds, "loo"), 5, "all")[1])
    assert refit["epochs"] == refit["selected_epoch"] == full.best_epoch and not refit["selection_skipped"]
    assert refit["targets"] == plain_windows + len(make_split(ds, "loo").valid)  # one more window per user
    assert len((tmp_path / "full" / "refit" / "metrics.jsonl").read_text().splitlines()) == full.best_epoch
    # skipping the selection with the same epoch count trains the same refit model
    cfg = config(epochs=3, refit=True, refit_epochs=full.best_epoch)
    skipped = GeneratorTrainer(cfg, tmp_path / "skip", dataset=ds, semantic_ids=sids, show_progress=False).fit()
    assert skipped.history == [] and skipped.test.summary == full.test.summary
    assert json.loads((tmp_path / "skip" / "metrics.json").read_text())["info"]["refit"]["selection_skipped"]
    # cut during the skipped-selection refit, --resume continues it to the same model
    import genrec.train.generator as generator

    original = generator.GeneratorTrainer._say

    def stop_in_refit(self, record):
        original(self, record)
        if record.get("refit") and record["epoch"] == 1:
            raise KeyboardInterrupt

    generator.GeneratorTrainer._say = stop_in_refit
    try:
        with pytest.raises(KeyboardInterrupt):
            GeneratorTrainer(cfg, tmp_path / "cut", dataset=ds, semantic_ids=sids, show_progress=False).fit()
    finally:
        generator.GeneratorTrainer._say = original
    resumed = GeneratorTrainer(cfg, tmp_path / "cut", dataset=ds, semantic_ids=sids, show_progress=False).fit(
        resume=True)
    assert resumed.test.summary == full.test.summary
    with pytest.raises(Exception, match="refit_epochs needs"):
        config(epochs=3, refit_epochs=2)


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


def twin_ids(n_items: int) -> SemanticIds:
    """Items 2j-1 and 2j share their first two codes (a final code 0 / 1 tells them apart)."""
    idx = np.arange(n_items)
    codes = np.stack([idx // 8, (idx // 2) % 4, idx % 2], axis=1)
    return SemanticIds(np.concatenate([np.full((1, 3), -1), codes]), [int(codes[:, 0].max()) + 1, 4, 2],
                       {"method": "twins"})


@pytest.fixture(scope="module")
def cold_mixed(tmp_path_factory):
    ds = follow_dataset()
    raw = config(epochs=3).model_dump()
    raw["model"]["cold_mixing"] = {"epsilon": 0.3}
    cfg = RunConfig.model_validate({**raw, "split": "cold", "cold_start": {"fraction": 0.2, "seed": 1}})
    run = tmp_path_factory.mktemp("tiger-cold") / "run"
    result = GeneratorTrainer(cfg, run, dataset=ds, semantic_ids=twin_ids(ds.n_items), show_progress=False).fit()
    return ds, cfg, run, result


def test_cold_split_reports_cold_cases_with_mixing_on(cold_mixed):
    ds, cfg, run, result = cold_mixed
    info = result.test.info
    split = make_split(ds, "cold", fraction=0.2, seed=1)
    unseen = unseen_items(split, ds.n_items)
    assert set(split.cold_items.tolist()) <= set(unseen.tolist())
    mixing = info["cold_mixing"]
    assert mixing["epsilon"] == 0.3 and mixing["prefix"] == 2 and mixing["cold_items"] == len(unseen)
    assert 0 < mixing["cold_per_list"]["@10"] <= cold_quota(0.3, 10)
    assert mixing["cold_per_list"]["@5"] <= cold_quota(0.3, 5)
    assert set(mixing["unmixed"]) >= {"hr@10", "ndcg@10"}
    assert info["invalid_ids"] == 0 and "cold mixing" in info["protocol"]
    report = info["cold_start"]
    assert report["cold"]["cases"] == int(split.test_cold.sum()) and "hr@10" in report["warm"]
    assert 0 <= report["cold"]["hr@10"]["mean"] <= 1
    loaded = load_generator(run)  # the cold marks and the mixing travel with the model
    assert loaded.cold_items().tolist() == unseen.tolist() and loaded.config.cold_mixing.epsilon == 0.3


def test_reevaluating_a_trained_run_at_other_epsilons(cold_mixed, tmp_path):
    ds, cfg, run, result = cold_mixed
    evs = reevaluate_cold_mixing(run, [0.0, 0.3, 1.0], prefixes=[None, 1], dataset=ds, show_progress=False)
    assert set(evs) == {(e, p) for e in (0.0, 0.3, 1.0) for p in (2, 1)}
    assert evs[0.3, 2].summary == result.test.summary  # the same beams, mixed the same way
    assert evs[0.3, 2].info["cold_cases"]["hr@10"] == result.test.info["cold_start"]["cold"]["hr@10"]
    assert evs[0.3, 2].info["warm_cases"]["hr@10"] == result.test.info["cold_start"]["warm"]["hr@10"]
    assert evs[0.3, 2].info["test_estimate"]["hr@10"] == pytest.approx(result.test.mean("hr@10"))
    plain = evs[0.0, 2]
    assert "cold_mixing" not in plain.info and plain.summary == evs[0.0, 1].summary
    assert plain.mean("hr@10") == pytest.approx(result.test.info["cold_mixing"]["unmixed"]["hr@10"])
    assert plain.info["cold_cases"]["test_cases"] == result.test.info["cold_start"]["cold"]["cases"]
    per_list = {key: ev.info["cold_mixing"]["cold_per_list"]["@10"] for key, ev in evs.items() if key[0] > 0}
    assert per_list[0.3, 2] <= cold_quota(0.3, 10) and per_list[1.0, 2] >= per_list[0.3, 2]
    assert per_list[1.0, 1] >= per_list[1.0, 2]  # a shorter prefix has more candidates
    assert evs[1.0, 1].info["cold_mixing"]["prefix"] == 1
    sampled = reevaluate_cold_mixing(run, [0.3], dataset=ds, sample=25, show_progress=False)[0.3, 2]
    assert len(sampled.per_user) == 25 and sampled.info["evaluated_cases"] == 25
    assert sum(sampled.info[p]["evaluated"] for p in ("cold_cases", "warm_cases")) == 25
    n_cold = plain.info["cold_cases"]["test_cases"]
    strat = reevaluate_cold_mixing(run, [0.3], dataset=ds, sample=10, all_cold_cases=True,
                                   show_progress=False)[0.3, 2]
    assert strat.info["cold_cases"]["evaluated"] == n_cold and strat.info["warm_cases"]["evaluated"] == 10
    assert strat.info["cold_cases"]["hr@10"] == evs[0.3, 2].info["cold_cases"]["hr@10"]  # every cold case
    for ev in (sampled, strat):  # each part weighs its share of the test set
        c, w = ev.info["cold_cases"], ev.info["warm_cases"]
        expected = (c["hr@10"]["mean"] * n_cold + w["hr@10"]["mean"] * w["test_cases"]) / (n_cold + w["test_cases"])
        assert ev.info["test_estimate"]["hr@10"] == pytest.approx(expected)
    half = tmp_path / "half"  # weights saved in fp16 load in float32
    half.mkdir()
    for name in ("config.json", "model.json"):
        (half / name).write_bytes((run / name).read_bytes())
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(run / "model.safetensors").items()},
              half / "model.safetensors")
    assert next(load_generator(half).parameters()).dtype == torch.float32
    assert reevaluate_cold_mixing(half, [0.3], dataset=ds, show_progress=False)[0.3, 2].info["invalid_ids"] == 0
    (half / "model.safetensors").unlink()
    with pytest.raises(GenrecError, match="no model.safetensors"):
        reevaluate_cold_mixing(half, [0.3], dataset=ds)
