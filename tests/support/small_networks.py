"""Every zoo family at a small structure (one block per module, narrow where the family allows), with trained-like
norm statistics, for tests that must run each family end to end without full-size cost."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

import iabn_zoo as zoo
from iabn_zoo.layers import ABN, make_norm_act
from iabn_zoo.models._blocks import init_conv_weights
from iabn_zoo.models.deeplab import DeepLabV3Head
from iabn_zoo.models.densenet import DenseNet
from iabn_zoo.models.resnet import ResNet
from iabn_zoo.models.resnext import ResNeXt
from iabn_zoo.models.segmentation import SegmentationNet
from iabn_zoo.models.wider_resnet import WiderResNet


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-like norm-act layers: weights of both signs, non-zero biases, means and variances away from 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, ABN):
                size = layer.num_features
                layer.weight.copy_(torch.rand(size, generator=generator) * 3 - 1.5)
                layer.bias.copy_(torch.randn(size, generator=generator) * 0.2)
                layer.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                layer.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
    return model


def trained_like(arch: str = "resnet18", bn_mode: str = "inplace", num_classes: int = 10, seed: int = 0) -> nn.Module:
    """The zoo's `arch` with random weights and trained-like norm layers (positive scales, statistics away from 0
    and 1, 5000 batches tracked), in eval mode: what a published or fine-tuned classifier looks like to a loader."""
    torch.manual_seed(seed)
    model = zoo.create_model(arch, bn_mode=bn_mode, num_classes=num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ABN):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.num_batches_tracked.fill_(5000)
    return model.eval()


def seeded(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """`build` with the global RNG seeded first and restored after: the same weights whatever ran before."""

    def build_seeded(*args, **kwargs) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return build(*args, **kwargs)

    build_seeded.__doc__ = build.__doc__
    return build_seeded


def built(network: nn.Module, activation: str, param: float) -> nn.Module:
    """The authors' convolution init, trained-like norms, eval mode."""
    init_conv_weights(network, activation, param)
    return randomize_norms(network).eval()


@seeded
def resnet(bn_mode: str = "inplace", *, bottleneck: bool = False, fused: bool = True,
           activation: str = "leaky_relu", param: float = 0.01) -> nn.Module:
    """ResNet v1, one block per module; `fused` = the memory-efficient residual (the last norm adds the shortcut)."""
    norm_act = make_norm_act(bn_mode, activation, param, backend="torch")
    return built(ResNet((1, 1, 1, 1), norm_act, bottleneck=bottleneck, num_classes=7, memory_efficient=fused),
                 activation, param)


@seeded
def resnext(bn_mode: str = "inplace", activation: str = "leaky_relu", param: float = 0.01) -> nn.Module:
    """ResNeXt (pre-activation, grouped bottlenecks), one block per module, 3x3 stem, lean max pooling."""
    norm_act = make_norm_act(bn_mode, activation, param, backend="torch")
    return built(ResNeXt((1, 1, 1, 1), norm_act, groups=32, num_classes=7), activation, param)


@seeded
def wider_resnet(bn_mode: str = "inplace", *, a2: bool = True, activation: str = "leaky_relu",
                 param: float = 0.01) -> nn.Module:
    """Wide ResNet (A2: strided blocks and dropout; otherwise five poolings), one block per module."""
    norm_act = make_norm_act(bn_mode, activation, param, backend="torch")
    return built(WiderResNet((1, 1, 1, 1, 1, 1), norm_act, a2=a2, num_classes=7), activation, param)


@seeded
def densenet(bn_mode: str = "inplace", activation: str = "leaky_relu", param: float = 0.01) -> nn.Module:
    """DenseNet-BC with growth 4 and one layer per dense block, memory-efficient (recomputing) blocks."""
    norm_act = make_norm_act(bn_mode, activation, param, backend="torch")
    return built(DenseNet((1, 1, 1, 1), norm_act, growth=4, input_3x3=True, num_classes=7,
                          memory_efficient=True), activation, param)


@seeded
def segmentation(bn_mode: str = "inplace", pooling_size: int = 3) -> nn.Module:
    """A dilated (output stride 8) narrow DenseNet body, a narrow DeepLabV3 head with an inference pooling window
    of `pooling_size` feature pixels, and the 1x1 classifier: the Vistas network's parts."""
    norm_act = make_norm_act(bn_mode, backend="torch")
    body = DenseNet((1, 1, 1, 1), norm_act, growth=4, dilation=(1, 1, 2, 4), num_classes=0)
    head = DeepLabV3Head(body.num_features, 6, 6, dilations=(1, 2, 3), norm_act=norm_act, pooling_size=pooling_size)
    return randomize_norms(SegmentationNet(body, head, 5)).eval()


# name -> builder of a small network of that family (and variant); every one takes 32 px and up
SMALL_FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "resnet_basic_inplace": lambda: resnet("inplace"),
    "resnet_bottleneck_standard_relu": lambda: resnet("standard", bottleneck=True, fused=False, activation="relu",
                                                      param=0.0),
    "resnext_sync_elu": lambda: resnext("sync", activation="elu", param=1.0),
    "wider_resnet_a2_inplace": lambda: wider_resnet("inplace"),
    "densenet_inplace_identity": lambda: densenet("inplace", activation="identity", param=0.0),
    "segmentation_inplace": lambda: segmentation("inplace"),
}
