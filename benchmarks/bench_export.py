"""`iabn-zoo export` for every published network, through a served copy of its checkpoint format: export time and
file size per network.

For each of the ten published names, a checkpoint with the same architecture and arguments (random weights, the
published layout) is written the way the authors' scripts wrote it (ImageNet: legacy `torch.save`, `module.` keys,
epoch/arch/best_prec1/optimizer; Vistas: `{"state_dict": {"body", "head", "cls"}}`), served from a loopback HTTP
server, registered in a registry file as `served_<name>`, and exported to ONNX by `iabn-zoo export` in its own
process (download, md5 check, load, fold, trace, convert, check in onnxruntime at batch 2). Rows report the ONNX
size against the checkpoint's (report only); notes give the export command's wall time and the max difference its
check measured. 224 px (the Vistas network: 512 px); quick: three networks at 96 px. The five largest networks run
in bench_export_large, so that each module stays within the runner's time limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import row

SMALLER = ("resnet34_ipabn_sync_lr_512", "resnet50_ipabn_sync_lr_512", "resnet101_ipabn_sync_lr_512",
           "resnext101_stdbn_lr_256", "resnext101_ipabn_lr_512")
LARGER = ("resnext101_ipabn_sync_lr_256", "resnext152_ipabn_lr_256", "densenet264_ipabn_lr_256",
          "wider_resnet38_ipabn_lr_256", "wider_resnet38_deeplab3_vistas")
REPO = Path(__file__).resolve().parents[1]
MIB = 2 ** 20


def toml_value(value: Any) -> str:
    """A registry value in TOML: JSON spells strings, numbers, booleans and lists the same way."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)


def registry_entry(name: str, weights: Any, url: str, md5: str) -> str:
    """The registry table of the served copy of published `weights`."""
    fields = {"arch": weights.arch, "arch_kwargs": weights.arch_kwargs, "urls": [url], "md5": md5,
              "file_name": f"{name}.pth.tar", "task": weights.task, "num_classes": weights.num_classes,
              "labels": weights.labels, "metrics": {}, "license": weights.license,
              "preprocessing": weights.preprocessing, "description": f"served copy of {weights.name}'s format"}
    return f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in fields.items()
                                    if value is not None) + "\n"


def write_checkpoint(weights: Any, path: Path) -> Path:
    """A checkpoint of `weights`' architecture and layout, random weights, in the authors' format."""
    import torch

    import iabn_zoo
    from tests.support.authors_checkpoints import write_imagenet_checkpoint, write_vistas_checkpoint

    torch.manual_seed(0)
    kwargs = {**weights.arch_kwargs, "bn_mode": "standard" if weights.arch_kwargs.get("bn_mode") == "standard"
              else "inplace"}
    state = iabn_zoo.create_model(weights.arch, num_classes=weights.num_classes, **kwargs).state_dict()
    if weights.task == "segmentation":
        return write_vistas_checkpoint(path, state)
    return write_imagenet_checkpoint(path, state, arch=weights.arch, momentum_buffers=False)


def export_in_a_process(name: str, out: Path, size: int, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run `iabn-zoo export` on `name`; its JSON summary and wall time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "iabn_zoo", "export", name, "--out", str(out), "--image-size",
                           str(size), "--no-progress", "--json"], env=env, capture_output=True, text=True,
                          timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"iabn-zoo export {name} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout), seconds


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per network of the smaller half of the published ones."""
    return export_rows(SMALLER[:3] if quick else SMALLER, quick)


def export_rows(names: tuple[str, ...], quick: bool) -> list[dict[str, Any]]:
    """One row per published network of `names`."""
    from iabn_zoo.system.hashing import file_md5
    from iabn_zoo.weights.catalog import get_weights
    from tests.support.loopback_server import LoopbackServer

    rows = []
    with tempfile.TemporaryDirectory(prefix="iabn-bench-export-") as tmp, LoopbackServer() as server:
        folder = Path(tmp)
        registry = folder / "served.toml"
        env = {**os.environ, "PYTHONPATH": str(REPO), "IABN_ZOO_HOME": str(folder / "home"),
               "IABN_ZOO_REGISTRY": str(registry)}
        for name in names:
            weights = get_weights(name)
            checkpoint = write_checkpoint(weights, folder / f"{name}.pth.tar")
            served = f"served_{name}"
            url = server.add(f"/files/{served}/{checkpoint.name}", checkpoint)
            registry.write_text(registry_entry(served, weights, url, file_md5(checkpoint)))
            size = 96 if quick else (512 if weights.task == "segmentation" else 224)
            summary, seconds = export_in_a_process(served, folder / f"{name}.onnx", size, env)
            rows.append(row(f"export {name} to ONNX ({size}px, iabn-zoo export, served authors' format)",
                            summary["file_size"] / MIB, checkpoint.stat().st_size / MIB, target=None, unit="MiB",
                            note=f"ONNX file vs the checkpoint; export {seconds:.0f} s (download, load, fold, trace, "
                                 f"convert, onnxruntime check at {'x'.join(map(str, summary['check_shape']))}: max "
                                 f"difference {summary['max_difference']:.1e})"))
            for path in (checkpoint, folder / f"{name}.onnx"):
                path.unlink()
            for cached in (folder / "home").rglob("*"):
                if cached.is_file():
                    cached.unlink()
    return rows
