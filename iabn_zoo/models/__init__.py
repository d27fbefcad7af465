"""The networks: the architecture registry, the shared base class and blocks, one module per family (ResNeXt, Wide
ResNet, ResNet, DenseNet), the DeepLabV3 head, the Vistas segmentation network and the fast eval path. Networks
touch no files or URLs. May import: layers, errors."""

from ._base import FeatureInfo, ZooModule, ZooNet
from ._registry import arch_task, get_arch, is_arch, list_archs, register_arch, unregister_arch

__all__ = ["FeatureInfo", "ZooModule", "ZooNet", "arch_task", "get_arch", "is_arch", "list_archs", "register_arch",
           "unregister_arch"]
