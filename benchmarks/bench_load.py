"""Pretrained loading: a warm `create_model(NAME, pretrained=True)` against the authors' way of getting the same model.

The checkpoint holds random weights of resnext101 (quick: resnet50) written as the authors' training script wrote
it (legacy torch.save, `module.` keys, epoch/arch/best_prec1, optimizer without momentum buffers so the baseline
reads no more than the model), served once from a loopback server and registered. Ours: `create_model` with the
cache warm (download verified and safetensors copy made by a first call). Baseline: build the architecture,
`torch.load` the original file, strip `module.`, `load_state_dict` (scripts/test_imagenet.py). Target <= 0.5.
A second, report-only row compares reading the tensors alone: the safetensors copy against `torch.load`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved_medians, row

TARGET = 0.5
BENCH_NAME = "bench_load_weights"
REFERENCE_WEIGHTS = {False: "resnext101_ipabn_lr_512", True: "resnet50_ipabn_sync_lr_512"}


def run(quick: bool) -> list[dict[str, Any]]:
    """The end-to-end row (target 0.5) and the tensors-only row (reported)."""
    with tempfile.TemporaryDirectory(prefix="iabn-bench-load-") as tmp:
        previous = os.environ.get("IABN_ZOO_HOME")
        os.environ["IABN_ZOO_HOME"] = str(Path(tmp) / "home")
        try:
            return _measure(quick, Path(tmp))
        finally:
            if previous is None:
                os.environ.pop("IABN_ZOO_HOME", None)
            else:
                os.environ["IABN_ZOO_HOME"] = previous


def _measure(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    import torch

    from iabn_zoo.factory import create_model
    from iabn_zoo.system.tensor_files import read_safetensors
    from iabn_zoo.weights.cache import converted_path
    from iabn_zoo.weights.catalog import get_weights, unregister_weights
    from tests.support.authors_checkpoints import publish, write_imagenet_checkpoint
    from tests.support.loopback_server import LoopbackServer

    reference = get_weights(REFERENCE_WEIGHTS[quick])
    kwargs = {**reference.arch_kwargs, "bn_mode": "inplace"}
    original = write_imagenet_checkpoint(tmp / "original.pth.tar", create_model(reference.arch, **kwargs).state_dict(),
                                         arch=reference.arch, momentum_buffers=False)

    def authors_way() -> torch.nn.Module:
        model = create_model(reference.arch, **kwargs)
        state = torch.load(original, map_location="cpu")["state_dict"]
        model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
        return model

    with LoopbackServer() as server:
        weights = publish(server, original, BENCH_NAME, reference.arch, arch_kwargs=kwargs,
                          num_classes=reference.num_classes)
        try:
            create_model(BENCH_NAME, pretrained=True, progress=False)  # download, verify, convert: cache now warm
            requests_before = len(server.requests)
            repeats = 3 if quick else 7
            ours, baseline = interleaved_medians(lambda: create_model(BENCH_NAME, pretrained=True, progress=False),
                                                 authors_way, repeats=repeats)
            read_ours, read_base = interleaved_medians(lambda: read_safetensors(converted_path(weights)),
                                                       lambda: torch.load(original, map_location="cpu"),
                                                       repeats=repeats)
            assert len(server.requests) == requests_before, "a warm load touched the network"
        finally:
            unregister_weights(BENCH_NAME)
    size = f"{original.stat().st_size / 2**20:.0f} MiB"
    return [
        row(f"pretrained load, warm cache ({reference.arch})", ours, baseline, target=TARGET, unit="s",
            note=f"create_model(pretrained=True) vs build + torch.load + load_state_dict; {size} legacy file"),
        row(f"checkpoint tensors read ({reference.arch})", read_ours, read_base, target=None, unit="s",
            note="safetensors copy (memory-mapped) vs torch.load of the original file"),
    ]
