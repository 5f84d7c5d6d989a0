"""``split: cold`` runs (test metrics on held-out-item cases and on the rest) for ID models and the generator,
and ``train.device`` (validated, resolved, and the trie following the model to its device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tests.train.test_generator import config as tiger_config
from tests.train.test_generator import follow_dataset, semantic_ids
from tests.train.test_trainer import config as id_config
from tests.train.test_trainer import tiny_dataset

from genrec.data import make_split
from genrec.errors import ConfigError
from genrec.nn.beam import PrefixTrie
from genrec.train.config import RunConfig
from genrec.train.generator import GeneratorTrainer
from genrec.train.loop import resolve_device
from genrec.train.trainer import Trainer, training_windows


def cold(cfg: RunConfig, fraction: float = 0.2) -> RunConfig:
    return RunConfig.model_validate({**cfg.model_dump(), "split": "cold",
                                     "cold_start": {"fraction": fraction, "seed": 1}})


def check_cold_report(info: dict, n_test: int, n_items: int, fraction: float = 0.2) -> None:
    report = info["cold_start"]
    assert report["held_out_items"] == round(fraction * n_items)
    assert report["cold"]["cases"] + report["warm"]["cases"] == n_test
    assert report["cold"]["cases"] > 0
    for part in ("cold", "warm"):
        m = report[part]["hr@10"]
        assert 0.0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 1.0


def test_cold_split_keeps_held_out_items_out_of_training_windows():
    ds = tiny_dataset()
    split = make_split(ds, "cold", fraction=0.2, seed=1)
    windows, _ = training_windows(split, 12, "all")
    assert not np.isin(windows.values, split.cold_items).any()
    assert np.isin(split.test.targets[split.test_cold], split.cold_items).all()


def test_id_model_cold_run_reports_cold_and_warm_cases(tmp_path):
    ds = tiny_dataset()
    cfg = cold(id_config(epochs=2))
    result = Trainer(cfg, tmp_path / "run", dataset=ds, show_progress=False).fit()
    check_cold_report(result.test.info, len(result.test.per_user), ds.n_items)
    assert result.test.info["device"] == "cpu"


def test_generator_cold_run_reports_cold_and_warm_cases(tmp_path):
    ds = follow_dataset()
    cfg = cold(tiger_config(epochs=2))
    result = GeneratorTrainer(cfg, tmp_path / "run", dataset=ds, semantic_ids=semantic_ids(ds.n_items),
                              show_progress=False).fit()
    check_cold_report(result.test.info, len(result.test.per_user), ds.n_items)
    assert result.test.info["invalid_ids"] == 0


def test_cold_fraction_is_validated():
    with pytest.raises(ValidationError, match="fraction"):
        RunConfig.model_validate({**id_config().model_dump(), "split": "cold", "cold_start": {"fraction": 0.9}})


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", ""])
def test_device_names_are_validated(bad):
    with pytest.raises(ValidationError, match="device"):
        id_config(device=bad)


def test_device_resolution_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_trie_moves_its_tables_and_still_finds_every_item():
    codes = np.array([[0, 1], [1, 0], [1, 1]])
    trie = PrefixTrie(codes, [2, 2]).to("cpu")
    assert trie.device == torch.device("cpu")
    assert trie.lookup(torch.as_tensor(codes)).tolist() == [1, 2, 3]
    paths, items = trie.paths()
    assert sorted(map(tuple, paths.tolist())) == sorted(map(tuple, codes.tolist()))


def test_time_schedule_needs_a_budget_and_decays_over_it(tmp_path):
    with pytest.raises(ValidationError, match="max_minutes"):
        id_config(schedule_by="time")
    cfg = id_config(schedule_by="time", max_minutes=0.02, epochs=1000, patience=1000, warmup_steps=0)
    result = Trainer(cfg, tmp_path / "run", dataset=tiny_dataset(), show_progress=False).fit()
    assert result.history[-1]["elapsed_s"] >= 1.2  # stopped by the budget, not by epochs
    # and the decay had finished by then (the last step may read the clock a few microseconds before the budget)
    assert result.history[-1]["lr"] <= 1e-3 * cfg.train.lr
    assert result.test.info["stopped"].startswith("wall-time budget")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_id_model_trains_and_ranks_on_cuda_like_on_cpu(tmp_path):
    from genrec.eval import rank_cases
    from genrec.train.trainer import build_model

    ds = tiny_dataset()
    raw = cold(id_config(epochs=2, device="cuda")).model_dump()
    raw["train"]["tf32"] = False  # full float32, to compare with the CPU
    result = Trainer(RunConfig.model_validate(raw), tmp_path / "run", dataset=ds, show_progress=False).fit()
    assert not torch.backends.cuda.matmul.allow_tf32
    assert result.test.info["device"].startswith("cuda")
    check_cold_report(result.test.info, len(result.test.per_user), ds.n_items)
    split = make_split(ds, "loo")
    cpu_model = build_model(id_config(), ds.n_items)
    cpu_model.load_state_dict(result.model.state_dict())
    on_gpu = rank_cases(result.model.eval(), split.test, ds.n_items, ks=[10], show_progress=False)
    on_cpu = rank_cases(cpu_model.eval(), split.test, ds.n_items, ks=[10], show_progress=False)
    assert (on_gpu.ranks == on_cpu.ranks).mean() > 0.95  # float rounding may swap near-ties


@cuda
def test_tf32_switch_reaches_cuda_matmuls():
    resolve_device("cuda", tf32=False)
    assert not torch.backends.cuda.matmul.allow_tf32
    resolve_device("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@cuda
def test_generator_trains_and_decodes_valid_ids_on_cuda(tmp_path):
    ds = follow_dataset()
    result = GeneratorTrainer(cold(tiger_config(epochs=2, device="cuda")), tmp_path / "run", dataset=ds,
                              semantic_ids=semantic_ids(ds.n_items), show_progress=False).fit()
    assert result.test.info["device"].startswith("cuda")
    assert result.test.info["invalid_ids"] == 0
    check_cold_report(result.test.info, len(result.test.per_user), ds.n_items)


def test_masked_full_ce_equals_the_softmax_over_known_items_only():
    from genrec.nn.losses import full_cross_entropy, sampled_softmax

    torch.manual_seed(0)
    h, table = torch.randn(6, 4), torch.randn(9, 4)
    targets = torch.tensor([1, 2, 3, 1, 5, 2])
    known = torch.tensor([False, True, True, True, False, True, False, True, True])
    masked = full_cross_entropy(h, targets, table, known=known)
    keep = known.nonzero()[:, 0]
    remap = torch.full((9,), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    reduced = torch.nn.functional.cross_entropy(h @ table[keep].T, remap[targets], reduction="sum")
    assert torch.allclose(masked, reduced, atol=1e-5)
    # sampled softmax: a negative outside `known` is dropped, so with no known item the positive stands alone
    nothing = torch.zeros(9, dtype=torch.bool)
    assert sampled_softmax(h, targets, table, 4, known=nothing).item() == 0.0
    assert sampled_softmax(h, targets, table, 4, known=~nothing).item() > 0.0


def test_cold_run_never_trains_held_out_items_as_negatives(tmp_path):
    ds = tiny_dataset()
    cfg = cold(id_config(epochs=2, weight_decay=0.0))
    trainer = Trainer(cfg, tmp_path / "run", dataset=ds, show_progress=False)
    torch.manual_seed(cfg.train.seed)
    result = trainer.fit()
    split = make_split(ds, "cold", fraction=0.2, seed=1)
    init = build_initial(cfg, ds)
    held = torch.as_tensor(split.cold_items)
    # AdamW without weight decay moves a row only if it ever had a gradient: held-out rows never do
    assert torch.equal(result.model.item_emb.weight.detach().cpu()[held], init.item_emb.weight[held])
    assert not torch.equal(result.model.item_emb.weight.detach().cpu()[1:4], init.item_emb.weight[1:4])


def build_initial(cfg: RunConfig, ds):
    from genrec.train.trainer import build_model, seed_everything

    seed_everything(cfg.train.seed)
    return build_model(cfg, ds.n_items)


def test_mask_unseen_is_refused_for_the_generator(tmp_path):
    cfg = RunConfig.model_validate({**tiger_config().model_dump(),
                                    "train": {**tiger_config().train.model_dump(), "mask_unseen": True}})
    with pytest.raises(ConfigError, match="mask_unseen"):
        GeneratorTrainer(cfg, tmp_path / "run")
