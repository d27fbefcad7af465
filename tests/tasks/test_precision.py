"""Inference precision in the tasks: bf16 runs a folded half-precision copy (float32 out, the network untouched) and
agrees with fp32; fp16 is refused on a CPU before any work; bad names are typed errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from support.small_networks import resnet, segmentation

from iabn_zoo import cli
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.tasks.evaluate import evaluate
from iabn_zoo.tasks.precision import ReducedPrecision, check_precision, inference_model
from iabn_zoo.tasks.predict import predict_images
from iabn_zoo.tasks.segment import SegmentationPredictor


def test_fp32_is_the_network_and_bf16_a_float32_out_copy():
    model = resnet("inplace").train()
    assert inference_model(model, "fp32") is model and not model.training
    bf16 = inference_model(model, "bf16")
    assert isinstance(bf16, ReducedPrecision) and next(bf16.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, output = model(x), bf16(x)
    assert output.dtype == torch.float32 and output.shape == expected.shape
    assert (output - expected).abs().max() <= 1e-2 * expected.abs().max()
    assert bf16.num_classes == model.num_classes  # attributes the tasks read come from the network


def test_predict_in_bf16_ranks_as_fp32(tmp_path):
    model = resnet("inplace")
    paths = []
    for index, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250), (120, 120, 0)]):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (40, 36), colour).save(paths[-1])
    names = [f"c{i}" for i in range(7)]
    prep = {"resize": 36, "crop": 32}
    fp32 = predict_images(model, paths, names=names, preprocessing=prep, topk=2)
    bf16 = predict_images(model, paths, names=names, preprocessing=prep, topk=2, precision="bf16")
    for a, b in zip(fp32, bf16):
        assert a.classes[0].index == b.classes[0].index
        assert abs(a.classes[0].probability - b.classes[0].probability) < 2e-2


def test_segmentation_predictor_in_bf16_agrees_with_fp32():
    model = segmentation(pooling_size=3)
    options = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "long_side": None, "scales": (1.0, 1.5)}
    image = torch.randn(1, 3, 48, 64)
    confidence32, classes32 = SegmentationPredictor(model, **options).fuse(image)
    predictor = SegmentationPredictor(model, precision="bf16", **options)
    confidence16, classes16 = predictor.fuse(image)
    assert confidence16.dtype == torch.float32 and predictor.device == torch.device("cpu")
    assert (classes16 == classes32).float().mean() >= 0.95
    assert (confidence16 - confidence32).abs().max() < 5e-2


def test_fp16_is_cuda_only_and_bad_names_are_typed_errors(tmp_path, capsys):
    with pytest.raises(InvalidArgumentError, match="CUDA only"):
        check_precision("fp16", "cpu")
    with pytest.raises(InvalidArgumentError, match="precision must be one of"):
        inference_model(resnet(), "fp8")
    fp16 = inference_model(resnet(), "fp16")  # building is fine; running on a CPU is not
    with pytest.raises(InvalidArgumentError, match="CUDA only"):
        fp16(torch.randn(1, 3, 32, 32))
    with pytest.raises(InvalidArgumentError, match="CUDA only"):
        evaluate("no_such_model", tmp_path, device="cpu", precision="fp16")  # before the name is even looked up
    with pytest.raises(InvalidArgumentError, match="CUDA only"):
        SegmentationPredictor(segmentation(), mean=(0, 0, 0), std=(1, 1, 1), precision="fp16").fuse(
            torch.randn(1, 3, 32, 32))
    assert cli.main(["predict", "resnext101_ipabn_lr_512", "x.png", "--precision", "fp16"]) == 2
    assert cli.main(["segment", "x.png", "--out", str(tmp_path), "--precision", "fp16", "--device", "cpu"]) == 2
    assert cli.main(["evaluate", "resnext101_ipabn_lr_512", str(tmp_path), "--precision", "fp16",
                     "--device", "cpu"]) == 2
    assert capsys.readouterr().err.count("CUDA only") == 3
