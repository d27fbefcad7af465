"""Deployed inference on the CPU: bf16 (`precision="bf16"`: folded copy, bf16 weights and activations,
channels-last) and the exported ONNX file in onnxruntime, against our fp32 fast eval and against the authors'
compiled InPlace-ABN layers in fp32 eval (the same network on backend "native" with the fast path off).

Batch 8 at 224 px for ResNeXt101 and ResNet50 (quick: batch 2 at 96 px). Every output is judged against the same
network in float64 (its deployable copy, which computes the same function): the notes give each side's relative
error (max |diff| / max |float64|); the fp32 rows are the noise floor. Target: bf16 >= 3x the authors' fp32 layers
with a relative error <= 1e-2. The Vistas network at 1024 px has its own module (bench_deploy_vistas).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_inference import randomize_norm_statistics
from benchmarks.common import interleaved_medians, row

NETWORKS = {"resnext101": 5, "resnet50": 7}  # timed repeats
TARGET_SPEEDUP = 3.0
TARGET_ERROR = 1e-2


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference from the float64 reference, relative to its largest magnitude."""
    return float((output.double() - reference).abs().max() / reference.abs().max())


def contestants(arch: str, batch: int, size: int, folder: Path) -> dict[str, Any]:
    """The four ways to run one network with the same weights, and its float64 reference."""
    import iabn_zoo
    from iabn_zoo.deploy import deployable_copy, export
    from iabn_zoo.deploy.runtimes import OnnxModule
    from iabn_zoo.models._fast_eval import disable_fast_eval
    from iabn_zoo.tasks.precision import inference_model

    authors = iabn_zoo.create_model(arch, bn_mode="inplace", backend="native")
    randomize_norm_statistics(authors)
    fast = copy.deepcopy(authors).eval()
    disable_fast_eval(authors)
    onnx_file = export(fast, folder / f"{arch}.onnx", image_size=size, batch_size=batch)
    return {"authors": authors.eval(), "fast": fast, "bf16": inference_model(fast, "bf16"),
            "onnx": OnnxModule(onnx_file), "float64": deployable_copy(fast, torch.float64)}


def measure(arch: str, batch: int, size: int, repeats: int, folder: Path) -> list[dict[str, Any]]:
    """Rows for one network: bf16 vs authors (target), bf16 vs fast fp32, onnxruntime vs fast fp32 and authors."""
    nets = contestants(arch, batch, size, folder)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    calls = {name: (lambda net=net: net(images.clone())) for name, net in nets.items() if name != "float64"}
    with torch.no_grad():
        reference = nets.pop("float64")(images.double())
        errors = {name: relative_error(call(), reference) for name, call in calls.items()}  # also the warm-up
        bf16_s, authors_s = interleaved_medians(calls["bf16"], calls["authors"], repeats=repeats, warmup=0)
        bf16_again_s, fast_s = interleaved_medians(calls["bf16"], calls["fast"], repeats=repeats, warmup=0)
        onnx_s, fast_again_s = interleaved_medians(calls["onnx"], calls["fast"], repeats=repeats, warmup=0)
        onnx_again_s, authors_again_s = interleaved_medians(calls["onnx"], calls["authors"], repeats=repeats,
                                                            warmup=0)
    threads = f"{torch.get_num_threads()} threads"
    shape = f"{arch} b{batch} {size}px cpu"
    floor = f"fp32 noise floor: fast eval {errors['fast']:.1e}, compiled iABN {errors['authors']:.1e}"
    bf16_meets = errors["bf16"] <= TARGET_ERROR
    return [
        row(f"bf16 {shape} (vs compiled iABN fp32 eval)", batch / bf16_s, batch / authors_s, target=TARGET_SPEEDUP,
            unit="img/s", higher_is_better=True,
            note=f"bf16 relative error vs float64 {errors['bf16']:.1e} ({'within' if bf16_meets else 'ABOVE'} "
                 f"{TARGET_ERROR:g}); {floor}; {threads}"),
        row(f"bf16 {shape} (vs fast eval fp32)", batch / bf16_again_s, batch / fast_s, target=None, unit="img/s",
            higher_is_better=True, note="report only"),
        row(f"onnxruntime fp32 {shape} (vs fast eval fp32)", batch / onnx_s, batch / fast_again_s, target=None,
            unit="img/s", higher_is_better=True,
            note=f"onnxruntime relative error vs float64 {errors['onnx']:.1e}; onnxruntime default threads"),
        row(f"onnxruntime fp32 {shape} (vs compiled iABN fp32 eval)", batch / onnx_again_s,
            batch / authors_again_s, target=None, unit="img/s", higher_is_better=True, note="report only"),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Four rows per network."""
    batch, size = (2, 96) if quick else (8, 224)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iabn-bench-deploy-") as tmp:
        for arch, repeats in NETWORKS.items():
            rows += measure(arch, batch, size, 1 if quick else repeats, Path(tmp))
    return rows
