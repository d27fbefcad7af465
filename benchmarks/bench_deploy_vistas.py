"""Deployed inference of the Vistas network (WRN38-A2 body at output stride 8, DeepLabV3 head with its 84-pixel
inference pooling, 65 classes) at 1024 px, batch 1 (quick: 256 px): bf16 against the authors' compiled InPlace-ABN
layers in fp32 eval (target >= 3x, relative error <= 1e-2) and against our fp32 fast eval.

The error of each side is judged against the same network in float64 (its deployable copy) on the same image:
max |diff| / max |float64 logits|; the fp32 sides give the noise floor. The float64 reference is the slowest part.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.bench_deploy import TARGET_ERROR, TARGET_SPEEDUP, relative_error
from benchmarks.bench_inference import randomize_norm_statistics
from benchmarks.common import interleaved_medians, row

ARCH = "wider_resnet38_a2_deeplab3"


def run(quick: bool) -> list[dict[str, Any]]:
    """Two rows: bf16 vs the compiled layers (target), bf16 vs fast eval fp32 (report)."""
    import copy

    import iabn_zoo
    from iabn_zoo.deploy import deployable_copy
    from iabn_zoo.models._fast_eval import disable_fast_eval
    from iabn_zoo.tasks.precision import inference_model

    size, repeats = (256, 1) if quick else (1024, 2)
    authors = iabn_zoo.create_model(ARCH, bn_mode="inplace", backend="native")
    randomize_norm_statistics(authors)
    fast = copy.deepcopy(authors).eval()
    disable_fast_eval(authors)
    authors.eval()
    bf16 = inference_model(fast, "bf16")
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    calls = {"bf16": lambda: bf16(image), "fast": lambda: fast(image.clone()),
             "authors": lambda: authors(image.clone())}
    with torch.no_grad():
        errors = {name: call() for name, call in calls.items()}  # the first calls warm every side up
        reference = deployable_copy(fast, torch.float64)(image.double())
        errors = {name: relative_error(output, reference) for name, output in errors.items()}
        del reference
        bf16_s, authors_s = interleaved_medians(calls["bf16"], calls["authors"], repeats=repeats, warmup=0)
        bf16_again_s, fast_s = interleaved_medians(calls["bf16"], calls["fast"], repeats=1, warmup=0)
    shape = f"Vistas network b1 {size}px cpu"
    within = "within" if errors["bf16"] <= TARGET_ERROR else "ABOVE"
    return [
        row(f"bf16 {shape} (vs compiled iABN fp32 eval)", 1 / bf16_s, 1 / authors_s, target=TARGET_SPEEDUP,
            unit="img/s", higher_is_better=True,
            note=f"bf16 relative error vs float64 {errors['bf16']:.1e} ({within} {TARGET_ERROR:g}); fp32 noise floor: "
                 f"fast eval {errors['fast']:.1e}, compiled iABN {errors['authors']:.1e}; "
                 f"{torch.get_num_threads()} threads"),
        row(f"bf16 {shape} (vs fast eval fp32)", 1 / bf16_again_s, 1 / fast_s, target=None, unit="img/s",
            higher_is_better=True, note="report only, one timed repeat"),
    ]
