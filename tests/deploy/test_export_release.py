"""Exporting frees what it builds: the network given (or built from a name), its deployable copy and the traced
program go by reference counting when the export returns."""

from __future__ import annotations

import pytest
from support.references import assert_released
from support.small_networks import resnet

from iabn_zoo.deploy import export_with_report


@pytest.mark.parametrize("suffix,precision", [("onnx", "fp32"), ("pt2", "bf16")])
def test_an_exported_network_is_freed(suffix, precision, tmp_path):
    def use() -> list:
        model = resnet()
        export_with_report(model, tmp_path / f"net.{suffix}", image_size=32, batch_size=2, precision=precision)
        return [model]

    assert_released(use, f"a network exported to .{suffix} in {precision}", warm_up=True)


def test_a_network_exported_by_name_is_freed(tmp_path):
    assert_released(lambda: [export_with_report("resnet18", tmp_path / "net.onnx", image_size=32, pretrained=False,
                                                progress=False)], "resnet18 exported by name",
                    warm_up=True)
