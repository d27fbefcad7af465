"""Training at the size that fits, checked before `--out` is touched, for every task.

What a training step needs is counted by the ledger `iabn-zoo memory --budget` uses (`train.budget`): weights and
buffers, gradients, the optimizer's state, what autograd keeps for backward with the task's own loss (its
`ledger_loss`) at the run's batch and crop, plus the data loader's batches (on the CPU, where they share the
memory: the two a step holds and the prefetched ones). It is compared with what the process may use, its budget:
`memory_budget` when given (16GiB, 500MB), else what the device has free (CUDA: free bytes; CPU: the least of
MemAvailable, the cgroup's and the address-space limit's headroom, shared by the processes of a torchrun node) on
top of what the process already uses.

- Sizes given: a step that needs more than the budget leaves free is refused (ResourceLimitError, exit 10) with
  the sizes to lower and what would fit (the largest batch at the crop, and for a task that may choose its crop
  the largest crop at the batch). The count runs on the meta device (shapes only: instant at any size).
- `auto` (a batch, or a segmentation crop): the largest size whose real steps, measured, fit the budget less a
  margin (`train.auto_sizes`). Under torchrun every rank measures on its own device and all take the smallest
  answer. The answer is an integer in the config, and a resume reuses it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ResourceLimitError, bad_argument
from ..system.progress import write_line
from ..system.resources import available_memory, format_bytes, parse_bytes
from ..tasks.footprint import NetworkFootprint
from .auto_sizes import Budget, SizeChoice, choose_size, in_use, loader_bytes
from .budget import SMALLEST, StepMeter, fit_mode, kept_bytes
from .config import AUTO
from .model import NetworkSpec
from .task_options import crop_hw

LOWER = ("image_size", "batch_size")


def process_budget(cfg: Any, device: torch.device) -> Budget:
    """The run's budget on this process's `device` (see the module's description): `memory_budget`, but never more
    than the device has free, or what it has free."""
    used = in_use(device)
    free = available_memory(device)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    holder = "this machine" if device.type == "cpu" else str(device)
    share = None if free is None else free // max(sharing, 1)
    has_free = f"what {holder} has free" + (f", shared by {sharing} processes" if sharing > 1 else "")
    if cfg.memory_budget is not None:
        limit = parse_bytes(str(cfg.memory_budget), "memory_budget")
        if share is None or limit <= used + share:
            return Budget(limit, used, "the memory budget")
        return Budget(used + share, used, f"the memory budget, lowered to {has_free}")
    if share is None:
        raise bad_argument("memory_budget", f"is needed: the free memory of {device} is unknown")
    return Budget(used + share, used, has_free)


class RunMeter(StepMeter):
    """The ledger of the run's network in one norm mode, the data loader's batches added to every count."""

    def __init__(self, spec: NetworkSpec, bn_mode: str, cfg: Any, task: Any, device: torch.device):
        self.cfg, self.task, self.bn_mode, self.run_device = cfg, task, bn_mode, device
        super().__init__(lambda where: spec.build(bn_mode=bn_mode, device=where), device, cfg.optimizer,
                         task.ledger_loss)

    def total(self, batch: int, size: tuple[int, int]) -> int:
        return super().total(batch, size) + loader_bytes(self.cfg, self.task, self.run_device, batch, size)


def static_bytes(model: nn.Module, optimizer: str) -> int:
    """Weights and buffers, one gradient per trainable parameter and the optimizer's slots (SGD momentum: one,
    AdamW: two), from the shapes (a meta network has no storage to count)."""
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + trainable * (1 + (2 if optimizer == "adamw" else 1))


def step_bytes(spec: NetworkSpec, cfg: Any, task: Any, device: torch.device, batch: int,
               crop: tuple[int, int]) -> int:
    """What a step at `batch` crops of `crop` needs (the ledger on the meta device; where an operation has no meta
    kernel, the lower bound of `tasks.footprint`), data loader batches included."""
    meta = torch.device("meta")
    model = spec.build(device=meta)
    try:
        kept = kept_bytes(model, batch, crop, meta, task.ledger_loss)
    except (RuntimeError, NotImplementedError):
        kept = NetworkFootprint(cfg.model).per_image(*crop).training * batch
    return static_bytes(model, cfg.optimizer) + kept + loader_bytes(cfg, task, device, batch, crop)


def what_fits(meter: RunMeter, room: int, task: Any, batch: int, crop: tuple[int, int]) -> str:
    """The sizes that would fit `room`: the largest batch at the crop, and (a task that may choose its crop) the
    largest square crop at the batch."""
    size = pixels(crop)
    largest, *_ = fit_mode(meter, "batch", room, batch=batch, size=crop)
    said = [f"at {size} px the largest batch that fits is {largest}" if largest is not None
            else f"at {size} px not even a batch of {SMALLEST['batch']} fits"]
    if "image_size" in task.auto_sizes:
        side, *_ = fit_mode(meter, "crop", room, batch=batch, size=crop)
        said.append(f"at a batch of {batch} the largest crop that fits is {side} px" if side is not None
                    else f"at a batch of {batch} not even a crop of {SMALLEST['crop']} px fits")
    return "; ".join(said)


def pixels(crop: tuple[int, int]) -> str:
    """512 for a square crop, 512x1024 for another."""
    return f"{crop[0]}" if crop[0] == crop[1] else f"{crop[0]}x{crop[1]}"


def check_sizes(cfg: Any, task: Any, spec: NetworkSpec, budget: Budget, device: torch.device) -> None:
    """Refuse (ResourceLimitError) a step at the run's sizes that does not fit the budget, saying what would."""
    crop = crop_hw(cfg.image_size)
    needed = step_bytes(spec, cfg, task, device, cfg.batch_size, crop)
    if needed <= budget.room:
        return
    meter = RunMeter(spec, spec.bn_mode, cfg, task, device)
    holder = "this machine has" if device.type == "cpu" else f"{device} has"
    raise ResourceLimitError(
        f"a training step of {cfg.model} at {pixels(crop)} px with a batch of {cfg.batch_size} needs at least "
        f"{format_bytes(needed)} of memory (weights, gradients, optimizer state, what is kept for backward and the "
        f"data loader's batches), and {holder} {format_bytes(budget.room)} for it ({budget.source}: "
        f"{format_bytes(budget.limit)}, {format_bytes(budget.in_use)} in use); lower "
        f"{{image_size}} or {{batch_size}}: {what_fits(meter, budget.room, task, cfg.batch_size, crop)} (or let "
        "auto choose one of them)", parameters=(*LOWER, "memory_budget"))


def every_rank(value: int, procs: Any) -> list[int]:
    """Every rank's `value`, in rank order (each rank checked its own device)."""
    if not procs.distributed:
        return [value]
    device = procs.device if procs.device.type == "cuda" else torch.device("cpu")
    values = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(procs.world_size)]
    dist.all_gather(values, torch.tensor([value], dtype=torch.int64, device=device))
    return [int(v.item()) for v in values]


def fit_run(cfg: Any, task: Any, spec: NetworkSpec, procs: Any) -> SizeChoice | None:
    """Check the run's sizes against its budget, or choose the one that is `auto` (set in `cfg`, and said on rank
    0); every rank checks its own device and the ranks agree (the smallest answer, all of them said; one refusal
    refuses all)."""
    budget = process_budget(cfg, procs.device)
    auto = next((option for option in task.auto_sizes if getattr(cfg, option) == AUTO), None)
    if auto is None:
        refusal = None
        try:
            check_sizes(cfg, task, spec, budget, procs.device)
        except ResourceLimitError as error:
            refusal = error
        if min(every_rank(int(refusal is None), procs)) == 0:
            raise refusal or ResourceLimitError("another process of the job has not the memory for these sizes; "
                                                "lower {image_size} or {batch_size}", parameters=LOWER)
        return None
    choice = choose_size(cfg, task, spec, budget, procs.device, auto)
    answers = every_rank(choice.value if choice is not None else 0, procs)
    value = min(answers)
    if value == 0:
        what = (f"a batch of {SMALLEST['batch']} at {pixels(crop_hw(cfg.image_size))} px" if auto == "batch_size"
                else f"a crop of {SMALLEST['crop']} px at a batch of {cfg.batch_size}")
        raise ResourceLimitError(f"not even {what} fits in {format_bytes(budget.limit)} ({budget.source}) less a "
                                 f"margin of "
                                 f"{format_bytes(budget.margin)}; lower {{{LOWER[auto == 'image_size']}}}, or give "
                                 "more {memory_budget}", parameters=(*LOWER, "memory_budget"))
    setattr(cfg, auto, value)
    choice = SizeChoice(auto, value, choice.peak, choice.other_mode, choice.other_value, budget)
    if procs.is_writer:
        ranks = f" (the smallest of the processes' answers, {', '.join(map(str, answers))})" if len(answers) > 1 else ""
        write_line(f"iabn-zoo: {choice.line()}{ranks}")
    return choice
