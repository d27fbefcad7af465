"""Download manager: download + md5 verification from a loopback server, and re-verification of a cached file.

Download: our time (receive, hash, write, fsync, rename) against the limit of the same work done the plain way,
max(curl writing the same file to the same disk and fsyncing it, hashlib md5 of the same bytes in memory), both
measured in the same run (target 1.15: receiving and writing are hidden behind the hash), and against
`torch.hub.download_url_to_file` (which does not hash; reported only). Re-verification: `system.hashing.file_md5`
throughput against hashlib reading the same file (target 0.95). 1 GiB file (quick: 64 MiB) in a temporary folder,
removed after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved_medians, row

TARGET_DOWNLOAD = 1.15
TARGET_REVERIFY = 0.95
WRITE_CHUNK = 16 << 20


def write_random_file(path: Path, size: int) -> None:
    """`size` incompressible bytes at `path`."""
    with open(path, "wb") as handle:
        for offset in range(0, size, WRITE_CHUNK):
            handle.write(os.urandom(min(WRITE_CHUNK, size - offset)))


def hashlib_file_md5(path: Path) -> str:
    """The baseline of re-verification: hashlib's own file reader."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for the download and re-verification targets."""
    from iabn_zoo.system.files import fsync_directory, fsync_file
    from iabn_zoo.system.hashing import file_md5
    from iabn_zoo.weights.catalog import Weights
    from iabn_zoo.weights.downloader import download
    from tests.support.loopback_server import LoopbackServer

    size = (64 if quick else 1024) << 20
    repeats = 3
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is needed for the download baseline; install it (apt-get install curl)")
    with tempfile.TemporaryDirectory(prefix="iabn_bench_download_") as folder:
        folder = Path(folder)
        source = folder / "payload.bin"
        write_random_file(source, size)
        data = source.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        with LoopbackServer() as server:
            url = server.add("/payload.bin", source)
            weights = Weights(name="bench_payload", arch="resnet34", arch_kwargs={}, urls=(url,), md5=md5,
                              file_name="payload.bin", num_classes=1, task="classification", metrics={},
                              license="none", preprocessing={}, description="benchmark payload")

            def ours() -> None:
                download(weights, cache_dir=folder / "cache", progress=False, force=True)

            def curl_durably() -> None:
                target = folder / "curl.bin"
                subprocess.run([curl, "-s", "-S", "-f", "-o", str(target), url], check=True)
                fsync_file(target)
                fsync_directory(folder)

            def md5_in_memory() -> None:
                hashlib.md5(data).hexdigest()

            def torch_hub() -> None:
                import torch.hub

                torch.hub.download_url_to_file(url, str(folder / "hub.bin"), progress=False)

            ours_time, curl_time = interleaved_medians(ours, curl_durably, repeats)
            md5_time, hub_time = interleaved_medians(md5_in_memory, torch_hub, repeats)
        cached = folder / "cache" / "checkpoints" / "payload.bin"
        ours_hash, base_hash = interleaved_medians(lambda: file_md5(cached), lambda: hashlib_file_md5(cached),
                                                   9 if quick else 5)
    mib = size / 2**20
    limit = max(curl_time, md5_time)
    limit_name = "curl" if curl_time >= md5_time else "md5"
    return [
        row(f"download+verify {mib:.0f} MiB vs max(curl to disk + fsync, md5)", ours_time, limit,
            target=TARGET_DOWNLOAD, unit="s",
            note=f"curl+fsync {curl_time:.3f}s, md5 {md5_time:.3f}s (limit: {limit_name})"),
        row(f"download+verify {mib:.0f} MiB vs torch.hub (no hash)", ours_time, hub_time, target=None, unit="s"),
        row(f"md5 re-verification {mib:.0f} MiB vs hashlib.file_digest", mib / ours_hash, mib / base_hash,
            target=TARGET_REVERIFY, unit="MiB/s", higher_is_better=True),
    ]
