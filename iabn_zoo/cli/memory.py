"""`iabn-zoo memory ARCH`: training memory of one step per bn_mode (bytes kept for backward, peak, time, ratios), or
with `--budget` the largest batch (or crop) whose training step fits a memory budget, per bn_mode."""

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
    add_image_size(parser, "--size", default=224, type=side_or_pair,
                   help="input side in pixels, or HEIGHT,WIDTH (a segmentation crop), as `finetune --image-size`")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode, median reported")
    add_device(parser)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="also measure each mode with its blocks recomputed in backward "
                             "(model.set_grad_checkpointing()): ckpt_saved_ratio and ckpt_time_ratio say what that "
                             "saves and costs against the same mode without it")
    parser.add_argument("--budget", metavar="SIZE",
                        help="answer instead: the largest batch (at --image-size) or square crop (at --batch-size, "
                             "--fit crop) whose training step fits SIZE (16GiB, 500MB, 2.5G), per bn_mode (default "
                             "with --fit: the device's free memory)")
    parser.add_argument("--fit", choices=("batch", "crop"),
                        help="what --budget answers: the largest batch or the largest square crop (default batch)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="the optimizer whose state --budget counts (sgd: momentum, adamw: two moments)")
    parser.set_defaults(func=run_memory)


def side_or_pair(text: str) -> int | tuple[int, int]:
    """An image size on the command line: a side (512) or HEIGHT,WIDTH (512,1024)."""
    try:
        sides = [int(part) for part in text.split(",")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"must be a side in pixels or HEIGHT,WIDTH, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def run_memory(args: argparse.Namespace) -> int:
    """Measure and print the table (or JSON rows)."""
    from ..system.devices import resolve_device
    from ..tasks.footprint import check_training_fits
    from ..train.memory import check_step_size, compare_modes, report_rows

    if args.budget is not None or args.fit is not None:
        return run_budget(args)
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
              f"{pixels(args.image_size)} px, {device}")
        emit(rows, as_json=False, columns=CHECKPOINTING_COLUMNS if args.grad_checkpointing else COLUMNS)
    return 0


def pixels(size: int | tuple[int, int]) -> str:
    """512x512 for a side, 512x1024 for (H, W)."""
    height, width = (size, size) if isinstance(size, int) else size
    return f"{height}x{width}"


def run_budget(args: argparse.Namespace) -> int:
    """The largest batch or crop per mode within the budget, and how it was obtained."""
    from ..errors import bad_argument
    from ..system.devices import resolve_device
    from ..system.resources import available_memory, format_bytes, parse_bytes
    from ..train.budget import fit_budget
    from ..train.memory import check_step_size, image_shape

    fit = args.fit or "batch"
    check_step_size(args.batch_size, 32 if fit == "crop" else args.image_size)
    target = resolve_device(args.device)
    budget = parse_bytes(args.budget) if args.budget is not None else available_memory(target)
    if budget is None:
        raise bad_argument("budget", f"is needed: the free memory of {target} is unknown")
    answers = fit_budget(args.arch, budget, fit=fit, batch=args.batch_size, size=args.image_size, device=str(target),
                         grad_checkpointing=args.grad_checkpointing, optimizer=args.optimizer)
    rows = budget_rows(answers)
    how = how_obtained(answers, fit, target)
    setting = ({"image_size": list(image_shape(args.image_size))} if fit == "batch"
               else {"batch_size": args.batch_size})
    if args.json:
        emit({"arch": args.arch, "fit": fit, "budget_bytes": budget, "device": str(target),
              "optimizer": args.optimizer, **setting, "how": how, "modes": rows}, as_json=True)
        return 0
    largest = f"largest batch at {pixels(args.image_size)} px" if fit == "batch" else (
        f"largest square crop at batch {args.batch_size}")
    print(f"{args.arch}: the {largest} whose training step fits {format_bytes(budget)} "
          f"({'--budget' if args.budget is not None else 'free memory'}), {target}, {args.optimizer} state counted")
    answer, slope = ("max_batch", "kept_mib_per_image") if fit == "batch" else ("max_crop", "kept_bytes_per_pixel")
    emit([table_row(row) for row in rows], as_json=False,
         columns=("bn_mode", "grad_checkpointing", answer, "vs_standard", "step", "one_more", "fixed",
                  slope, "verified"))
    print(f"How: {how}")
    return 0


def budget_rows(answers: list) -> list[dict]:
    """One JSON entry per mode: bn_mode, grad_checkpointing, max_batch or max_crop, the bytes behind it."""
    base = next((a.answer for a in answers if a.bn_mode == "standard" and not a.grad_checkpointing), None)
    return [{"bn_mode": a.bn_mode, "grad_checkpointing": a.grad_checkpointing,
             ("max_batch" if a.fit == "batch" else "max_crop"): a.answer,
             "vs_standard": a.answer / base if a.answer and base else None,
             "bytes_at_answer": a.bytes_at_answer, "bytes_one_more": a.bytes_above, "fixed_bytes": a.static_bytes,
             ("kept_bytes_per_image" if a.fit == "batch" else "kept_bytes_per_pixel"): a.slope_bytes,
             "counted_on": a.counted_on, "verified": a.verified} for a in answers]


def table_row(row: dict) -> dict:
    """A JSON entry with its byte counts readable (MiB per image) for the table, and 'none' where nothing fits."""
    from ..system.resources import format_bytes

    def readable(value: int | None) -> str | None:
        return None if value is None else format_bytes(value)

    shown = {**row, "step": readable(row["bytes_at_answer"]), "one_more": readable(row["bytes_one_more"]),
             "fixed": readable(row["fixed_bytes"])}
    if "kept_bytes_per_image" in row:
        shown["kept_mib_per_image"] = row["kept_bytes_per_image"] / 2 ** 20
    for key in ("max_batch", "max_crop"):
        if key in row and row[key] is None:
            shown[key] = "none"
    return shown


def how_obtained(answers: list, fit: str, device: object) -> str:
    """One sentence on how the figures were obtained (the steps of train.budget)."""
    on_meta = all(a.counted_on == "meta" for a in answers)
    sizes = "batch 2 and 4" if fit == "batch" else "crops of 64 and 128 px"
    where = ("by the saved-tensor ledger on the meta device (shapes only; it counted exactly the real step's bytes)"
             if on_meta else f"by the saved-tensor ledger in real steps on {device}")
    check = ("then counted at the answer and at one more, which no longer fits" if all(a.verified for a in answers)
             else "not counted at the answer (too large to count on the device): extrapolated")
    return (f"a real training step and optimizer step (batch 2, 64x64 px, {device}) measured the weights, gradients "
            f"and optimizer state (fixed) and the bytes kept for backward; the bytes kept at {sizes} were counted "
            f"{where}, the answer extrapolated with the per-{'image' if fit == 'batch' else 'pixel'} slope, {check}.")
