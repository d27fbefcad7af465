"""`iabn-zoo export` in a real process on a served checkpoint in the authors' format, and a fine-tuning RUN exported
and classifying its validation images as the eager network does (fp32 in onnxruntime, and bf16)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from support import forkserver
from support.authors_checkpoints import publish, write_imagenet_checkpoint
from support.image_folders import write_colour_dataset
from support.small_networks import randomize_norms

import iabn_zoo as zoo
from iabn_zoo import cli
from iabn_zoo.deploy.runtimes import OnnxModule, onnx_metadata, run_exported_program, run_onnx
from iabn_zoo.tasks.classifiers import load_classifier
from iabn_zoo.tasks.evaluate import evaluate, evaluate_model, evaluation_set
from iabn_zoo.train.finetune import finetune
from iabn_zoo.weights.catalog import unregister_weights

REPO = Path(__file__).resolve().parents[2]
NAME = "test_export_served_resnet18"


@pytest.fixture
def served_weights(loopback_server, tmp_path):
    """resnet18 with trained-like norms, written as the authors' training script wrote it, served and registered
    in-process and in a registry file for child processes."""
    torch.manual_seed(0)
    model = randomize_norms(zoo.create_model("resnet18", num_classes=10))
    path = write_imagenet_checkpoint(tmp_path / "r18.pth.tar", model.state_dict(), arch="resnet18")
    weights = publish(loopback_server, path, NAME, "resnet18", num_classes=10)
    registry = tmp_path / "extra.toml"
    registry.write_text(
        f'[{NAME}]\narch = "resnet18"\narch_kwargs = {{ bn_mode = "inplace" }}\nurls = ["{weights.urls[0]}"]\n'
        f'md5 = "{weights.md5}"\nfile_name = "{weights.file_name}"\ntask = "classification"\nnum_classes = 10\n'
        f'metrics = {{ top1 = 50.0 }}\nlicense = "test only"\n'
        f'preprocessing = {{ mean = [0.5, 0.4, 0.3], std = [0.2, 0.2, 0.2], resize = 40, crop = 32 }}\n'
        f'description = "served for the export command test"\n')
    yield weights, registry
    unregister_weights(NAME)


def test_export_command_in_a_real_process(served_weights, tmp_path, zoo_home):
    weights, registry = served_weights
    out = tmp_path / "exported" / "r18.onnx"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "IABN_ZOO_REGISTRY": str(registry), "OMP_NUM_THREADS": "1",
           "IABN_ZOO_HOME": str(zoo_home)}
    done = forkserver.run([sys.executable, "-m", "iabn_zoo", "export", NAME, "--out", str(out), "--image-size",
                           "64", "--no-progress", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["path"] == str(out) and summary["file_size"] == out.stat().st_size
    assert summary["max_difference"] <= 1e-4 and summary["check_shape"] == [2, 3, 64, 64]
    metadata = onnx_metadata(out)
    assert metadata["weights"] == NAME and metadata["source_md5"] == weights.md5
    assert metadata["mean"] == [0.5, 0.4, 0.3] and metadata["std"] == [0.2, 0.2, 0.2]
    assert metadata["class_names"] == [f"class {i}" for i in range(10)] and metadata["license"] == "test only"
    model = zoo.create_model(NAME, pretrained=True, progress=False).eval()  # the same served file, in-process
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert (run_onnx(out, x) - expected).abs().max() <= 1e-4 * expected.abs().max()

    text = forkserver.run([sys.executable, "-m", "iabn_zoo", "export", NAME, "--out", str(out.with_suffix(".pt2")),
                           "--image-size", "64", "--precision", "bf16", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert f"path: {out.with_suffix('.pt2')}" in text.stdout and "max_difference:" in text.stdout
    assert "MiB" in text.stdout and "Warning" not in text.stdout + text.stderr
    bad = forkserver.run([sys.executable, "-m", "iabn_zoo", "export", NAME, "--out", str(tmp_path / "x.tflite")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "suffix" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def trained_run(module_tmp):
    """resnet18 (InPlace-ABN) fine-tuned for real on three colour classes: a RUN directory and its data."""
    base = module_tmp("run")
    data = write_colour_dataset(base / "data", train=16, val=8)
    finetune("resnet18", data, base / "run", epochs=2, batch_size=8, image_size=16, augment="light",
             optimizer="adamw", lr=1e-3, num_workers=0, progress=False)
    return base / "run", data / "val"


def test_a_run_exports_and_classifies_as_the_eager_network(trained_run, tmp_path, capsys):
    run, val = trained_run
    out = tmp_path / "run.pt2"
    assert cli.main(["export", str(run), "--out", str(out), "--json"]) == 0  # at the run's own size, 16 px
    summary = json.loads(capsys.readouterr().out)
    assert summary["metadata"] == str(out) + ".json" and summary["max_difference"] <= 1e-4
    assert summary["input_size"] == "16x16" and summary["check_shape"][2:] == [16, 16]
    beside = json.loads(Path(summary["metadata"]).read_text())
    assert beside["input_size"] == [3, 16, 16]
    assert beside["class_names"] == ["blue", "green", "red"] and beside["run"] == run.name  # no local path
    assert beside["weights"] is None and len(beside["source_md5"]) == 32

    onnx_file = zoo.export(run, tmp_path / "run.onnx")
    eager = evaluate(run, val, num_workers=0, device="cpu")
    bf16 = evaluate(run, val, num_workers=0, device="cpu", precision="bf16")
    dataset = evaluation_set(load_classifier(run), val)
    in_onnxruntime = evaluate_model(OnnxModule(onnx_file), dataset)
    assert eager["images"] == in_onnxruntime["images"] == bf16["images"] == 24
    assert in_onnxruntime["top1"] == eager["top1"] and abs(bf16["top1"] - eager["top1"]) <= 0.5
    x = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))[0]
    with torch.no_grad():
        expected = zoo.load_run(run)(x)
    assert (run_exported_program(out, x) - expected).abs().max() <= 1e-4 * expected.abs().max()
