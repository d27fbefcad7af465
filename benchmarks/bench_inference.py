"""Inference throughput: the eval fast path (iabn_zoo.models._fast_eval) against the compiled InPlace-ABN layers in eval mode.

Both sides are the same network with the same weights, batch 8 at 224 px, under `torch.no_grad()`, timed
alternately; the note gives the largest relative difference of their outputs (target: within 1e-4).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from benchmarks.common import bench_device, interleaved_medians, row, synchronized

ARCHS = {"resnext101": 5, "wider_resnet38": 3, "densenet264": 5, "resnet50": 5}  # timed repeats of a full run
TARGET_SPEEDUP = 2.0


def randomize_norm_statistics(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm-act layer non-trivial weights and running statistics, as a trained network has."""
    from iabn_zoo.layers import ABN

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, ABN):
                size = layer.num_features
                layer.weight.copy_(torch.rand(size, generator=generator) * 1.5 + 0.25)
                layer.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                layer.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def model_pair(arch: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(fast, baseline): one network in eval mode with the fast path and its copy on the compiled layers only."""
    import iabn_zoo
    from iabn_zoo.models._fast_eval import disable_fast_eval

    baseline = iabn_zoo.create_model(arch, bn_mode="inplace", backend="native")
    randomize_norm_statistics(baseline)
    baseline.to(device)
    fast = copy.deepcopy(baseline).eval()
    disable_fast_eval(baseline)
    return fast, baseline.eval()


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def measure(arch: str, batch: int, size: int, repeats: int, device: str) -> dict[str, Any]:
    """One row: images per second of both sides and their output difference (the first call of each side, which
    also serves as warm-up)."""
    fast, baseline = model_pair(arch, device)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        difference = relative_difference(fast(images.clone()), baseline(images.clone()))
        fast_s, base_s = interleaved_medians(synchronized(lambda: fast(images.clone()), device),
                                             synchronized(lambda: baseline(images.clone()), device),
                                             repeats=repeats, warmup=0)
    threads = f"{torch.get_num_threads()} threads" if device == "cpu" else device
    return row(f"inference {arch} b{batch} {size}px {device} (fast eval vs compiled iABN eval)", batch / fast_s,
               batch / base_s, target=TARGET_SPEEDUP, unit="img/s", higher_is_better=True,
               note=f"max relative output difference {difference:.1e}; {threads}")


def measure_premise(arch: str, batch: int, size: int, repeats: int, device: str) -> dict[str, Any]:
    """Report-only row: the compiled InPlace-ABN layers in eval against standard BN layers in eval (fast path off on
    both), the gap the authors measured on their CPU (7.1 s against 4.2 s for ResNeXt101, batch 8, 224 px)."""
    import iabn_zoo
    from iabn_zoo.models._fast_eval import disable_fast_eval

    models = {}
    for bn_mode in ("inplace", "standard"):
        model = iabn_zoo.create_model(arch, bn_mode=bn_mode, backend="native")
        randomize_norm_statistics(model)
        disable_fast_eval(model)
        models[bn_mode] = model.to(device).eval()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        inplace_s, standard_s = interleaved_medians(synchronized(lambda: models["inplace"](images.clone()), device),
                                                    synchronized(lambda: models["standard"](images.clone()), device),
                                                    repeats=repeats)
    return row(f"inference {arch} b{batch} {size}px {device} (compiled iABN eval vs standard BN eval)",
               batch / inplace_s, batch / standard_s, target=None, unit="img/s", higher_is_better=True,
               note="context for the fast path: the authors measured 0.59 here (7.1 s vs 4.2 s)")


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for the four networks, then the compiled-vs-standard context row: batch 8 at 224 px (quick: batch 2
    at 96 px, one repeat)."""
    batch, size = (2, 96) if quick else (8, 224)
    rows = [measure(arch, batch, size, 1 if quick else repeats, bench_device()) for arch, repeats in ARCHS.items()]
    return rows + [measure_premise("resnext101", batch, size, 1 if quick else 3, bench_device())]
