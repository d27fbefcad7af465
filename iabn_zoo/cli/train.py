"""`iabn-zoo finetune` (fine-tune on a folder data set, also under torchrun) and `iabn-zoo evaluate` (top-1/top-5)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .options import (
    add_batch_size,
    add_command,
    add_device,
    add_image_size,
    add_num_workers,
    add_on_error,
    add_precision,
    add_pretrained,
    progress_allowed,
)
from .output import emit
from .segmentation_options import SEGMENTATION_OPTIONS, add_segmentation_options, image_size, size_or_auto

# FinetuneConfig fields the command passes on when given explicitly (a resume takes the rest from the run)
FINETUNE_OPTIONS = ("epochs", "batch_size", "lr", "image_size", "augment", "pretrained", "bn_mode", "optimizer",
                    "momentum", "weight_decay", "classifier_lr_mult", "schedule", "step_epochs", "gamma",
                    "freeze_stages", "clip_grad_norm", "precision", "sync_bn", "seed", "num_workers", "on_error",
                    "device", "save_every", "memory_budget") + SEGMENTATION_OPTIONS


def register(subparsers: Any) -> None:
    """Add the `finetune` and `evaluate` sub-commands."""
    add_finetune(subparsers)
    add_evaluate(subparsers)


def default(name: str) -> Any:
    """The default of a fine-tuning option, as FinetuneConfig defines it (shown in --help)."""
    from dataclasses import fields

    from ..train.config import FinetuneConfig

    return next(f.default for f in fields(FinetuneConfig) if f.name == name)


def add_finetune(subparsers: Any) -> None:
    """The `finetune` sub-command: every FinetuneConfig field as an option, defaults from the config."""
    parser = add_command(
        subparsers, "finetune", help="fine-tune a network on DATA/train, validating on DATA/val",
        description="Fine-tune a weights or architecture name on a folder data set (DATA/train/CLASS/*.png, "
                    "DATA/val/CLASS/*.png), or a segmentation network on images and masks (DATA/train/images, "
                    "DATA/train/masks, Cityscapes, Vistas: see README); writes metrics.jsonl, model.safetensors, "
                    "config.json, a resume point (resume.json), TensorBoard logs (RUN/tensorboard), RUN/curves.png "
                    "and for segmentation RUN/samples/ to RUN. Runs "
                    "unchanged under torchrun (synchronised InPlace-ABN). Options left out take the defaults shown, "
                    "or on --resume the run's own values.")
    parser.add_argument("model", metavar="MODEL", help="weights name (pretrained) or architecture name")
    parser.add_argument("data", metavar="DATA", help="folder holding train/ and val/")
    parser.add_argument("--out", dest="out_dir", required=True, metavar="RUN", help="run directory to write")
    parser.add_argument("--resume", nargs="?", const="yes", choices=("auto", "yes", "no"), metavar="auto|yes|no",
                        help="--resume (yes): continue the run in RUN from its last resume point; --resume auto: "
                             "continue it if RUN has one, else start it (the command to repeat after any restart); "
                             "no: start a run (default: auto under torchrun --max-restarts N >= 1, else no)")
    parser.add_argument("--save-every", metavar="STEPS|Nmin",
                        help="also write a resume point inside an epoch every STEPS optimizer steps or N minutes of "
                             f"training; 0: only at epoch ends and on SIGTERM (default {default('save_every')})")
    parser.add_argument("--epochs", type=int, help=f"epochs to train (default {default('epochs')})")
    add_batch_size(parser, default=None, type=size_or_auto,
                   help=f"images per process and step (default {default('batch_size')}); auto: the largest that "
                        "fits --memory-budget, measured, recorded in RUN/config.json (a resume reuses it)")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="the memory a process may use (16GiB, 500MB, 2.5G): what --batch-size auto fills and "
                             "what the sizes are checked against (default: the device's free memory)")
    parser.add_argument("--lr", type=float, help=f"base learning rate (default {default('lr')})")
    parser.add_argument("--image-size", type=image_size, metavar="S|H,W|auto",
                        help="training crop side in pixels (default 224), or H,W for segmentation (where the "
                             "default is 512, and auto takes the largest square crop that fits at --batch-size)")
    parser.add_argument("--augment", choices=("imagenet", "light", "standard", "jitter", "none"),
                        help="classification: imagenet (default, the authors' recipe), light or none for small or "
                             "non-photographic images; segmentation: standard (default: random scale, crop, flip), "
                             "jitter (and colour jitter), none (crop only)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                        help="start from published weights (default: yes for a weights name)")
    parser.add_argument("--bn-mode", choices=("standard", "inplace"), help="norm layers (default: the weights')")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"),
                        help=f"sgd (Nesterov) or adamw (default {default('optimizer')})")
    parser.add_argument("--momentum", type=float, help=f"SGD momentum (default {default('momentum')})")
    parser.add_argument("--weight-decay", type=float,
                        help=f"on conv/linear weights only (default {default('weight_decay')})")
    parser.add_argument("--classifier-lr-mult", type=float,
                        help=f"classifier learning rate / base (default {default('classifier_lr_mult')})")
    parser.add_argument("--schedule", choices=("cosine", "linear", "step", "poly"),
                        help="per-iteration schedule (default cosine, segmentation poly: (1 - t/T)^0.9)")
    parser.add_argument("--step-epochs", type=int, help="step schedule: decay every N epochs (default epochs/3)")
    parser.add_argument("--gamma", type=float, help=f"step schedule decay factor (default {default('gamma')})")
    parser.add_argument("--freeze-stages", type=int,
                        help=f"do not train the stem and the first N stages (default {default('freeze_stages')})")
    parser.add_argument("--clip-grad-norm", type=float,
                        help=f"clip the gradient norm to this (default {default('clip_grad_norm')}: off)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"),
                        help=f"{default('precision')} (default): mixed precision on CUDA, fp32 on CPU")
    parser.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                        help="under torchrun, synchronise InPlace-ABN statistics over ranks (default yes)")
    parser.add_argument("--seed", type=int,
                        help=f"seed of initialisation, order and augmentation (default {default('seed')})")
    add_num_workers(parser, default=None)
    add_on_error(parser, default=None)
    add_device(parser)
    add_segmentation_options(parser)
    parser.set_defaults(func=run_finetune)


def add_evaluate(subparsers: Any) -> None:
    """The `evaluate` sub-command."""
    parser = add_command(
        subparsers, "evaluate", help="top-1/top-5 accuracy over a folder data set, or mIoU of a segmentation model",
        description="Score MODEL (whatever create_model accepts, or a fine-tuning RUN directory) on DATA in the "
                    "ImageFolder layout (or DATA/val when present). Top-5 is null for five classes or fewer (where "
                    "it is always 100 percent). A "
                    "segmentation RUN or segmentation weights are scored on DATA's masks (DATA the data set's root, "
                    "whose val split is used, or one split): mIoU, per-class IoU and pixel accuracy, in percent.")
    parser.add_argument("model", metavar="MODEL", help="weights or architecture name, or a RUN directory")
    parser.add_argument("data", metavar="DATA", help="folder of class sub-folders, or one holding val/")
    parser.add_argument("--ten-crops", action="store_true", help="average the logits of ten crops")
    parser.add_argument("--scale", type=int, help="shorter side before cropping (default: the model's, 256)")
    add_image_size(parser, "--crop", help="crop side in pixels (default: the model's, 224)")
    add_batch_size(parser)
    add_num_workers(parser)
    add_device(parser)
    add_on_error(parser)
    add_precision(parser)
    add_pretrained(parser)
    parser.add_argument("--scales", help="segmentation: comma-separated test-time scales (default: the model's "
                                          "recommended ones, as `segment` takes them: 1 for runs and Vistas)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="segmentation: also score each scale mirrored (default: as recommended; the Vistas "
                             "weights flip, runs do not)")
    parser.set_defaults(func=run_evaluate)


def is_main_process() -> bool:
    """Only rank 0 of a torchrun job prints."""
    return os.environ.get("RANK", "0") == "0"


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune, printing the task's columns after each epoch (rank 0), then the run's summary."""
    from ..train.finetune import finetune
    from ..train.task import task_for

    options = {name: getattr(args, name) for name in FINETUNE_OPTIONS if getattr(args, name) is not None}
    options["progress"] = progress_allowed(args)  # a preference of this invocation, never the run's
    printing = is_main_process() and not args.json
    task = task_for(args.model, args.task)

    def report(record: dict[str, Any]) -> None:
        if printing:
            print(" ".join(f"{key}={format_value(record.get(key))}" for key in task.columns), flush=True)

    result = finetune(args.model, args.data, args.out_dir, resume=args.resume, on_epoch_end=report, **options)
    if is_main_process():
        final = result.final
        emit({"run_dir": str(result.run_dir), "epochs": len(result.metrics),
              **{key: final.get(key) for key in task.summary}, "train_loss": final.get("train_loss"),
              "batch_size": result.config.batch_size, "image_size": result.config.image_size}, as_json=args.json)
    return 0


def format_value(value: Any) -> str:
    """An epoch column: floats to four significant digits, None as '-'."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_evaluate(args: argparse.Namespace) -> int:
    """Score the model and print the result."""
    from ..tasks.evaluate import evaluate
    from ..tasks.segment import parse_scales
    from ..tasks.segmentation_evaluate import evaluate_segmentation
    from ..tasks.segmentation_runs import is_segmentation_model

    if is_segmentation_model(args.model) or args.scales is not None or args.flip is not None:
        scales = parse_scales(args.scales) if args.scales is not None else None
        scores = evaluate_segmentation(args.model, args.data, scales=scales, flip=args.flip, device=args.device,
                                       precision=args.precision,
                                       progress=progress_allowed(args) and is_main_process(),
                                       on_error=args.on_error)
        if is_main_process():  # under torchrun every rank has the scores of all the images
            emit(scores, as_json=args.json)
        return 0

    scores = evaluate(args.model, args.data, ten_crops=args.ten_crops, scale=args.scale, crop=args.image_size,
                      batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                      on_error=args.on_error, progress=progress_allowed(args) and is_main_process(),
                      precision=args.precision, pretrained=args.pretrained)
    if not is_main_process():
        return 0
    emit(scores, as_json=args.json)
    if scores["skipped"]:
        print(f"iabn-zoo: {scores['skipped']} unreadable image(s) skipped", file=sys.stderr)
    return 0
