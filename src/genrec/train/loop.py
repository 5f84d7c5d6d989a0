"""The bookkeeping every training loop shares: run-folder state, model selection on validation, epoch logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from genrec.data import SequenceDataset, Split, make_split
from genrec.errors import ConfigError, GenrecError
from genrec.io import write_json
from genrec.train.checkpoint import load_checkpoint


def open_run(run_dir: Path, config_json: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
             sched: Any, resume: bool, writer: bool = True, rank: int = 0) -> dict[str, Any]:
    """The loop state: restored from ``run_dir/checkpoint`` on resume (with process ``rank``'s generator state),
    else fresh (never over an existing run)."""
    ckpt = run_dir / "checkpoint"
    if resume:
        return load_checkpoint(ckpt, model, opt, sched, rank)
    if (ckpt / "trainer.json").is_file():
        raise GenrecError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another "
                          "--out")
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config_json)
    return {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad_evals": 0, "history": [], "train_seconds": 0.0,
            "stopped": None}


def select(state: dict[str, Any], epoch: int, value: float, patience: int, save_best: Callable[[], None]) -> None:
    """Keep the best validation epoch (its weights via ``save_best``); stop after ``patience`` evaluations
    without improvement."""
    if value > state["best"]:
        state.update(best=value, best_epoch=epoch, bad_evals=0)
        save_best()
        return
    state["bad_evals"] += 1
    if state["bad_evals"] >= patience:
        state["stopped"] = "early stopping"


def log_epoch(run_dir: Path, board: Any, record: dict[str, Any]) -> None:
    """Append one epoch to metrics.jsonl (and TensorBoard when installed)."""
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if board is not None:
        for key, value in record.items():
            if key != "epoch":
                board.add_scalar(key, value, record["epoch"])
        board.flush()


def print_epoch(record: dict[str, Any]) -> None:
    """One line per epoch on stderr: loss, throughput, time and the validation metrics; on a sample of users,
    each metric's 95% interval and the sample's size and seed."""
    def shown(key: str) -> str:
        ci = f" [{record[key + '_lo']:.4f}, {record[key + '_hi']:.4f}]" if key + "_lo" in record else ""
        return f"{key[6:]} {record[key]:.4f}{ci}"

    metrics = [k for k in record if k.startswith("valid_") and not k.endswith(("_lo", "_hi"))
               and k not in ("valid_users", "valid_seed")]
    valid = "  ".join(shown(k) for k in metrics)
    if "valid_users" in record:
        valid += f"  (valid sample {record['valid_users']:,} users, seed {record['valid_seed']})"
    print(f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  "
          f"{record['epoch_seconds']:.1f} s  {valid}", file=sys.stderr, flush=True)


def resolve_device(name: str, tf32: bool = True) -> torch.device:
    """``train.device`` as a torch device; under torchrun a cuda run uses this process's LOCAL_RANK. ``tf32``: let
    CUDA float32 matmuls and convolutions use TF32 tensor cores (``train.tf32``; no effect on the CPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but torch sees no CUDA device (use cpu or auto)")
        if name == "cuda":  # an explicit index: this process's rank under torchrun, else the current device
            name = f"cuda:{os.environ.get('LOCAL_RANK', torch.cuda.current_device())}"
        device = torch.device(name)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        return device
    return torch.device("cpu")


def run_split(config: Any, ds: SequenceDataset) -> Split:
    """The run's split; ``split: cold`` holds ``cold_start.fraction`` of the items out of training."""
    if config.split == "cold":
        return make_split(ds, "cold", fraction=config.cold_start.fraction, seed=config.cold_start.seed)
    if config.split == "temporal":
        return make_split(ds, "temporal", **config.temporal.model_dump(exclude={"valid_day", "test_day", "end_day"}))
    return make_split(ds, config.split)


def lr_lambda(config: Any, total_steps: int, elapsed_s=None):
    """Warmup then decay to 0 at ``total_steps``, or (``schedule_by: time``) as ``elapsed_s()`` reaches the
    wall-time budget."""
    warmup, schedule, tcfg = config.train.warmup_steps, config.train.schedule, config.train

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        if tcfg.schedule_by == "time":
            progress = min(1.0, elapsed_s() / (tcfg.max_minutes * 60))
        else:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _tensorboard(folder: Path):
    """A TensorBoard writer when the tensorboard package is installed, else None (JSONL is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def start_run(config: Any, model: torch.nn.Module, steps_per_epoch: int, run_dir: Path, resume: bool,
              writer: bool = True, rank: int = 0) -> tuple[torch.optim.Optimizer, Any, dict[str, Any], Any, float]:
    """What every trainer starts with: AdamW, the warmup/decay schedule (over ``epochs`` of steps or the
    wall-time budget), the loop state (restored on resume) and the TensorBoard writer (on the writing process).
    Returns (optimizer, scheduler, state, board, start clock: perf_counter minus the seconds already trained)."""
    tcfg = config.train
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    clock = {"start": time.perf_counter()}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config, tcfg.epochs * steps_per_epoch,
                                                             lambda: time.perf_counter() - clock["start"]))
    state = open_run(run_dir, config.model_dump(mode="json"), model, opt, sched, resume, writer, rank)
    board = _tensorboard(run_dir / "tensorboard") if writer else None
    clock["start"] = time.perf_counter() - state["train_seconds"]
    return opt, sched, state, board, clock["start"]


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                   clip_norm: float | None) -> None:
    """Backward, clip the global gradient norm, step the optimizer and the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(model, opt, sched, clip_norm)


def apply_gradients(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, clip_norm: float | None) -> None:
    """Clip the global gradient norm, step the optimizer and the schedule (after the backward passes)."""
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    sched.step()


def finish_epoch(run_dir: Path, board: Any, state: dict[str, Any], record: dict[str, Any], out_of_time: bool,
                 max_minutes: float | None, save: Callable[[], None], writer: bool = True) -> None:
    """Close an epoch: note a budget stop, keep the record, append it to metrics.jsonl and checkpoint
    (``save``) on the writing process."""
    if out_of_time and state["stopped"] is None:
        state["stopped"] = f"wall-time budget ({max_minutes} min)"
    state["history"].append(record)
    if writer:
        log_epoch(run_dir, board, record)
        save()


class WeightAverage:
    """An exponential moving average of a model's float parameters (``train.ema``), updated after every optimizer
    step: ``avg <- avg + (1 - d) (w - avg)`` with ``d = min(decay, (1 + t) / (10 + t))`` at step t, so the first
    steps are not dominated by the initial weights. Evaluating the average instead of the last iterate smooths
    the step-to-step noise of small-batch training; :meth:`swapped` puts it into the model for validation,
    selection and test."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.avg = {k: p.detach().clone() for k, p in model.named_parameters() if p.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, p in model.named_parameters():
            if k in self.avg:
                self.avg[k].lerp_(p.detach(), 1.0 - d)

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model holding the averaged weights for the duration of the block, its own weights after it."""
        params = dict(model.named_parameters())
        own = {k: params[k].detach().clone() for k in self.avg}
        with torch.no_grad():
            for k, v in self.avg.items():
                params[k].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in own.items():
                    params[k].copy_(v)

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.avg, "__steps__": torch.tensor(self.steps)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) - {"__steps__"} != set(self.avg):
            raise GenrecError("the checkpoint's weight average does not match the model")
        self.steps = int(tensors["__steps__"])
        for k, v in self.avg.items():
            v.copy_(tensors[k])
