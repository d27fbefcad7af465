"""The fine-tuning loop: train an epoch, validate, save the weights and the resume point, repeat.

One loop for every task: what differs between classification and segmentation (data, loss, metrics, validation
pictures) comes from the task object (the contract: `train.task`); the network from the run's description
(`train.model`, the same for every task). Between steps, `step_boundary` decides when a resume point inside the epoch
is written (`step_points`, with every rank's generators and tallies: `rank_states`) and when a SIGTERM stops the run;
a run resumed inside an epoch skips the batches it trained (`resumed_epoch`) and ends with the bits of a run that
never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ..errors import CheckpointError, RunPreempted, StorageError
from ..layers import convert_norm
from ..system.progress import progress_bar
from .config import FinetuneConfig
from .logs import RunLogs
from .model import build_model
from .optim import freeze, lr_factor, make_optimizer, set_lr, stage_modules
from .processes import Processes, autocast_dtype, buffer_sync_option
from . import rank_states
from .resumed_epoch import epoch_batches
from .run_writer import ResumePoint, has_resume_point, save_epoch
from .step_boundary import StepBoundary
from .step_points import load_for_job, save_step_point, try_save_step_point


def show_progress(cfg: FinetuneConfig, procs: Processes) -> bool:
    """Progress bars on rank 0 only, unless the run said no (they still need a terminal: system.progress)."""
    return cfg.progress is not False and procs.is_writer


class Trainer:
    """One run's training state and the steps that advance it."""

    def __init__(self, cfg: FinetuneConfig, procs: Processes, description: dict[str, Any], task: Any):
        self.cfg = cfg
        self.procs = procs
        self.task = task
        self.run_dir = Path(cfg.out_dir)
        self.description = description
        self.train_loader, self.val_loader = task.train_loader, task.val_loader
        self.classes = task.classes
        self.steps_per_epoch = len(self.train_loader)
        resuming = has_resume_point(self.run_dir)
        rank_states.seed_all(cfg.seed)
        self.model = build_model(cfg, description, resuming=resuming).to(procs.device)
        # inputs follow the parameters' dtype (float32; float64 where a test judges exactness)
        self.input_dtype = next(self.model.parameters()).dtype
        self.frozen = stage_modules(self.model, cfg.freeze_stages)
        self.sync = procs.distributed and cfg.sync_bn and description["bn_mode"] == "inplace"
        if self.sync:
            self.model = convert_norm(self.model, "sync")
        freeze(self.frozen)
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.precision, procs.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step = 0, 0
        self.pictures: list[Any] = []
        self.metrics: list[dict[str, Any]] = []
        self.position: dict[str, Any] | None = None  # where inside the epoch the resume point was written
        self.resumed_state: rank_states.RankState | None = None  # this rank's state there
        if resuming:
            self.restore(load_for_job(self.run_dir, procs.world_size))
        self.boundary = StepBoundary(cfg.save_every, procs)
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
        self.epoch, self.step = state.epoch, state.step
        self.metrics = list(state.metrics)
        own = rank_states.decode(state.rng, state.ranks, self.procs.rank)
        if own is None:  # written before points held every rank's generators
            torch.set_rng_state(state.rng["torch"])
        elif state.position is None:
            rank_states.apply(own, self.procs.device)
        else:  # the epoch's loader must first draw its workers' seed from the epoch's starting generator
            self.position, self.resumed_state = state.position, own

    def autocast(self):
        return torch.autocast(self.procs.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on this process's device, images in the network's dtype."""
        return images.to(self.procs.device, dtype=self.input_dtype), targets.to(self.procs.device)

    def train_one_epoch(self) -> dict[str, Any]:
        """One pass over this rank's share of the training set; the task's tallies summed over ranks."""
        self.network.train()
        freeze(self.frozen)
        self.task.set_epoch(self.epoch)
        meter, start = self.task.train_meter(), time.perf_counter()
        batches, epoch_start_rng = epoch_batches(self.train_loader, self.position, self.resumed_state, meter,
                                                 self.procs.device)
        done, before = (self.position["batches_done"], self.position["elapsed_s"]) if self.position else (0, 0.0)
        self.position = self.resumed_state = None
        bar = progress_bar(batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs} train", leave=False,
                           enabled=show_progress(self.cfg, self.procs), unit="batch", total=self.steps_per_epoch,
                           initial=done)
        lr = self.optimizer.param_groups[0]["lr"]  # a resumed epoch may have no step left
        for images, targets in bar:
            lr = set_lr(self.optimizer, lr_factor(self.cfg, self.step, self.steps_per_epoch))
            self.optimize(*self.batch(images, targets), meter)
            self.step += 1
            done += 1
            elapsed = before + time.perf_counter() - start
            bar.set_postfix(**meter.postfix(),
                            img_s=f"{meter.images() * self.procs.world_size / max(elapsed, 1e-9):.0f}")
            self.step_boundary(meter, done, elapsed, epoch_start_rng)
        elapsed = before + time.perf_counter() - start
        record, images = meter.finish(self.procs)
        return {**record, "lr": lr, "images_per_s": images / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def optimize(self, images: torch.Tensor, targets: torch.Tensor, meter: Any) -> None:
        """Forward, the task's loss (tallied by `meter`), backward (scaled under fp16), optional clipping, step."""
        with self.autocast():
            logits = self.network(images)
            loss = meter.loss(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """The task's validation metrics over the whole validation set, each rank scoring its shard."""
        self.model.eval()
        meter = self.task.val_meter()
        bar = progress_bar(self.val_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs} val", leave=False,
                           enabled=show_progress(self.cfg, self.procs), unit="batch")
        for images, targets in bar:
            images, targets = self.batch(images, targets)
            with self.autocast():
                logits = self.model(images)
            meter.add(logits, targets, images)
        record, _ = meter.finish(self.procs)
        self.pictures = self.task.epoch_pictures(meter)
        return record

    def resume_point(self, states: list[rank_states.RankState],
                     position: dict[str, Any] | None = None) -> ResumePoint:
        """The run's state now, with every rank's generators and tallies (`states`, in rank order)."""
        rng, ranks = rank_states.encode(states)
        return ResumePoint(epoch=self.epoch, step=self.step, model=self.model.state_dict(),
                           optimizer=self.optimizer.state_dict(),
                           scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {}, rng=rng,
                           metrics=self.metrics, ranks=ranks, position=position)

    def save(self) -> None:
        """The epoch's files as one unit (run_writer.save_epoch), written by rank 0 with every rank's generators."""
        states = rank_states.gather(rank_states.capture(self.procs.device), self.procs)
        if self.procs.is_writer:
            save_epoch(self.run_dir, self.resume_point(states), description=self.description)
        self.boundary.point_written()

    def step_boundary(self, meter: Any, done: int, elapsed: float, epoch_start_rng: torch.Tensor) -> None:
        """After a step: a resume point inside the epoch when one is due or a SIGTERM came, and then the stop."""
        save, stop = self.boundary.after_step(self.step, last_of_epoch=done == self.steps_per_epoch)
        if not save:
            return
        own = rank_states.capture(self.procs.device, epoch_start_rng=epoch_start_rng, meter=meter)
        states = rank_states.gather(own, self.procs)
        position = {"batches_done": done, "steps_per_epoch": self.steps_per_epoch,
                    "world_size": self.procs.world_size, "elapsed_s": elapsed}
        point = self.resume_point(states, position) if self.procs.is_writer else None
        if stop:
            self.stop_at(point, f"step {self.step} ({done} of the {self.steps_per_epoch} of epoch {self.epoch + 1})")
        if point is not None:
            try_save_step_point(self.run_dir, point, description=self.description)
        self.boundary.point_written()

    def stop_at(self, point: ResumePoint | None, where: str) -> None:
        """Write rank 0's `point` (None on the other ranks), then stop every rank: RunPreempted, or the writer's
        StorageError when the point could not be written (the previous one is kept)."""
        failure = None
        if point is not None:
            try:
                save_step_point(self.run_dir, point, description=self.description)
            except StorageError as error:
                failure = error
        if self.boundary.agree(failure is not None)[0]:  # every rank stops with the writer's verdict
            raise failure or StorageError(f"stopped by SIGTERM, but rank 0 could not write the resume point of step "
                                          f"{self.step} (its message says why)", path=str(self.run_dir))
        raise self.preempted(where)

    def preempted(self, where: str) -> RunPreempted:
        return RunPreempted(f"stopped by SIGTERM: {self.run_dir} holds a resume point after {where}; the same "
                            "command with {resume} auto continues it", run_dir=str(self.run_dir), epoch=self.epoch,
                            step=self.step, parameters=("resume",))

    def run(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
        """Train the remaining epochs, validating, saving a resume point and logging after each."""
        logs = RunLogs(self.run_dir, self.task, first_epoch=self.epoch) if self.procs.is_writer else None
        try:
            with self.boundary.watch:
                while self.epoch < self.cfg.epochs:
                    record = {"epoch": self.epoch + 1, **self.train_one_epoch(), **self.validate()}
                    self.epoch += 1
                    self.metrics.append(record)
                    self.save()
                    if logs is not None:
                        logs.epoch_end(self.metrics, pictures=self.task.log_pictures(self.pictures))
                        if self.epoch == self.cfg.epochs:
                            self.task.write_samples(self.run_dir, self.pictures)
                    if on_epoch_end is not None:
                        on_epoch_end(record)
                    if self.epoch < self.cfg.epochs and self.boundary.stop_requested():
                        raise self.preempted(f"epoch {self.epoch}")
        finally:
            if logs is not None:
                logs.close()
        return self.metrics
