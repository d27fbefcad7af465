"""Training step time of whole networks: InPlace-ABN (the default backend, and the other kernels) against standard
BN, same architecture.

The default backend, `auto`, runs the torch kernels on CPU and the compiled ones on CUDA (when the extension has CUDA
kernels); its rows carry the target. The forced backend whose kernels `auto` does not pick on this device gets a
row without a target. A step is forward, cross-entropy, backward and an SGD update. Each side is the network as
`create_model` builds it for its bn_mode (the in-place modes also turn on the family's memory-lean parts, e.g. the
stem pooling), so the ratio is what a user pays for switching. DenseNet-264 recomputes its bottlenecks on purpose
(memory-efficient), so its row reports the cost without a target. Memory (bytes kept, CUDA peak) is bench_memory's;
the compiled step is bench_compile's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from benchmarks.common import bench_device, interleaved_medians, row, synchronized

TARGET_STEP_RATIO = 1.15
ARCHS = {"resnext101": TARGET_STEP_RATIO, "wider_resnet38": TARGET_STEP_RATIO, "densenet264": None}
NUM_CLASSES = 1000


def step_function(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """A callable running one SGD training step of `model` on the batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images.clone()), labels).backward()
        optimizer.step()

    return step


def measure(arch: str, target: float | None, backend: str, batch: int, size: int, repeats: int,
            device: str) -> dict[str, Any]:
    """The step-time row of one architecture with InPlace-ABN on `backend`."""
    import iabn_zoo
    from iabn_zoo.layers.kernels import kernels_name

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    inplace = iabn_zoo.create_model(arch, bn_mode="inplace", backend=backend).to(device).train()
    standard = iabn_zoo.create_model(arch, bn_mode="standard").to(device).train()
    steps = {name: synchronized(step_function(model, images, labels), device)
             for name, model in (("inplace", inplace), ("standard", standard))}
    ours, base = interleaved_medians(steps["inplace"], steps["standard"], repeats=repeats, warmup=1)
    kernels = kernels_name(backend, torch.device(device).type)
    role = "default backend" if backend == "auto" else "forced backend, no target"
    note = "recomputes its bottlenecks on purpose (memory-efficient): cost reported" if target is None else role
    return row(f"train step {arch} b{batch} {size}px {device} (InPlace-ABN {backend} = {kernels} kernels vs "
               f"standard BN)", ours, base, target=target if backend == "auto" else None, unit="s", note=note)


def backends(device: str) -> list[str]:
    """`auto` (the default), then the forced backend running the kernels `auto` does not pick on `device`, where
    those are usable there."""
    from iabn_zoo.layers.kernels import kernels_name

    device_type = torch.device(device).type
    other = "torch" if kernels_name("auto", device_type) == "native" else "native"
    return ["auto"] + ([other] if kernels_name(other, device_type) != kernels_name("auto", device_type) else [])


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ResNeXt101, WideResNet38 and DenseNet264 on each backend: batch 4 at 224 px on CPU (16 on CUDA),
    three repeats; quick: batch 2 at 64 px, one repeat."""
    device = bench_device()
    if quick:
        batch, size, repeats = 2, 64, 1
    else:
        batch, size, repeats = (16, 224, 5) if device.startswith("cuda") else (4, 224, 3)
    return [measure(arch, target, backend, batch, size, repeats, device)
            for backend in backends(device) for arch, target in ARCHS.items()]
