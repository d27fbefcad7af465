"""Running an exported file in its own runtime (onnxruntime for ONNX, `torch.export.load` for an exported program)
and measuring how far its output lies from the eager network's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError

# Largest relative difference an export may have from the eager float32 network: float32 graphs round differently
# from eager PyTorch (other kernels, other orders) by ~1e-6; half-precision ones lose ~3 digits on the way.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the largest magnitude of `expected`."""
    if actual.shape != expected.shape:
        raise ExportError(f"the exported file returns shape {tuple(actual.shape)}, the eager network "
                          f"{tuple(expected.shape)}")
    difference = (actual.double() - expected.double()).abs().max().item()
    return difference / max(expected.double().abs().max().item(), 1e-30)


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of the file at `path` (warnings off)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """The output of the ONNX file at `path` for `images` (a list when the graph has several), in onnxruntime."""
    session = onnx_session(path)
    outputs = [torch.from_numpy(output) for output in session.run(None, {session.get_inputs()[0].name:
                                                                          images.numpy()})]
    return outputs[0] if len(outputs) == 1 else outputs


def run_exported_program(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """The output of the exported program at `path` for `images`, loaded with `torch.export.load`."""
    with open(path, "rb") as handle:
        program = torch.export.load(handle)
    with torch.no_grad():
        return program.module()(images)


RUNNERS = {"onnx": run_onnx, "exported-program": run_exported_program}


class OnnxModule(nn.Module):
    """An ONNX file run in onnxruntime behind a module's call: float32 image batch in, its first output out (as a
    CPU tensor), so code written for a network (evaluation loops, benchmarks) runs the exported file unchanged."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().cpu().float().contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: images.numpy()})[0])


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an export wrote into an ONNX file, values decoded from JSON."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: json.loads(prop.value) for prop in model.metadata_props}
