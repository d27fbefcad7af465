"""Segmentation under torchrun (gloo, CPU), in float64: two processes whose last batches are unequal (4+3 and 4+2
images of the job's 8 and 5) take the same steps as one process on the union, synchronised InPlace-ABN statistics,
loss normalised over ranks and confusion matrices summed over ranks; rank 0 alone writes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from support.mask_data import write_square_scenes

from iabn_zoo.weights.run_reader import read_metrics

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import torch
    from support.segmentation_fixtures import tiny_arch_registered
    from iabn_zoo.train.finetune import finetune

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # the networks' parameters; inputs follow them
    data, base, batch = sys.argv[1], sys.argv[2], int(sys.argv[4])
    rank = int(os.environ.get("RANK", "0"))
    out = os.path.join(base, "run" if rank == 0 else f"run_rank{rank}")
    with tiny_arch_registered():
        result = finetune("tiny_vistas_deeplab3", data, out, epochs=2, batch_size=batch, image_size=24, lr=0.02,
                          num_workers=0, progress=False)
    torch.save(result.model.state_dict(), os.path.join(base, f"state_rank{rank}.pt"))
    kinds = sorted({type(m).__name__ for m in result.model.modules() if hasattr(m, "running_mean")})
    print(f"layers {kinds}")
""")


def run(base: Path, data: Path, processes: int, batch: int) -> subprocess.CompletedProcess:
    script = base / "worker.py"
    script.write_text(WORKER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([*launcher, str(script), str(data), str(base), str(TESTS), str(batch)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(module_tmp):
    # 13 training scenes, batches of 8 for the job: the last step has 5 images, 3 on rank 0 and 2 on rank 1
    return write_square_scenes(module_tmp("ddp") / "data", train=13, val=5, size=24)


def test_two_ranks_with_unequal_batches_match_one_process_on_the_union(tmp_path, data):
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    two = run(tmp_path / "two", data, 2, 4)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "InPlaceABNSync" in two.stdout
    one = run(tmp_path / "one", data, 1, 8)
    assert one.returncode == 0, one.stdout + one.stderr
    assert not (tmp_path / "two" / "run_rank1").exists()

    single = torch.load(tmp_path / "one" / "state_rank0.pt")
    for rank in (0, 1):
        state = torch.load(tmp_path / "two" / f"state_rank{rank}.pt")
        assert all(value.dtype != torch.float32 for value in state.values())
        # float64 throughout: the two ways differ only by the order of sums, ~1e-16 relative per operation
        differences = {k: float((state[k].double() - single[k].double()).abs().max()) for k in single}
        worst = max(differences, key=differences.get)
        assert differences[worst] < 1e-9, f"rank {rank} differs from one process most at {worst}: " \
                                          f"{differences[worst]:.3g}"
    records_two, records_one = read_metrics(tmp_path / "two" / "run"), read_metrics(tmp_path / "one" / "run")
    for a, b in zip(records_two, records_one):
        assert a["val_images"] == b["val_images"] == 5
        assert a["val_per_class_iou"] == pytest.approx(b["val_per_class_iou"], abs=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
    assert json.loads((tmp_path / "two" / "run" / "config.json").read_text())["task"] == "segmentation"
