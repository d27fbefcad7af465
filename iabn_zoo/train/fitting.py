"""Training at the size that fits, checked before `--out` is touched, for every task.

What a training step needs is counted by the ledger `iabn-zoo memory --budget` uses (`train.budget`): weights and
buffers, gradients, the optimizer's state, what autograd keeps for backward with the task's own loss (its
`ledger_loss`) at the run's batch and crop, plus the data loader's batches (on the CPU, where they share the
memory: the two a step holds and the prefetched ones, `2 + num_workers * PREFETCH` batches). It is compared with
what the process may use, its budget: `memory_budget` when given (16GiB, 500MB), else the device's free memory
(CUDA: free bytes; CPU: the least of MemAvailable, the cgroup's and the address-space limit's headroom, shared by
the processes of a torchrun node) on top of what the process already uses.

- Sizes given: a step that needs more than the budget leaves free is refused (ResourceLimitError, exit 10) with
  the sizes to lower and what would fit (the largest batch at the crop, and for a task that may choose its crop
  the largest crop at the batch). The count runs on the meta device (shapes only: instant at any size).
- `auto` (batch, or a segmentation crop): the largest size whose count fits the budget less a margin (MARGIN: 10%
  of the budget, at least MARGIN_FLOOR) for what the ledger does not see (gradients in flight during backward,
  allocator slack, validation, the logs' libraries, the epoch being saved); then one real training step at that
  size, with the task's loss and an optimizer step, is measured (the CPU's resident set peak, CUDA's allocated
  peak) and must stay within the budget, else the size is lowered by the excess and measured again. Under torchrun
  every rank does this on its own device and all take the smallest answer. The answer is an integer in the config,
  and a resume reuses it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ResourceLimitError, bad_argument
from ..system.memory_limits import peak_resident_bytes, reset_peak_resident, resident_bytes
from ..system.progress import write_line
from ..system.resources import available_memory, format_bytes, parse_bytes
from ..tasks.footprint import NetworkFootprint
from .budget import SMALLEST, StepMeter, fit_mode, kept_bytes, make_optimizer
from .memory import random_images, training_forward
from .model import NetworkSpec
from .config import AUTO
from .task_options import crop_hw

MIB = 2 ** 20
MARGIN_SHARE = 0.10
MARGIN_FLOOR = 192 * MIB
PREFETCH = 2  # batches each DataLoader worker prepares ahead (torch's default prefetch_factor)
VERIFY_TRIES = 3
LOWER = ("image_size", "batch_size")


@dataclass(frozen=True)
class Budget:
    """What one process may use in all (`limit`), what it uses now, and how messages name the limit."""

    limit: int
    in_use: int
    said: str

    @property
    def room(self) -> int:
        return max(0, self.limit - self.in_use)

    @property
    def margin(self) -> int:
        return max(int(MARGIN_SHARE * self.limit), MARGIN_FLOOR)


def in_use(device: torch.device) -> int:
    """What this process uses of `device` now: the CPU's resident set, CUDA's allocated bytes."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return (resident_bytes() or 0) if device.type == "cpu" else 0


def process_budget(cfg: Any, device: torch.device) -> Budget:
    """The run's budget on this process's `device` (see the module's description)."""
    used = in_use(device)
    if cfg.memory_budget is not None:
        limit = parse_bytes(str(cfg.memory_budget), "memory_budget")
        return Budget(limit, used, f"{format_bytes(limit)} (the memory budget)")
    free = available_memory(device)
    if free is None:
        raise bad_argument("memory_budget", f"is needed: the free memory of {device} is unknown")
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    share = free // max(sharing, 1)
    holder = "this machine" if device.type == "cpu" else str(device)
    return Budget(used + share, used, f"{format_bytes(used + share)} (what {holder} has free"
                                      + (f", shared by {sharing} processes" if sharing > 1 else "") + ")")


def loader_bytes(cfg: Any, task: Any, device: torch.device, batch: int, crop: tuple[int, int]) -> int:
    """The data loader's batches that share the budget (the CPU's memory; pinned host memory is not the GPU's)."""
    if device.type != "cpu":
        return 0
    return (2 + cfg.num_workers * PREFETCH) * task.batch_bytes(batch, crop)


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
        f"data loader's batches), and {holder} {format_bytes(budget.room)} for it of {budget.said}; lower "
        f"{{image_size}} or {{batch_size}}: {what_fits(meter, budget.room, task, cfg.batch_size, crop)} (or let "
        "auto choose one of them)", parameters=(*LOWER, "memory_budget"))


def measured_peak(spec: NetworkSpec, cfg: Any, task: Any, device: torch.device, batch: int,
                  crop: tuple[int, int]) -> int:
    """The peak of one real training step (forward, the task's loss, backward, an optimizer step) at `batch` crops
    of `crop`: the process's resident set on the CPU, CUDA's allocated bytes, both in all (not over a baseline)."""
    torch.manual_seed(0)
    model = spec.build(device=device)
    optimizer = make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    inputs = random_images(batch, crop, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_resident()
    output, gradient = training_forward(model, inputs, task.ledger_loss)
    output.backward(gradient)
    optimizer.step()
    del output, gradient
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_resident_bytes()


@dataclass(frozen=True)
class SizeChoice:
    """What `auto` chose: the option, its value, the other norm mode's answer, the budget, the measured peak."""

    option: str
    value: int
    other_mode: str
    other_value: int | None
    budget: Budget
    peak: int

    def line(self) -> str:
        """`batch 19 fits in 16.0 GiB (standard BatchNorm: 9)`, or `crop 640 px fits in ...`."""
        names = {"standard": "standard BatchNorm", "inplace": "InPlace-ABN"}
        unit = " px" if self.option == "image_size" else ""
        what = "batch" if self.option == "batch_size" else "crop"
        other = "none fits" if self.other_value is None else f"{self.other_value}{unit}"
        return (f"{what} {self.value}{unit} fits in {self.budget.said} ({names[self.other_mode]}: {other}); a "
                f"measured step peaked at {format_bytes(self.peak)}")


def choose_size(cfg: Any, task: Any, spec: NetworkSpec, budget: Budget, device: torch.device,
                option: str) -> SizeChoice | None:
    """The largest `option` (batch_size or image_size) that fits, verified by a measured step; None: none fits."""
    fit = "batch" if option == "batch_size" else "crop"
    crop = crop_hw(cfg.image_size) if fit == "batch" else (0, 0)
    batch = cfg.batch_size if fit == "crop" else 0
    limit = task.batch_limit() if fit == "batch" else math.inf
    room = budget.room - budget.margin
    meter = RunMeter(spec, spec.bn_mode, cfg, task, device)
    first = None
    for _ in range(VERIFY_TRIES):
        answer, *_ = fit_mode(meter, fit, room, batch=batch, size=crop)
        if answer is None:
            return None
        answer = int(min(answer, limit))
        first = answer if first is None else first
        shape = crop if fit == "batch" else (answer, answer)
        size_batch = answer if fit == "batch" else batch
        peak = measured_peak(spec, cfg, task, device, size_batch, shape)
        over = peak + loader_bytes(cfg, task, device, size_batch, shape) - budget.limit
        if over <= 0:
            break
        room -= over
    else:
        return None
    other = "standard" if spec.bn_mode != "standard" else "inplace"
    other_answer, *_ = fit_mode(RunMeter(spec, other, cfg, task, device), fit, budget.room - budget.margin,
                                batch=batch, size=crop)
    return SizeChoice(option, answer, other, None if other_answer is None else int(min(other_answer, limit)),
                      budget, peak)


def agree(value: int, procs: Any) -> int:
    """The smallest of every rank's `value` (each rank checked its own device)."""
    if not procs.distributed:
        return value
    packed = torch.tensor([value], dtype=torch.int64, device=procs.device if procs.device.type == "cuda" else "cpu")
    dist.all_reduce(packed, op=dist.ReduceOp.MIN)
    return int(packed.item())


def fit_run(cfg: Any, task: Any, spec: NetworkSpec, procs: Any) -> SizeChoice | None:
    """Check the run's sizes against its budget, or choose the one that is `auto` (set in `cfg`, and said on rank
    0); every rank checks its own device and the ranks agree (the smallest answer; one refusal refuses all)."""
    budget = process_budget(cfg, procs.device)
    auto = next((option for option in task.auto_sizes if getattr(cfg, option) == AUTO), None)
    if auto is None:
        refusal = None
        try:
            check_sizes(cfg, task, spec, budget, procs.device)
        except ResourceLimitError as error:
            refusal = error
        if agree(int(refusal is None), procs) == 0:
            raise refusal or ResourceLimitError("another process of the job has not the memory for these sizes; "
                                                "lower {image_size} or {batch_size}", parameters=LOWER)
        return None
    choice = choose_size(cfg, task, spec, budget, procs.device, auto)
    value = agree(choice.value if choice is not None else 0, procs)
    if value == 0:
        what = (f"a batch of {SMALLEST['batch']} at {pixels(crop_hw(cfg.image_size))} px" if auto == "batch_size"
                else f"a crop of {SMALLEST['crop']} px at a batch of {cfg.batch_size}")
        raise ResourceLimitError(f"not even {what} fits in {budget.said} less a margin of "
                                 f"{format_bytes(budget.margin)}; lower {{{LOWER[auto == 'image_size']}}}, or give "
                                 "more {memory_budget}", parameters=(*LOWER, "memory_budget"))
    setattr(cfg, auto, value)
    choice = SizeChoice(auto, value, choice.other_mode, choice.other_value, budget, choice.peak)
    if procs.is_writer:
        write_line(f"iabn-zoo: {choice.line()}")
    return choice
