"""Batch statistics shared over a torch.distributed group, for synchronised InPlace-ABN on any backend (gloo, NCCL).

Ranks may hold different batch sizes: per-rank means and variances are combined weighted by their sample counts
(the parallel-variance formula, in float64), not averaged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active_group(group: Any = None) -> Any:
    """The group to synchronise over: `group`, else the default one, when torch.distributed is initialised and the
    group has more than one member; None (local statistics) otherwise."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = group if group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def reduce_statistics(mean: torch.Tensor, var: torch.Tensor, count: int,
                      group: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Global per-channel mean and biased variance, and the total count, from every rank's local ones."""
    local = torch.stack([mean.double(), var.double(), torch.full_like(mean, count, dtype=torch.float64)])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    means, variances, counts = torch.stack(gathered).unbind(1)  # each (world_size, C)
    total = counts.sum(0)
    global_mean = (counts * means).sum(0) / total
    global_var = (counts * (variances + (means - global_mean) ** 2)).sum(0) / total
    return global_mean.to(mean.dtype), global_var.to(var.dtype), int(total[0].item())


def reduce_sums(sum_dy: torch.Tensor, sum_xhat_dy: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward's per-channel sums of dy and xhat * dy over every rank of `group`."""
    packed = torch.stack([sum_dy, sum_xhat_dy])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed[0], packed[1]
