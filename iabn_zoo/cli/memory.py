"""`iabn-zoo memory ARCH`: training memory of one step per bn_mode (bytes kept for backward, peak, time, ratios)."""

from __future__ import annotations

import argparse

from .output import add_json_flag, emit

COLUMNS = ("bn_mode", "saved_mib", "saved_ratio", "peak_mib", "peak_ratio", "step_seconds", "time_ratio")
CHECKPOINTING_COLUMNS = (COLUMNS[:1] + ("grad_checkpointing",) + COLUMNS[1:]
                         + ("ckpt_saved_ratio", "ckpt_time_ratio"))


def register(subparsers) -> None:
    """Add the `memory` sub-command."""
    parser = subparsers.add_parser(
        "memory", help="measure the training memory of a network in standard and in-place bn_mode",
        description="Run training steps of ARCH per bn_mode (after a warm-up) and report the activation bytes kept "
                    "for backward (parameters excluded, each storage once), the peak (CUDA only), the median step "
                    "time and the ratios to standard BN + activation.")
    parser.add_argument("arch", metavar="ARCH", help="architecture or weights name (see `iabn-zoo list`)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--size", type=int, default=224, help="square input size in pixels (default 224)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode, median reported (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda; the peak is measured on cuda only")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="also measure each mode with its blocks recomputed in backward "
                             "(model.set_grad_checkpointing()): ckpt_saved_ratio and ckpt_time_ratio say what that "
                             "saves and costs against the same mode without it")
    add_json_flag(parser)
    parser.set_defaults(func=run_memory)


def run_memory(args: argparse.Namespace) -> int:
    """Measure and print the table (or JSON rows)."""
    from ..train.memory import compare_modes, report_rows

    rows = report_rows(compare_modes(args.arch, batch=args.batch, size=args.size, device=args.device,
                                     repeats=args.repeats, grad_checkpointing=args.grad_checkpointing))
    if args.json:
        emit({"arch": args.arch, "batch": args.batch, "size": args.size, "device": args.device,
              "grad_checkpointing": args.grad_checkpointing, "modes": rows}, as_json=True)
    else:
        print(f"{args.arch}: training step (median of {args.repeats}), batch {args.batch}, {args.size}x{args.size} px, "
              f"{args.device}")
        emit(rows, as_json=False, columns=CHECKPOINTING_COLUMNS if args.grad_checkpointing else COLUMNS)
    return 0
