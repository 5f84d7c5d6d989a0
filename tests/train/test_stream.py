"""Streamed training: the loader yields exactly the in-memory windows, processes partition every global step,
a saved position resumes the exact batches, streaming from a prepared folder trains like streaming the same
dataset from memory and, with one shard and one lane, like the in-memory path; mid-epoch resume is exact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from genrec.data import make_split, prepare
from genrec.data.stream import (
    CaseCollector,
    MemoryShards,
    WindowStream,
    concat_jagged,
    sample_cases,
    split_shard,
    training_windows,
)
from genrec.errors import ConfigError, GenrecError
from genrec.train.config import RunConfig
from genrec.train.trainer import Trainer

torch.set_num_threads(1)


def timed_dataset(n_users: int = 60, n_items: int = 40, seed: int = 0):
    """Users walk a ring of items (learnable next item) at increasing, user-specific times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        item, t = int(rng.integers(0, n_items)), int(rng.integers(0, 1000))
        for _ in range(int(rng.integers(3, 17))):
            rows.append((f"u{u}", item + 1, t))
            item = (item + int(rng.integers(1, 3))) % n_items
            t += int(rng.integers(1, 200))
    table = pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows], "timestamp": [r[2] for r in rows]})
    return prepare(table, name="timed")


def write_prepared(ds, folder: Path, shards: int) -> Path:
    """The prepared layout (format 2) written directly from its documented contract: two files per shard with
    rows in scrambled order (readers sort by user and position)."""
    lengths = ds.sequences.lengths
    user_idx = np.repeat(np.arange(1, ds.n_users + 1), lengths)
    pos = np.arange(len(user_idx)) - np.repeat(ds.sequences.offsets[:-1], lengths)
    events = pa.table({"user_idx": user_idx, "pos": pos.astype(np.int32), "item_idx": ds.sequences.values,
                       "timestamp": ds.timestamps.values})
    rng = np.random.default_rng(1)
    shard = (user_idx.astype(np.uint64) * np.uint64(2654435761) % np.uint64(2**32) % np.uint64(shards)).astype(int)
    for k in range(shards):
        rows = rng.permutation(np.flatnonzero(shard == k))
        (folder / "events" / f"shard={k}").mkdir(parents=True)
        for j, part in enumerate(np.array_split(rows, 2)):
            pq.write_table(events.take(pa.array(part)), folder / "events" / f"shard={k}" / f"part-{j}.parquet")
    pq.write_table(pa.table({"user_idx": np.arange(1, ds.n_users + 1), "raw_id": ds.users.raw}),
                   folder / "users.parquet")
    counts = np.bincount(ds.sequences.values, minlength=ds.n_items + 1)[1:]
    pq.write_table(pa.table({"item_idx": np.arange(1, ds.n_items + 1), "raw_id": ds.items.raw, "count": counts}),
                   folder / "items.parquet")
    ts = ds.timestamps.values
    manifest = {"format": "genrec-prepared", "format_version": 2, "name": ds.name, "engine": "memory",
                "shards": shards, "users": ds.n_users, "items": ds.n_items, "interactions": len(user_idx),
                "columns": events.column_names, "dedup": False, "kcore": None, "source": "test", "meta": {},
                "temporal": {"valid_start": float(np.quantile(ts, 0.8)), "test_start": float(np.quantile(ts, 0.9))}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def rows_of(windows, ts) -> Counter:
    return Counter((tuple(windows.row(i).tolist()), tuple(ts.row(i).tolist())) for i in range(len(windows)))


def joined(parts) -> tuple:
    """One step's lane batches as one (windows, timestamps) pair."""
    return concat_jagged([w for w, _ in parts]), concat_jagged([t for _, t in parts])


def epoch_steps(s: WindowStream, epoch: int, counts, start=None) -> list[tuple]:
    return [joined(parts) for parts in s.epoch(epoch, counts, start)]


def stream(ds, shards: int = 5, lanes: int = 3, batch: int = 6, **kw) -> WindowStream:
    args = {"lanes": lanes, "batch_size": batch, "seed": 7, "max_len": 5, "windows": "all", "split": "loo", **kw}
    return WindowStream(MemoryShards(ds, shards), **args)


@pytest.mark.parametrize("split", ["loo", "temporal"])
@pytest.mark.parametrize("windows", ["last", "all"])
def test_streamed_epoch_yields_every_in_memory_window_once(split, windows):
    ds = timed_dataset()
    whole = make_split(ds, split)
    cuts = whole.info if split == "temporal" else None
    expected = rows_of(*training_windows(whole, 5, windows))
    s = stream(ds, split=split, windows=windows, cuts=cuts)
    counts = s.survey()
    assert counts.sum() == sum(expected.values())
    lane_batches = list(s.epoch(2, counts))
    assert all(len(w) <= 2 for parts in lane_batches for w, _ in parts)  # batch_size / lanes each
    steps = [joined(parts) for parts in lane_batches]
    assert len(steps) == s.steps_per_epoch(counts) and all(len(w) <= 6 for w, _ in steps)
    got = Counter()
    for w, t in steps:
        got += rows_of(w, t)
    assert got == expected
    again = epoch_steps(s, 2, counts)
    assert all(np.array_equal(a[0].values, b[0].values) for a, b in zip(steps, again, strict=True))
    other = epoch_steps(s, 3, counts)
    assert any(not np.array_equal(a[0].values, b[0].values) for a, b in zip(steps, other, strict=False))


@pytest.mark.parametrize("split", ["loo", "temporal"])
def test_shard_splits_give_the_in_memory_cases(split):
    ds = timed_dataset()
    whole = make_split(ds, split)
    cuts = whole.info if split == "temporal" else None
    shards = MemoryShards(ds, 4)
    for part in ("valid", "test"):
        full = CaseCollector()
        capped = CaseCollector(cap=4)
        for k in range(4):
            cases = split_shard(shards.read_shard(k), split, cuts).cases(part)
            full.add(cases)
            capped.add(cases)
        ref = whole.cases(part)
        got = full.cases()
        assert np.array_equal(got.users, ref.users) and np.array_equal(got.targets, ref.targets)
        assert got.history.to_lists() == ref.history.to_lists()
        assert got.history_timestamps.to_lists() == ref.history_timestamps.to_lists()
        assert capped.cases().history.to_lists() == ref.history.tail(4).to_lists()


def test_validation_sample_is_fixed_and_independent_of_the_sharding():
    ds = timed_dataset(n_users=80)
    valid = make_split(ds, "loo").valid
    ref = sample_cases(valid, 15, seed=3)
    assert len(ref) == 15 and np.all(np.diff(ref.users) > 0)
    assert set(ref.users) <= set(valid.users)
    for shards in (1, 3, 7):
        source = MemoryShards(ds, shards)
        got = CaseCollector(15, seed=3)
        for k in reversed(range(shards)):
            got.add(split_shard(source.read_shard(k)).valid)
        assert np.array_equal(got.cases().users, ref.users)
        assert got.cases().history.to_lists() == ref.history.to_lists()
    assert not np.array_equal(sample_cases(valid, 15, seed=4).users, ref.users)
    assert sample_cases(valid, 10_000, seed=3) is valid


def test_processes_partition_every_global_step():
    ds = timed_dataset()
    one = stream(ds, shards=6, lanes=4, batch=8)
    counts = one.survey()
    steps = epoch_steps(one, 1, counts)
    for world in (2, 4):
        ranks = [list(stream(ds, shards=6, lanes=4, batch=8, rank=r, world=world).epoch(1, counts))
                 for r in range(world)]
        assert all(len(r) == len(steps) for r in ranks)
        for s, (w, t) in enumerate(steps):
            union = Counter()
            for r in ranks:
                union += sum((rows_of(*part) for part in r[s]), Counter())
            assert union == rows_of(w, t)


def test_a_saved_position_resumes_the_exact_batches():
    ds = timed_dataset()
    s = stream(ds, shards=5, lanes=2, batch=4)
    counts = s.survey()
    steps = epoch_steps(s, 1, counts)
    for k in (0, 3, len(steps) // 2, len(steps) - 1):
        position = json.loads(json.dumps(s.position(1, k, counts)))  # as stored in trainer.json
        rest = epoch_steps(s, 1, counts, position)
        assert len(rest) == len(steps) - k
        assert all(np.array_equal(a[0].values, b[0].values) and np.array_equal(a[0].offsets, b[0].offsets)
                   for a, b in zip(rest, steps[k:], strict=True))
    bad = s.position(1, 3, counts)
    bad["lanes"][0][1] += 1
    with pytest.raises(GenrecError, match="does not match"):
        next(s.epoch(1, counts, bad))
    with pytest.raises(ConfigError, match="multiple of"):
        stream(ds, lanes=3, batch=8)
    with pytest.raises(ConfigError, match="at least the number of processes"):
        stream(ds, lanes=2, batch=4, rank=0, world=3)


def config(**train) -> RunConfig:
    base = {"epochs": 3, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "seed": 3, "windows": "all"}
    base.update(train)
    return RunConfig.model_validate({
        "dataset": "timed", "model": {"name": "hstu", "dim": 16, "blocks": 1, "heads": 2, "max_len": 16,
                                      "dropout": 0.1},
        "train": base, "eval": {"n_boot": 20, "ks": [5, 10]}})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_one_shard_one_lane_streams_exactly_the_in_memory_run(tmp_path):
    ds = timed_dataset()
    memory = Trainer(config(data="memory"), tmp_path / "memory", dataset=ds, show_progress=False).fit()
    streamed = Trainer(config(data="stream", stream={"lanes": 1, "shards": 1}), tmp_path / "stream", dataset=ds,
                       show_progress=False).fit()
    assert [r["loss"] for r in streamed.history] == [r["loss"] for r in memory.history]
    assert streamed.test.summary == memory.test.summary
    assert same_weights(tmp_path / "memory", tmp_path / "stream")
    info = json.loads((tmp_path / "stream" / "metrics.json").read_text())["info"]
    assert info["data"]["mode"] == "stream" and info["cases"] == memory.test.info["cases"]


@pytest.mark.parametrize("split", ["loo", "temporal"])
def test_prepared_folder_streams_like_the_same_dataset_in_memory(tmp_path, split):
    ds = timed_dataset()
    folder = write_prepared(ds, tmp_path / "prepared", shards=5)
    cfg = config(data="stream", stream={"lanes": 2, "shards": 5}).model_copy(update={"split": split})
    from_memory = Trainer(cfg, tmp_path / "a", dataset=ds, show_progress=False).fit()
    from_folder = Trainer(cfg.model_copy(update={"dataset": str(folder)}), tmp_path / "b", show_progress=False).fit()
    assert [r["loss"] for r in from_folder.history] == [r["loss"] for r in from_memory.history]
    assert from_folder.test.summary == from_memory.test.summary
    assert same_weights(tmp_path / "a", tmp_path / "b")
    per_user_a = pq.read_table(tmp_path / "a" / "per_user.parquet")
    assert per_user_a.equals(pq.read_table(tmp_path / "b" / "per_user.parquet"))
    # the in-memory run of the same split ranks the same test cases (only the batch order differs)
    memory = Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"data": "memory"})}),
                     tmp_path / "c", dataset=ds, show_progress=False).fit()
    assert per_user_a.column("user").to_pylist() == pq.read_table(tmp_path / "c" / "per_user.parquet").column(
        "user").to_pylist()
    assert memory.test.info["cases"] == from_folder.test.info["cases"]


def test_auto_streams_a_large_prepared_folder(tmp_path):
    from genrec.train.windows import streams as _streams

    ds = timed_dataset()
    folder = str(write_prepared(ds, tmp_path / "prepared", shards=3))
    cfg = config().model_copy(update={"dataset": folder})
    assert not _streams(cfg, None)  # below the default threshold: in memory
    small = cfg.train.model_copy(update={"stream": cfg.train.stream.model_copy(update={"auto_events": 10})})
    assert _streams(cfg.model_copy(update={"train": small}), None)
    assert not _streams(cfg.model_copy(update={"train": small}), ds)  # an in-memory dataset stays in memory
    with pytest.raises(ValueError, match="stream supports split loo and temporal"):
        RunConfig.model_validate({"dataset": "x", "split": "cold", "model": {"name": "hstu"},
                                  "train": {"data": "stream"}})
    with pytest.raises(ValueError, match="valid_users applies to sasrec and hstu"):
        RunConfig.model_validate({"dataset": "x", "model": {"name": "tiger"}, "eval": {"valid_users": 5}})


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_resume_mid_epoch_is_exact(tmp_path, monkeypatch, data):
    """Checkpoint every 3 steps; a kill in the second epoch, between two checkpoints, resumes from the last one
    and ends with exactly the weights, losses and test metrics of an uninterrupted run."""
    import genrec.train.trainer as trainer

    ds = timed_dataset()
    cfg = config(data=data, checkpoint_every=3, stream={"lanes": 2, "shards": 3})
    full = Trainer(cfg, tmp_path / "full", dataset=ds, show_progress=False).fit()
    per_epoch = full.history[0]["step"]
    kill = per_epoch + 5  # the optimizer step that never happens
    last = (kill - 1) // 3 * 3  # the last checkpoint before it
    assert per_epoch < last < kill - 1 and last % per_epoch  # mid-epoch 2, and steps were lost after it
    original, calls = trainer.apply_gradients, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill:
            raise KeyboardInterrupt
        original(*args, **kwargs)

    monkeypatch.setattr(trainer, "apply_gradients", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "cut", dataset=ds, show_progress=False).fit()
    monkeypatch.setattr(trainer, "apply_gradients", original)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "trainer.json").read_text())
    assert saved["epoch"] == 1 and saved["position"]["epoch"] == 2 and saved["position"]["step"] == last - per_epoch
    resumed = Trainer(cfg, tmp_path / "cut", dataset=ds, show_progress=False).fit(resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert resumed.test.summary == full.test.summary
    assert same_weights(tmp_path / "full", tmp_path / "cut")


def test_validation_sample_is_stated_in_every_output(tmp_path, capsys):
    ds = timed_dataset()
    cfg = config(epochs=2).model_copy(update={"eval": config().eval.model_copy(update={"valid_users": 12,
                                                                                          "valid_seed": 5})})
    res = Trainer(cfg, tmp_path, dataset=ds).fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        assert r["valid_users"] == 12 and r["valid_seed"] == 5
        assert r["valid_ndcg@10_lo"] <= r["valid_ndcg@10"] <= r["valid_ndcg@10_hi"]
    err = capsys.readouterr().err
    assert err.count("valid sample 12 users, seed 5") == 2 and "ndcg@10 " in err and "[" in err
    info = json.loads((tmp_path / "metrics.json").read_text())["info"]["validation"]
    assert info["users"] == 12 and info["seed"] == 5 and info["epoch"] == res.best_epoch
    assert "a fixed sample of 12 users (seed 5" in (tmp_path / "report.md").read_text()
    # the selected epoch's value is the metric over exactly the sampled users' cases
    from genrec.eval import rank_cases
    from genrec.train.trainer import build_model

    model = build_model(cfg, ds.n_items, use_timestamps=True)
    model.load_state_dict(load_file(tmp_path / "checkpoint" / "best.safetensors"))
    sample = sample_cases(make_split(ds, "loo").valid, 12, 5)
    ndcg = rank_cases(model.eval(), sample, ds.n_items, ks=[10], show_progress=False).per_case["ndcg@10"].mean()
    assert len(sample) == 12 and ndcg == pytest.approx(res.best_valid, abs=1e-12)


def test_passes_by_length_or_by_lane_make_the_update_of_one_pass_over_the_step(tmp_path):
    """Cutting the step's windows into passes by length, or a pass per lane, with the gradients summed before the
    step, gives the gradient of the step's whole batch: the three ways agree up to float rounding (no dropout, so
    the passes draw no random numbers)."""
    ds = timed_dataset()
    runs = {}
    for combine in ("sorted", "passes", "pad"):
        cfg = config(data="stream", epochs=2, stream={"lanes": 4, "shards": 6, "combine": combine})
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dropout": 0.0})})
        runs[combine] = Trainer(cfg, tmp_path / combine, dataset=ds, show_progress=False).fit()
    for other in ("passes", "pad"):
        assert [r["loss"] for r in runs["sorted"].history] == pytest.approx(
            [r["loss"] for r in runs[other].history], rel=1e-6)
        a, b = weights(tmp_path / "sorted"), weights(tmp_path / other)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert not same_weights(tmp_path / "sorted", tmp_path / other)  # really different computations


def test_each_process_resumes_its_own_generator_state(tmp_path):
    """Data-parallel processes draw different dropout masks and negatives: a checkpoint keeps every rank's torch
    generator state and each rank restores its own."""
    from genrec.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    states = []
    for seed in (11, 12, 13):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    torch.set_rng_state(states[0])
    save_checkpoint(tmp_path, model, opt, sched, {"epoch": 1}, rank_rngs=states)
    for rank in (0, 1, 2):
        torch.manual_seed(99)
        load_checkpoint(tmp_path, model, opt, sched, rank)
        assert torch.equal(torch.get_rng_state(), states[rank])
    save_checkpoint(tmp_path / "one", model, opt, sched, {"epoch": 1})  # one process: its own state only
    torch.manual_seed(99)
    expected = torch.get_rng_state()
    save_checkpoint(tmp_path / "one", model, opt, sched, {"epoch": 1})
    torch.manual_seed(5)
    load_checkpoint(tmp_path / "one", model, opt, sched, 1)
    assert torch.equal(torch.get_rng_state(), expected)


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_test_sample_is_the_seeded_sample_and_is_stated(tmp_path, data):
    """eval.test_users ranks exactly the seeded sample of test cases (in memory and streamed alike) and says so."""
    ds = timed_dataset()
    cfg = config(data=data, epochs=1, stream={"lanes": 2, "shards": 3})
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"test_users": 9, "test_seed": 4})})
    res = Trainer(cfg, tmp_path, dataset=ds, show_progress=False).fit()
    every = make_split(ds, "loo").test
    assert res.test.info["test_sample"] == {"users": 9, "of": len(every), "seed": 4}
    assert res.test.info["cases"] == 9
    from genrec.eval import rank_cases

    sample = sample_cases(every, 9, 4)
    hr = rank_cases(res.model.eval(), sample, ds.n_items, ks=[10], show_progress=False).per_case["hr@10"].mean()
    assert hr == pytest.approx(res.test.summary["hr@10"]["mean"], abs=1e-12)
