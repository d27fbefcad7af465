"""A SegmentationPredictor, and the network it runs, are freed by reference counting when it is dropped (fp32 runs
the network itself, bf16 a folded copy of it); so is a predictor on published-style weights (`from_weights`)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from support.references import assert_released
from support.segmentation_fixtures import TINY_WEIGHTS, served_tiny_vistas
from support.small_networks import segmentation

from iabn_zoo.tasks.segment import SegmentationPredictor


def image() -> Image.Image:
    return Image.frombytes("RGB", (40, 30), torch.randint(0, 256, (30 * 40 * 3,), dtype=torch.uint8).numpy().tobytes())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predictor_and_its_network_are_freed(precision):
    def use() -> list:
        model = segmentation()
        predictor = SegmentationPredictor(model, mean=(0.5,) * 3, std=(0.2,) * 3, long_side=48, scales=(0.75, 1.0),
                                          flip=True, precision=precision)
        predictor.predict(image())
        return [predictor, predictor.model, model]

    assert_released(use, f"SegmentationPredictor at {precision}")


def test_predictor_from_weights_is_freed(tmp_path):
    with served_tiny_vistas(tmp_path) as weights:
        assert weights.name == TINY_WEIGHTS

        def use() -> list:
            predictor = SegmentationPredictor.from_weights(TINY_WEIGHTS, progress=False)
            predictor.predict(image())
            return [predictor, predictor.model]

        assert_released(use, "SegmentationPredictor.from_weights")
