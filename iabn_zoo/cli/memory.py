"""`iabn-zoo memory ARCH`: training memory of one step per bn_mode (bytes kept for backward, peak, time, ratios)."""

from __future__ import annotations

import argparse

from .options import add_batch_size, add_command, add_device, add_image_size
from .output import emit

COLUMNS = ("bn_mode", "saved_mib", "saved_ratio", "peak_mib", "peak_ratio", "step_seconds", "time_ratio")
CHECKPOINTING_COLUMNS = (COLUMNS[:1] + ("grad_checkpointing",) + COLUMNS[1:]
                         + ("ckpt_saved_ratio", "ckpt_time_ratio"))


def register(subparsers) -> None:
    """Add the `memory` sub-command."""
    parser = add_command(
        subparsers, "memory", help="measure the training memory of a network in standard and in-place bn_mode",
        description="Run training steps of ARCH per bn_mode (after a warm-up) and report the activation bytes kept "
                    "for backward (parameters excluded, each storage once), the peak (CUDA only), the median step "
                    "time and the ratios to standard BN + activation.")
    parser.add_argument("arch", metavar="ARCH", help="architecture or weights name (see `iabn-zoo list`)")
    add_batch_size(parser, "--batch", help="images per training step, as `finetune --batch-size`")
    add_image_size(parser, "--size", default=224, help="square input side in pixels, as `finetune --image-size`")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode, median reported")
    add_device(parser)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="also measure each mode with its blocks recomputed in backward "
                             "(model.set_grad_checkpointing()): ckpt_saved_ratio and ckpt_time_ratio say what that "
                             "saves and costs against the same mode without it")
    parser.set_defaults(func=run_memory)


def run_memory(args: argparse.Namespace) -> int:
    """Measure and print the table (or JSON rows)."""
    from ..system.devices import resolve_device
    from ..tasks.footprint import check_training_fits
    from ..train.memory import check_step_size, compare_modes, report_rows

    check_step_size(args.batch_size, args.image_size)
    target = resolve_device(args.device)
    check_training_fits(args.arch, args.image_size, args.batch_size, target)
    device = str(target)
    rows = report_rows(compare_modes(args.arch, batch=args.batch_size, size=args.image_size, device=device,
                                     repeats=args.repeats, grad_checkpointing=args.grad_checkpointing))
    if args.json:
        emit({"arch": args.arch, "batch": args.batch_size, "size": args.image_size, "device": device,
              "grad_checkpointing": args.grad_checkpointing, "modes": rows}, as_json=True)
    else:
        print(f"{args.arch}: training step (median of {args.repeats}), batch {args.batch_size}, "
              f"{args.image_size}x{args.image_size} px, {device}")
        emit(rows, as_json=False, columns=CHECKPOINTING_COLUMNS if args.grad_checkpointing else COLUMNS)
    return 0
