"""`iabn-zoo finetune` (fine-tune on a folder data set, also under torchrun) and `iabn-zoo evaluate` (top-1/top-5)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .output import add_json_flag, emit

EPOCH_COLUMNS = ("epoch", "train_loss", "train_top1", "val_top1", "val_top5", "lr", "images_per_s")
# command-line flag -> FinetuneConfig field, for the options given explicitly (a resume takes the rest from the run)
FINETUNE_OPTIONS = ("epochs", "batch_size", "lr", "image_size", "augment", "pretrained", "bn_mode", "optimizer",
                    "momentum", "weight_decay", "classifier_lr_mult", "schedule", "step_epochs", "gamma",
                    "freeze_stages", "clip_grad_norm", "precision", "sync_bn", "seed", "num_workers", "on_error",
                    "device", "progress")


def register(subparsers: Any) -> None:
    """Add the `finetune` and `evaluate` sub-commands."""
    add_finetune(subparsers)
    add_evaluate(subparsers)


def add_finetune(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a network on DATA/train, validating on DATA/val",
        description="Fine-tune a weights or architecture name on a folder data set (DATA/train/CLASS/*.png, "
                    "DATA/val/CLASS/*.png); writes metrics.jsonl, model.safetensors, config.json and a resumable "
                    "checkpoint to RUN. Runs unchanged under torchrun (synchronised InPlace-ABN). Options left out "
                    "take the defaults shown, or on --resume the run's own values.")
    parser.add_argument("model", metavar="MODEL", help="weights name (pretrained) or architecture name")
    parser.add_argument("data", metavar="DATA", help="folder holding train/ and val/")
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    parser.add_argument("--epochs", type=int, help="epochs to train (default 10)")
    parser.add_argument("--batch-size", type=int, help="images per process and step (default 32)")
    parser.add_argument("--lr", type=float, help="base learning rate (default 0.01)")
    parser.add_argument("--image-size", type=int, help="training crop side in pixels (default 224)")
    parser.add_argument("--augment", choices=("imagenet", "light", "none"),
                        help="imagenet (default): the authors' recipe; light or none for small or "
                             "non-photographic images")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                        help="start from published weights (default: yes for a weights name)")
    parser.add_argument("--bn-mode", choices=("standard", "inplace"), help="norm layers (default: the weights')")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd (Nesterov, default) or adamw")
    parser.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=float, help="on conv/linear weights only (default 1e-4)")
    parser.add_argument("--classifier-lr-mult", type=float, help="classifier learning rate / base (default 1)")
    parser.add_argument("--schedule", choices=("cosine", "linear", "step"), help="per-iteration (default cosine)")
    parser.add_argument("--step-epochs", type=int, help="step schedule: decay every N epochs (default epochs/3)")
    parser.add_argument("--gamma", type=float, help="step schedule decay factor (default 0.1)")
    parser.add_argument("--freeze-stages", type=int, help="do not train the stem and the first N stages (default 0)")
    parser.add_argument("--clip-grad-norm", type=float, help="clip the gradient norm to this (default 0: off)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"),
                        help="auto (default): mixed precision on CUDA, fp32 on CPU")
    parser.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                        help="under torchrun, synchronise InPlace-ABN statistics over ranks (default yes)")
    parser.add_argument("--seed", type=int, help="seed of initialisation, order and augmentation (default 0)")
    parser.add_argument("--num-workers", type=int, help="data loading processes per rank (default 2)")
    parser.add_argument("--on-error", choices=("skip", "raise"), help="unreadable images: skip (default) or fail")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction,
                        help="progress bar (default: when stderr is a terminal)")
    add_json_flag(parser)
    parser.set_defaults(func=run_finetune)


def add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="top-1/top-5 accuracy over a folder data set",
        description="Score MODEL (a registered name, or a fine-tuning RUN directory) on DATA in the ImageFolder "
                    "layout (or DATA/val when present).")
    parser.add_argument("model", metavar="MODEL", help="weights or architecture name, or a RUN directory")
    parser.add_argument("data", metavar="DATA", help="folder of class sub-folders, or one holding val/")
    parser.add_argument("--ten-crops", action="store_true", help="average the logits of ten crops")
    parser.add_argument("--scale", type=int, help="shorter side before cropping (default: the model's, 256)")
    parser.add_argument("--crop", type=int, help="crop side (default: the model's, 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="unreadable images: skip (default) or fail")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="weights and activations: fp32 (default), bf16 (fast on CPUs with AMX), fp16 (CUDA)")
    add_json_flag(parser)
    parser.set_defaults(func=run_evaluate)


def is_main_process() -> bool:
    """Only rank 0 of a torchrun job prints."""
    return os.environ.get("RANK", "0") == "0"


def run_finetune(args: argparse.Namespace) -> int:
    from ..train.finetune import finetune

    options = {name: getattr(args, name) for name in FINETUNE_OPTIONS if getattr(args, name) is not None}
    printing = is_main_process() and not args.json

    def report(record: dict[str, Any]) -> None:
        if printing:
            columns = " ".join(f"{key}={record[key]:.4g}" if isinstance(record[key], float)
                               else f"{key}={record[key]}" for key in EPOCH_COLUMNS)
            print(columns, flush=True)

    result = finetune(args.model, args.data, args.out, resume=args.resume, on_epoch_end=report, **options)
    if is_main_process():
        final = result.final
        emit({"run_dir": str(result.run_dir), "epochs": len(result.metrics), "val_top1": final.get("val_top1"),
              "val_top5": final.get("val_top5"), "train_loss": final.get("train_loss")}, as_json=args.json)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..tasks.evaluate import evaluate

    scores = evaluate(args.model, args.data, ten_crops=args.ten_crops, scale=args.scale, crop=args.crop,
                      batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                      on_error=args.on_error, precision=args.precision)
    emit(scores, as_json=args.json)
    if scores["skipped"]:
        print(f"iabn-zoo: {scores['skipped']} unreadable image(s) skipped", file=sys.stderr)
    return 0
