"""The compiled training step (torch.compile, inductor): InPlace-ABN against standard BN, both compiled.

Each side is the network as `create_model` builds it for its bn_mode, compiled whole (fullgraph). Time: interleaved
medians of compiled steps (forward, cross-entropy, backward, SGD update) after the compiling step. Memory: bytes kept
for backward, counted with `saved_tensors_hooks` around the call, as bench_memory does in eager mode: AOT autograd's
compiled function keeps its tensors through `ctx.save_for_backward`, so the hooks see exactly what the compiled
graph keeps, inductor's own recomputation included (it recomputes some of standard BN's pointwise work instead of
keeping it). The compiled graphs also keep a copy of most convolution weights in the layout inductor prefers
(channels-last; `torch._inductor.config.layout_optimization`), the same on both sides and nothing to do with the
norm layers: saved tensors equal to a parameter are counted apart as weight copies, and the memory row with the
target compares the activations. The eager ratio is measured the same way in the same run; the target is the
compiled ratio within 0.05 of it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from benchmarks.bench_train_step import step_function
from benchmarks.common import bench_device, interleaved_medians, row, synchronized

TARGET_STEP_RATIO = 1.05
MEMORY_SLACK = 0.05  # the compiled memory ratio may exceed the eager one by this much
NUM_CLASSES = 1000


def kept_bytes(model: nn.Module, parameters: list[torch.Tensor], images: torch.Tensor,
               labels: torch.Tensor) -> tuple[int, int]:
    """(activation bytes, weight-copy bytes) of the distinct storages one training step keeps for backward;
    parameters themselves are left out, saved tensors equal to one of them are weight copies."""
    excluded = {p.untyped_storage().data_ptr() for p in parameters}
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for parameter in parameters:
        by_shape.setdefault(tuple(parameter.shape), []).append(parameter)
    kept: dict[int, tuple[int, bool]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded and storage.data_ptr() not in kept:
            copy = any(torch.equal(tensor, p) for p in by_shape.get(tuple(tensor.shape), ()))
            kept[storage.data_ptr()] = (storage.nbytes(), copy)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.cross_entropy(model(images.clone()), labels)
    loss.backward()
    return (sum(n for n, copy in kept.values() if not copy), sum(n for n, copy in kept.values() if copy))


def measure(arch: str, batch: int, size: int, repeats: int, device: str) -> list[dict[str, Any]]:
    """Time and memory rows of one architecture, compiled InPlace-ABN against compiled standard BN."""
    import iabn_zoo

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    models = {mode: iabn_zoo.create_model(arch, bn_mode=mode).to(device).train() for mode in ("inplace", "standard")}
    compiled = {mode: torch.compile(model, fullgraph=True) for mode, model in models.items()}
    steps = {mode: synchronized(step_function(c, images, labels), device) for mode, c in compiled.items()}
    for step in steps.values():
        step()  # compiles
    memory = {}
    for mode, model in models.items():
        parameters = list(model.parameters())
        memory[mode] = (kept_bytes(compiled[mode], parameters, images, labels),
                        kept_bytes(model, parameters, images, labels))
        model.zero_grad(set_to_none=True)
    ours, base = interleaved_medians(steps["inplace"], steps["standard"], repeats=repeats, warmup=1)
    setting = f"b{batch} {size}px {device}"
    (ours_kept, ours_copies), (base_kept, base_copies) = (memory[m][0] for m in ("inplace", "standard"))
    eager_ratio = memory["inplace"][1][0] / memory["standard"][1][0]
    mib = 2 ** 20
    return [
        row(f"compiled train step {arch} {setting} (InPlace-ABN vs standard BN, both compiled)", ours, base,
            target=TARGET_STEP_RATIO, unit="s", note="torch.compile(fullgraph=True), inductor; median of "
                                                     f"{repeats} after the compiling step"),
        row(f"compiled memory {arch} {setting} inplace/standard (activations)", ours_kept / mib, base_kept / mib,
            target=eager_ratio + MEMORY_SLACK, unit="MiB",
            note=f"activation bytes the compiled graphs keep for backward (saved_tensors_hooks); eager ratio "
                 f"{eager_ratio:.3f} ({memory['inplace'][1][0] / mib:.1f} / {memory['standard'][1][0] / mib:.1f} "
                 f"MiB), target: within {MEMORY_SLACK} of it"),
        row(f"compiled memory {arch} {setting} inplace/standard (all kept)", (ours_kept + ours_copies) / mib,
            (base_kept + base_copies) / mib, target=None, unit="MiB",
            note=f"with inductor's weight copies ({ours_copies / mib:.1f} and {base_copies / mib:.1f} MiB)"),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """ResNeXt-50 and Wide ResNet-38 at batch 4, 224 px (CUDA: 16), three repeats; quick: ResNeXt-50 at batch 2,
    64 px, one repeat. ResNeXt-101's graphs take inductor several minutes to compile on a small CPU machine, past a
    module's time limit: ResNeXt-50 stands for the family."""
    device = bench_device()
    if quick:
        return measure("resnext50", 2, 64, 1, device)
    batch = 16 if device.startswith("cuda") else 4
    return [entry for arch in ("resnext50", "wider_resnet38") for entry in measure(arch, batch, 224, 3, device)]
