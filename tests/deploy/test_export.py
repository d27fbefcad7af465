"""Exported files compute the network's function in their own runtimes, at batch sizes other than the exported one:
every family at a small structure and the published configurations at one small input, as ONNX (onnxruntime)
and as an exported program (torch.export.load); standard operators only; metadata; dynamic sizes."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import onnx
import pytest
import torch
from support.numerics import assert_same_function, assert_within_noise, noise_floor
from support.small_networks import SMALL_FAMILIES, randomize_norms, resnet, segmentation

import iabn_zoo as zoo
from iabn_zoo.deploy import export_with_report
from iabn_zoo.deploy import network_geometry
from iabn_zoo.deploy.exporter import (
    ExportedNetwork,
    check_request,
    sidecar_path,
    trace,
    trace_network,
    write_checked,
    write_program,
)
from iabn_zoo.deploy.runtimes import onnx_metadata, run_exported_program, run_onnx
from iabn_zoo.models import ZooModule
from iabn_zoo.models._deployable import deployable_copy
from iabn_zoo.models._fast_eval import disable_fast_eval

# Each published configuration and the network whose export stands for it: a deeper twin (resnext152, resnet101)
# or a sync twin (synchronised statistics only change training) is built from the same layers as its
# representative; a representative is exported through its family's shallowest architecture built with its own
# arguments (SHALLOWER), the same layers fewer times, so no full-size network is traced (a full-size export of the
# Vistas network held 3.7 GiB). The last test here checks the layer kinds of every published configuration, built
# at full size, against what was exported for it.
PUBLISHED = {
    "resnext101_stdbn_lr_256": "resnext101_stdbn_lr_256",
    "resnext101_ipabn_lr_512": "resnext101_ipabn_lr_512",
    "resnext152_ipabn_lr_256": "resnext101_ipabn_lr_512",
    "wider_resnet38_ipabn_lr_256": "wider_resnet38_ipabn_lr_256",
    "resnext101_ipabn_sync_lr_256": "resnext101_ipabn_lr_512",
    "densenet264_ipabn_lr_256": "densenet264_ipabn_lr_256",
    "resnet50_ipabn_sync_lr_512": "resnet50_ipabn_sync_lr_512",
    "resnet34_ipabn_sync_lr_512": "resnet34_ipabn_sync_lr_512",
    "resnet101_ipabn_sync_lr_512": "resnet50_ipabn_sync_lr_512",
    "wider_resnet38_deeplab3_vistas": "wider_resnet38_deeplab3_vistas",
}
EXPORTED = [name for name, representative in PUBLISHED.items() if name == representative]
SHALLOWER = {"densenet264": "densenet121", "resnext101": "resnext50", "wider_resnet38": "wider_resnet16",
             "wider_resnet38_a2_deeplab3": "deeplabv3_wider_resnet16_a2", "resnet50": "resnet50", "resnet34": "resnet18"}


def stand_in(name: str) -> torch.nn.Module:
    """The network exported for the representative `name`: its family's shallowest architecture built with its
    arguments and classes (at full width, in eval)."""
    weights = zoo.get_weights(name)
    return zoo.create_model(SHALLOWER[weights.arch], num_classes=weights.num_classes, **weights.arch_kwargs).eval()


SIZE = 32


def batch(size: int = 3, side: int = SIZE, seed: int = 7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(size, 3, side, side, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def own_layers(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The network run the standard way: its norm-act layers' own eval forward, no fast path, in `dtype`."""
    reference = copy.deepcopy(model).to(dtype)
    for module in reference.modules():
        if isinstance(module, ZooModule):
            disable_fast_eval(module)
    return reference.eval()


def graph_targets(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


def assert_standard_onnx(path) -> None:
    """Only default-domain ONNX operators (no custom op, no function left unresolved)."""
    model = onnx.load(str(path))
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"custom operator domains in {path.name}: {domains}"
    assert not model.functions, [f.name for f in model.functions]
    onnx.checker.check_model(model)


def assert_standard_program(program: torch.export.ExportedProgram) -> None:
    """Only aten operators, none of them in place, no oneDNN-prepacked or InPlace-ABN kernel."""
    targets = graph_targets(program)
    foreign = sorted(t for t in targets if not t.startswith("aten.") or "mkldnn" in t)
    in_place = sorted(t for t in targets if t.split(".")[1].endswith("_"))
    assert not foreign and not in_place, f"non-standard: {foreign}, in place: {in_place}"


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_every_family_exports_to_both_formats(family, tmp_path):
    """ONNX in onnxruntime: float32 against the float64 network, within the float32 noise floor of the network's
    own layers; the exported program, exported in float64, is the same function (float64 judgement)."""
    model = SMALL_FAMILIES[family]()
    x = batch()
    with torch.no_grad():
        reference = own_layers(model, torch.float64)(x.double())
        floor = noise_floor(own_layers(model, torch.float32)(x), reference)
    report = export_with_report(model, tmp_path / "net.onnx", image_size=SIZE, batch_size=2)
    assert report.check_shape == (3, 3, SIZE, SIZE) and report.max_difference <= 1e-4
    assert_standard_onnx(report.path)
    assert_within_noise(run_onnx(report.path, x), reference, floor, f"{family} in onnxruntime")

    network = ExportedNetwork(deployable_copy(model, torch.float64), torch.float64)
    program = trace(network, batch(2, dtype=torch.float64), {"images": {0: torch.export.Dim("batch", min=1)}})
    assert_standard_program(program)
    write_program(program, tmp_path / "net64.pt2", {})
    assert_same_function(run_exported_program(tmp_path / "net64.pt2", x.double()), reference,
                         f"{family} exported program")


def test_a_batch_one_export_runs_at_2_and_32_and_fixed_batches_stay_fixed(tmp_path):
    model = resnet("inplace")
    onnx_file = zoo.export(model, tmp_path / "r.onnx", image_size=SIZE)
    program_file = zoo.export(model, tmp_path / "r.pt2", image_size=SIZE)
    for size in (2, 32):
        x = batch(size)
        with torch.no_grad():
            expected = model(x)
        for output in (run_onnx(onnx_file, x), run_exported_program(program_file, x)):
            assert output.shape == (size, 7)
            assert (output - expected).abs().max() <= 1e-4 * expected.abs().max()
    fixed = zoo.export(model, tmp_path / "fixed.onnx", image_size=SIZE, batch_size=4, dynamic_batch=False)
    assert [d.dim_value for d in onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 32]
    with pytest.raises(Exception, match="(?i)dimension|shape|got"):
        run_onnx(fixed, batch(2))


def test_dynamic_height_and_width(tmp_path):
    model = resnet("inplace")
    report = export_with_report(model, tmp_path / "d.onnx", image_size=(64, 80), dynamic_size=True)
    assert report.check_shape == (2, 3, 64 + 33, 80 + 33)  # checked at another size than the example's
    x = torch.randn(1, 3, 150, 67)
    with torch.no_grad():
        expected = model(x)
    for output in (run_onnx(report.path, x),
                   run_exported_program(zoo.export(model, tmp_path / "d.pt2", image_size=64, dynamic_size=True), x)):
        assert (output - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert report.metadata["input"]["shape"] == ["batch", 3, "height", "width"]
    assert report.metadata["dynamic_minimum"] == [64, 64]


def test_segmentation_returns_logits_at_one_eighth_with_its_sliding_pooling(tmp_path):
    """The head's inference pooling (a 3-pixel window here, 84 in the Vistas model) exports as avg-pool + replicate
    pad; a dynamic size starts where the map is larger than the window (3 + 1 strides of 8)."""
    model = segmentation(pooling_size=3)
    report = export_with_report(model, tmp_path / "s.onnx", image_size=(40, 56), dynamic_size=True)
    assert report.metadata["dynamic_minimum"] == [32, 32]
    x = torch.randn(2, 3, 72, 48)
    with torch.no_grad():
        expected = model(x)
    output = run_onnx(report.path, x)
    assert output.shape == (2, 5, 9, 6) and (output - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert {"Pad", "AveragePool"} <= {node.op_type for node in onnx.load(str(report.path)).graph.node}


def test_metadata_in_the_onnx_file_and_beside_the_exported_program(tmp_path):
    model = resnet("inplace")
    model.classes = [f"kind {i}" for i in range(7)]
    onnx_file = zoo.export(model, tmp_path / "m.onnx", image_size=(48, 40))
    metadata = onnx_metadata(onnx_file)
    assert metadata["class_names"] == model.classes and metadata["input_size"] == [3, 48, 40]
    assert metadata["input"] == {"name": "images", "shape": ["batch", 3, 48, 40], "dtype": "float32",
                                 "layout": "NCHW, RGB normalised with mean and std"}
    assert metadata["format"] == "onnx" and metadata["precision"] == "fp32" and metadata["outputs"] == ["logits"]
    program_file = zoo.export(model, tmp_path / "m.pt2", image_size=(48, 40))
    beside = json.loads(sidecar_path(program_file).read_text())
    assert sidecar_path(program_file).name == "m.pt2.json"
    assert beside == {**metadata, "format": "exported-program"}
    assert [i.name for i in onnx.load(str(onnx_file)).graph.input] == ["images"]


def test_half_precision_exports_compute_in_half_and_return_float32(tmp_path):
    model = resnet("inplace")
    x = batch(2)
    with torch.no_grad():
        expected = model(x)
    program = export_with_report(model, tmp_path / "h.pt2", image_size=SIZE, precision="bf16")
    fp16 = export_with_report(model, tmp_path / "h.onnx", image_size=SIZE, precision="fp16")
    for report, runner in ((program, run_exported_program), (fp16, run_onnx)):
        output = runner(report.path, x)
        assert output.dtype == torch.float32
        assert report.tolerance == 1e-2 and report.max_difference <= 1e-2
        assert (output - expected).abs().max() <= 1e-2 * expected.abs().max()
    assert fp16.file_size < 0.6 * export_with_report(model, tmp_path / "f.onnx", image_size=SIZE).file_size
    with open(program.path, "rb") as handle:
        targets = graph_targets(torch.export.load(handle))
    assert "aten.conv2d.default" in targets


@pytest.mark.parametrize("name", EXPORTED)
def test_the_published_configurations_export(name, tmp_path):
    """Each representative published configuration (its stand-in, deterministic weights) at one small input,
    traced once and written as ONNX and as an exported program, each run in its own runtime at batch 2 (the
    export's is 1) and compared with the eager network by the exporter's own check."""
    with torch.random.fork_rng():
        torch.manual_seed(EXPORTED.index(name))
        model = randomize_norms(stand_in(name))
    request = check_request(tmp_path / "p.onnx", format=None, image_size=SIZE, batch_size=1, dynamic_batch=True,
                            dynamic_size=False, precision="fp32")
    traced = trace_network(model, request, network_geometry(model), {"weights": name})
    assert_standard_program(traced.program)
    for report in (write_checked(traced, request),
                   write_checked(traced, replace(request, path=tmp_path / "p.pt2", format="exported-program"))):
        assert report.check_shape == (2, 3, SIZE, SIZE) and report.max_difference <= 1e-4, (name, report)
        assert report.path.stat().st_size == report.file_size > 4 * sum(p.numel() for p in model.parameters())


def test_every_published_configuration_exports_the_layers_of_one_exported_above():
    """The deployable copy (what an export traces) of each published configuration has the same kinds of layers
    as the stand-in exported for its representative."""
    def layer_kinds(model: torch.nn.Module) -> set[str]:
        return {type(module).__name__ for module in deployable_copy(model.eval()).modules()}

    for representative in EXPORTED:
        kinds = layer_kinds(stand_in(representative))
        for name in (name for name, stands_for in PUBLISHED.items() if stands_for == representative):
            assert layer_kinds(zoo.create_model(name)) == kinds, \
                f"{name} no longer exports the layers that were exported for {representative}"
