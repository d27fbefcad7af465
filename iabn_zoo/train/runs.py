"""Fine-tuning run directories: crash-safe checkpoint files, resume state, and loading a run back as a model.

A RUN directory holds
  config.json               the run's configuration, class names, architecture and preprocessing;
  model.safetensors         the latest weights (what `load_run` and `iabn-zoo evaluate RUN` use);
  checkpoint.json           the resume point: epoch, step, optimizer/scheduler/scaler state (tensors excepted);
  state-epochNNNN.safetensors  the tensors of that resume point: model, optimizer buffers, RNG states;
  metrics.jsonl             one JSON object per finished epoch;
  classes.csv               index,name of every output (the `labels` of a registered entry, see `run_weights`).
Every file is written to a temporary name, fsynced and renamed over the old one; `checkpoint.json` is renamed
last and names its tensor file, so a write killed at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import CheckpointError, DataError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.json"
METRICS_FILE = "metrics.jsonl"
CLASSES_FILE = "classes.csv"
FORMAT_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that readers see the old or the new file, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON document at `path`; CheckpointError naming the file when it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is {path.parent} a fine-tuning run directory?") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({error}); restore it or start a new run") from None


def cpu_tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of `state`'s tensors, keys prefixed, as safetensors requires."""
    return {prefix + key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a model's state_dict as a safetensors file, atomically."""
    write_atomic(path, save(cpu_tensors(state_dict), metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; CheckpointError naming the file when it is damaged."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the run directory is incomplete") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None


# -- optimizer state: tensors go to the safetensors file, everything else to checkpoint.json --------------------

def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer.state_dict() as (tensors keyed 'optimizer.PARAM.NAME', JSON-ready rest)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `split_optimizer_state`, ready for Optimizer.load_state_dict."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key[len("optimizer."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


@dataclass
class TrainingState:
    """What a resume needs: finished epochs, optimizer steps, and the state of every stateful piece."""

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, torch.Tensor]


def save_checkpoint(run_dir: Path, state: TrainingState) -> None:
    """Write the tensor file of `state`, then commit it by replacing checkpoint.json; drop the older tensor file."""
    previous = checkpoint_tensor_file(run_dir)
    tensor_file = f"state-epoch{state.epoch:04d}.safetensors"
    optimizer_tensors, optimizer_rest = split_optimizer_state(state.optimizer)
    tensors = {**cpu_tensors(state.model, "model."), **cpu_tensors(optimizer_tensors),
               **cpu_tensors(state.rng, "rng.")}
    write_atomic(run_dir / tensor_file, save(tensors, metadata={"epoch": str(state.epoch)}))
    write_json(run_dir / CHECKPOINT_FILE, {
        "format": FORMAT_VERSION, "epoch": state.epoch, "step": state.step, "tensor_file": tensor_file,
        "optimizer": optimizer_rest, "scheduler": {"step": state.step}, "scaler": state.scaler,
    })
    if previous is not None and previous.name != tensor_file:
        previous.unlink(missing_ok=True)


def checkpoint_tensor_file(run_dir: Path) -> Path | None:
    """The tensor file the committed checkpoint.json names, None when there is no checkpoint yet."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        return None
    return run_dir / read_json(run_dir / CHECKPOINT_FILE)["tensor_file"]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a committed checkpoint to resume from."""
    return (run_dir / CHECKPOINT_FILE).exists()


def load_checkpoint(run_dir: Path) -> TrainingState:
    """The committed resume point of `run_dir`."""
    meta = read_json(run_dir / CHECKPOINT_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{run_dir / CHECKPOINT_FILE} has format {meta.get('format')!r}, this version reads "
                              f"{FORMAT_VERSION}; resume with the iabn-zoo version that wrote it")
    tensors = load_tensors(run_dir / meta["tensor_file"])
    model = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    rng = {key[len("rng."):]: value for key, value in tensors.items() if key.startswith("rng.")}
    return TrainingState(epoch=meta["epoch"], step=meta["step"], model=model,
                         optimizer=join_optimizer_state(tensors, meta["optimizer"]), scaler=meta["scaler"], rng=rng)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (none when the file does not exist yet)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with `records`, atomically (a resumed run drops records past its checkpoint)."""
    write_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


# -- reading a finished (or running) run back -------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    """What `config.json` says about a run: how to rebuild its network and feed it."""

    run_dir: Path
    arch: str
    arch_kwargs: dict[str, Any]
    bn_mode: str
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]
    config: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding a run's config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """The description of the run in `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist; pass the --out folder of `iabn-zoo finetune`")
    document = read_json(run_dir / CONFIG_FILE)
    try:
        return RunInfo(run_dir=run_dir, arch=document["arch"], arch_kwargs=dict(document["arch_kwargs"]),
                       bn_mode=document["bn_mode"], classes=tuple(document["classes"]),
                       preprocessing=dict(document["preprocessing"]), config=dict(document["config"]))
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} lacks field {error}; was it written by iabn-zoo finetune?")\
            from None


def build_network(arch: str, arch_kwargs: dict[str, Any], bn_mode: str, num_classes: int) -> nn.Module:
    """A freshly initialised network of `arch` with the family options of `arch_kwargs`."""
    from ..factory import create_model

    options = {k: v for k, v in arch_kwargs.items() if k not in ("bn_mode", "num_classes")}
    return create_model(arch, num_classes=num_classes, bn_mode=bn_mode, **options)


def build_run_model(info: RunInfo) -> nn.Module:
    """The run's network with freshly initialised weights, in the norm mode it was trained with."""
    return build_network(info.arch, info.arch_kwargs, info.bn_mode, info.num_classes)


def load_run(run_dir: str | os.PathLike[str], *, bn_mode: str | None = None) -> nn.Module:
    """The fine-tuned network of `run_dir` with its latest weights, in eval mode; `model.classes` names its outputs.

    `bn_mode` converts the norm layers exactly after loading (e.g. "standard" for plain BatchNorm inference)."""
    info = read_run(run_dir)
    model = build_run_model(info)
    state = load_tensors(info.run_dir / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{info.run_dir / MODEL_FILE} does not fit {info.arch}: {error}") from None
    if bn_mode is not None and bn_mode != info.bn_mode:
        from ..layers.norm_act import convert_norm

        model = convert_norm(model, bn_mode)
    model.classes = list(info.classes)
    return model.eval()


def create_from_run(run_dir: str | os.PathLike[str], *, pretrained: bool = True, num_classes: int | None = None,
                    bn_mode: str | None = None) -> nn.Module:
    """`create_model(RUN_DIR, ...)`: the run's network with its trained weights (or fresh ones with
    pretrained=False), a new classifier when `num_classes` differs, norm layers converted to `bn_mode`."""
    if pretrained:
        model = load_run(run_dir, bn_mode=bn_mode).train()
    else:
        from ..layers.norm_act import convert_norm

        model = build_run_model(read_run(run_dir))
        model = convert_norm(model, bn_mode) if bn_mode is not None else model
    if num_classes is not None and num_classes != len(read_run(run_dir).classes):
        model.reset_classifier(num_classes)
    return model


def file_md5(path: Path) -> str:
    """The md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_classes_csv(run_dir: Path, classes: list[str]) -> None:
    """RUN/classes.csv (index,name), the label file a registered entry of the run points to."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "name"])
    writer.writerows(enumerate(classes))
    write_atomic(run_dir / CLASSES_FILE, text.getvalue().encode())


def run_weights(run_dir: str | os.PathLike[str], *, name: str, url: str, description: str = "") -> Any:
    """A `Weights` entry for the run's model.safetensors published at `url` (http/https), to pass to
    `register_weights` or write into a registry file; `create_model(name, pretrained=True)` then loads it."""
    from ..weights.catalog import Weights

    info = read_run(run_dir)
    weights_file = info.run_dir / MODEL_FILE
    metrics = read_metrics(info.run_dir)
    scores = {key: float(metrics[-1][f"val_{key}"]) for key in ("top1", "top5")} if metrics else {}
    return Weights(
        name=name, arch=info.arch, arch_kwargs={**info.arch_kwargs, "bn_mode": info.bn_mode}, urls=(url,),
        md5=file_md5(weights_file), file_name=f"{name}.safetensors", num_classes=info.num_classes,
        task="classification", metrics=scores, license="", preprocessing=dict(info.preprocessing),
        description=description or f"{info.config.get('model')} fine-tuned on {info.config.get('data_dir')}",
        labels=str((info.run_dir / CLASSES_FILE).resolve()), file_size=weights_file.stat().st_size)
