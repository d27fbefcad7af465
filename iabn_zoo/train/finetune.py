"""Fine-tuning a zoo network on a folder data set, in one process or many under `torchrun`.

`finetune("resnet50_ipabn_sync_lr_512", "data/", "runs/r1", epochs=5)` trains on data/train, validates on data/val
after every epoch and writes the run directory described in `iabn_zoo.train.runs`. Under torchrun every InPlace-ABN layer
becomes synchronised (statistics over all ranks), samplers split the data, and rank 0 alone writes files.

Learning-rate schedules are evaluated per iteration: with t the optimizer steps done and T the total of the run,
`cosine` scales the base rate by (1 + cos(pi t / T)) / 2, `linear` by 1 - t / T, and `step` by gamma ** (epoch //
step_epochs). Weight decay applies only to tensors with two or more dimensions (convolution and linear weights),
never to norm parameters or biases.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ..data.folders import ON_ERROR, load_splits
from ..data.transforms import (
    AUGMENT_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_scale_for,
    eval_transform,
    train_transform,
)
from ..errors import InvalidArgumentError
from ..tasks.evaluate import Tally, count_correct
from . import runs

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "step")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MIN_IMAGE_SIZE = 8
# Options a resumed run may change; every other option must match the checkpointed configuration.
RESUMABLE_CHANGES = frozenset({"epochs", "num_workers", "progress", "device", "on_error"})


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run; stored in RUN/config.json. `batch_size` is per process."""

    model: str
    data_dir: str
    out_dir: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    image_size: int = 224
    augment: str = "imagenet"
    pretrained: bool | None = None  # None: True for a weights name, False for a bare architecture
    bn_mode: str | None = None  # None: the weights' mode (sync becomes inplace on one process), else inplace
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    classifier_lr_mult: float = 1.0
    schedule: str = "cosine"
    step_epochs: int | None = None  # step schedule: decay every this many epochs (default epochs // 3)
    gamma: float = 0.1
    freeze_stages: int = 0
    clip_grad_norm: float = 0.0  # 0: no clipping
    precision: str = "auto"  # auto: fp16/bf16 autocast on CUDA, fp32 on CPU
    sync_bn: bool = True  # under torchrun, make InPlace-ABN layers synchronised
    seed: int = 0
    num_workers: int = 2
    on_error: str = "skip"  # unreadable images: skip with a warning, or raise
    device: str | None = None
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        check_config(self)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgumentError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse out-of-range options with a message naming the option and what it accepts."""
    _check(_is_int(cfg.epochs) and cfg.epochs >= 1, f"epochs must be an integer >= 1, got {cfg.epochs!r}")
    _check(_is_int(cfg.batch_size) and cfg.batch_size >= 2,
           f"batch_size must be an integer >= 2 (batch statistics need two images), got {cfg.batch_size!r}")
    _check(isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0,
           f"lr must be a positive number, got {cfg.lr!r}")
    _check(_is_int(cfg.image_size) and cfg.image_size >= MIN_IMAGE_SIZE,
           f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {cfg.image_size!r}")
    _check(cfg.augment in AUGMENT_PRESETS, f"augment must be one of {', '.join(AUGMENT_PRESETS)}, got {cfg.augment!r}")
    _check(cfg.bn_mode in (None, "standard", "inplace", "sync"),
           f"bn_mode must be standard, inplace or sync, got {cfg.bn_mode!r}")
    _check(cfg.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    _check(cfg.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    _check(cfg.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    _check(cfg.on_error in ON_ERROR, f"on_error must be one of {', '.join(ON_ERROR)}, got {cfg.on_error!r}")
    _check(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay!r}")
    _check(cfg.classifier_lr_mult > 0, f"classifier_lr_mult must be > 0, got {cfg.classifier_lr_mult!r}")
    _check(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum!r}")
    _check(0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma!r}")
    _check(cfg.step_epochs is None or (_is_int(cfg.step_epochs) and cfg.step_epochs >= 1),
           f"step_epochs must be an integer >= 1, got {cfg.step_epochs!r}")
    _check(_is_int(cfg.freeze_stages) and cfg.freeze_stages >= 0,
           f"freeze_stages must be an integer >= 0, got {cfg.freeze_stages!r}")
    _check(cfg.clip_grad_norm >= 0, f"clip_grad_norm must be >= 0 (0: off), got {cfg.clip_grad_norm!r}")
    _check(_is_int(cfg.num_workers) and cfg.num_workers >= 0,
           f"num_workers must be an integer >= 0, got {cfg.num_workers!r}")


@dataclass
class FinetuneResult:
    """The outcome: the run directory, one record per epoch, and the trained network (unwrapped)."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    model: nn.Module = field(repr=False)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


# -- processes and devices ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Processes:
    """This process's place in the job: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextmanager
def process_group(device: str | None) -> Iterator[Processes]:
    """Join the torchrun job when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU), and leave it afterwards."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    target = torch.device(f"cuda:{local_rank}" if use_cuda and device in (None, "cuda") else (device or "cpu"))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    started_here = world_size > 1 and not dist.is_initialized()
    if started_here:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    try:
        rank = dist.get_rank() if dist.is_initialized() else 0
        yield Processes(rank=rank, world_size=dist.get_world_size() if dist.is_initialized() else 1, device=target)
    finally:
        if started_here:
            dist.destroy_process_group()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None for full fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise InvalidArgumentError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# -- model, parameters, optimizer, schedule -----------------------------------------------------------------------

def weights_entry(model_name: str):
    """The weights entry `model_name` names, None for a bare architecture."""
    from ..factory import resolve_weights

    return resolve_weights(model_name)


def training_bn_mode(cfg: FinetuneConfig, weights: Any) -> str:
    """The single-process norm mode: the option, else the weights' (sync trains as inplace), else inplace."""
    if cfg.bn_mode is not None:
        return "inplace" if cfg.bn_mode == "sync" else cfg.bn_mode
    trained = weights.arch_kwargs.get("bn_mode", "inplace") if weights is not None else "inplace"
    return "inplace" if trained == "sync" else trained


def describe_run(cfg: FinetuneConfig, classes: list[str]) -> dict[str, Any]:
    """The config.json document: options, classes, and how to rebuild and feed the network."""
    weights = weights_entry(cfg.model)
    return {
        "config": asdict(cfg),
        "classes": classes,
        "arch": weights.arch if weights is not None else cfg.model,
        "arch_kwargs": dict(weights.arch_kwargs) if weights is not None else {},
        "bn_mode": training_bn_mode(cfg, weights),
        "source_weights": weights.name if weights is not None else None,
        "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "resize": eval_scale_for(cfg.augment, cfg.image_size), "crop": cfg.image_size,
                          "interpolation": "bilinear"},
    }


def build_model(cfg: FinetuneConfig, description: dict[str, Any], *, from_checkpoint: bool) -> nn.Module:
    """The network to train: pretrained weights loaded unless a checkpoint will overwrite them anyway."""
    from ..factory import create_model

    weights = weights_entry(cfg.model)
    pretrained = (weights is not None) if cfg.pretrained is None else cfg.pretrained
    if from_checkpoint or not pretrained:
        return runs.build_network(description["arch"], description["arch_kwargs"], description["bn_mode"],
                                  len(description["classes"]))
    return create_model(cfg.model, pretrained=True, num_classes=len(description["classes"]),
                        bn_mode=description["bn_mode"])


def stage_modules(model: nn.Module, count: int) -> list[nn.Module]:
    """The modules that compute the first `count` stages of a zoo network (from its feature_info): the stages
    and everything before them, such as the stem."""
    info = getattr(model, "feature_info", None)
    if count == 0:
        return []
    if not info:
        raise InvalidArgumentError(f"{type(model).__name__} lists no stages, so freeze_stages must be 0")
    if count > len(info):
        raise InvalidArgumentError(f"freeze_stages must be at most {len(info)} for this network "
                                   f"(stages: {', '.join(i.module for i in info)}), got {count}")
    children = [name for name, _ in model.named_children()]
    last = children.index(info[count - 1].module.split(".")[0])
    return [model.get_submodule(name) for name in children[:last + 1]]


def freeze(modules: list[nn.Module]) -> None:
    """Stop training these modules: no gradients, and norm statistics kept as they are (eval mode)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()


def parameter_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer groups: backbone / classifier, each split into decayed (>= 2-D) and not decayed tensors."""
    classifier_ids = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") \
        else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in classifier_ids, param.ndim >= 2), []).append(param)
    result = []
    for (is_classifier, decayed), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.classifier_lr_mult if is_classifier else 1.0)
        result.append({"params": params, "lr": lr, "base_lr": lr,
                       "weight_decay": cfg.weight_decay if decayed else 0.0})
    if not result:
        raise InvalidArgumentError("every parameter is frozen: lower freeze_stages")
    return result


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) or AdamW over the parameter groups."""
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: FinetuneConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate at optimizer step `step` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "linear":
        return 1 - step / total
    step_epochs = cfg.step_epochs or max(1, cfg.epochs // 3)
    return cfg.gamma ** ((step // steps_per_epoch) // step_epochs)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every group's base rate by `factor`; returns the backbone's rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


# -- data ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loaders:
    """The training and validation loaders of this rank, and the class names they share."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    classes: list[str]


def make_loaders(cfg: FinetuneConfig, procs: Processes) -> Loaders:
    """Training loader (shuffled, split over ranks, seeded augmentation), validation loader (rank's shard)."""
    train_set, val_set = load_splits(
        cfg.data_dir, train_transform=train_transform(cfg.image_size, cfg.augment),
        val_transform=eval_transform(cfg.image_size, eval_scale_for(cfg.augment, cfg.image_size)),
        on_error=cfg.on_error, seed=cfg.seed)
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank,
                                                  shuffle=True, seed=cfg.seed)
    per_rank = len(sampler)
    if per_rank < 2:
        raise InvalidArgumentError(f"{len(train_set)} training images cannot feed {procs.world_size} processes "
                                   "with two images each; add images or use fewer processes")
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=min(cfg.batch_size, per_rank), sampler=sampler, num_workers=cfg.num_workers,
        drop_last=True, pin_memory=procs.device.type == "cuda", persistent_workers=False)
    shard = torch.utils.data.Subset(val_set, list(range(procs.rank, len(val_set), procs.world_size)))
    val_loader = torch.utils.data.DataLoader(shard, batch_size=cfg.batch_size, shuffle=False,
                                             num_workers=cfg.num_workers)
    return Loaders(train=train_loader, val=val_loader, classes=train_set.classes)


# -- the loop -----------------------------------------------------------------------------------------------------

def show_progress(cfg: FinetuneConfig, procs: Processes) -> bool:
    """A progress bar on rank 0 only, by default when stderr is a terminal."""
    wanted = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    return wanted and procs.is_writer


def all_reduce_tally(tally: Tally, procs: Processes) -> Tally:
    """The sum of every rank's tally."""
    if not procs.distributed:
        return tally
    packed = torch.tensor([tally.loss_sum, tally.top1, tally.top5, tally.images], dtype=torch.float64,
                          device=procs.device if procs.device.type == "cuda" else "cpu")
    dist.all_reduce(packed)
    loss_sum, top1, top5, images = packed.tolist()
    return Tally(loss_sum=loss_sum, top1=int(top1), top5=int(top5), images=int(images))


class Trainer:
    """One run's training state and the steps that advance it."""

    def __init__(self, cfg: FinetuneConfig, procs: Processes, description: dict[str, Any], loaders: Loaders):
        self.cfg = cfg
        self.procs = procs
        self.run_dir = Path(cfg.out_dir)
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.steps_per_epoch = len(self.train_loader)
        resuming = runs.has_checkpoint(self.run_dir)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, description, from_checkpoint=resuming).to(procs.device)
        self.frozen = stage_modules(self.model, cfg.freeze_stages)
        self.sync = procs.distributed and cfg.sync_bn and description["bn_mode"] == "inplace"
        if self.sync:
            from ..layers.norm_act import convert_norm

            self.model = convert_norm(self.model, "sync")
        freeze(self.frozen)
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.precision, procs.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss()
        self.epoch, self.step = 0, 0
        self.metrics: list[dict[str, Any]] = []
        if resuming:
            self.restore(runs.load_checkpoint(self.run_dir))
        self.network = self.wrap()

    def wrap(self) -> nn.Module:
        """DDP around the model under torchrun; buffers are not broadcast when sync layers keep them equal."""
        if not self.procs.distributed:
            return self.model
        device_ids = [self.procs.device] if self.procs.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                   broadcast_buffers=not self.sync)

    def restore(self, state: runs.TrainingState) -> None:
        """Continue from a checkpoint: weights, optimizer, scaler, RNG, counters and earlier metrics."""
        self.model.load_state_dict(state.model, strict=True)
        self.optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        torch.set_rng_state(state.rng["torch"])
        self.epoch, self.step = state.epoch, state.step
        self.metrics = [r for r in runs.read_metrics(self.run_dir) if r["epoch"] <= state.epoch]

    def autocast(self):
        return torch.autocast(self.procs.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_one_epoch(self) -> dict[str, Any]:
        """One pass over this rank's share of the training set; loss and top-1 summed over ranks."""
        self.network.train()
        freeze(self.frozen)
        self.train_loader.sampler.set_epoch(self.epoch)
        self.train_loader.dataset.set_epoch(self.epoch)
        tally, start = Tally(), time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not show_progress(self.cfg, self.procs), dynamic_ncols=True)
        lr = 0.0
        for images, targets in bar:
            lr = set_lr(self.optimizer, lr_factor(self.cfg, self.step, self.steps_per_epoch))
            images, targets = images.to(self.procs.device), targets.to(self.procs.device)
            logits, loss = self.optimize(images, targets)
            tally.add(loss.item() * targets.numel(), *count_correct(logits.detach().float(), targets), targets.numel())
            self.step += 1
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{tally.loss:.3f}", acc=f"{tally.top1_percent:.1f}",
                            img_s=f"{tally.images * self.procs.world_size / max(elapsed, 1e-9):.0f}")
        elapsed = time.perf_counter() - start
        total = all_reduce_tally(tally, self.procs)
        return {"train_loss": total.loss, "train_top1": total.top1_percent, "lr": lr,
                "images_per_s": total.images / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def optimize(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward (scaled under fp16), optional clipping, optimizer step."""
        with self.autocast():
            logits = self.network(images)
            loss = self.criterion(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, loss.detach()

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Loss, top-1 and top-5 (percent) over the whole validation set, each rank scoring its shard."""
        self.model.eval()
        tally = Tally()
        for images, targets in self.val_loader:
            images, targets = images.to(self.procs.device), targets.to(self.procs.device)
            with self.autocast():
                logits = self.model(images).float()
            tally.add(self.criterion(logits, targets).item() * targets.numel(), *count_correct(logits, targets),
                      targets.numel())
        total = all_reduce_tally(tally, self.procs)
        return {"val_loss": total.loss, "val_top1": total.top1_percent, "val_top5": total.top5_percent,
                "val_images": total.images}

    def save(self) -> None:
        """Rank 0: the weights, the resume point (committed last of the two), then the metrics."""
        if not self.procs.is_writer:
            return
        state_dict = self.model.state_dict()
        runs.save_weights(self.run_dir / runs.MODEL_FILE, state_dict,
                          {"epoch": str(self.epoch), "format": "iabn-zoo fine-tuning run"})
        rng = {"torch": torch.get_rng_state()}
        runs.save_checkpoint(self.run_dir, runs.TrainingState(
            epoch=self.epoch, step=self.step, model=state_dict, optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {}, rng=rng))
        runs.write_metrics(self.run_dir, self.metrics)

    def run(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
        """Train the remaining epochs, validating and checkpointing after each."""
        while self.epoch < self.cfg.epochs:
            record = {"epoch": self.epoch + 1, **self.train_one_epoch(), **self.validate()}
            self.epoch += 1
            self.metrics.append(record)
            self.save()
            if on_epoch_end is not None:
                on_epoch_end(record)
        return self.metrics


def resolve_config(model: str, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], resume: bool,
                   options: dict[str, Any]) -> FinetuneConfig:
    """The run's configuration: the given options, or on resume the checkpointed ones (checked to agree)."""
    known = {f.name for f in fields(FinetuneConfig)} - {"model", "data_dir", "out_dir"}
    unknown = sorted(set(options) - known)
    _check(not unknown, f"unknown fine-tuning option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    run_dir = Path(out_dir)
    weights_entry(model)  # an unknown name fails here, before anything is read or written
    requested = FinetuneConfig(model=model, data_dir=str(data_dir), out_dir=str(run_dir), **options)
    if not runs.has_checkpoint(run_dir):
        return requested  # nothing finished yet: (re)start from the beginning
    if not resume:
        raise InvalidArgumentError(f"{run_dir} already holds a checkpointed run; pass --resume (resume=True) to "
                                   "continue it, or choose another --out")
    stored = runs.read_json(run_dir / runs.CONFIG_FILE)["config"]
    stored.update({"data_dir": str(data_dir), "out_dir": str(run_dir)})
    changed = sorted(k for k, v in options.items() if k not in RESUMABLE_CHANGES and stored.get(k) != v)
    changed += ["model"] if stored["model"] != model else []
    _check(not changed, f"cannot resume {run_dir} with different option(s): "
                        + ", ".join(f"{k} (run: {stored.get(k)!r})" for k in changed)
                        + "; drop them or start another run")
    stored.update({k: v for k, v in options.items() if k in RESUMABLE_CHANGES})
    return FinetuneConfig(**stored)


def finetune(model: str, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, resume: bool = False,
             on_epoch_end: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> FinetuneResult:
    """Fine-tune `model` (a weights or architecture name) on DATA/train, validating on DATA/val, into `out_dir`.

    `options` are the fields of FinetuneConfig (epochs, batch_size, lr, image_size, augment, ...). With
    `resume=True` an interrupted run continues exactly where its last checkpoint left off (a run without a
    checkpoint starts from the beginning). `on_epoch_end(record)` is called on every rank after each epoch.
    """
    cfg = resolve_config(model, data_dir, out_dir, resume, options)
    with process_group(cfg.device) as procs:
        loaders = make_loaders(cfg, procs)  # checks the data before anything is written
        description = describe_run(cfg, loaders.classes)
        if procs.is_writer:
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            runs.write_json(Path(cfg.out_dir) / runs.CONFIG_FILE, description)
            runs.write_classes_csv(Path(cfg.out_dir), loaders.classes)
        trainer = Trainer(cfg, procs, description, loaders)
        metrics = trainer.run(on_epoch_end)
        if procs.distributed:
            dist.barrier()
        return FinetuneResult(run_dir=Path(cfg.out_dir), metrics=metrics, model=trainer.model.eval())

