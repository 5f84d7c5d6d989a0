"""Data-parallel processes under torchrun: this process's rank, the world size and the few collectives the
training loop needs (each a no-op on one process)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


class Processes:
    """The processes training one model together. ``join``: join the torchrun process group (``WORLD_SIZE`` >
    1); without it this process trains alone whatever torchrun started."""

    def __init__(self, device: torch.device | None = None, join: bool = False) -> None:
        self.device = device or torch.device("cpu")  # collectives run where the backend wants them (nccl: the GPU)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if join and world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.on = join and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the forward and backward passes run through: DDP over the processes, else ``model``."""
        if not self.on:
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, value: float) -> float:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, values: list[float]) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.tolist()

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's array on every rank (the others pass one of the same shape); float64 carries integers
        exactly up to 2^53."""
        if not self.on:
            return values
        t = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(self.device)
        dist.broadcast(t, 0)
        return t.cpu().numpy().astype(values.dtype)

    def gather_rng(self) -> list[torch.Tensor] | None:
        """Every process's torch CPU generator state, in rank order (None on one process)."""
        if not self.on:
            return None
        state = torch.get_rng_state().to(self.device)  # where the backend gathers (nccl: the GPU)
        states = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(states, state)
        return [t.cpu() for t in states]

    def barrier(self) -> None:
        if self.on:
            dist.barrier()
