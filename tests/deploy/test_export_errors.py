"""Bad export requests fail with typed errors before any work (nothing built, downloaded or written); a file that
does not compute the network's function, or a network the exporter cannot trace, is an ExportError and leaves
the target as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from support.authors_checkpoints import publish, write_imagenet_checkpoint
from support.small_networks import densenet, resnet, segmentation

import iabn_zoo as zoo
from iabn_zoo.errors import ExportError, InvalidArgumentError, UnknownNameError
from iabn_zoo.weights.catalog import unregister_weights

NAME = "test_export_errors_resnet18"


@pytest.fixture
def served(loopback_server, tmp_path):
    """A resnet18 checkpoint in the authors' format, served and registered: any download would show as a hit."""
    torch.manual_seed(0)
    path = write_imagenet_checkpoint(tmp_path / "r18.pth.tar", zoo.create_model("resnet18", num_classes=10)
                                     .state_dict())
    publish(loopback_server, path, NAME, "resnet18", num_classes=10)
    yield loopback_server
    unregister_weights(NAME)


@pytest.mark.parametrize("path,options,message", [
    ("net.onx", {}, "suffix"),
    ("net", {}, "suffix"),
    ("net.onnx", {"format": "tflite"}, "format must be one of"),
    ("missing/net.onnx", {}, "does not exist"),
    ("net.onnx", {"precision": "int8"}, "precision must be one of"),
    ("net.onnx", {"precision": "bf16"}, "no bf16 convolution"),
    ("net.onnx", {"batch_size": 0}, "batch_size"),
    ("net.onnx", {"image_size": (224,)}, "image_size"),
    ("net.onnx", {"image_size": -3}, "image_size"),
    ("net.onnx", {"image_size": 48, "dynamic_size": True}, "64x64"),
])
def test_bad_requests_fail_before_any_download_or_write(served, tmp_path, path, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        zoo.export(NAME, tmp_path / path, **options)
    assert served.hits(f"/files/{NAME}/r18.pth.tar") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth.tar"]


def test_unknown_names_and_folders(tmp_path):
    with pytest.raises(UnknownNameError, match="resnet50_ipabn_sync_lr_512"):
        zoo.export("resnet50_ipabn_sync_lr512", tmp_path / "x.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        zoo.export(resnet(), tmp_path / "folder.onnx")
    with pytest.raises(InvalidArgumentError, match="no published weights"):
        zoo.export("resnet18", tmp_path / "x.onnx")
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        zoo.export(3, tmp_path / "x.onnx")


def test_sizes_the_networks_cannot_take(tmp_path):
    with pytest.raises(InvalidArgumentError, match="cannot take 64x16 images .*too small"):
        zoo.export(densenet(), tmp_path / "d.onnx", image_size=(64, 16))  # its 2x2 poolings would empty the map
    with pytest.raises(InvalidArgumentError, match="32x32 px and up"):
        zoo.export(segmentation(pooling_size=3), tmp_path / "s.onnx", image_size=24, dynamic_size=True)
    assert list(tmp_path.iterdir()) == []


class NotAFunction(nn.Module):
    """Its output is not a function of its input: the check after writing must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.rand(x.shape[0], 3)


class DataDependent(nn.Module):
    """Python control flow on tensor values: no graph can hold it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.sum() > 0 else -x.mean(dim=(2, 3))


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_a_file_that_differs_is_an_export_error_and_the_target_is_kept(tmp_path, suffix):
    target = tmp_path / f"model{suffix}"
    target.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="differs from the eager network by") as caught:
        zoo.export(NotAFunction(), target, image_size=8)
    assert caught.value.difference > 1e-4
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left, no metadata


def test_a_network_the_exporter_cannot_trace_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="torch.export could not trace"):
        zoo.export(DataDependent(), tmp_path / "d.onnx", image_size=8)
    assert list(tmp_path.iterdir()) == []
