"""Checkpoints without pickle: weights and optimizer tensors in safetensors, everything else in JSON.

Each file is written atomically, and the JSON state last, so a crash mid-save leaves the previous
checkpoint usable.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrec.errors import GenrecError
from genrec.io import atomic_write, read_json, write_json


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise GenrecError(f"{path}: checkpoint file not found")
    return load_file(path)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            key = f"{pid}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(ranks: list[torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states; ``ranks``: every data-parallel process's torch CPU generator state
    (rank order), kept so each process resumes its own (dropout masks and sampled negatives differ by rank)."""
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    tensors.update({f"torch.rank{r}": t for r, t in enumerate(ranks or []) if r > 0})
    return tensors, {"python": _listify(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(),
                                                                      *np_state[2:]]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int = 0) -> None:
    torch.set_rng_state(tensors.get(f"torch.rank{rank}", tensors["torch"]))
    random.setstate(_tuplify(meta["python"]))
    kind, keys, *rest = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any],
                    rank_rngs: list[torch.Tensor] | None = None) -> None:
    """Weights, optimizer, generators (``rank_rngs``: every process's torch state, see :func:`rng_state`) and the
    JSON ``state``, written last."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", model.state_dict())
    opt_t, opt_meta = optimizer_tensors(opt)
    save_tensors(folder / "optimizer.safetensors", opt_t)
    rng_t, rng_meta = rng_state(rank_rngs)
    save_tensors(folder / "rng.safetensors", rng_t)
    write_json(folder / "trainer.json", {**state, "optimizer": opt_meta, "scheduler": sched.state_dict(),
                                         "rng": rng_meta})


def load_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, rank: int = 0) -> dict[str, Any]:
    if not (folder / "trainer.json").is_file():
        raise GenrecError(f"{folder}: no checkpoint to resume from (trainer.json missing)")
    state = read_json(folder / "trainer.json")
    model.load_state_dict(load_tensors(folder / "model.safetensors"))
    restore_optimizer(opt, load_tensors(folder / "optimizer.safetensors"), state.pop("optimizer"))
    sched.load_state_dict(state.pop("scheduler"))
    restore_rng(load_tensors(folder / "rng.safetensors"), state.pop("rng"), rank)
    return state
