"""The largest batch (at a crop) or the largest square crop (at a batch) whose training step fits a memory budget,
per bn_mode and with or without gradient checkpointing: measured, not guessed from a formula.

What a step needs is counted as the issue defines it: the bytes autograd keeps for backward (the saved-tensor
ledger of `train.memory`, the loss included: a segmentation network's logits resized to the crop), plus the
weights and buffers, their gradients and the optimizer's state. How each part is obtained:

1. A real training step at a small size (batch 2, 64x64 px) on the device, followed by a real optimizer
   step: the weights, gradients and optimizer state are summed from the tensors themselves, and the ledger counts
   what the step kept.
2. The same ledger on the meta device (shapes only, nothing allocated) at that size. When it counts the same bytes
   as the real step, every further count uses it: exact for any size, at no memory cost. When it does not (a kernel
   that saves differently on the device), the counts are real steps on the device.
3. Counts at two sizes of the user's setting (batch 2 and 4 at the crop, or crops of 64 and 128 px at the batch)
   give the per-image (per-pixel) slope; the answer is extrapolated from it, then counted at the answer and at the
   answer + 1 (a few more counts when the extrapolation was off), so the answer is verified: it fits, one more does
   not. Counting on the device (step 2 failed), the answer is not counted when it would take more than a quarter of
   the device's memory: it is then the extrapolation, and says so (`verified` False).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from ..errors import bad_argument
from ..system.devices import resolve_device
from ..system.resources import total_memory
from .memory import MEASURED_MODES, SavedTensorLedger, build_model, random_images, training_forward
from .task import LedgerLoss, ledger_loss_of

FITS = ("batch", "crop")
OPTIMIZERS = ("sgd", "adamw")
CALIBRATION_BATCH = 2
CALIBRATION_SIDE = 64
SLOPE_SIZES = {"batch": (2, 4), "crop": (64, 128)}
SMALLEST = {"batch": 2, "crop": 32}  # batch statistics need two images; the networks need 32 px
LARGEST = 2 ** 20  # no search goes past this (a batch or side nobody trains at)
AFFORDABLE_SHARE = 4  # a real count may use at most 1/4 of the device's memory


@dataclass(frozen=True)
class StaticMemory:
    """Bytes a training step needs whatever its size: weights and buffers, gradients, optimizer state."""

    weights: int
    gradients: int
    optimizer_state: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state


@dataclass(frozen=True)
class BudgetAnswer:
    """The largest batch or crop side of one mode within the budget (None: not even the smallest fits)."""

    bn_mode: str
    grad_checkpointing: bool
    fit: str  # "batch" or "crop"
    answer: int | None
    bytes_at_answer: int | None  # what a step at the answer needs
    bytes_above: int | None  # ... at the answer + 1 (over the budget; None past LARGEST or when not verified)
    static_bytes: int  # weights + gradients + optimizer state
    slope_bytes: float  # kept for backward per image (fit batch) or per pixel (fit crop)
    counted_on: str  # "meta" (the ledger on the meta device) or the device the counts ran on
    verified: bool  # counted at the answer and above it, not only extrapolated


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages of `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def make_optimizer(name: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer whose state is counted: SGD with momentum (as `finetune` uses it) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=1e-3)
    raise bad_argument("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def kept_bytes(model: nn.Module, batch: int, size: tuple[int, int], device: torch.device,
               loss: LedgerLoss | None) -> int:
    """Bytes the ledger counts for one training forward of `model` on a random batch, ending in `loss` (the task's
    ledger loss; backward not run)."""
    inputs = random_images(batch, size, device)
    ledger = SavedTensorLedger(list(model.parameters()))
    with ledger.recording():
        output, _ = training_forward(model, inputs, loss)
    del output
    return ledger.saved_bytes


class StepMeter:
    """What a training step of one network in one mode needs, at any batch and crop (steps 1 and 2 above):
    `build(device)` makes the network in training mode, `loss` is its task's ledger loss."""

    def __init__(self, build: Callable[[torch.device], nn.Module], device: torch.device, optimizer: str,
                 loss: LedgerLoss | None):
        self.device = device
        self.loss = loss
        torch.manual_seed(0)
        self.model = build(device)
        size = (CALIBRATION_SIDE, CALIBRATION_SIDE)
        self.static, real_kept = self._real_step(optimizer, size)
        meta_model = build(torch.device("meta"))
        try:
            meta_kept = kept_bytes(meta_model, CALIBRATION_BATCH, size, torch.device("meta"), loss)
        except (RuntimeError, NotImplementedError):  # an operation without a meta kernel
            meta_kept = None
        self.on_meta = meta_kept == real_kept
        if self.on_meta:
            self.model = meta_model
            self.device = torch.device("meta")

    def _real_step(self, optimizer_name: str, size: tuple[int, int]) -> tuple[StaticMemory, int]:
        """One real training step with an optimizer step: the static bytes and the bytes kept for backward."""
        inputs = random_images(CALIBRATION_BATCH, size, self.device)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        ledger = SavedTensorLedger(list(self.model.parameters()))
        with ledger.recording():
            output, gradient = training_forward(self.model, inputs, self.loss)
        output.backward(gradient)
        optimizer = make_optimizer(optimizer_name, parameters)
        optimizer.step()
        state = [v for values in optimizer.state.values() for v in values.values()
                 if isinstance(v, torch.Tensor) and v.dim() > 0]
        static = StaticMemory(weights=tensor_bytes(list(self.model.parameters()) + list(self.model.buffers())),
                              gradients=tensor_bytes([p.grad for p in parameters if p.grad is not None]),
                              optimizer_state=tensor_bytes(state))
        self.model.zero_grad(set_to_none=True)
        return static, ledger.saved_bytes

    @property
    def counted_on(self) -> str:
        return "meta" if self.on_meta else str(self.device)

    def total(self, batch: int, size: tuple[int, int]) -> int:
        """Bytes of a training step at `batch` and `size`: static plus kept for backward, counted."""
        return self.static.total + kept_bytes(self.model, batch, size, self.device, self.loss)

    def affordable(self, needed: float) -> bool:
        """Whether counting a step of `needed` bytes is cheap: always on meta, else a quarter of the device."""
        if self.on_meta:
            return True
        memory = total_memory(self.device)
        return memory is None or needed <= memory / AFFORDABLE_SHARE


def largest_fitting(count: Callable[[int], int], budget: int, lowest: int, guess: int) -> tuple[int | None, dict]:
    """The largest x >= `lowest` with count(x) <= budget, count non-decreasing in x, searched from `guess` (one
    count each side when the guess is right, galloping then bisecting when not); (None, counts) when even `lowest`
    does not fit. Returns every count made, by x."""
    counts: dict[int, int] = {}

    def fits(x: int) -> bool:
        if x not in counts:
            counts[x] = count(x)
        return counts[x] <= budget

    if not fits(lowest):
        return None, counts
    low, high = lowest, None  # count(low) fits; count(high) does not
    guess = min(max(guess, lowest), LARGEST)
    if fits(guess):
        low, step = guess, 1
        while high is None and low < LARGEST:
            x = min(low + step, LARGEST)
            low, high = (x, None) if fits(x) else (low, x)
            step *= 2
    else:
        high, step = guess, 1
        while high - low > 1:
            x = max(high - step, low + 1)
            if fits(x):
                low = x
                break
            high, step = x, step * 2
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, counts


def fit_mode(meter: StepMeter, fit: str, budget: int, *, batch: int, size: tuple[int, int]) -> tuple:
    """(answer, bytes at it, bytes above it, slope, verified) for one mode."""
    small, large = SLOPE_SIZES[fit]
    if fit == "batch":
        def count(x: int) -> int:
            return meter.total(x, size)
        units = {small: small, large: large}
    else:
        def count(x: int) -> int:
            return meter.total(batch, (x, x))
        units = {small: small * small, large: large * large}
    at_small, at_large = count(small), count(large)
    slope = max((at_large - at_small) / (units[large] - units[small]), 1e-9)
    fixed = at_small - slope * units[small]
    room = max(budget - fixed, 0) / slope
    guess = int(room if fit == "batch" else math.sqrt(room))
    estimate = fixed + slope * (guess if fit == "batch" else guess * guess)
    if not meter.affordable(max(estimate, at_large)):
        return guess, int(estimate), None, slope, False
    answer, counts = largest_fitting(count, budget, SMALLEST[fit], guess)
    if answer is None:
        return None, None, counts[SMALLEST[fit]], slope, True
    return answer, counts[answer], counts.get(answer + 1), slope, True


def fit_budget(name: str, budget: int, *, fit: str = "batch", batch: int = 2, size: int | tuple[int, int] = 512,
               device: str = "cpu", grad_checkpointing: bool = False, optimizer: str = "sgd",
               modes: tuple[str, ...] = MEASURED_MODES) -> list[BudgetAnswer]:
    """The largest batch at `size` (fit "batch") or the largest square crop at `batch` (fit "crop") whose training
    step of `name` fits `budget` bytes, for each bn_mode, and each again with gradient checkpointing if asked."""
    if fit not in FITS:
        raise bad_argument("fit", f"must be one of {', '.join(FITS)}, got {fit!r}")
    if not isinstance(budget, int) or budget <= 0:
        raise bad_argument("budget", f"must be a positive number of bytes, got {budget!r}")
    if optimizer not in OPTIMIZERS:
        raise bad_argument("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    size = (size, size) if isinstance(size, int) else (size[0], size[1])
    target = resolve_device(device)
    loss = ledger_loss_of(name)
    answers = []
    for checkpointing in (False, True) if grad_checkpointing else (False,):
        for bn_mode in modes:
            meter = StepMeter(partial(build_model, name, bn_mode, grad_checkpointing=checkpointing), target,
                              optimizer, loss)
            answer, at_answer, above, slope, verified = fit_mode(meter, fit, budget, batch=batch, size=size)
            answers.append(BudgetAnswer(bn_mode, checkpointing, fit, answer, at_answer, above, meter.static.total,
                                        slope, meter.counted_on, verified))
            del meter
    return answers
