"""One device check for every command and library entry point (issue 15, defect 1), and sizes that cannot fit
refused before any work with the memory they would need (defect 3), in real processes and from Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.cli import registry_file, run_cli
from support.image_folders import write_colour_dataset
from support.segmentation_fixtures import served_tiny_vistas

from iabn_zoo.errors import InvalidArgumentError, ResourceLimitError
from iabn_zoo.tasks.evaluate import evaluate
from iabn_zoo.tasks.segment import SegmentationPredictor
from iabn_zoo.train.finetune import finetune
from iabn_zoo.train.memory import compare_modes

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
FAST = ["--epochs", "1", "--batch-size", "4", "--image-size", "16", "--augment", "none", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data(module_tmp):
    folder = module_tmp("device_data")
    write_colour_dataset(folder / "data", train=4, val=2, size=16)
    Image.new("RGB", (20, 16), (200, 30, 30)).save(folder / "photo.png")
    return folder


@pytest.mark.parametrize("command, device, message", [
    pytest.param("finetune", "cuda", "--device 'cuda': no CUDA device is available here; use --device cpu",
                 marks=NO_CUDA),
    ("finetune", "tpu", "--device 'tpu' is not a device torch knows; this machine can use: auto, cpu"),
    pytest.param("evaluate", "cuda", "--device 'cuda': no CUDA device is available here; use --device cpu",
                 marks=NO_CUDA),
    ("evaluate", "tpu", "--device 'tpu' is not a device torch knows"),
    ("predict", "meta", "--device 'meta' cannot run the networks"),
    ("segment", "xla", "--device 'xla' cannot run the networks"),
    ("memory", "cuda:99", "--device 'cuda:99'"),
])
def test_every_command_checks_the_device_before_any_work(data, tmp_path, command, device, message):
    argv = {"finetune": ["finetune", "resnet18", data / "data", "--out", tmp_path / "run", *FAST],
            "evaluate": ["evaluate", "resnet18", data / "data"],
            "predict": ["predict", "resnet18", data / "photo.png"],
            "segment": ["segment", data / "photo.png", "--out", tmp_path / "out"],
            "memory": ["memory", "resnet18", "--batch-size", "2", "--image-size", "32"]}[command]
    done = run_cli(*argv, "--device", device)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


UNUSABLE = ["tpu", "meta", "xla", "mkldnn", "cuda:99", "cpu:1", "", "CUDA"] + \
    (["cuda"] if not torch.cuda.is_available() else []) + (["mps"] if not torch.backends.mps.is_available() else [])


@pytest.mark.parametrize("device", UNUSABLE)
def test_library_entry_points_check_the_device_and_name_the_python_parameter(data, tmp_path, device):
    calls = [lambda: finetune("resnet18", data / "data", tmp_path / "run", device=device, epochs=1),
             lambda: evaluate("resnet18", data / "data", device=device),
             lambda: SegmentationPredictor.from_weights(device=device),
             lambda: compare_modes("resnet18", batch=2, size=32, device=device)]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as error:
            call()
        assert str(error.value).startswith(f"device {device!r}"), error.value
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_weights_env(module_tmp):
    folder = module_tmp("tiny_sizes")
    with served_tiny_vistas(folder, name="tiny_vistas_for_sizes") as weights:
        yield weights, {"IABN_ZOO_REGISTRY": str(registry_file(folder, weights)), "IABN_ZOO_HOME": str(folder / "home")}


def test_sizes_that_cannot_fit_are_refused_before_any_work(data, tmp_path, tiny_weights_env):
    weights, env = tiny_weights_env
    cases = [
        (["finetune", "resnet18", data / "data", "--out", tmp_path / "run", "--image-size", "100000"],
         "a training step of resnet18 at 100000 px with a batch of 32 needs at least", "--image-size or --batch-size"),
        (["finetune", "resnet18", data / "data", "--out", tmp_path / "run", "--image-size", "4000", "--batch-size",
          "4096"], "at 4000 px with a batch of 4096 needs at least", "--image-size or --batch-size"),
        (["evaluate", "resnet18", data / "data", "--crop", "100000"], "crop(s) of 100000 px",
         "--image-size, --scale or --batch-size"),
        (["segment", data / "photo.png", "--out", tmp_path / "out", "--weights", weights.name, "--long-side",
          "100000"], "segmenting a 100000x80000 px working image", "--long-side or --scales"),
        (["memory", "resnet18", "--size", "100000"], "needs at least", "--image-size or --batch-size"),
    ]
    for argv, what, lower in cases:
        done = run_cli(*argv, env=env, plugins=True)
        assert done.returncode == 10, (argv, done.stderr)
        assert what in done.stderr and f"lower {lower}" in done.stderr and "this machine has" in done.stderr
        assert re.search(r"needs at least [\d.]+ [KMGT]iB of memory", done.stderr), done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
    assert not (Path(env["IABN_ZOO_HOME"]) / "checkpoints" / weights.file_name).exists()  # nor downloaded


def test_from_python_the_size_error_names_python_parameters(data, tmp_path):
    with pytest.raises(ResourceLimitError, match="lower image_size or batch_size"):
        finetune("resnet18", data / "data", tmp_path / "run", image_size=100000)
    assert not (tmp_path / "run").exists()
