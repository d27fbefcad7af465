"""This process's place in a fine-tuning job: torchrun ranks, the device it trains on, mixed precision, and sums
over ranks."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import bad_argument
from ..system.distributed import joined_group, process_device
from ..tasks.accuracy import Tally


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextmanager
def process_group(device: str | None) -> Iterator[Processes]:
    """Join the torchrun job when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU), and leave it afterwards."""
    target = process_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    with joined_group(target.type):
        rank = dist.get_rank() if dist.is_initialized() else 0
        yield Processes(rank=rank, world_size=dist.get_world_size() if dist.is_initialized() else 1, device=target)


def buffer_sync_option(sync_layers: bool) -> dict[str, bool]:
    """DDP's keyword that stops broadcasting buffers before every forward (not needed when synchronised layers keep
    the running statistics equal on every rank): `forward_sync_buffers` where torch has it (it deprecates
    `broadcast_buffers`, with a warning), else `broadcast_buffers`."""
    parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return {key: not sync_layers}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None for full fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise bad_argument("precision", "fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def all_reduce_tally(tally: Tally, procs: Processes) -> Tally:
    """The sum of every rank's tally."""
    if not procs.distributed:
        return tally
    packed = torch.tensor([tally.loss_sum, tally.top1, tally.top5, tally.images], dtype=torch.float64,
                          device=procs.device if procs.device.type == "cuda" else "cpu")
    dist.all_reduce(packed)
    loss_sum, top1, top5, images = packed.tolist()
    return Tally(loss_sum=loss_sum, top1=int(top1), top5=int(top5), images=int(images))


def all_reduce_sums(values: list[float], procs: Processes) -> list[float]:
    """Each value summed over ranks (float64)."""
    if not procs.distributed:
        return list(values)
    packed = torch.tensor(values, dtype=torch.float64, device=procs.device if procs.device.type == "cuda" else "cpu")
    dist.all_reduce(packed)
    return packed.tolist()
