"""Inference precision: fp32 runs the network as it is (the eval fast path); bf16 and fp16 run a deployable copy
(norm layers folded into the convolutions in float64, then cast once) with half-precision weights and activations,
channels-last, and return float32 outputs. fp16 needs CUDA; bf16 is fast on CPUs with AMX or AVX512-BF16.

Used by the tasks' `precision=` option (predict, segment, evaluate) and by export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..models._deployable import deployable_copy

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_precision(precision: str, device: str | torch.device | None = None) -> str:
    """Validate a precision name, and fp16 against the device it will run on (CUDA only)."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise InvalidArgumentError("fp16 inference runs on CUDA only; on a CPU use bf16 (fast where the CPU has AMX "
                                   "or AVX512-BF16) or fp32")
    return precision


class ReducedPrecision(nn.Module):
    """A network run in a half type: inputs cast and made channels-last, outputs (tensors, or lists of them) back
    in float32, so callers see the same types as from the float32 network."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> Any:
        if self.dtype is torch.float16 and x.device.type != "cuda":
            raise InvalidArgumentError("fp16 inference runs on CUDA only: move the model and inputs to a CUDA "
                                       "device, or use bf16 on a CPU")
        x = x.to(self.dtype)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return to_float32(self.network(x))

    def __getattr__(self, name: str) -> Any:
        """Attributes the tasks read from a network (`classes`, `num_classes`, ...) come from the wrapped one."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)


def to_float32(output: Any) -> Any:
    """A network's output with every floating point tensor in float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(to_float32(item) for item in output)
    return output


def inference_model(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """The network to run for inference at `precision`, in eval mode: `model` itself for fp32, a folded
    half-precision copy (channels-last, float32 outputs) for bf16 and fp16; `model` is left as it was."""
    check_precision(precision)
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"inference_model takes a torch nn.Module, got {type(model).__name__}")
    if precision == "fp32":
        return model.eval()
    dtype = DTYPES[precision]
    network = deployable_copy(model, dtype).to(memory_format=torch.channels_last)
    return ReducedPrecision(network, dtype).eval()
