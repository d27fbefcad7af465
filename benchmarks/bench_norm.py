"""Norm-act layers in training: forward+backward time and memory kept for backward of a ResNeXt-style stack.

The stack is a few bottleneck blocks (1x1 conv, grouped 3x3 conv, 1x1 conv, each followed by a norm-act layer, the
last one fusing the residual addition), built with the same convolutions: InPlace-ABN on the default backend (`auto`,
the torch kernels on CPU), InPlace-ABN on the compiled `native` kernels, and standard BN + activation (the baseline
of every ratio). The default's row carries the target.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from benchmarks.common import interleaved_medians, row

TARGET_DEFAULT_BACKEND = 1.15  # time ratio the default backend should stay within (architecture-level target)


class Bottleneck(nn.Module):
    """A ResNeXt bottleneck whose last norm-act layer computes act(bn(conv3(...)) + input)."""

    def __init__(self, channels: int, width: int, groups: int, norm_act: Any):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = norm_act(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = norm_act(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = norm_act(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.bn3(self.conv3(out), x)


def stacks(channels: int, blocks: int) -> dict[str, nn.Module]:
    """The same stack in standard mode and on each available InPlace-ABN backend, sharing convolution weights."""
    from iabn_zoo.layers import convert_norm, make_norm_act, native_kernels

    torch.manual_seed(0)
    standard = nn.Sequential(*[Bottleneck(channels, channels // 2, 32, make_norm_act("standard"))
                               for _ in range(blocks)])
    variants = {"standard": standard}
    for backend in ("auto", "native") if native_kernels() is not None else ("auto",):
        variants[backend] = convert_norm(copy.deepcopy(standard), "inplace", backend=backend)
    return variants


def train_step(model: nn.Module, images: torch.Tensor) -> None:
    """One forward and backward pass."""
    model(images.clone()).sum().backward()


def saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps between forward and backward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(images.clone())
    output.sum().backward()
    return sum(storages.values())


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows per InPlace-ABN backend: fwd+bwd seconds and saved bytes vs standard BN (quick: smaller input)."""
    from iabn_zoo.layers.kernels import kernels_name

    batch, size, repeats = (2, 28, 3) if quick else (8, 56, 5)
    channels, blocks = 256, 2
    models = stacks(channels, blocks)
    images = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    shape = f"{blocks} ResNeXt blocks, {channels} ch, b{batch} {size}x{size}, {torch.get_num_threads()} threads"
    standard = models.pop("standard")
    rows = []
    for backend, model in models.items():
        ours, baseline = interleaved_medians(lambda: train_step(model, images), lambda: train_step(standard, images),
                                             repeats=repeats)
        target = TARGET_DEFAULT_BACKEND if backend == "auto" else None
        label = f"iABN {backend} = {kernels_name(backend, 'cpu')} kernels"
        rows.append(row(f"norm-act fwd+bwd time, {label} vs standard BN", ours, baseline, target=target,
                        unit="s", note=shape))
        rows.append(row(f"norm-act saved-for-backward bytes, {label} vs standard BN",
                        saved_bytes(model, images), saved_bytes(standard, images), target=None, unit="bytes",
                        note=shape))
    return rows
