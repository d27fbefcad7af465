"""Writers of synthetic checkpoints in the layouts the authors' scripts produced, for tests and benchmarks.

The published ImageNet files are `torch.save` dicts from the authors' training script: the model was wrapped for
multi-GPU training, so every key starts with `module.`, and the dict also holds `epoch`, `arch`, `best_prec1` and
the optimizer's state. PyTorch of that time wrote the legacy (non-zip) format. The Vistas file holds
`state_dict = {"body": ..., "head": ..., "cls": ...}`. Files of the first (2017) release wrapped each norm layer,
so its keys read `...bn1.bn.weight`, and predate `num_batches_tracked`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path

import torch

NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
VISTAS_PARTS = ("body", "head", "cls")


def with_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as `DataParallel`/`DistributedDataParallel` save them: `module.` in front of every name."""
    return {f"module.{key}": value for key, value in state_dict.items()}


def sgd_state(state_dict: Mapping[str, torch.Tensor], *, momentum_buffers: bool = True) -> dict:
    """An SGD optimizer's `state_dict()` for the floating-point tensors of `state_dict`, as the training script kept it."""
    params = [key for key, value in state_dict.items() if value.is_floating_point()]
    state = {i: {"momentum_buffer": torch.zeros_like(state_dict[key])} for i, key in enumerate(params)}
    group = {"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4, "nesterov": False,
             "params": list(range(len(params)))}
    return {"state": state if momentum_buffers else {}, "param_groups": [group]}


def write_imagenet_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], *, arch: str = "resnext101",
                              epoch: int = 90, best_prec1: float = 78.08, legacy: bool = True,
                              momentum_buffers: bool = True) -> Path:
    """Save `state_dict` the way the authors' `train_imagenet.py` did (legacy serialization unless `legacy=False`)."""
    path = Path(path)
    checkpoint = {
        "epoch": epoch,
        "arch": arch,
        "state_dict": with_module_prefix(state_dict),
        "best_prec1": best_prec1,
        "optimizer": sgd_state(state_dict, momentum_buffers=momentum_buffers),
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def split_vistas_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a segmentation model's keys `body.*`, `head.*`, `cls.*` into the three dicts of the Vistas file."""
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in VISTAS_PARTS}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        if part not in parts:
            raise ValueError(f"key {key!r} belongs to none of {VISTAS_PARTS}")
        parts[part][rest] = value
    return parts


def write_vistas_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], *,
                            legacy: bool = True) -> Path:
    """Save a segmentation model's tensors as the Vistas file: `{"state_dict": {"body", "head", "cls"}}`."""
    path = Path(path)
    torch.save({"state_dict": split_vistas_state(state_dict)}, path, _use_new_zipfile_serialization=not legacy)
    return path


def norm_layer_prefixes(state_dict: Mapping[str, torch.Tensor]) -> set[str]:
    """Names of the norm layers in `state_dict`: the modules that own a `running_mean`."""
    return {key[: -len(".running_mean")] for key in state_dict if key.endswith(".running_mean")}


def to_2017_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first release's keys: every norm layer wrapped (`bn1.weight` -> `bn1.bn.weight`), no `num_batches_tracked`."""
    norm_layers = norm_layer_prefixes(state_dict)
    converted = {}
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        if prefix in norm_layers and param == "num_batches_tracked":
            continue
        converted[f"{prefix}.bn.{param}" if prefix in norm_layers else key] = value
    return converted


def without_num_batches_tracked(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as PyTorch < 0.4.1 saved them: no `num_batches_tracked` buffers."""
    return {key: value for key, value in state_dict.items() if not key.endswith(".num_batches_tracked")}


class MarkerWriter:
    """A pickled object whose unpickling runs code: it writes `marker`. A safe loader must never run it."""

    def __init__(self, marker: str | Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


def write_malicious_checkpoint(path: str | Path, marker: str | Path,
                               state_dict: Mapping[str, torch.Tensor] | None = None, *,
                               legacy: bool = True) -> Path:
    """A checkpoint that looks like the authors' but whose unpickling would create `marker` (arbitrary code)."""
    path = Path(path)
    checkpoint = {"state_dict": with_module_prefix(state_dict or {}), "epoch": 1, "payload": MarkerWriter(marker)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def publish(server, path: str | Path, name: str, arch: str, *, arch_kwargs: dict | None = None,
            num_classes: int = 10, task: str = "classification", labels: str | None = None,
            preprocessing: dict | None = None, overwrite: bool = False):
    """Serve the file at `path` from the loopback `server` and register it as weights `name` (md5 of its bytes)."""
    import hashlib

    from iabn_zoo.weights.catalog import Weights, register_weights

    path = Path(path)
    url = server.add(f"/files/{name}/{path.name}", path)
    weights = Weights(
        name=name, arch=arch, arch_kwargs=dict(arch_kwargs or {"bn_mode": "inplace"}), urls=(url,),
        md5=hashlib.md5(path.read_bytes()).hexdigest(), file_name=f"{name}.pth.tar", num_classes=num_classes,
        task=task, metrics={"top1": 50.0, "top5": 75.0}, license="test only",
        preprocessing=dict(preprocessing or {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                             "resize": 40, "crop": 32, "interpolation": "bilinear"}),
        description=f"synthetic {arch} checkpoint for tests", labels=labels, file_size=path.stat().st_size)
    return register_weights(weights, overwrite=overwrite)
