"""Fine-tuning and evaluation under real torchrun processes (gloo on CPU, the tiny segmentation network in float64,
`support/elastic_worker.py` running the real command line), each compared with a reference run of two processes
that was never interrupted:

- two nodes on 127.0.0.1 (two torchrun launchers, c10d rendezvous on a free port, `--max-restarts 1`, the command
  without `--resume`): node 1's worker is SIGKILLed after step 7, both nodes restart, the run continues from the
  resume point written after step 6 inside epoch 2 and ends with the reference's bits; its evaluation on the two
  nodes equals one process's, and one process on the union of the nodes' batches trains the same network (float64);
- SIGTERM to one of two workers, which waits after step 5 until it comes: both ranks stop at that step boundary,
  rank 0 writes one resume point with both ranks' states, both exit 75, and the next start (`--resume auto`) ends
  with the reference's bits;
- nodes that do not share `--out` are refused on resume (exit 2, naming ranks and nodes), and a classifier's
  evaluation is shared by two nodes with the scores of one process.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.mask_data import write_square_scenes
from support.image_folders import write_colour_dataset
from support.processes import wait_for
from support.run_dirs import write_run_dir
from support.tiny_classifier import tiny_classifier, tiny_classifier_registered

from iabn_zoo import cli
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.weights.run_reader import read_metrics

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "support" / "elastic_worker.py"
TRAIN = ["--epochs", "2", "--batch-size", "2", "--image-size", "24", "--num-workers", "0", "--no-progress",
         "--save-every", "3", "--lr", "0.02"]  # 16 scenes, 2 x 2 per step: 4 steps an epoch
TIMINGS = ("epoch_time_s", "images_per_s")
FLOAT64 = {"IABN_TEST_DTYPE": "float64"}


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def finetune(data: Path, run: Path, *extra: str) -> list[str]:
    return ["finetune", "tiny_vistas_deeplab3", str(data), "--out", str(run), *TRAIN, *extra]


def standalone(processes: int = 2, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "--max-restarts", str(max_restarts), str(WORKER)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finished(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a launcher; on a timeout kill it with its workers (its own session) and fail."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"torchrun still ran after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def launch(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def two_nodes(commands: tuple[list[str], list[str]], env: dict[str, str], max_restarts: int) -> list:
    """Two torchrun launchers of one process each, meeting through a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"job{port}",
                "--max-restarts", str(max_restarts), str(WORKER)]
    processes = [launch(launcher + command, env) for command in commands]
    return [finished(process) for process in processes]


def outputs(stdout: str) -> dict[str, tuple[int, str]]:
    """command -> (exit code, what it printed), from the worker's `exit COMMAND CODE` lines."""
    found, lines = {}, []
    for line in stdout.splitlines():
        if line.startswith("exit "):
            _, command, code = line.split()
            found[command] = (int(code), "\n".join(lines))
            lines = []
        else:
            lines.append(line)
    return found


def printed_json(results: list, command: str) -> list[dict]:
    """The JSON documents `command` printed, over every launcher (rank 0 alone prints)."""
    texts = [outputs(result.stdout).get(command, (None, ""))[1] for result in results]
    return [json.loads(text) for text in texts if text.strip()]


def assert_same_run(run: Path, reference: Path) -> None:
    """The same weights, bit for bit, and the same metrics but for their timings."""
    ours, theirs = read_safetensors(run / "model.safetensors"), read_safetensors(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    differing = {k: float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours
                 if not torch.equal(ours[k], theirs[k])}
    assert not differing, f"weights differ from the uninterrupted run's (max |diff|): {differing}"

    def untimed(records):
        return [{k: v for k, v in record.items() if k not in TIMINGS} for record in records]

    assert untimed(read_metrics(run)) == untimed(read_metrics(reference))


@pytest.fixture(scope="module")
def data(module_tmp):
    return write_square_scenes(module_tmp("scenes") / "data", train=16, val=4, size=24)


@pytest.fixture(scope="module")
def reference(data, module_tmp):
    """Two processes, never interrupted."""
    run = module_tmp("reference") / "run"
    done = finished(launch(standalone() + finetune(data, run), environment(**FLOAT64)))
    assert done.returncode == 0, done.stderr
    return run


def test_two_nodes_restart_after_a_killed_node1_worker_and_match_one_process(data, reference, tmp_path):
    run, union = tmp_path / "run", tmp_path / "union"
    command = finetune(data, run) + ["--then", "evaluate", str(run), str(data), "--json", "--no-progress"]
    nodes = two_nodes((command, command), environment(IABN_TEST_FAULT="kill@7:node1", **FLOAT64), max_restarts=1)
    for node in nodes:
        assert node.returncode == 0, node.stdout + node.stderr
        assert outputs(node.stdout)["finetune"][0] == 0 and outputs(node.stdout)["evaluate"][0] == 0
    assert sum("exitcode: -9" in node.stderr for node in nodes) == 1  # node 1's torchrun saw its worker killed
    survivor = "".join(node.stderr for node in nodes)  # node 0's worker, whose collective lost its peer
    assert "lost contact with another process of this torchrun job" in survivor and "internal error" not in survivor
    assert_same_run(run, reference)
    assert sorted(path.name for path in run.glob("resume-*")) == ["resume-epoch0002.safetensors"]
    [scores] = printed_json(nodes, "evaluate")  # printed by rank 0 alone
    assert scores["images"] == 4

    one = subprocess.run([sys.executable, str(WORKER), *finetune(data, union, "--batch-size", "4"), "--then",
                          "evaluate", str(run), str(data), "--json", "--no-progress"],
                         env=environment(**FLOAT64), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    assert printed_json([one], "evaluate") == [scores]  # the same confusion counts, however the images are shared
    nodes_state, union_state = read_safetensors(run / "model.safetensors"), read_safetensors(
        union / "model.safetensors")
    assert all(value.dtype == torch.float64 for key, value in union_state.items() if value.is_floating_point())
    # float64 throughout: the two ways differ only by the order of sums, ~1e-16 relative per operation
    differences = {k: float((nodes_state[k] - union_state[k]).abs().max()) for k in union_state}
    worst = max(differences, key=differences.get)
    assert differences[worst] < 1e-9, f"two nodes differ from one process on the union most at {worst}: " \
                                      f"{differences[worst]:.3g}"


def test_sigterm_to_one_worker_mid_epoch_stops_every_rank_at_one_resume_point_and_the_next_start_continues(
        data, reference, tmp_path):
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    job = launch(standalone() + finetune(data, run),
                 environment(IABN_TEST_FAULT="wait@5:rank1", IABN_TEST_MARKERS=str(markers), **FLOAT64))
    wait_for(lambda: job.poll() is not None or (markers / "rank1").exists(), 240, "rank 1 after step 5")
    os.kill(int((markers / "rank1").read_text()), signal.SIGTERM)  # rank 1 alone: rank 0 must stop with it
    stopped = finished(job)
    assert stopped.stdout.count("exit finetune 75") == 2, stopped.stdout + stopped.stderr
    assert stopped.stderr.count("stopped by SIGTERM") == 1  # said once, by rank 0
    assert f"{run} holds a resume point after step 5 (1 of the 4 of epoch 2); the same command with --resume " \
           "auto continues it" in stopped.stderr
    point = json.loads((run / "resume.json").read_text())
    assert (point["format"], point["epoch"], point["step"]) == (2, 1, 5)
    assert point["within_epoch"]["world_size"] == 2 and len(point["ranks"]) == 2
    assert sorted(path.name for path in run.glob("resume-*")) == [
        "resume-epoch0001.safetensors", "resume-epoch0002-step00000005-w2.safetensors"]

    again = finished(launch(standalone() + finetune(data, run, "--resume", "auto"), environment(**FLOAT64)))
    assert again.returncode == 0, again.stderr
    assert_same_run(run, reference)


def test_nodes_that_do_not_share_the_run_folder_are_refused_and_evaluation_is_shared(data, reference, tmp_path,
                                                                                    capsys):
    shared, missing = tmp_path / "node_a" / "run", tmp_path / "node_b" / "run"
    shutil.copytree(reference, shared)
    before = {path.name: path.read_bytes() for path in shared.iterdir() if path.is_file()}
    colours = write_colour_dataset(tmp_path / "colours", train=1, val=5, size=16)
    with tiny_classifier_registered():
        torch.manual_seed(0)
        classifier = write_run_dir(tmp_path / "classifier", tiny_classifier(num_classes=3).eval(),
                                   arch="tiny_classifier", classes=["blue", "green", "red"])
        evaluate = ["evaluate", str(classifier), str(colours), "--json", "--no-progress", "--num-workers", "0",
                    "--batch-size", "2"]
        nodes = two_nodes(tuple(finetune(data, out, "--resume", "auto") + ["--then", *evaluate]
                                for out in (shared, missing)), environment(), max_restarts=0)
        assert cli.main(evaluate) == 0
        one_process = json.loads(capsys.readouterr().out)
    for node in nodes:
        assert outputs(node.stdout)["finetune"][0] == 2, node.stdout + node.stderr
        assert "the processes of this job see different runs in" in node.stderr
        assert "so continuing a run needs a folder all nodes share" in node.stderr
    errors = "".join(node.stderr for node in nodes)
    assert "sees the resume point at epoch 2, step 8" in errors and "sees no resume point" in errors
    assert "rank 0 of 2 (node " in errors and "rank 1 of 2 (node " in errors
    assert not missing.exists()
    assert {path.name: path.read_bytes() for path in shared.iterdir() if path.is_file()} == before
    [shared_scores] = printed_json(nodes, "evaluate")
    assert shared_scores["images"] == 15
    assert {k: shared_scores[k] for k in ("top1", "top5", "images")} == \
           {k: one_process[k] for k in ("top1", "top5", "images")}
