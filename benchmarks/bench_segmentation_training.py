"""Segmentation training with InPlace-ABN against standard BN + activation: bytes kept for backward at a 512x512
crop, the largest batch a memory budget holds, and the training step time.

- Bytes kept: `deeplabv3_resnext101` and the Vistas network (`wider_resnet38_a2_deeplab3`), batch 2, 512x512, one
  training forward with the loss segmentation training uses (per-pixel cross-entropy on the logits resized to the
  crop, so the resized logits are counted). Counted by the saved-tensor ledger on the meta device (the same saved
  tensors, shapes only: a standard-BN step of these networks at 512 px keeps several GiB, too much beside other
  work on a shared 2-CPU machine); each row's note gives the real CPU forward at a smaller crop counted by the same
  ledger, which must agree byte for byte, so the meta count is checked, not assumed.
- Largest batch: `iabn_zoo.train.budget.fit_budget` at a 512x512 crop within a 16 GiB budget (weights, gradients
  and SGD momentum counted too), answers verified at the answer and one above.
- Step time: forward, loss, backward and an SGD step of a DeepLabV3 network, InPlace-ABN on the default backend
  against standard BN, interleaved medians.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import bench_device, interleaved_medians, row, synchronized
from iabn_zoo.models._registry import is_arch
from iabn_zoo.train.budget import fit_budget, kept_bytes
from iabn_zoo.train.memory import MIB, build_model, model_and_inputs, training_forward
from iabn_zoo.train.task import ledger_loss_of

KEPT_TARGET = 0.5
BATCH_TARGET = 1.8
STEP_TARGET = 1.15
NETWORKS = ("deeplabv3_resnext101", "wider_resnet38_a2_deeplab3")
BUDGET = 16 * 2 ** 30
META = torch.device("meta")


def kept_rows(name: str, *, batch: int, side: int, check_side: int) -> list[dict[str, Any]]:
    """Bytes kept for backward at `side` px (meta ledger), checked against a real CPU forward at `check_side`."""
    kept, checks, loss = {}, [], ledger_loss_of(name)
    for bn_mode in ("inplace", "standard"):
        kept[bn_mode] = kept_bytes(build_model(name, bn_mode, META), batch, (side, side), META, loss)
        real = kept_bytes(build_model(name, bn_mode, torch.device("cpu")), batch, (check_side, check_side),
                          torch.device("cpu"), loss)
        meta = kept_bytes(build_model(name, bn_mode, META), batch, (check_side, check_side), META, loss)
        checks.append(f"{bn_mode} {real / MIB:.1f} MiB real = {meta / MIB:.1f} MiB meta"
                      + ("" if real == meta else " (DIFFER)"))
    note = (f"bytes kept for backward, batch {batch}, {side}x{side}, loss on resized logits; meta-device ledger; "
            f"checked at {check_side} px: {', '.join(checks)}")
    return [row(f"memory {name} b{batch} {side}px inplace/standard", kept["inplace"] / MIB, kept["standard"] / MIB,
                target=KEPT_TARGET, unit="MiB", note=note)]


def batch_row(name: str, side: int) -> dict[str, Any]:
    """The largest batch at `side` px within BUDGET, in-place over standard (higher is better)."""
    standard, inplace = fit_budget(name, BUDGET, fit="batch", size=side, device="cpu")
    verified = "verified at the answer and one above" if standard.verified and inplace.verified else "extrapolated"
    return row(f"largest batch {name} {side}px within 16 GiB, inplace/standard", float(inplace.answer or 0),
               float(standard.answer or 0), target=BATCH_TARGET, unit="images", higher_is_better=True,
               note=f"weights, gradients and SGD momentum counted ({standard.static_bytes / 2 ** 30:.2f} GiB); "
                    f"bytes kept counted on {standard.counted_on}, {verified}")


def step_function(model: torch.nn.Module, images: torch.Tensor, task_loss):
    """One SGD training step of a segmentation network: training's loss (cross-entropy on the logits resized to the
    crop)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = training_forward(model, images.clone(), task_loss)
        loss.backward()
        optimizer.step()

    return step


def step_row(name: str, *, batch: int, side: int, repeats: int, device: str) -> dict[str, Any]:
    """Step time of `name` with InPlace-ABN (default backend) against standard BN, interleaved medians."""
    steps = {}
    for bn_mode in ("inplace", "standard"):
        model, images = model_and_inputs(name, bn_mode, batch=batch, size=side, device=torch.device(device))
        steps[bn_mode] = synchronized(step_function(model, images, ledger_loss_of(name)), device)
    ours, base = interleaved_medians(steps["inplace"], steps["standard"], repeats=repeats, warmup=1)
    return row(f"train step {name} b{batch} {side}px {device} (InPlace-ABN default backend vs standard BN)", ours,
               base, target=STEP_TARGET, unit="s",
               note=f"forward, cross-entropy on resized logits, backward, SGD; median of {repeats}, interleaved")


def run(quick: bool) -> list[dict[str, Any]]:
    """Kept-bytes and largest-batch rows of both networks, and one step-time row; quick: smaller checks."""
    check_side, step_net, step_side, repeats = (64, "deeplabv3_resnet18", 128, 1) if quick else (
        128, "deeplabv3_resnet50", 256, 3)
    rows: list[dict[str, Any]] = []
    for name in NETWORKS:
        if is_arch(name):
            rows.extend(kept_rows(name, batch=2, side=512, check_side=check_side))
            rows.append(batch_row(name, 512))
    if is_arch(step_net):
        rows.append(step_row(step_net, batch=2, side=step_side, repeats=repeats, device=bench_device()))
    return rows
