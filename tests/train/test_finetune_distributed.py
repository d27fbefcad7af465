"""Two processes under torchrun (gloo, CPU): training runs, synchronised statistics agree, only rank 0 writes.

One torchrun launch serves both tests: each rank fine-tunes with synchronised statistics, then again without, in a
process group the worker script holds across both (finetune uses a group it finds and leaves it open)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from support.image_folders import write_colour_dataset
from support.numerics import assert_differs

from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.weights.run_reader import read_metrics

REPO = Path(__file__).resolve().parents[2]

# For each mode (in its own folder), each rank fine-tunes into its own would-be run folder (rank 0: run, rank 1:
# run_rank1) and reports its final state outside them, so the test can see what every rank holds and that only
# rank 0 wrote a run.
WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from iabn_zoo.train.finetune import finetune

    torch.set_num_threads(1)
    data, bases = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    for mode, base in bases.items():
        out = os.path.join(base, "run" if rank == 0 else f"run_rank{rank}")
        result = finetune("resnet18", data, out, epochs=2, batch_size=4, image_size=16, augment="light", lr=0.02,
                          num_workers=0, progress=False, sync_bn=mode == "sync")
        torch.save(result.model.state_dict(), os.path.join(base, f"state_rank{rank}.pt"))
        with open(os.path.join(base, f"metrics_rank{rank}.json"), "w") as handle:
            json.dump(result.metrics, handle)
        with open(os.path.join(base, f"layers_rank{rank}.json"), "w") as handle:
            json.dump(sorted({type(m).__name__ for m in result.model.modules() if hasattr(m, "running_mean")}), handle)
    dist.destroy_process_group()
""")


def layer_kinds(folder: Path) -> list[list[str]]:
    """The kinds of norm layers in each rank's network after fine-tuning (each rank writes its own file: lines the
    ranks print to one pipe can interleave)."""
    return [json.loads((folder / f"layers_rank{rank}.json").read_text()) for rank in (0, 1)]


def running_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.fixture(scope="module")
def two_ranks(module_tmp) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    """One torchrun launch of two ranks fine-tuning with synchronised statistics, then without: its outcome and
    the folder of each mode. 21 training images: the sampler pads to 22, so each rank trains on 11 different ones."""
    base = module_tmp("ddp")
    data = write_colour_dataset(base / "data", train=7, val=3, size=16)
    folders = {mode: base / mode for mode in ("sync", "local")}
    for folder in folders.values():
        folder.mkdir()
    (base / "worker.py").write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(base / "worker.py"), str(data), *(f"{mode}={folder}" for mode, folder in folders.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300), folders


def test_two_ranks_train_with_synchronised_statistics_and_rank0_alone_writes(two_ranks):
    done, folders = two_ranks
    folder = folders["sync"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [("InPlaceABNSync" in kinds) for kinds in layer_kinds(folder)] == [True, True]
    assert "broadcast_buffers" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr

    assert (folder / "run" / "model.safetensors").exists()
    assert [r["epoch"] for r in read_metrics(folder / "run")] == [1, 2]
    assert not (folder / "run_rank1").exists()

    rank0 = torch.load(folder / "state_rank0.pt")
    rank1 = torch.load(folder / "state_rank1.pt")
    stats0, stats1 = running_stats(rank0), running_stats(rank1)
    # every rank reduces the same gathered per-rank statistics in the same order (sync_stats.reduce_statistics), so
    # the ranks hold the same bits, on any machine: nothing to allow for
    unequal = {k: float((stats0[k] - stats1[k]).abs().max()) for k in stats0 if not torch.equal(stats0[k], stats1[k])}
    assert stats0 and not unequal, f"the ranks' synchronised statistics differ (max |diff|): {unequal}"
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in stats0.items() if k.endswith("running_mean"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0 if k not in stats0)  # DDP keeps weights equal
    saved = read_safetensors(folder / "run" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)

    metrics0 = json.loads((folder / "metrics_rank0.json").read_text())
    metrics1 = json.loads((folder / "metrics_rank1.json").read_text())
    assert [m["val_top1"] for m in metrics0] == [m["val_top1"] for m in metrics1]
    assert metrics0[-1]["val_images"] == 9


def test_without_sync_each_rank_keeps_its_own_statistics(two_ranks):
    done, folders = two_ranks
    folder = folders["local"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [("InPlaceABNSync" in kinds) for kinds in layer_kinds(folder)] == [False, False]
    stats0 = running_stats(torch.load(folder / "state_rank0.pt"))
    stats1 = running_stats(torch.load(folder / "state_rank1.pt"))
    assert_differs(torch.cat([stats0[k].flatten() for k in stats0]), torch.cat([stats1[k].flatten() for k in stats0]),
                   1e-2, "the two ranks' running statistics (each of its own 11 images)")
