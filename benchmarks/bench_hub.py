"""The Hugging Face Hub as a cache and as a source, against a loopback Hub (tests/support/hub_server.py).

Load: a warm `create_model("hf-hub:ORG/NAME", pretrained=True)` reading the Hugging Face cache, against a warm
`create_model(NAME, pretrained=True)` reading this package's own cache: the same network (resnext101; quick:
resnet50) and the same tensors (the repository is a mirror of the registered entry, pushed by `push_to_hub`), both
caches warm, interleaved, and checked to touch no network (target <= 1.1).

Download: `zoo.download("hf-hub:ORG/NAME", force=True)`, which resolves the file (HEAD, the redirect to storage),
streams it into the Hugging Face cache and verifies its sha256 as it arrives, against curl fetching the same bytes
from the same storage server onto the same disk (neither fsyncs: huggingface_hub does not), interleaved (target
<= 1.15). Two report-only rows split the difference: what this package adds to huggingface_hub's download (the
resolution of the name and the verification) and what huggingface_hub's own transfer costs over curl (its plain-HTTP
path re-chunks the stream into 10 MB pieces in Python; Xet transfers, which the real Hub offers, do not).
A 512 MiB (quick: 64 MiB) weights file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved_medians, interleaved_medians_of, row

TARGET_LOAD = 1.1
TARGET_DOWNLOAD = 1.15
BENCH_NAME = "bench_hub_weights"
REFERENCE_WEIGHTS = {False: "resnext101_ipabn_lr_512", True: "resnet50_ipabn_sync_lr_512"}
OWNER, TOKEN = "bench", "hf_bench_token"


def run(quick: bool) -> list[dict[str, Any]]:
    """The load row and the download row."""
    from tests.support.hub_server import HubServer

    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is needed for the download baseline; install it (apt-get install curl)")
    with tempfile.TemporaryDirectory(prefix="iabn-bench-hub-") as tmp, HubServer() as hub:
        tmp = Path(tmp)
        hub.add_user(OWNER, TOKEN)
        # huggingface_hub reads these when imported, which happens below, in this process of its own
        os.environ.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "hf_home"), "HF_TOKEN": TOKEN,
                           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                           "IABN_ZOO_HOME": str(tmp / "zoo_home")})
        return [_load_row(quick, tmp, hub), *_download_rows(quick, tmp, hub, curl)]


def _load_row(quick: bool, tmp: Path, hub: Any) -> dict[str, Any]:
    from iabn_zoo.factory import create_model
    from iabn_zoo.weights.catalog import get_weights, unregister_weights
    from iabn_zoo.weights.hf_hub.publish import push_to_hub
    from tests.support.authors_checkpoints import publish, write_imagenet_checkpoint
    from tests.support.loopback_server import LoopbackServer

    reference = get_weights(REFERENCE_WEIGHTS[quick])
    kwargs = {**reference.arch_kwargs, "bn_mode": "inplace"}
    original = write_imagenet_checkpoint(tmp / "original.pth.tar", create_model(reference.arch, **kwargs).state_dict(),
                                         arch=reference.arch, momentum_buffers=False)
    repo = f"hf-hub:{OWNER}/{BENCH_NAME}"
    with LoopbackServer() as drive:
        publish(drive, original, BENCH_NAME, reference.arch, arch_kwargs=kwargs, num_classes=reference.num_classes)
        try:
            push_to_hub(BENCH_NAME, f"{OWNER}/{BENCH_NAME}", progress=False)  # our cache is warm after this
            create_model(repo, pretrained=True, progress=False)  # the Hugging Face cache too
            before = len(hub.requests) + len(drive.requests)
            repeats = 3 if quick else 7
            hub_time, ours_time = interleaved_medians(lambda: create_model(repo, pretrained=True, progress=False),
                                                      lambda: create_model(BENCH_NAME, pretrained=True,
                                                                           progress=False), repeats=repeats)
            assert len(hub.requests) + len(drive.requests) == before, "a warm load touched the network"
        finally:
            unregister_weights(BENCH_NAME)
    return row(f"load from the Hugging Face cache vs iabn-zoo's cache ({reference.arch})", hub_time, ours_time,
               target=TARGET_LOAD, unit="s",
               note=f"create_model('{repo}') vs create_model('{BENCH_NAME}'), pretrained, both caches warm")


def _download_rows(quick: bool, tmp: Path, hub: Any, curl: str) -> list[dict[str, Any]]:
    import iabn_zoo as zoo
    from iabn_zoo.system.hashing import file_md5, file_sha256
    from iabn_zoo.weights.hf_hub import client
    from iabn_zoo.weights.hf_hub.names import HubName

    size = (64 if quick else 512) << 20
    payload = tmp / "payload.bin"
    with open(payload, "wb") as handle:
        for offset in range(0, size, 16 << 20):
            handle.write(os.urandom(min(16 << 20, size - offset)))
    source = hub.find(f"{OWNER}/{BENCH_NAME}").commit_at("main").files
    config = json.loads(source["config.json"].data)
    config["weights"].update(sha256=file_sha256(payload), md5=file_md5(payload), size=size)
    name = f"{OWNER}/{BENCH_NAME}-download"
    hub.publish(name, {"config.json": json.dumps(config).encode(), "classes.csv": source["classes.csv"].data,
                       "model.safetensors": payload.read_bytes()})
    storage = f"{hub.cdn}/lfs/{file_sha256(payload)}"
    target = tmp / "curl.bin"

    def hub_download() -> None:
        zoo.download(f"hf-hub:{name}", progress=False, force=True)

    def raw_transfer() -> None:
        subprocess.run([curl, "-s", "-S", "-f", "-o", str(target), storage], check=True)

    def library_only() -> None:
        client.download_file(HubName(name), "model.safetensors", progress=False, force=True)

    ours, library, baseline = interleaved_medians_of([hub_download, library_only, raw_transfer],
                                                     repeats=3 if quick else 9)
    mib = size >> 20
    return [
        row(f"Hub download + sha256 {mib} MiB vs raw transfer (curl)", ours, baseline, target=TARGET_DOWNLOAD,
            unit="s", note="zoo.download('hf-hub:...', force=True): HEAD, redirect, stream into the Hugging Face "
                           "cache, verify; curl: GET the same storage URL to the same disk"),
        row(f"Hub download + sha256 {mib} MiB vs huggingface_hub's download alone", ours, library,
            target=None, unit="s", note="what iabn-zoo adds: resolving the name, the sha256 (computed while the "
                                        "file arrives); the same rounds as the row above"),
        row(f"huggingface_hub's download {mib} MiB vs curl", library, baseline, target=None, unit="s",
            note="hf_hub_download's plain-HTTP transfer (10 MB re-chunking in Python) over curl's"),
    ]
