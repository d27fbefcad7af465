"""A small Vistas-format segmentation model served through the weights registry, for the segmentation tests.

The real `wider_resnet38_a2_deeplab3` has 136M parameters (a 543 MB checkpoint), too heavy for tests on shared
CPUs. `tiny_vistas_deeplab3` is built from the zoo's own parts, the same way: a pre-activation residual body with
output stride 8 (`IdentityResidualBlock`, in-place norm-act layers), the DeepLabV3 head with its evaluation-time
pooling window, and `SegmentationNet` (`body`, `head`, `cls`, 65 classes). Its checkpoint is written in the authors'
Vistas layout (`{"state_dict": {"body", "head", "cls"}}`, legacy serialization), served from a loopback HTTP
server and registered with `register_weights`, so `create_model(name, pretrained=True)` downloads, verifies and
loads it like the published file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from iabn_zoo.layers import make_norm_act
from iabn_zoo.models._base import FeatureInfo, ZooNet
from iabn_zoo.models._blocks import IdentityResidualBlock
from iabn_zoo.models._checkpoint import Block
from iabn_zoo.models._registry import is_arch, register_arch, unregister_arch
from iabn_zoo.models.deeplab import DeepLabV3Head
from iabn_zoo.models.segmentation import SegmentationNet
from iabn_zoo.weights.catalog import Weights, get_weights, register_weights, unregister_weights
from support.authors_checkpoints import write_vistas_checkpoint
from support.loopback_server import LoopbackServer

TINY_WEIGHTS = "tiny_vistas_deeplab3_test"
TINY_LONG_SIDE = 64


class TinyBody(ZooNet):
    """Output stride 8 in three residual modules (the last one dilated), like a miniature WRN38-A2 body."""

    def __init__(self, norm_act, width: int = 8):
        super().__init__()
        self.mod1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.mod2 = IdentityResidualBlock(width, (width, width), norm_act, stride=2)
        self.mod3 = IdentityResidualBlock(width, (2 * width, 2 * width), norm_act, stride=2)
        self.mod4 = IdentityResidualBlock(2 * width, (2 * width, 4 * width), norm_act, stride=2)
        self.mod5 = IdentityResidualBlock(4 * width, (4 * width, 4 * width), norm_act, dilation=2)
        self.bn_out = norm_act(4 * width)
        self.num_features = 4 * width
        self.feature_info = [FeatureInfo("bn_out", self.num_features, 8)]
        self.make_classifier(0)

    def stage_blocks(self) -> list[list[Block]]:
        """One stage (its one feature map at stride 8), a block per module."""
        return [[Block(module) for module in (self.mod1, self.mod2, self.mod3, self.mod4, self.mod5, self.bn_out)]]


def tiny_vistas_deeplab3(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                         num_classes: int = 65, backend: str | None = None, features_only: bool = False,
                         pooling_size: int = 3, head_channels: int = 16) -> SegmentationNet:
    """A miniature of the Vistas network (same parts and key layout), for fast tests; registered as an
    architecture only while `served_tiny_vistas` is open, so other tests never see it."""
    norm_act = make_norm_act(bn_mode, activation, activation_param, backend=backend)
    body = TinyBody(norm_act)
    head = DeepLabV3Head(body.num_features, head_channels, head_channels, (1, 2, 3), norm_act=norm_act,
                         pooling_size=pooling_size)
    return SegmentationNet(body, head, num_classes, features_only=features_only)


def trained_looking_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random affine norm parameters and a confident classifier, then norm statistics measured on random images
    (as training leaves them), so that the network predicts several classes with varied confidence."""
    generator = torch.Generator().manual_seed(seed)
    norm_layers = [module for module in model.modules() if hasattr(module, "running_mean")]
    with torch.no_grad():
        for layer in norm_layers:
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.2)
            layer.momentum = 1.0
        model.cls.weight.copy_(torch.randn(model.cls.weight.shape, generator=generator))
        model.train()(torch.rand(4, 3, 64, 64, generator=generator) * 4 - 2)
    for layer in norm_layers:
        layer.momentum = 0.1
    return {key: value.clone() for key, value in model.eval().state_dict().items()}


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny model's synthetic checkpoint in the authors' Vistas file layout."""
    torch.manual_seed(seed)
    model = tiny_vistas_deeplab3()
    return write_vistas_checkpoint(path, trained_looking_state(model, seed))


@contextmanager
def tiny_arch_registered() -> Iterator[None]:
    """`tiny_vistas_deeplab3` in the architecture registry for the duration of the block (nesting allowed)."""
    if is_arch(tiny_vistas_deeplab3.__name__):
        yield
        return
    register_arch(tiny_vistas_deeplab3, task="segmentation")
    try:
        yield
    finally:
        unregister_arch(tiny_vistas_deeplab3.__name__)


@contextmanager
def served_tiny_vistas(folder: Path, *, seed: int = 0, name: str = TINY_WEIGHTS) -> Iterator[Weights]:
    """Register weights `name` (the Vistas entry's preprocessing, long side 64) served from a loopback server,
    and the tiny architecture with them."""
    checkpoint = write_tiny_checkpoint(folder / "tiny_vistas.pth.tar", seed)
    vistas = get_weights("wider_resnet38_deeplab3_vistas")
    with tiny_arch_registered(), LoopbackServer() as server:
        url = server.add("/tiny_vistas.pth.tar", checkpoint)
        weights = Weights(
            name=name, arch="tiny_vistas_deeplab3",
            arch_kwargs={"bn_mode": "inplace", "activation": "leaky_relu", "activation_param": 0.01},
            urls=(url,), md5=hashlib.md5(checkpoint.read_bytes()).hexdigest(), file_name=checkpoint.name,
            num_classes=65, task="segmentation", metrics={}, license=vistas.license,
            preprocessing={**vistas.preprocessing, "long_side": TINY_LONG_SIDE},
            description="synthetic miniature of the Vistas model, for tests", labels="vistas",
            file_size=checkpoint.stat().st_size,
        )
        register_weights(weights, overwrite=True)
        try:
            yield weights
        finally:
            unregister_weights(name)
