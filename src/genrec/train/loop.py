"""The training loop every epoch-based trainer shares, and its bookkeeping.

A trainer plugs its model's :class:`Steps` (the batches of an epoch and one optimizer step) and its validation
into a :class:`Loop`, which owns everything else: AdamW and its warmup/decay schedule, epochs up to a count or
the wall-time budget (``train.max_minutes``), validation every ``train.eval_every`` epochs with the best weights
kept and early stopping after ``train.patience`` evaluations without improvement, the weight average
(``train.ema``), checkpoints at every epoch end and every ``train.checkpoint_every`` steps (with the data
position) that ``--resume`` continues exactly, and one metrics.jsonl record per epoch. Every trainer's ``fit``
returns a :class:`TrainResult`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.data import SequenceDataset, Split, make_split
from genrec.errors import ConfigError, GenrecError
from genrec.eval.report import git_commit
from genrec.io import write_json
from genrec.progress import progress_bar
from genrec.train.allocator import tune_glibc_malloc
from genrec.train.average import WeightAverage
from genrec.train.checkpoint import load_checkpoint, load_tensors, save_checkpoint, save_tensors
from genrec.train.processes import Processes

__all__ = ["Loop", "LoopTrainer", "Steps", "TrainResult", "WeightAverage"]


@dataclass
class TrainResult:
    """What every trainer's ``fit`` returns."""

    model: Any  # the tested model: a torch module, or (gbdt) each task's LightGBM booster by task name
    run_dir: Path
    best_epoch: int  # the selected epoch (gbdt: the most boosting rounds any task kept)
    best_valid: float  # eval.select_metric on validation at that epoch
    test: Any  # the test Evaluation (retrieval) or metrics.json's content (ranking); None on a non-zero rank
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (gbdt: per task)


def _position(epoch: int, step: int) -> dict[str, Any]:
    return {"epoch": epoch, "step": step}


@dataclass
class Steps:
    """What a model plugs into the :class:`Loop`."""

    model: torch.nn.Module  # the weights optimised, checkpointed and selected
    steps: int  # optimizer steps per epoch
    batches: Callable[[int, dict[str, Any] | None], Iterable[Any]]  # an epoch's batches, from a position if given
    step: Callable[[Any, torch.optim.Optimizer, Any], tuple[float, float]]  # one update: (summed loss, units)
    position: Callable[[int, int], dict[str, Any]] = _position  # where the data is after `step` steps of `epoch`
    unit: str = "tok"  # what the units are, for the progress bar (the record's rate is tokens_per_s)
    rates: Callable[[float, float], dict[str, float]] = lambda units, seconds: {}  # more rates for the record


class Loop:
    """One training run in ``folder`` (see the module docstring). ``resume`` restores the last checkpoint;
    without it the folder must not hold a run yet. ``procs``: the data-parallel processes (one by default);
    only rank 0 writes."""

    def __init__(self, config: Any, model: torch.nn.Module, steps_per_epoch: int, folder: Path, resume: bool, *,
                 procs: Processes | None = None, show_progress: bool = True):
        tcfg = config.train
        self.config, self.model, self.folder = config, model, Path(folder)
        self.procs = procs or Processes()
        self.writer, self.show_progress = self.procs.rank == 0, show_progress
        self.ckpt = self.folder / "checkpoint"
        self.opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
        clock = {"start": time.perf_counter()}
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(
            config, tcfg.epochs * steps_per_epoch, lambda: time.perf_counter() - clock["start"]))
        self.state = open_run(self.folder, config.model_dump(mode="json"), model, self.opt, self.sched, resume,
                              self.writer, self.procs.rank)
        self.board = _tensorboard(self.folder / "tensorboard") if self.writer else None
        self.start_clock = clock["start"] = time.perf_counter() - self.state["train_seconds"]
        self.average = WeightAverage(model, tcfg.ema) if tcfg.ema else None
        if self.average is not None and resume:
            self.average.load(load_tensors(self.ckpt / "ema.safetensors"))

    @staticmethod
    def started(folder: Path) -> bool:
        """Whether ``folder`` holds a checkpoint to resume."""
        return (Path(folder) / "checkpoint" / "trainer.json").is_file()

    def run(self, steps: Steps, epochs: int, *, validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
            say: Callable[[dict[str, Any]], None] | None = None,
            on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train up to ``epochs`` epochs. ``validate(model)``: the validation record fields, among them
        ``valid_<eval.select_metric>`` (None: no selection, e.g. a refit; the weight average, if any, then becomes
        the model's weights at the end). ``say`` gets each record on rank 0, ``on_epoch_end`` on every rank after
        the epoch's checkpoint is written. Returns the loop state."""
        tcfg, state = self.config.train, self.state
        while state["stopped"] is None and state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            record, out_of_time = self._epoch(steps, epoch)
            if validate is not None and (epoch % tcfg.eval_every == 0 or out_of_time or epoch == epochs):
                self._select(validate, epoch, record)
            if out_of_time and state["stopped"] is None:
                state["stopped"] = f"wall-time budget ({tcfg.max_minutes} min)"
            state["history"].append(record)
            rngs = self.procs.gather_rng()
            if self.writer:
                log_epoch(self.folder, self.board, record)
                self.save(state, rngs)
                if say is not None:
                    say(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        if validate is None and self.average is not None:
            with self.average.swapped(self.model) as averaged:
                final = {k: v.clone() for k, v in averaged.state_dict().items()}
            self.model.load_state_dict(final)
        return state

    def restore_best(self) -> None:
        """Load the selected epoch's weights (once every process is done training)."""
        self.procs.barrier()
        self.model.load_state_dict(load_tensors(self.ckpt / "best.safetensors"))

    def save(self, state: dict[str, Any], rngs: list[torch.Tensor] | None = None) -> None:
        """Checkpoint: weights, optimizer, schedule, generators (``rngs``: every process's), the weight average
        and, written last, the JSON ``state``."""
        if self.average is not None:
            save_tensors(self.ckpt / "ema.safetensors", self.average.state())
        save_checkpoint(self.ckpt, self.model, self.opt, self.sched, state, rngs)

    def summary(self) -> dict[str, Any]:
        """How the run went, for its test report."""
        s = self.state
        return {"best_epoch": s["best_epoch"], "best_valid": s["best"], "epochs_run": s["epoch"],
                "stopped": s["stopped"] or "max epochs", "train_seconds": s["train_seconds"]}

    def refit_summary(self, selected: int) -> dict[str, Any]:
        """How a refit run (trained for the ``selected`` number of epochs, no selection) went."""
        s = self.state
        return {"epochs": s["epoch"], "selected_epoch": selected, "train_seconds": s["train_seconds"],
                "stopped": s["stopped"] or "the selected epoch"}

    def result(self, model: Any, test: Any) -> TrainResult:
        s = self.state
        return TrainResult(model, self.folder, s["best_epoch"], s["best"], test, s["history"])

    def _evaluated(self) -> AbstractContextManager[torch.nn.Module]:
        """The weights validation reads and selection keeps: the model's, or their running average."""
        return nullcontext(self.model) if self.average is None else self.average.swapped(self.model)

    def _select(self, validate: Callable[[torch.nn.Module], dict[str, float]], epoch: int,
                record: dict[str, Any]) -> None:
        with self._evaluated() as model:
            record.update(validate(model))
            select(self.state, epoch, record[f"valid_{self.config.eval.select_metric}"], self.config.train.patience,
                   lambda: save_tensors(self.ckpt / "best.safetensors", model.state_dict()) if self.writer else None)

    def _epoch(self, steps: Steps, epoch: int) -> tuple[dict[str, Any], bool]:
        """One epoch, or its rest when the state holds a mid-epoch position; the state advanced past it.
        Returns its record and whether the wall-time budget ran out."""
        tcfg, procs, state = self.config.train, self.procs, self.state
        steps.model.train()
        start = state.pop("position", None)
        done = int(start["step"]) if start else 0
        total_loss = float(start["loss"]) if start and procs.rank == 0 else 0.0
        total_units = start["tokens"] if start and procs.rank == 0 else 0
        t0 = time.perf_counter() - (float(start["seconds"]) if start else 0.0)
        out_of_time = False
        with progress_bar(steps.steps, f"epoch {epoch}", enabled=self.show_progress and self.writer) as advance:
            advance(done)
            for step, batch in enumerate(steps.batches(epoch, start), done + 1):
                loss_sum, units = steps.step(batch, self.opt, self.sched)
                if self.average is not None:
                    self.average.update(steps.model)
                total_loss += loss_sum
                total_units += units
                elapsed = time.perf_counter() - t0
                advance(1, f"epoch {epoch} loss {total_loss / max(total_units, 1):.4f} "
                           f"{total_units * procs.world / max(elapsed, 1e-9):,.0f} {steps.unit}/s")
                every = tcfg.checkpoint_every
                if every and (state["step"] + step) % every == 0 and step < steps.steps:
                    self._save_position({**steps.position(epoch, step), "loss": procs.sum(total_loss),
                                         "tokens": procs.sum(total_units), "seconds": elapsed})
                if tcfg.max_minutes and time.perf_counter() - self.start_clock > tcfg.max_minutes * 60:
                    out_of_time = True
                    break
        units = procs.sum(float(total_units))
        loss, seconds = procs.sum(total_loss) / max(units, 1), time.perf_counter() - t0
        state.update(step=state["step"] + steps.steps, epoch=epoch,
                     train_seconds=time.perf_counter() - self.start_clock)
        return {"epoch": epoch, "step": state["step"], "loss": loss, "tokens_per_s": units / seconds,
                **steps.rates(units, seconds), "epoch_seconds": seconds, "elapsed_s": state["train_seconds"],
                "lr": self.sched.get_last_lr()[0]}, out_of_time

    def _save_position(self, position: dict[str, Any]) -> None:
        """A mid-epoch checkpoint: the data position and the epoch's running totals let a resumed run continue
        at the exact batch."""
        rngs = self.procs.gather_rng()
        if self.writer:
            self.save({**self.state, "position": position,
                       "train_seconds": time.perf_counter() - self.start_clock}, rngs)


class LoopTrainer:
    """What the epoch-based trainers share around their :class:`Loop`: the start of a run and its epoch line."""

    config: Any
    show_progress: bool

    def _begin(self) -> None:
        """Note the code and the allocator, set torch's threads and seed every generator (before any data)."""
        tcfg = self.config.train
        self.commit_at_start = git_commit()  # code that trained; the run's report records HEAD at the end too
        self.allocator = tune_glibc_malloc()
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        seed_everything(tcfg.seed)

    def _say(self, record: dict[str, Any]) -> None:
        if self.show_progress:
            print_epoch(record)

    def _say_refit(self, record: dict[str, Any]) -> None:
        self._say({**record, "refit": True})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


