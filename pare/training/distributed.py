"""Data-parallel training under ``torchrun``: every process runs the same recipe; the training
loop gives each one a slice of every mini-batch and DDP averages the gradients, so the update
equals one process's on the whole batch (exactly when the slices are equal, as with an even batch
size). Only rank 0 writes results. CPU uses the gloo backend, CUDA nccl."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group ``torchrun`` describes in the environment (no-op otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's rows of a mini-batch (every process draws the same batch order)."""
    rank, size = world()
    return indices[rank::size] if size > 1 else indices


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module to call in training: DDP around ``model`` when several processes train."""
    if world()[1] == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)
