"""Training-memory measurement: what one forward/backward step keeps for backward, its peak and its time, per bn_mode.
The step ends in the loss of the network's task (`train.task`, the ledger loss its training uses).

Bytes kept for backward are counted with `torch.autograd.graph.saved_tensors_hooks`: every tensor autograd saves
during the forward pass, parameters excluded, each storage counted once (an in-place layer's output that the next
convolution also saves is one storage). The peak is CUDA's `max_memory_allocated` over the step; on the CPU there
is no allocator statistic to read, so it is None. The baseline is the network built the usual way
(`bn_mode="standard"`: BN then activation, and the family's plain formulation).

With gradient checkpointing (`set_grad_checkpointing`) each mode is measured again: what is kept is then mostly the
blocks' inputs (checkpoint keeps them for the recomputation), and the recomputation of one block in backward adds
its activations for a moment, which only the CUDA peak sees; the time says what the recomputation costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import bad_argument
from ..factory import create_model
from ..system.devices import resolve_device
from .task import LedgerLoss, ledger_loss_of

MEASURED_MODES = ("standard", "inplace")
MIB = 2 ** 20


@dataclass(frozen=True)
class StepMemory:
    """One training step of one network: bytes kept for backward, peak bytes (None where unmeasurable), seconds."""

    bn_mode: str
    saved_bytes: int
    peak_bytes: int | None
    step_seconds: float
    grad_checkpointing: bool = False


def storage_key(tensor: torch.Tensor) -> int:
    """What tells one storage from another: its data pointer, or on the meta device (where every pointer is 0) the
    storage object itself, which views and in-place results share as they share data on a real device."""
    storage = tensor.untyped_storage()
    return storage.data_ptr() or storage._cdata


class SavedTensorLedger:
    """Counts the storages autograd saves for backward, once each, leaving out the given parameters.

    On the meta device (shapes only, nothing allocated) it counts what the same step would save on a real one."""

    def __init__(self, parameters: list[torch.Tensor]):
        self._excluded = {storage_key(p) for p in parameters}
        self._storages: dict[tuple[str, int], int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Hook run for each saved tensor: record its storage and hand the tensor itself to autograd."""
        key = storage_key(tensor)
        if key not in self._excluded:
            self._storages[(str(tensor.device), key)] = tensor.untyped_storage().nbytes()
        return tensor

    @property
    def saved_bytes(self) -> int:
        """Total bytes of the distinct storages saved so far."""
        return sum(self._storages.values())

    @contextmanager
    def recording(self) -> Iterator[SavedTensorLedger]:
        """Record every tensor saved for backward inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            yield self


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_forward(model: nn.Module, inputs: torch.Tensor,
                     loss: LedgerLoss | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward half of a training step: what to call backward on, and the gradient to give it.

    `loss` is the ledger loss of the network's task (`train.task`: the loss its training uses, against random
    targets; for segmentation the logits resized to the crop, so they are counted as training keeps them). Without
    one, or for stage maps (features_only), a random gradient at the output(s) keeps the measurement to what the
    network itself saves."""
    output = model(inputs)
    if isinstance(output, (list, tuple)):
        output = torch.cat([o.flatten() for o in output])
    elif loss is not None:
        return loss(output, inputs), None
    return output, torch.randn_like(output)


def training_step(model: nn.Module, inputs: torch.Tensor, loss: LedgerLoss | None = None) -> None:
    """One forward and backward pass (see `training_forward` for the loss)."""
    output, gradient = training_forward(model, inputs, loss)
    output.backward(gradient)


def measure_step(model: nn.Module, inputs: torch.Tensor, bn_mode: str = "", repeats: int = 1,
                 grad_checkpointing: bool = False, loss: LedgerLoss | None = None) -> StepMemory:
    """Measure training steps of `model` (put in training mode) on `inputs`: bytes and peak of the first, median time.

    An unmeasured warm-up step runs first, so that one-off costs (allocator growth, lazy initialisation, thread
    pools) are not counted as the step's.
    """
    model.train()
    device = inputs.device
    training_step(model, inputs, loss)
    model.zero_grad(set_to_none=True)
    ledger = SavedTensorLedger(list(model.parameters()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    with ledger.recording():
        seconds = [_timed_step(model, inputs, loss)]
    peak = torch.cuda.max_memory_allocated(device) - start_bytes if device.type == "cuda" else None
    seconds += [_timed_step(model, inputs, loss) for _ in range(repeats - 1)]
    return StepMemory(bn_mode, ledger.saved_bytes, peak, statistics.median(seconds), grad_checkpointing)


def _timed_step(model: nn.Module, inputs: torch.Tensor, loss: LedgerLoss | None) -> float:
    """Seconds of one training step, the device synchronised on both ends; gradients cleared afterwards."""
    _synchronize(inputs.device)
    start = time.perf_counter()
    training_step(model, inputs, loss)
    _synchronize(inputs.device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def image_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a square side or an (H, W) pair."""
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def check_step_size(batch: int, size: int | tuple[int, int]) -> None:
    """Batch statistics need two samples or more, and the networks need images of 32 px or more (a side, or H, W)."""
    if not isinstance(batch, int) or batch < 2:
        raise bad_argument("batch", f"must be an integer >= 2 (batch norm needs statistics), got {batch!r}")
    sides = [size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else [None]
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in sides):
        raise bad_argument("size", f"must be an integer >= 32 pixels, or (height, width) of such, got {size!r}")


def build_model(name: str, bn_mode: str, device: torch.device, grad_checkpointing: bool = False) -> nn.Module:
    """Model `name` in `bn_mode` (its default form for that mode) in training mode on `device` (on the meta device
    built there directly: nothing is allocated); a deeplabv3 network's backbone weights are not fetched (the
    memory is the same)."""
    if device.type == "meta":
        with torch.device("meta"):
            model = create_model(name, pretrained=False, bn_mode=bn_mode, backbone_weights=None).train()
    else:
        model = create_model(name, pretrained=False, bn_mode=bn_mode, backbone_weights=None).to(device).train()
    model.set_grad_checkpointing(grad_checkpointing)
    return model


def random_images(batch: int, size: int | tuple[int, int], device: torch.device, seed: int = 0) -> torch.Tensor:
    """A seeded random batch of images of a side or (H, W) on `device` (empty on the meta device)."""
    shape = (batch, 3, *image_shape(size))
    if device.type == "meta":
        return torch.empty(shape, device=device)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def model_and_inputs(name: str, bn_mode: str, *, batch: int, size: int | tuple[int, int], device: torch.device,
                     seed: int = 0, grad_checkpointing: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """Model `name` built in `bn_mode` (its default form for that mode), with gradient checkpointing if asked, and
    a random batch, both seeded."""
    torch.manual_seed(seed)
    model = build_model(name, bn_mode, device, grad_checkpointing)
    return model, random_images(batch, size, device, seed)


def compare_modes(name: str, *, batch: int = 4, size: int | tuple[int, int] = 224, device: str = "cpu",
                  modes: tuple[str, ...] = MEASURED_MODES, seed: int = 0, repeats: int = 1,
                  grad_checkpointing: bool = False) -> list[StepMemory]:
    """Measure training steps of model `name` in each bn_mode (same seed and input for all; median of `repeats`);
    with `grad_checkpointing`, each mode once more with its blocks recomputed in backward."""
    check_step_size(batch, size)
    if not isinstance(repeats, int) or repeats < 1:
        raise bad_argument("repeats", f"must be an integer >= 1, got {repeats!r}")
    target = resolve_device(device)
    loss = ledger_loss_of(name)
    results = []
    for checkpointing in (False, True) if grad_checkpointing else (False,):
        for bn_mode in modes:
            model, inputs = model_and_inputs(name, bn_mode, batch=batch, size=size, device=target, seed=seed,
                                             grad_checkpointing=checkpointing)
            results.append(measure_step(model, inputs, bn_mode, repeats, checkpointing, loss))
            del model
    return results


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, None when either is unknown or the baseline is zero."""
    if value is None or not baseline:
        return None
    return value / baseline


def report_rows(results: list[StepMemory], baseline_mode: str = "standard") -> list[dict]:
    """Table rows (MiB, seconds, and ratios to the baseline mode without checkpointing) for the command line and
    benchmarks; a checkpointed row also gets what checkpointing saves and costs against the same mode without it
    (`ckpt_saved_ratio`, `ckpt_time_ratio`)."""
    plain = {r.bn_mode: r for r in results if not r.grad_checkpointing}
    base = plain.get(baseline_mode, results[0])
    rows = []
    for result in results:
        row = asdict(result)
        row["saved_mib"] = result.saved_bytes / MIB
        row["peak_mib"] = None if result.peak_bytes is None else result.peak_bytes / MIB
        row["saved_ratio"] = ratio(result.saved_bytes, base.saved_bytes)
        row["peak_ratio"] = ratio(result.peak_bytes, base.peak_bytes)
        row["time_ratio"] = ratio(result.step_seconds, base.step_seconds)
        without = plain.get(result.bn_mode) if result.grad_checkpointing else None
        row["ckpt_saved_ratio"] = None if without is None else ratio(result.saved_bytes, without.saved_bytes)
        row["ckpt_time_ratio"] = None if without is None else ratio(result.step_seconds, without.step_seconds)
        rows.append(row)
    return rows
