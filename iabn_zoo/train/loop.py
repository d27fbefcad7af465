"""The fine-tuning loop: train an epoch, validate, save the weights and the resume point, repeat."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ..errors import CheckpointError
from ..layers import convert_norm
from ..system.progress import progress_bar
from ..tasks.accuracy import TOPK, Tally, count_correct
from .config import FinetuneConfig
from .loaders import Loaders
from .logs import RunLogs
from .model import build_model
from .optim import freeze, lr_factor, make_optimizer, set_lr, stage_modules
from .processes import Processes, all_reduce_tally, autocast_dtype, buffer_sync_option
from .run_writer import ResumePoint, has_resume_point, load_resume_point, save_epoch


def show_progress(cfg: FinetuneConfig, procs: Processes) -> bool:
    """Progress bars on rank 0 only, unless the run said no (they still need a terminal: system.progress)."""
    return cfg.progress is not False and procs.is_writer


class Trainer:
    """One run's training state and the steps that advance it."""

    def __init__(self, cfg: FinetuneConfig, procs: Processes, description: dict[str, Any], loaders: Loaders):
        self.cfg = cfg
        self.procs = procs
        self.run_dir = Path(cfg.out_dir)
        self.description = description
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.classes = loaders.classes
        self.steps_per_epoch = len(self.train_loader)
        resuming = has_resume_point(self.run_dir)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, description, resuming=resuming).to(procs.device)
        self.frozen = stage_modules(self.model, cfg.freeze_stages)
        self.sync = procs.distributed and cfg.sync_bn and description["bn_mode"] == "inplace"
        if self.sync:
            self.model = convert_norm(self.model, "sync")
        freeze(self.frozen)
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.precision, procs.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss()
        self.epoch, self.step = 0, 0
        self.metrics: list[dict[str, Any]] = []
        if resuming:
            self.restore(load_resume_point(self.run_dir))
        self.network = self.wrap()

    def wrap(self) -> nn.Module:
        """DDP around the model under torchrun; buffers are not broadcast when sync layers keep them equal."""
        if not self.procs.distributed:
            return self.model
        device_ids = [self.procs.device] if self.procs.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                   **buffer_sync_option(self.sync))

    def restore(self, state: ResumePoint) -> None:
        """Continue from a resume point: weights, optimizer, scaler, RNG, counters and earlier metrics."""
        try:
            self.model.load_state_dict(state.model, strict=True)
            self.optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"the resume point of {self.run_dir} does not fit the network this run builds "
                                  f"({str(error).splitlines()[0]}); start another run") from None
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        torch.set_rng_state(state.rng["torch"])
        self.epoch, self.step = state.epoch, state.step
        self.metrics = list(state.metrics)

    def autocast(self):
        return torch.autocast(self.procs.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_one_epoch(self) -> dict[str, Any]:
        """One pass over this rank's share of the training set; loss and top-1 summed over ranks."""
        self.network.train()
        freeze(self.frozen)
        self.train_loader.sampler.set_epoch(self.epoch)
        self.train_loader.dataset.set_epoch(self.epoch)
        tally, start = Tally(), time.perf_counter()
        bar = progress_bar(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs} train", leave=False,
                           enabled=show_progress(self.cfg, self.procs), unit="batch")
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
        bar = progress_bar(self.val_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs} val", leave=False,
                           enabled=show_progress(self.cfg, self.procs), unit="batch")
        for images, targets in bar:
            images, targets = images.to(self.procs.device), targets.to(self.procs.device)
            with self.autocast():
                logits = self.model(images).float()
            tally.add(self.criterion(logits, targets).item() * targets.numel(), *count_correct(logits, targets),
                      targets.numel())
        total = all_reduce_tally(tally, self.procs)
        top5 = total.top5_percent if len(self.classes) > TOPK else None  # of TOPK classes or fewer: always 100%
        return {"val_loss": total.loss, "val_top1": total.top1_percent, "val_top5": top5, "val_images": total.images}

    def save(self) -> None:
        """Rank 0: the epoch's files as one unit (run_writer.save_epoch): weights, resume point, metrics, config."""
        if not self.procs.is_writer:
            return
        save_epoch(self.run_dir, ResumePoint(
            epoch=self.epoch, step=self.step, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {}, rng={"torch": torch.get_rng_state()},
            metrics=self.metrics), description=self.description)

    def run(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
        """Train the remaining epochs, validating, saving a resume point and logging after each."""
        logs = RunLogs(self.run_dir, first_epoch=self.epoch) if self.procs.is_writer else None
        try:
            while self.epoch < self.cfg.epochs:
                record = {"epoch": self.epoch + 1, **self.train_one_epoch(), **self.validate()}
                self.epoch += 1
                self.metrics.append(record)
                self.save()
                if logs is not None:
                    logs.epoch_end(self.metrics)
                if on_epoch_end is not None:
                    on_epoch_end(record)
        finally:
            if logs is not None:
                logs.close()
        return self.metrics
