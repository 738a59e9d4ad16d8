"""Multi-process training with torch.distributed (DDP), started by ``torchrun``.

Each process trains on its own batches (a share of the plan's batch size); rank 0 writes checkpoints and logs.
Backend: NCCL on CUDA, gloo on CPU. Without ``torchrun`` (WORLD_SIZE unset or 1) everything is a no-op.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks other than 0 wait at a barrier while rank 0 runs the fold's whole final validation (hours on a large data
# set); torch's default collective timeout (10 min for NCCL) would kill them. A dead rank still ends the job: torchrun
# stops the others when one process exits.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    if world_size() <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (so all ranks stop together)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def share(batch_size: int, rank: int, world: int) -> int:
    """This rank's share of the batch (the first ranks take the remainder)."""
    return batch_size // world + (1 if rank < batch_size % world else 0)


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
