"""Every zoo family built directly at its smallest structure (one block per module, tiny DenseNet growth, a narrow
DeepLab head), for tests that run whole networks many times: compile, checkpointing, intermediates, autocast."""

from contextlib import AbstractContextManager

import torch
import torch._inductor.config

from iabn_zoo.layers import make_norm_act
from iabn_zoo.models._blocks import init_conv_weights
from iabn_zoo.models.deeplab import DeepLabV3Head
from iabn_zoo.models.densenet import DenseNet
from iabn_zoo.models.resnet import ResNet
from iabn_zoo.models.resnext import ResNeXt
from iabn_zoo.models.segmentation import SegmentationNet
from iabn_zoo.models.wider_resnet import WiderResNet

NUM_CLASSES = 5
IMAGE_SIZE = 32


def vistas(norm_act, **options):
    """The Vistas network's shape: dilated WRN-A2 body (output stride 8), DeepLabV3 head, 1x1 classifier; the head
    pools 2x2 windows at inference so the sliding average runs on the tiny map."""
    body = WiderResNet((1,) * 6, norm_act, a2=True, dilation=True, num_classes=0, **options)
    head = DeepLabV3Head(body.num_features, 16, 16, norm_act=norm_act, pooling_size=2)
    return SegmentationNet(body, head, NUM_CLASSES)


BUILDERS = {
    "resnext": lambda norm_act, **o: ResNeXt((1, 1, 1, 1), norm_act, groups=4, num_classes=NUM_CLASSES, **o),
    "wider_resnet": lambda norm_act, **o: WiderResNet((1,) * 6, norm_act, num_classes=NUM_CLASSES, **o),
    "wider_resnet_a2": lambda norm_act, **o: WiderResNet((1,) * 6, norm_act, a2=True, num_classes=NUM_CLASSES, **o),
    "resnet": lambda norm_act, **o: ResNet((1, 1, 1, 1), norm_act, bottleneck=False, num_classes=NUM_CLASSES, **o),
    "densenet": lambda norm_act, **o: DenseNet((1, 2, 1, 1), norm_act, growth=8, num_classes=NUM_CLASSES, **o),
    "vistas": vistas,
}
FAMILIES = tuple(BUILDERS)


def small_model(family: str, bn_mode: str = "inplace", backend: str | None = None, seed: int = 0,
                dtype: torch.dtype = torch.float64, **options) -> torch.nn.Module:
    """`family` at its smallest, with the family's memory-lean parts on in the in-place modes (as create_model
    builds it), random norm parameters (negative weights included) so every gradient is exercised, in training."""
    torch.manual_seed(seed)
    norm_act = make_norm_act(bn_mode, backend=backend)
    options.setdefault("memory_efficient", bn_mode != "standard")
    model = BUILDERS[family](norm_act, **options)
    init_conv_weights(model, norm_act.activation, norm_act.activation_param)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(".weight") and tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5 + 1.0)
            elif name.endswith(".bias") and tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.to(dtype).train()


def images(batch: int = 2, size: int = IMAGE_SIZE, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """A seeded random batch."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def inductor_as_shared() -> AbstractContextManager:
    """The inductor settings every test that compiles a small model uses (dropout drawing the eager masks): with
    the same settings, the same graph is compiled to C++ once per machine and read from inductor's cache after, so
    a second test compiling it costs tracing, not a compiler run (a cold cache costs ~1 min per network here)."""
    return torch._inductor.config.patch(fallback_random=True)
