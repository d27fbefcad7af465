"""`zoo.export`: a network out of eager PyTorch as ONNX or a torch.export program, checked after writing.

The exported graph is the network's deployable copy (`deployable_copy`: norm layers folded into the convolutions,
standard operators only), traced once with `torch.export` (batch dynamic by default, height and width fixed or
dynamic, see `geometry`), then converted to ONNX with the dynamo exporter or saved as a `.pt2`. It takes the
normalised float32 image batch (N, 3, H, W) and returns float32 logits, whatever the precision inside.

The file is written next to its target and checked there: run once in its own runtime on a random batch at another
batch size (and another size, when dynamic) and compared with the eager network; only a file within the tolerance
replaces the target, anything else raises `ExportError` and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import __version__
from ..errors import ExportError, InvalidArgumentError
from ..models._deployable import deployable_copy
from ..system.files import atomic_path, write_atomic
from ..system.storage import check_output_file, storage_guard
from ..tasks.precision import DTYPES, check_precision, to_float32
from .geometry import Geometry, check_takes, network_geometry, parse_image_size
from .runtimes import RUNNERS, TOLERANCES, relative_difference
from .source import resolve_source

DEFAULT_SIZE = 224  # the input side of a network that records none (an architecture, a module)

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
INPUT_NAME = "images"
CHECK_SEED = 0


@dataclass(frozen=True)
class ExportRequest:
    """An export's options, validated before any network is built."""

    path: Path
    format: str
    size: tuple[int, int]
    batch_size: int
    dynamic_batch: bool
    dynamic_size: bool
    precision: str


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how its check went."""

    path: Path
    format: str
    precision: str
    file_size: int
    max_difference: float  # relative to the eager output's largest magnitude
    tolerance: float
    check_shape: tuple[int, ...]
    seconds: float
    metadata: dict[str, Any]
    metadata_path: Path | None


class ExportedNetwork(nn.Module):
    """The graph that is exported: float32 images in, the deployable copy run in `dtype`, float32 outputs out."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> Any:
        if self.dtype.itemsize >= 4:  # float32 (and float64, which tests export) runs as given
            return self.network(images)
        return to_float32(self.network(images.to(self.dtype)))


def format_for(path: Path, format: str | None) -> str:
    """The format asked for, or the one the file suffix names."""
    if format is not None:
        if format not in FORMATS:
            raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    by_suffix = {suffix: name for name, suffix in FORMATS.items()}
    if path.suffix.lower() not in by_suffix:
        raise InvalidArgumentError(f"cannot tell the format of {path.name!r} from its suffix: name it .onnx (ONNX) or "
                                   f".pt2 (exported program), or give the format")
    return by_suffix[path.suffix.lower()]


def check_request(path: str | os.PathLike[str], *, format: str | None, image_size: int | Sequence[int],
                  batch_size: int, dynamic_batch: bool, dynamic_size: bool, precision: str) -> ExportRequest:
    """Validate every option that needs no network; a typed error names the first bad one."""
    path = Path(path)
    chosen = format_for(path, format)
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"folder {path.parent} does not exist; create it first or write elsewhere")
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a folder; give a file name ending in {FORMATS[chosen]}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_precision(precision)
    if chosen == "onnx" and precision == "bf16":
        raise InvalidArgumentError("ONNX has no bf16 convolution (onnxruntime refuses such a graph): export bf16 as "
                                   "an exported program (.pt2), or ONNX in fp16 or fp32")
    return ExportRequest(path, chosen, parse_image_size(image_size), batch_size, bool(dynamic_batch),
                         bool(dynamic_size), precision)


def dynamic_shapes(request: ExportRequest, geometry: Geometry) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic dimensions of the image batch: batch, and height and width when asked for."""
    dims: dict[int, Any] = {}
    if request.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if request.dynamic_size:
        dims[2] = torch.export.Dim("height", min=geometry.dynamic_minimum[0])
        dims[3] = torch.export.Dim("width", min=geometry.dynamic_minimum[1])
    return {INPUT_NAME: dims}


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporters' progress lines and warnings (missing torchvision ops, deprecations) kept off the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def first_lines(error: BaseException, count: int = 3) -> str:
    """The start of an exporter's error message, for ours."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:count]) or type(error).__name__


def trace(network: ExportedNetwork, example: torch.Tensor, shapes: dict) -> torch.export.ExportedProgram:
    """The network as a functional exported program (no in-place operation left)."""
    try:
        with quiet_exporters():
            return torch.export.export(network, (example,), dynamic_shapes=shapes).run_decompositions({})
    except Exception as error:  # the exporter's many error types all mean "this graph cannot be exported"
        raise ExportError(f"torch.export could not trace the network: {first_lines(error)}") from error


def write_onnx(program: torch.export.ExportedProgram, target: Path, metadata: dict[str, Any],
               output_names: list[str]) -> None:
    """ONNX through the dynamo exporter, metadata as JSON-valued metadata_props."""
    try:
        with quiet_exporters():
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME],
                                             output_names=output_names, verbose=False)
    except Exception as error:
        raise ExportError(f"the ONNX exporter failed: {first_lines(error)}") from error
    onnx_program.model.metadata_props.update({key: json.dumps(value) for key, value in metadata.items()})
    onnx_program.save(str(target), external_data=False)


def write_program(program: torch.export.ExportedProgram, target: Path, metadata: dict[str, Any]) -> None:
    """The exported program, its metadata inside (extra file iabn_zoo.json) and, by the caller, beside it."""
    with open(target, "wb") as handle:  # a file object: the temporary's suffix is not .pt2
        torch.export.save(program, handle, extra_files={"iabn_zoo.json": json.dumps(metadata)})


def sidecar_path(path: Path) -> Path:
    """Where the JSON metadata of an exported program goes: beside it, its name + .json (model.pt2.json)."""
    return path.with_name(path.name + ".json")


def output_names(model: nn.Module) -> list[str]:
    """Names of the graph's outputs: logits, or features for a network without classifier."""
    classifies = getattr(model, "num_classes", 1) and not getattr(model, "features_only", False)
    return ["logits"] if classifies else ["features"]


def check_batch(request: ExportRequest, geometry: Geometry) -> torch.Tensor:
    """The random batch of the check: one more image when the batch is dynamic, a larger odd size when height and
    width are."""
    height, width = request.size
    if request.dynamic_size:
        height, width = height + geometry.stride + 1, width + geometry.stride + 1
    batch = request.batch_size + 1 if request.dynamic_batch else request.batch_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(CHECK_SEED))


def largest_difference(actual: Any, expected: Any) -> float:
    """The relative difference of two outputs (tensors, or sequences of them: the largest)."""
    if isinstance(expected, torch.Tensor):
        return relative_difference(torch.as_tensor(actual), expected)
    if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
        raise ExportError(f"the exported file returns {type(actual).__name__}, the eager network "
                          f"{len(expected)} outputs")
    return max(largest_difference(a, e) for a, e in zip(actual, expected))


def export_metadata(facts: dict[str, Any], request: ExportRequest, geometry: Geometry,
                    outputs: list[str]) -> dict[str, Any]:
    """What the exported file records: the weights' facts, input and output, precision and dynamic dimensions."""
    height, width = request.size
    shape = ["batch" if request.dynamic_batch else request.batch_size, 3,
             "height" if request.dynamic_size else height, "width" if request.dynamic_size else width]
    return {"producer": f"iabn-zoo {__version__}", **facts, "format": request.format, "precision": request.precision,
            "input_size": [3, height, width], "input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32",
                                                        "layout": "NCHW, RGB normalised with mean and std"},
            "outputs": outputs, "output_dtype": "float32",
            "dynamic_minimum": list(geometry.dynamic_minimum) if request.dynamic_size else None}


@dataclass(frozen=True)
class Traced:
    """A network traced once, with the batch its files are checked on and the eager output they must match: what
    `write_checked` writes in either format."""

    program: torch.export.ExportedProgram
    outputs: list[str]
    facts: dict[str, Any]
    geometry: Geometry
    images: torch.Tensor
    expected: Any


def trace_network(model: nn.Module, request: ExportRequest, geometry: Geometry, facts: dict[str, Any]) -> Traced:
    """The deployable copy of `model` (in eval mode) at the request's precision, traced; the eager float32 output
    of the check batch."""
    dtype = DTYPES[request.precision]
    network = ExportedNetwork(deployable_copy(model, dtype), dtype).eval()
    example_batch = max(request.batch_size, 2) if request.dynamic_batch else request.batch_size  # 1 specialises
    example = torch.randn(example_batch, 3, *request.size, generator=torch.Generator().manual_seed(CHECK_SEED))
    program = trace(network, example, dynamic_shapes(request, geometry))
    images = check_batch(request, geometry)
    with torch.no_grad():
        expected = model(images.clone())
    return Traced(program, output_names(model), facts, geometry, images, expected)


def write_checked(traced: Traced, request: ExportRequest, started: float | None = None) -> ExportReport:
    """Write the traced network in the request's format next to the target, check it in that format's runtime,
    then replace the target (and write the metadata beside an exported program)."""
    started = time.perf_counter() if started is None else started
    metadata = export_metadata(traced.facts, request, traced.geometry, traced.outputs)
    tolerance = TOLERANCES[request.precision]
    with storage_guard(request.path, context=f"nothing was written to {request.path}"), \
            atomic_path(request.path) as temporary:
        if request.format == "onnx":
            write_onnx(traced.program, temporary, metadata, traced.outputs)
        else:
            write_program(traced.program, temporary, metadata)
        difference = largest_difference(RUNNERS[request.format](temporary, traced.images), traced.expected)
        if not difference <= tolerance:
            raise ExportError(f"the exported {request.format} differs from the eager network by {difference:.3g} "
                              f"(relative, batch of {tuple(traced.images.shape)}), above the {tolerance:g} allowed "
                              f"at {request.precision}; nothing was written to {request.path}", difference=difference)
        file_size = temporary.stat().st_size
    metadata_path = None
    if request.format == "exported-program":
        metadata_path = sidecar_path(request.path)
        with storage_guard(metadata_path, context=f"{request.path} was written, its metadata was not"):
            write_atomic(metadata_path, (json.dumps(metadata, indent=2) + "\n").encode())
    return ExportReport(request.path, request.format, request.precision, file_size, difference, tolerance,
                        tuple(traced.images.shape), time.perf_counter() - started, metadata, metadata_path)


def export_with_report(model_or_name: nn.Module | str | os.PathLike[str], path: str | os.PathLike[str], *,
                       format: str | None = None, image_size: int | Sequence[int] | None = None,
                       batch_size: int = 1, dynamic_batch: bool = True, dynamic_size: bool = False,
                       precision: str = "fp32", pretrained: bool = True, progress: bool = True) -> ExportReport:
    """`export`, returning what was written and the difference its check measured."""
    started = time.perf_counter()
    check_request(path, format=format, image_size=image_size or DEFAULT_SIZE, batch_size=batch_size,
                  dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, precision=precision)
    source = resolve_source(model_or_name, pretrained=pretrained, progress=progress)
    request = check_request(path, format=format, image_size=image_size or source.size or DEFAULT_SIZE,
                            batch_size=batch_size, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                            precision=precision)
    blueprint = source.blueprint()
    geometry = network_geometry(blueprint)
    if request.dynamic_size:
        geometry.check_dynamic(request.size)
    check_takes(blueprint, request.size)
    check_output_file(request.path, needed=graph_bytes(blueprint, request.precision),
                      context="nothing was exported")  # before the weights are downloaded and the network traced
    del blueprint
    model = source.build()
    was_training = model.training
    model.eval()
    try:
        report = write_checked(trace_network(model, request, geometry, source.facts), request, started)
    finally:
        model.train(was_training)
    # torch.export's tracer leaves reference cycles holding the traced deployable copy (all its weights): free them
    # now, not whenever Python's cyclic collector next happens to run
    gc.collect()
    return report


def graph_bytes(blueprint: nn.Module, precision: str) -> int:
    """About the size of the exported file: the network's weights in the exported precision (fp32 for fp32)."""
    width = 4 if precision == "fp32" else 2
    return sum(t.numel() for t in blueprint.state_dict().values() if t.is_floating_point()) * width


def export(model_or_name: nn.Module | str | os.PathLike[str], path: str | os.PathLike[str], *,
           format: str | None = None, image_size: int | Sequence[int] | None = None, batch_size: int = 1,
           dynamic_batch: bool = True, dynamic_size: bool = False, precision: str = "fp32",
           pretrained: bool = True, progress: bool = True) -> Path:
    """Export a network (module, architecture, weights name or RUN directory) to ONNX (`.onnx`) or a torch.export
    program (`.pt2`) of standard operators, checked against the eager network after writing.

    `image_size` is one side or (height, width), by default the size the network was trained or published at
    (a run's crop, the weights' preprocessing crop; 224 for an architecture or a module); `dynamic_size=True`
    makes height and width dynamic from the network's minimum up (`geometry`); the batch is dynamic unless `dynamic_batch=False`. `precision` fp16/bf16
    computes in that type inside the graph (bf16 only as `.pt2`). Raises `ExportError` when the check finds a
    difference above 1e-4 relative (1e-2 in fp16/bf16), `InvalidArgumentError` for bad options before any work."""
    return export_with_report(model_or_name, path, format=format, image_size=image_size, batch_size=batch_size,
                              dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, precision=precision,
                              pretrained=pretrained, progress=progress).path
