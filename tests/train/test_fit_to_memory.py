"""Training at the size that fits, through real processes: a run that cannot fit is refused before any file
(exit 10, the sizes to lower and what would fit); running out anyway in a DataLoader worker, under an address-space
limit or killed by the kernel, is exit 10 with nothing left in /dev/shm or the temporary folder; `--batch-size auto`
picks a batch the run then completes within the budget (its peak resident set measured), larger than standard
BatchNorm's, and a resume reuses it; `--image-size auto` chooses a crop; under a real cgroup limit the default
budget is the cgroup's."""

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image
from support.cli import REPO, run_cli
from support.mask_data import write_square_scenes
from support.memory_runs import (
    child_env,
    children_of,
    finish,
    leaked_shared_files,
    run_measured,
    shared_files,
    short_temporary_folder,
    start_cli,
)
from support.processes import wait_for
from support.segmentation_fixtures import tiny_arch_registered

from iabn_zoo.errors import DataError
from iabn_zoo.system.memory_limits import resident_bytes
from iabn_zoo.system.resources import parse_bytes
from iabn_zoo.train.finetune import finetune

MODEL = "tiny_vistas_deeplab3"
MIB = 2 ** 20
SIZE = r"[\d.]+ [KMGT]iB"  # a byte count as the messages write it (system.resources.format_bytes)
ADDRESS_SPACE = 5 << 29  # 2.5 GiB: the trainer runs in it, a worker decoding a 7000x7000 image does not


@pytest.fixture()
def child_tmp():
    """The child's TMPDIR: empty, short as a user's."""
    with short_temporary_folder() as folder:
        yield folder


@pytest.fixture(scope="module")
def squares(module_tmp):
    return write_square_scenes(module_tmp("squares") / "data", train=320, val=4)


def assert_nothing_left(tmp: Path, before: set[str], out: Path | None = None) -> None:
    """No file in the child's temporary folder, no shared-memory file of a process that is gone, no run folder."""
    assert not list(tmp.iterdir()), f"left in the temporary folder: {sorted(p.name for p in tmp.iterdir())}"
    assert not leaked_shared_files(before), f"left in /dev/shm: {leaked_shared_files(before)}"
    if out is not None:
        assert not out.exists(), f"{out} was written: {sorted(p.name for p in out.iterdir())}"


def write_flat_png(path: Path, size: int, channels: int) -> None:
    """A `size` x `size` PNG of one grey (RGB) or class 1 (L), written row by row: no image of that size in memory."""
    colour_type, value = (2, 90) if channels == 3 else (0, 1)
    row = b"\0" + bytes([value]) * (size * channels)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(size)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", size, size, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def import_rss() -> int:
    """The resident set of a fresh process that has imported the command line and the trainer: what the budgets
    here are counted from, so that they fit this machine's torch."""
    code = ("import iabn_zoo.cli.main, iabn_zoo.train.finetune\n"
            "from iabn_zoo.system.memory_limits import resident_bytes\nprint(resident_bytes())")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_an_oversize_segmentation_run_is_refused_before_any_file(tmp_path, squares, child_tmp):
    """The defect: it created the run folder, then died with exit 70 and a worker's traceback, leaking a 3.5 GB
    torch_* file in /dev/shm."""
    before = shared_files()
    env = child_env(child_tmp)
    done = run_cli("finetune", "deeplabv3_resnet18", squares, "--out", tmp_path / "runs" / "x", "--image-size",
                   "6000", "--batch-size", "8", "--epochs", "1", env=env)
    assert done.returncode == 10, done.stderr
    assert re.search(r"a training step of deeplabv3_resnet18 at 6000 px with a batch of 8 needs at least [\d.]+ "
                     r"[GT]iB of memory", done.stderr), done.stderr
    assert "lower --image-size or --batch-size: at 6000 px not even a batch of 2 fits" in done.stderr
    assert re.search(r"at a batch of 8 the largest crop that fits is \d+ px", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_left(child_tmp, before, tmp_path / "runs")


def test_a_worker_out_of_memory_under_an_address_space_limit_is_exit_10(tmp_path, child_tmp):
    probe = run_cli("list", "resnet18", memory_limit=ADDRESS_SPACE)
    if probe.returncode != 0:
        pytest.skip(f"this torch build does not start within a {ADDRESS_SPACE / 2 ** 30} GiB address space")
    data = write_square_scenes(tmp_path / "data", train=3, val=2)
    write_flat_png(data / "train" / "images" / "000.png", 7000, 3)  # decoded and normalised whole by the worker
    write_flat_png(data / "train" / "masks" / "000.png", 7000, 1)
    before = shared_files()
    env = child_env(child_tmp, plugins=True)
    done, _ = run_measured("finetune", MODEL, data, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "2",
                           "--image-size", "32", "--augment", "none", "--num-workers", "1", "--device", "cpu",
                           env=env, memory_limit=ADDRESS_SPACE)
    assert done.returncode == 10, done.stderr
    assert "out of memory while training at 32 px with a batch of 2 (in a data loader worker" in done.stderr
    assert "lower --image-size, --batch-size or --num-workers" in done.stderr and "Traceback" not in done.stderr
    assert_nothing_left(child_tmp, before, tmp_path / "run")


def test_a_worker_the_kernel_kills_is_exit_10_and_leaves_nothing(tmp_path, squares, child_tmp):
    """The kernel's out-of-memory killer sends SIGKILL; workers offer themselves first (oom_score_adj 1000)."""
    before = shared_files()
    env = child_env(child_tmp, plugins=True)
    process = start_cli("finetune", MODEL, squares, "--out", tmp_path / "run", "--epochs", "50", "--batch-size", "2",
                        "--image-size", "32", "--augment", "none", "--num-workers", "1", "--device", "cpu", env=env)

    def offered_worker() -> int | None:
        for child in children_of(process.pid):
            try:
                if Path(f"/proc/{child}/oom_score_adj").read_text().strip() == "1000":
                    return child
            except OSError:
                continue
        return None

    try:
        wait_for(lambda: offered_worker() is not None or process.poll() is not None, 120,
                 "a data loader worker with oom_score_adj 1000", interval=0.05)
        worker = offered_worker()
        assert worker is not None, process.stderr.read()
        os.kill(worker, signal.SIGKILL)
    finally:
        done = finish(process, timeout=120)
    assert done.returncode == 10, done.stderr
    assert "(a data loader worker was killed, most likely by the kernel for memory)" in done.stderr
    assert "--num-workers" in done.stderr and "Traceback" not in done.stderr
    assert_nothing_left(child_tmp, before)


def test_batch_auto_fits_the_budget_beats_standard_bn_and_resume_reuses_it(tmp_path, squares, child_tmp):
    budget = import_rss() + 450 * MIB
    env = child_env(child_tmp, plugins=True)
    common = ("--memory-budget", str(budget), "--batch-size", "auto", "--image-size", "64", "--augment", "none",
              "--num-workers", "0", "--device", "cpu")
    done, peak = run_measured("finetune", MODEL, squares, "--out", tmp_path / "run", "--epochs", "1", *common,
                              env=env)
    assert done.returncode == 0, done.stderr
    said = re.search(rf"batch (\d+) fits in ({SIZE}) \(standard BatchNorm: (\d+)\); the memory budget, "
                     rf"measured steps peaked at ({SIZE})", done.stderr)
    assert said, done.stderr
    chosen, standard = int(said.group(1)), int(said.group(3))
    assert parse_bytes(said.group(2)) == pytest.approx(budget, rel=0.05)  # written to one decimal
    assert peak is not None, "the run wrote no peak: it did not exit normally"
    assert peak <= budget, f"the run peaked at {peak / MIB:.0f} MiB, over its budget of {budget / MIB:.0f} MiB"
    assert parse_bytes(said.group(4)) <= budget
    assert 2 <= standard < chosen < 320, f"batch {chosen}, standard BatchNorm {standard}"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == chosen

    resumed, peak = run_measured("finetune", MODEL, squares, "--out", tmp_path / "run", "--epochs", "2",
                                 "--resume", *common, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "fits in" not in resumed.stderr, "a resume chose again"
    assert f"batch size {chosen}, as chosen when" in resumed.stderr
    assert f"batch_size: {chosen}" in resumed.stdout and peak is not None and peak <= budget
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == chosen


def test_image_size_auto_chooses_the_crop_at_a_batch(tmp_path, capfd):
    data = write_square_scenes(tmp_path / "data", train=8, val=2)
    with tiny_arch_registered():
        result = finetune(MODEL, data, tmp_path / "run", image_size="auto", batch_size=4, epochs=1,
                          memory_budget=resident_bytes() + 600 * MIB, num_workers=0, augment="none",
                          progress=False)
    crop = result.config.image_size
    said = re.search(rf"crop (\d+) px fits in {SIZE} \(standard BatchNorm: (\d+) px\); the memory budget",
                     capfd.readouterr().err)
    assert said and int(said.group(1)) == crop > 32 and 32 <= int(said.group(2)) < crop, said
    document = json.loads((tmp_path / "run" / "config.json").read_text())
    assert document["config"]["image_size"] == crop and document["preprocessing"]["crop"] == [crop, crop]


def test_nothing_of_a_run_exists_before_its_first_epoch_is_saved(tmp_path, squares):
    data = tmp_path / "data"
    shutil.copytree(squares, data)
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()  # its header survives the cut: the scan passes, decoding fails
    image = data / "train" / "images" / "000.png"
    image.unlink()
    (image.parent / "000.jpg").write_bytes(whole[: len(whole) // 2])
    with tiny_arch_registered(), pytest.raises(DataError, match="000.jpg"):
        finetune(MODEL, data, tmp_path / "run", epochs=1, batch_size=4, image_size=32, num_workers=0,
                 on_error="raise", progress=False, augment="none")
    assert not (tmp_path / "run").exists()


def oom_kills(cgroup: Path) -> int:
    """How many processes the kernel killed for the cgroup's limit (0 where the kernel does not say)."""
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        found = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if found:
            return int(found.group(1))
    return 0


RANKS = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import torch
    from support.segmentation_fixtures import tiny_arch_registered
    from iabn_zoo.train.finetune import finetune

    torch.set_num_threads(1)
    data, base, budgets = sys.argv[1], sys.argv[2], json.loads(sys.argv[4])
    rank = int(os.environ["RANK"])
    with tiny_arch_registered():
        result = finetune("tiny_vistas_deeplab3", data, os.path.join(base, "run"), epochs=1, batch_size="auto",
                          image_size=64, memory_budget=budgets[rank], num_workers=0, augment="none", progress=False)
    print(f"rank {rank} batch {result.config.batch_size}", flush=True)  # one write: the ranks share the pipe
""")


def test_under_torchrun_each_rank_measures_its_own_budget_and_all_take_the_smallest(tmp_path, squares):
    base = import_rss()
    budgets = [base + 450 * MIB, base + 250 * MIB]  # rank 1 has less room
    (tmp_path / "ranks.py").write_text(RANKS)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "ranks.py"), str(squares), str(tmp_path), str(REPO / "tests"),
                           json.dumps(budgets)], env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    batches = {int(rank): int(batch) for rank, batch in re.findall(r"rank (\d) batch (\d+)", done.stdout)}
    said = re.search(r"batch (\d+) fits in .* \(the smallest of the processes' answers, (\d+), (\d+)\)", done.stderr)
    assert said and len(batches) == 2, (done.stdout, done.stderr[-2000:])
    agreed, answers = int(said.group(1)), [int(said.group(2)), int(said.group(3))]
    assert batches == {0: agreed, 1: agreed} and agreed == min(answers), (batches, answers)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == agreed


def memory_cgroup(limit: int) -> Path | None:
    """A new memory cgroup under this process's own, limited to `limit` bytes (cgroup v1 or v2), or None where
    this process may not make one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        v1 = "memory" in controllers.split(",")
        if not v1 and controllers:
            continue
        root = Path("/sys/fs/cgroup/memory" if v1 else "/sys/fs/cgroup") / path.lstrip("/")
        folder = root / f"iabn-zoo-test-{os.getpid()}"
        try:
            folder.mkdir()
            (folder / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(limit))
            return folder
        except OSError:
            if folder.exists():
                folder.rmdir()
    return None


def test_under_a_cgroup_limit_auto_fills_the_cgroup(tmp_path, squares, child_tmp):
    limit = import_rss() + 500 * MIB
    cgroup = memory_cgroup(limit)
    if cgroup is None:
        pytest.skip("no memory cgroup can be made here (needs root and a writable memory controller)")
    env = child_env(child_tmp, plugins=True)
    try:
        done, _ = run_measured(
            "finetune", MODEL, squares, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "auto",
            "--image-size", "64", "--augment", "none", "--num-workers", "0", "--device", "cpu", env=env,
            setup=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))
        killed = oom_kills(cgroup)
    finally:
        cgroup.rmdir()
    assert done.returncode == 0 and killed == 0, (done.returncode, killed, done.stderr)
    said = re.search(rf"batch (\d+) fits in ({SIZE}) \(standard BatchNorm: \d+\); what this machine has free",
                     done.stderr)
    assert said, done.stderr
    # the budget is the resident set (libraries' pages, which the cgroup does not charge, included) plus what the
    # cgroup still allows: near the cgroup's limit, far below this machine's memory
    assert parse_bytes(said.group(2)) <= limit + 300 * MIB, f"budget {said.group(2)}, cgroup limit {limit}"


@pytest.mark.parametrize("options, named", [
    ({"model": "resnet18", "image_size": "auto"}, "image_size"),  # a classification crop is not chosen
    ({"model": MODEL, "image_size": "auto", "batch_size": "auto"}, "image_size"),  # one of the two, not both
    ({"model": MODEL, "batch_size": "many"}, "batch_size"),
    ({"model": MODEL, "memory_budget": "lots"}, "memory_budget"),
    ({"model": MODEL, "memory_budget": "0"}, "memory_budget"),
])
def test_bad_sizes_and_budgets_are_refused_by_name(options, named):
    from iabn_zoo.errors import InvalidArgumentError
    from iabn_zoo.train.config import FinetuneConfig

    with tiny_arch_registered(), pytest.raises(InvalidArgumentError, match=named):
        FinetuneConfig(data_dir="data", out_dir="out", **options)
