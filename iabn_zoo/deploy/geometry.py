"""Which input sizes a network takes, fixed or dynamic, found on a meta-device blueprint (no weights, no compute).

A fixed size is tried on the blueprint: the ResNet, ResNeXt and Wide ResNet families take any size, DenseNet needs
about 29 px for its 2x2 average poolings, and an error names what fails. A dynamic height and width export as one
graph for every size from a minimum up: twice the output stride for the classifiers (64 px; at one pixel the last
map is broadcast, and the exporter specialises the graph to it), and for a network with a DeepLabV3 head (the Vistas
model) one stride more than its inference pooling window (84 + 1 feature pixels: 680 px), since below that the
window is clipped to the map or pools it to one pixel, which changes the graph. A module that is no zoo network is
taken as stride 1 and not probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..models import ZooModule
from ..models.deeplab import DeepLabV3Head

@dataclass(frozen=True)
class Geometry:
    """The output stride of a network and the smallest (height, width) of a dynamic-size export."""

    stride: int
    dynamic_minimum: tuple[int, int]

    def check_dynamic(self, size: tuple[int, int]) -> None:
        """Reject an example size below the smallest size a dynamic-size export covers."""
        low_h, low_w = self.dynamic_minimum
        if size[0] < low_h or size[1] < low_w:
            raise InvalidArgumentError(f"a dynamic-size export of this network covers {low_h}x{low_w} px and up; "
                                       f"give an --image-size of at least that (got {size[0]}x{size[1]}), or "
                                       f"export at a fixed size")


def check_takes(blueprint: nn.Module, size: tuple[int, int]) -> None:
    """Run the meta-device `blueprint` of a zoo network in eval mode on one image of `size`: a size it cannot take
    is an InvalidArgumentError naming what failed. Other modules may build tensors of their own off the meta
    device: they are left to the exporter."""
    if not isinstance(blueprint, ZooModule):
        return
    probe = torch.empty(1, 3, *size, device="meta")
    try:
        with torch.no_grad():
            blueprint.eval()(probe)
    except (RuntimeError, ValueError, IndexError) as error:  # the layers' own shape errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgumentError(f"the network cannot take {size[0]}x{size[1]} images ({reason}); use a larger "
                                   f"--image-size") from None


def network_geometry(network: nn.Module) -> Geometry:
    """The geometry of `network` (a zoo network, or any module: stride 1, dynamic from 2 px)."""
    info = getattr(network, "feature_info", None)
    stride = int(info[-1].stride) if info else 1
    low = (2 * stride, 2 * stride)
    for module in network.modules():
        if isinstance(module, DeepLabV3Head) and module.pooling_size is not None:
            window = module.pooling_size
            low = (max(low[0], (window[0] + 1) * stride), max(low[1], (window[1] + 1) * stride))
    return Geometry(stride, low)


def parse_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from one side or two values, each a positive integer."""
    values = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise InvalidArgumentError(f"image_size must be a positive int or (height, width) of positive ints, "
                                   f"got {image_size!r}")
    return values
