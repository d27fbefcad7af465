"""`python -m iabn_zoo.demo` (`make demo`): fine-tune a zoo network on scikit-learn's handwritten digits, offline.

The 1797 8x8 digit images that ship with scikit-learn are written out as a folder data set (upscaled PNGs, every
fifth image of each class held out for validation, the split the digit scenes use too), resnet18 with InPlace-ABN
is trained on them for a few epochs through the same `finetune` entry point users call, and the accuracy reached
is printed together with the `iabn-zoo memory` table of that network at the demo's batch and image size. The
fine-tuned run is then exported to ONNX (`zoo.export`) and the held-out digits are classified again with
onnxruntime, and in bf16: the three top-1 accuracies side by side. Then the same digits, pasted onto crops of real
photographs, make a segmentation data set (`scenes`), and a DeepLabV3 whose backbone is that digit classifier is
fine-tuned on it (`segmentation`): its held-out mIoU is printed beside the all-background predictor's, and its
predictions are drawn. Under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from .paths import shown
from .scenes import MAX_GRAY, digit_split

PICTURE = "iabn-zoo-demo-segmentation.png"


def write_digits(root: Path, image_size: int) -> tuple[int, int]:
    """scikit-learn's digits as root/train/D/*.png and root/val/D/*.png; returns (train, val) image counts."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the demo needs scikit-learn: pip install 'iabn-zoo[demo]'") from None
    digits = load_digits()
    counts = {"train": 0, "val": 0}
    for index, (pixels, label, split) in enumerate(zip(digits.images, digits.target, digit_split(digits.target))):
        gray = Image.fromarray((pixels * (255 / MAX_GRAY)).astype("uint8"), mode="L")
        folder = root / split / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        gray.resize((image_size, image_size), Image.BILINEAR).save(folder / f"{index:04d}.png")
        counts[split] += 1
    return counts["train"], counts["val"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m iabn_zoo.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="architecture to fine-tune (default resnet18)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--image-size", type=int, default=32, help="digit images are upscaled to this (default 32)")
    parser.add_argument("--workdir", type=Path, help="keep the data and the run here (default: a temporary folder)")
    parser.add_argument("--seg-epochs", type=int, default=12,
                        help="epochs of the segmentation part (default 12; 0 leaves the part out)")
    parser.add_argument("--scenes", type=int, default=500, help="training digit scenes (default 500)")
    parser.add_argument("--picture", type=Path,
                        help=f"where the predictions are drawn (default: WORKDIR/{PICTURE} with --workdir, else "
                             f"./{PICTURE})")
    return parser.parse_args(argv)


def print_memory(model: str, batch: int, size: int) -> None:
    """What `iabn-zoo memory` shows: bytes kept for backward and step time per bn_mode, and their ratios."""
    from ..train.memory import compare_modes, report_rows

    print(f"{model}: one training step, batch {batch}, {size}x{size} px, cpu")
    print(f"{'bn_mode':<10} {'kept for backward':>18} {'ratio':>6} {'step':>8} {'ratio':>6}")
    for row in report_rows(compare_modes(model, batch=batch, size=size, device="cpu", repeats=3)):
        print(f"{row['bn_mode']:<10} {row['saved_mib']:>14.1f} MiB {row['saved_ratio']:>6.2f} "
              f"{row['step_seconds']:>7.3f}s {row['time_ratio']:>6.2f}")


def deployed_accuracies(run_dir: Path, val_dir: Path, image_size: int, kept: bool) -> None:
    """Export the run to ONNX, then print the held-out top-1 of the eager network, of the ONNX file in
    onnxruntime and of the eager network in bf16."""
    from ..deploy import export_with_report
    from ..deploy.runtimes import OnnxModule
    from ..tasks.classifiers import load_classifier
    from ..tasks.evaluate import evaluate, evaluate_model, evaluation_set

    report = export_with_report(run_dir, run_dir / "digits.onnx", image_size=image_size)
    print(f"exported the run to ONNX in {shown(report.path, kept)} ({report.file_size / 2**20:.1f} MiB); checked "
          "in onnxruntime: max "
          f"difference {report.max_difference:.1e} relative to the eager network")
    eager = evaluate(run_dir, val_dir, num_workers=0, device="cpu")
    bf16 = evaluate(run_dir, val_dir, num_workers=0, device="cpu", precision="bf16")
    dataset = evaluation_set(load_classifier(run_dir), val_dir)
    onnx = evaluate_model(OnnxModule(report.path), dataset, batch_size=32)
    print(f"held-out digits, top-1: eager PyTorch {eager['top1']:.2f}%   onnxruntime {onnx['top1']:.2f}%   "
          f"eager bf16 {bf16['top1']:.2f}%   ({eager['images']} images)")


def main(argv: list[str] | None = None) -> int:
    """Write the digits, fine-tune, print the accuracy and the memory table; then the segmentation part."""
    from ..train.finetune import finetune
    from .segmentation import segmentation_demo

    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="iabn-zoo-demo-"))
    try:
        train_count, val_count = write_digits(workdir / "digits", args.image_size)
        print(f"scikit-learn digits: {train_count} training and {val_count} validation images, 10 classes, "
              f"{args.image_size}x{args.image_size} px, in {shown(workdir / 'digits', args.workdir is not None)}")
        print(f"fine-tuning {args.model} (bn_mode inplace) for {args.epochs} epochs on the CPU ...", flush=True)
        start = time.perf_counter()
        result = finetune(args.model, workdir / "digits", workdir / "run", epochs=args.epochs,
                          batch_size=args.batch_size, image_size=args.image_size, augment="light",
                          optimizer="adamw", lr=2e-3, bn_mode="inplace", num_workers=0, device="cpu",
                          on_epoch_end=lambda r: print(f"  epoch {r['epoch']}: train loss {r['train_loss']:.3f}, "
                                                       f"val top-1 {r['val_top1']:.1f}%", flush=True))
        final = result.final
        print(f"accuracy reached: top-1 {final['val_top1']:.1f}%, top-5 {final['val_top5']:.1f}% on "
              f"{final['val_images']} held-out digits (chance 10%), in {time.perf_counter() - start:.0f} s")
        print()
        print_memory(args.model, args.batch_size, max(args.image_size, 32))
        print()
        deployed_accuracies(workdir / "run", workdir / "digits" / "val", args.image_size, args.workdir is not None)
        if args.seg_epochs > 0:
            print()
            picture = args.picture or (workdir / PICTURE if args.workdir else Path(PICTURE))
            segmentation_demo(f"deeplabv3_{args.model}", workdir, workdir / "run", picture, epochs=args.seg_epochs,
                              scenes=args.scenes, kept=args.workdir is not None)
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
