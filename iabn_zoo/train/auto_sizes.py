"""The sizes `auto` chooses (a batch, or a segmentation crop): the largest whose real training steps fit the
run's budget, measured on the device, and what the other norm mode would get (`choose_size`); the budget and what
counts against it besides the step (`Budget`, `loader_bytes`).

The margin (MARGIN_SHARE of the budget, at least MARGIN_FLOOR) is kept free for what two measured steps do not
show: the validation pass, the epoch being saved, the logs' libraries, the allocator's growth over many steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..system.memory_limits import peak_resident_bytes, release_freed_memory, reset_peak_resident, resident_bytes
from ..system.resources import format_bytes
from .budget import LARGEST, SMALLEST, StepMeter, fit_mode, make_optimizer
from .memory import random_images, training_forward
from .model import NetworkSpec
from .task_options import crop_hw

MIB = 2 ** 20
MARGIN_SHARE = 0.10
MARGIN_FLOOR = 192 * MIB
FIRST_RATIO = 2.0  # before a second measurement, a real step is taken to hold this many times the ledger's count
PROBES = 4  # sizes measured at most
PREFETCH = 2  # batches each DataLoader worker prepares ahead (torch's default prefetch_factor)


@dataclass(frozen=True)
class Budget:
    """What one process may use in all (`limit`), what it uses now, and where the limit comes from."""

    limit: int
    in_use: int
    source: str  # "the memory budget", "what this machine has free"

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
    if device.type != "cpu":
        return 0
    release_freed_memory()
    return resident_bytes() or 0


def loader_bytes(cfg: Any, task: Any, device: torch.device, batch: int, crop: tuple[int, int]) -> int:
    """The data loader's batches that share the budget (the CPU's memory; pinned host memory is not the GPU's)."""
    if device.type != "cpu":
        return 0
    return (2 + cfg.num_workers * PREFETCH) * task.batch_bytes(batch, crop)


def measured_peak(spec: NetworkSpec, cfg: Any, task: Any, device: torch.device, bn_mode: str, batch: int,
                  crop: tuple[int, int], steps: int = 2) -> int:
    """The peak of `steps` real training steps (forward, the task's loss, backward, an optimizer step; the second
    shows the allocator's steady state) at `batch` crops of `crop`, in `bn_mode`: the process's resident set on the
    CPU, CUDA's allocated bytes, both in all (not over a baseline)."""
    torch.manual_seed(0)
    model = spec.build(bn_mode=bn_mode, device=device)
    optimizer = make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    inputs = random_images(batch, crop, device)
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_resident()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        output, gradient = training_forward(model, inputs, task.ledger_loss)
        output.backward(gradient)
        del output, gradient
        optimizer.step()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_resident_bytes()
    del model, optimizer, inputs
    release_freed_memory()
    return peak


@dataclass(frozen=True)
class Line:
    """A real step's peak over the process's baseline as a line in the ledger's count: offset + slope * count."""

    offset: float
    slope: float

    @classmethod
    def through(cls, point: tuple[int, int], slope: float) -> Line:
        """The line of `slope` through one (count, measured excess) point."""
        return cls(point[1] - slope * point[0], slope)

    @classmethod
    def between(cls, low: tuple[int, int], high: tuple[int, int]) -> Line:
        """The line through two points, its slope at least 1 (the ledger is a floor of what a step holds)."""
        return cls.through(low, max(1.0, (high[1] - low[1]) / max(high[0] - low[0], 1)))


class Prediction:
    """What a run needs at a size as measured steps predict it (`line` of the ledger's count: weights, gradients,
    optimizer state, kept for backward), plus the data loader's batches; `fit_mode` searches it."""

    def __init__(self, meter: StepMeter, line: Line, loader: Any):
        self.meter, self.line, self.loader = meter, line, loader

    def total(self, batch: int, size: tuple[int, int]) -> int:
        return int(self.line.offset + self.line.slope * self.meter.total(batch, size)) + self.loader(batch, size)

    def affordable(self, needed: float) -> bool:
        return self.meter.affordable(needed / self.line.slope)


@dataclass(frozen=True)
class Probe:
    """A size that fits, and the peak its measured steps reached."""

    value: int
    peak: int


class SizeSearch:
    """The search of one `auto` option (batch_size at the run's crop, or image_size, a square crop, at its batch)
    within a budget, on `device`."""

    def __init__(self, cfg: Any, task: Any, spec: NetworkSpec, budget: Budget, device: torch.device, option: str):
        self.cfg, self.task, self.spec, self.budget, self.device = cfg, task, spec, budget, device
        self.fit = "batch" if option == "batch_size" else "crop"
        self.crop = crop_hw(cfg.image_size) if self.fit == "batch" else (0, 0)
        self.limit = task.batch_limit() if self.fit == "batch" else LARGEST
        self.base = in_use(device)
        self.meters: dict[str, StepMeter] = {}

    def meter(self, bn_mode: str) -> StepMeter:
        """The ledger of the run's network in `bn_mode`, with the task's loss (made once per mode)."""
        if bn_mode not in self.meters:
            self.meters[bn_mode] = StepMeter(lambda where: self.spec.build(bn_mode=bn_mode, device=where),
                                             self.device, self.cfg.optimizer, self.task.ledger_loss)
        return self.meters[bn_mode]

    def shape(self, value: int) -> tuple[int, tuple[int, int]]:
        """(batch, crop) of a candidate value."""
        return (value, self.crop) if self.fit == "batch" else (self.cfg.batch_size, (value, value))

    def loader(self, batch: int, size: tuple[int, int]) -> int:
        return loader_bytes(self.cfg, self.task, self.device, batch, size)

    def predicted(self, meter: StepMeter, line: Line, ceiling: int) -> int | None:
        """The largest value whose predicted step and batches fit the budget less its margin (at most `ceiling`);
        None when not even the smallest does."""
        value, *_ = fit_mode(Prediction(meter, line, self.loader), self.fit,
                             self.budget.limit - self.budget.margin - self.base, batch=self.cfg.batch_size,
                             size=self.crop)
        return None if value is None else min(value, ceiling)

    def largest(self, bn_mode: str) -> Probe | None:
        """The largest value whose measured steps fit the budget in `bn_mode` (see `choose_size`)."""
        meter = self.meter(bn_mode)
        self.base = in_use(self.device)  # after the ledger's own real step: its one-off costs are the baseline's
        points: list[tuple[int, int]] = []  # (ledger count, measured peak over the baseline)
        best, ceiling, value = None, self.limit, SMALLEST[self.fit]
        for _ in range(PROBES):
            batch, size = self.shape(value)
            peak = measured_peak(self.spec, self.cfg, self.task, self.device, bn_mode, batch, size)
            points.append((meter.total(batch, size), peak - self.base))
            held = peak + self.loader(batch, size) - self.task.batch_bytes(batch, size)  # the steps held one
            line = Line.between(min(points), max(points)) if len(points) > 1 else Line.through(points[0], FIRST_RATIO)
            fits = held <= self.budget.limit - self.budget.margin // 2
            best, ceiling = (Probe(value, peak), ceiling) if fits else (best, value - 1)
            value = self.predicted(meter, line, ceiling) or 0
            if not fits and best is not None:  # the line missed: no further than halfway to the failed size
                value = min(value, (best.value + ceiling + 1) // 2)
            if value < SMALLEST[self.fit] or (best is not None and value <= best.value):
                break
        return best


@dataclass(frozen=True)
class SizeChoice:
    """What `auto` chose: the option, its value and measured peak, the other norm mode's answer, the budget."""

    option: str
    value: int
    peak: int
    other_mode: str
    other_value: int | None
    budget: Budget

    def line(self) -> str:
        """`batch 19 fits in 16.0 GiB (standard BatchNorm: 9); ...`, or `crop 640 px fits in ...`."""
        names = {"standard": "standard BatchNorm", "inplace": "InPlace-ABN"}
        unit = " px" if self.option == "image_size" else ""
        what = "batch" if self.option == "batch_size" else "crop"
        other = "none fits" if self.other_value is None else f"{self.other_value}{unit}"
        return (f"{what} {self.value}{unit} fits in {format_bytes(self.budget.limit)} ({names[self.other_mode]}: "
                f"{other}); {self.budget.source}, measured steps peaked at {format_bytes(self.peak)}")


def choose_size(cfg: Any, task: Any, spec: NetworkSpec, budget: Budget, device: torch.device,
                option: str) -> SizeChoice | None:
    """The largest `option` whose real steps fit the budget, and what the other norm mode would get.

    The ledger's count is a floor of what a real step holds (gradients in flight, convolution workspaces, the
    allocator's slack, a fixed cost of the first steps): two real steps at the smallest size are measured first;
    their peak over the baseline, plus FIRST_RATIO times the ledger's count, predicts the largest size within the
    budget less its margin, which is measured in turn; then the line through the two measurements predicts again
    (PROBES sizes in all; a size that does not fit caps the next ones). A size fits when its measured peak, with
    the data loader's batches, leaves half the margin free; the largest that fit is the answer (None: not even the
    smallest fits). The other mode's answer is the largest size whose ledger count, in that mode, is within the
    count of the chosen size: what it would fit in the memory the chosen step is counted to need."""
    search = SizeSearch(cfg, task, spec, budget, device, option)
    chosen = search.largest(spec.bn_mode)
    if chosen is None:
        return None
    other = "standard" if spec.bn_mode != "standard" else "inplace"
    counted = search.meter(spec.bn_mode).total(*search.shape(chosen.value))
    compared, *_ = fit_mode(search.meter(other), search.fit, counted, batch=cfg.batch_size, size=search.crop)
    return SizeChoice(option, chosen.value, chosen.peak, other, compared, budget)
