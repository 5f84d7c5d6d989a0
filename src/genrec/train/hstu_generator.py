"""Training the decoder-only generator (``model.name: hstu-gen``, ``genrec.models.hstu_generator``).

Training windows are the ID models' (``genrec.data.stream.training_windows``: ``train.windows: all`` cuts long
sequences so every target is predicted once per epoch) and every position of a window is a target. Validation,
selection, the test evaluation (constrained beam search, targets outside the beams are misses) and the cold
items are the TIGER trainer's (``genrec.train.generator``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.data import Jagged, SequenceDataset, load_dataset
from genrec.data.stream import epoch_batches, training_windows
from genrec.errors import ConfigError, DataError
from genrec.eval import write_run
from genrec.models.hstu_generator import HSTUGenerator, HSTUGeneratorConfig
from genrec.semantic_ids import SemanticIds
from genrec.train.config import RunConfig
from genrec.train.generator import (
    GeneratorTrainer,
    evaluate_generator,
    read_generator,
    sample_valid,
    semantic_ids_for,
    unseen_items,
    write_generator,
)
from genrec.train.loop import Loop, Steps, TrainResult, optimizer_step, resolve_device, run_split
from genrec.train.trainer import _select_k, cold_start_info


class HSTUGeneratorTrainer(GeneratorTrainer):
    """``genrec train`` for ``model.name: hstu-gen``: every-position teacher forcing in the shared loop, then the
    generator's validation and test."""

    def __init__(self, config: RunConfig, run_dir: str | Path, dataset: SequenceDataset | None = None,
                 semantic_ids: SemanticIds | None = None, show_progress: bool = True):
        if not isinstance(config.model, HSTUGeneratorConfig):
            raise ConfigError(f"model.name must be 'hstu-gen' for this trainer, got {config.model.name!r}")
        if config.train.loss != "full_ce":
            raise ConfigError("train.loss: the generator trains with cross-entropy over codes; use 'full_ce'")
        if any(config.features.model_dump().values()):
            raise ConfigError("features: item features are for ID models (sasrec, hstu); the generator reads its "
                              "semantic IDs from model.semantic_ids")
        if config.train.mask_unseen or config.train.refit:
            raise ConfigError("train.mask_unseen and train.refit are not supported by hstu-gen")
        self.config, self.run_dir = config, Path(run_dir)
        self.dataset, self.semantic_ids, self.show_progress = dataset, semantic_ids, show_progress
        self.queries = None

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        cfg, tcfg, mcfg = self.config, self.config.train, self.config.model
        k_sel = _select_k(cfg.eval.select_metric)
        if k_sel > mcfg.beam_width:
            raise ConfigError(f"eval.select_metric {cfg.eval.select_metric} needs K <= model.beam_width "
                              f"({mcfg.beam_width})")
        device = resolve_device(tcfg.device, tcfg.tf32)
        self._begin()
        load_start = os.getloadavg()[0]  # the CPU is often shared: say how loaded it was
        ds = self.dataset or load_dataset(cfg.dataset)
        sids = semantic_ids_for(cfg, ds, self.semantic_ids)
        split = run_split(cfg, ds)
        windows, _ = training_windows(split, mcfg.max_len, tcfg.windows)
        if len(windows) == 0:
            raise DataError(f"dataset '{ds.name}' has no training sequence of 2 or more items")
        valid = sample_valid(split.valid, mcfg.valid_sample, tcfg.seed)
        model = HSTUGenerator(mcfg, sids.codes, sids.sizes).to(device)
        steps = self._window_steps(model, windows)
        loop = Loop(cfg, model, steps.steps, self.run_dir, resume, show_progress=self.show_progress)
        model.set_cold_items(unseen_items(split, ds.n_items))
        loop.run(steps, tcfg.epochs, validate=lambda m: self._validate(m, valid, ds, k_sel), say=self._say,
                 on_epoch_end=on_epoch_end)
        loop.restore_best()
        model.set_cold_items(unseen_items(split, ds.n_items))
        model.eval()
        counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
        ev = evaluate_generator(model, split.test, ds, part="test", beam=mcfg.beam_width, ks=cfg.eval.ks,
                                exclude_seen=cfg.eval.exclude_seen, item_counts=counts, n_boot=cfg.eval.n_boot,
                                seed=tcfg.seed, show_progress=self.show_progress)
        ev.info.update(**loop.summary(), commit_at_start=self.commit_at_start, allocator=self.allocator,
                       device=str(device), threads=torch.get_num_threads(),
                       load_average={"start": load_start, "end": os.getloadavg()[0]}, **cold_start_info(split, ev, cfg),
                       semantic_ids={k: v for k, v in sids.meta.items() if isinstance(v, str | int | float)})
        write_run(self.run_dir, {"model": mcfg.name, "split": cfg.split, **cfg.model_dump(mode="json")}, ev, ds,
                  loop.state["train_seconds"])
        save_hstu_generator(self.run_dir, model, ds, counts)
        return loop.result(model, ev)

    def _window_steps(self, model: HSTUGenerator, windows: Jagged) -> Steps:
        """One step: a batch of right-padded windows, every position predicting the next item's codes."""
        tcfg, device = self.config.train, model.codes.device

        def batches(epoch: int, start: dict[str, Any] | None) -> list[np.ndarray]:
            rows = epoch_batches(windows.lengths, tcfg.batch_size, np.random.default_rng([tcfg.seed, epoch]))
            return rows[int(start["step"]) if start else 0:]

        def step(rows: np.ndarray, opt: torch.optim.Optimizer, sched: Any) -> tuple[float, float]:
            part = windows.take(rows)
            padded = part.to_padded(left=False)
            lengths = torch.from_numpy(part.lengths - 1)
            inputs, targets = padded[:, :-1], padded[:, 1:].clone()
            targets[torch.arange(targets.shape[1])[None, :] >= lengths[:, None]] = 0
            loss_sum, n = model.loss(inputs.to(device), lengths.clamp(min=1).to(device), targets.to(device))
            optimizer_step(loss_sum / max(n * model.n_levels, 1), model, opt, sched, tcfg.clip_norm)
            return float(loss_sum.detach()), n * model.n_levels

        return Steps(model, math.ceil(len(windows) / tcfg.batch_size), batches, step,
                     rates=lambda units, seconds: {"targets_per_s": units / model.n_levels / seconds})


def save_hstu_generator(folder: Path, model: HSTUGenerator, ds: SequenceDataset, counts: np.ndarray) -> None:
    """Weights, item table and a model.json naming hstu-gen with its codebook sizes (codes travel in the weights)."""
    write_generator(folder, model, ds, counts, "hstu-gen")


def load_hstu_generator(run_dir: str | Path) -> HSTUGenerator:
    """The trained generator of a run folder (model.json + model.safetensors), in float32, eval mode."""
    return read_generator(run_dir, "hstu-gen")


__all__ = ["HSTUGeneratorTrainer", "load_hstu_generator", "save_hstu_generator"]
