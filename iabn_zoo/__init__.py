"""iabn-zoo: the networks of In-Place Activated BatchNorm, their published weights, torch.hub and fine-tuning.

Public names are imported on first use, so `import iabn_zoo` costs little more than `import torch`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ZooError": "errors",
    "InvalidArgumentError": "errors",
    "UnknownNameError": "errors",
    "RegistryError": "errors",
    "DownloadError": "errors",
    "ChecksumError": "errors",
    "CheckpointError": "errors",
    "DataError": "errors",
    "list_models": "factory",
    "create_model": "factory",
    "Weights": "weights.catalog",
    "list_weights": "weights.catalog",
    "get_weights": "weights.catalog",
    "register_weights": "weights.catalog",
    "download": "weights.downloader",
    "load_state_dict": "weights.loading",
    "make_norm_act": "layers",
    "convert_norm": "layers",
    "SegmentationPredictor": "tasks.segment",
    "enable_fast_eval": "models._fast_eval",
    "disable_fast_eval": "models._fast_eval",
    "load_run": "factory",
    "finetune": "train.finetune",
    "run_weights": "weights.run_reader",
    "CacheWriteError": "errors",
    "ExportError": "errors",
    "export": "deploy.exporter",
    "deployable_copy": "models._deployable",
    "ResourceLimitError": "errors",
    "StorageError": "errors",
    "HubError": "errors",
    "PublishError": "errors",
    "MissingExtraError": "errors",
    "push_to_hub": "weights.hf_hub.publish",
    "save_pretrained": "weights.hf_hub.publish",
    "RunPreempted": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iabn_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
