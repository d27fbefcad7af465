"""Fine-tuning end to end on generated colour classes: accuracy, run files, exact resume, crash safety, bad input."""

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.image_folders import write_colour_dataset
from support.loopback_server import LoopbackServer
from support.numerics import assert_as_close_as_standard

from iabn_zoo import cli
from iabn_zoo.cli.exit_codes import exit_code
from iabn_zoo.data.labels import class_names
from iabn_zoo.errors import DataError, InvalidArgumentError, UnknownNameError
from iabn_zoo.factory import create_model, load_run
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.train.config import FinetuneConfig
from iabn_zoo.train.finetune import finetune
from iabn_zoo.train.optim import lr_factor, parameter_groups
from iabn_zoo.train.run_writer import load_resume_point
from iabn_zoo.weights.catalog import register_weights, unregister_weights
from iabn_zoo.weights.run_reader import read_metrics, read_run, run_weights

FAST = dict(batch_size=6, image_size=16, augment="light", num_workers=0, progress=False)
CHANCE = 100 / 3


class Interrupted(Exception):
    """Stands for a job killed between two epochs."""


@pytest.fixture(scope="module")
def trained(module_tmp):
    """resnet18 (InPlace-ABN) fine-tuned from scratch for three epochs on three colour classes."""
    base = module_tmp("trained")
    data = write_colour_dataset(base / "data", train=24, val=6)
    result = finetune("resnet18", data, base / "run", epochs=3, optimizer="adamw", lr=1e-3,
                      **{**FAST, "batch_size": 8})
    return data, result


def test_fine_tuning_reaches_high_accuracy_within_three_epochs(trained):
    _, result = trained
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    assert result.final["val_top1"] >= 90.0 > 2 * CHANCE
    assert result.final["train_loss"] < result.metrics[0]["train_loss"]


def test_run_directory_holds_metrics_weights_and_configuration(trained):
    data, result = trained
    run = result.run_dir
    lines = read_metrics(run)
    assert lines == json.loads(json.dumps(result.metrics))
    assert {"epoch", "train_loss", "val_top1", "val_top5"} <= set(lines[0])
    assert lines[0]["val_top5"] is None  # three classes: top-5 is omitted
    info = read_run(run)
    assert info.classes == ("blue", "green", "red") and info.bn_mode == "inplace" and info.arch == "resnet18"
    assert info.config["epochs"] == 3 and info.preprocessing["crop"] == 16
    assert load_resume_point(run).epoch == 3
    assert [p.name for p in run.glob("resume-epoch*.safetensors")] == ["resume-epoch0003.safetensors"]


def test_load_run_gives_the_trained_network(trained):
    _, result = trained
    model = load_run(result.run_dir)
    assert model.classes == ["blue", "green", "red"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))


def test_create_model_loads_a_run_directory(trained):
    _, result = trained
    model = create_model(str(result.run_dir), pretrained=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    assert create_model(result.run_dir, pretrained=True, num_classes=5).get_classifier().out_features == 5
    standard = create_model(result.run_dir, pretrained=True, bn_mode="standard").eval()
    with torch.no_grad():  # converted at load time in the run's float32: judged against the float64 network
        reference = copy.deepcopy(model).double()(x.double())
        assert_as_close_as_standard(standard(x), model(x), reference, "float32 logits of the standard-BN model")


def test_a_published_run_registers_and_loads_through_the_download_manager(trained):
    _, result = trained
    with LoopbackServer() as server:
        server.add("/models/colours.safetensors", result.run_dir / "model.safetensors")
        weights = run_weights(result.run_dir, name="colours_resnet18", url=server.url("/models/colours.safetensors"))
        register_weights(weights)
        try:
            model = create_model("colours_resnet18", pretrained=True, progress=False).eval()
        finally:
            unregister_weights("colours_resnet18")
    assert class_names(weights.labels, weights.num_classes) == ["blue", "green", "red"]
    assert weights.metrics["top1"] == pytest.approx(result.final["val_top1"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))


def test_fine_tuning_from_a_weights_name_keeps_the_backbone_and_sizes_the_classifier(trained, tmp_path):
    _, source = trained
    two_colours = {"cyan": (20, 200, 200), "yellow": (220, 220, 20)}
    data = write_colour_dataset(tmp_path / "data", train=3, val=1, size=16, colours=two_colours)
    with LoopbackServer() as server:
        server.add("/colours.safetensors", source.run_dir / "model.safetensors")
        register_weights(run_weights(source.run_dir, name="colours_src", url=server.url("/colours.safetensors")))
        try:
            stages = len(source.model.feature_info)
            result = finetune("colours_src", data, tmp_path / "run", epochs=1, freeze_stages=stages, **FAST)
        finally:
            unregister_weights("colours_src")
    assert result.model.get_classifier().out_features == 2
    assert read_run(result.run_dir).arch == "resnet18"
    before, after = source.model.state_dict(), result.model.state_dict()
    backbone = [k for k in after if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)


def test_evaluate_command_on_the_run_matches_the_last_validation(trained, capsys):
    data, result = trained
    assert cli.main(["evaluate", str(result.run_dir), str(data), "--json", "--num-workers", "0"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 18
    assert scores["top1"] == pytest.approx(result.final["val_top1"])
    assert scores["top5"] is None  # three classes: a top-5 would always be 100 and says nothing
    assert cli.main(["evaluate", str(result.run_dir), str(data / "val"), "--ten-crops", "--json",
                     "--num-workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tmp_path):
    data = write_colour_dataset(tmp_path / "data", train=8, val=2)
    options = dict(FAST, epochs=3, lr=0.02, schedule="step", step_epochs=1, augment="imagenet",
                   clip_grad_norm=5.0, freeze_stages=1)
    whole = finetune("resnet18", data, tmp_path / "whole", **options)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune("resnet18", data, tmp_path / "parts", on_epoch_end=stop_after_first, **options)
    parts = tmp_path / "parts"
    assert load_resume_point(parts).epoch == 1
    # What a write killed half-way leaves behind must not disturb the resume.
    (parts / ".resume.json.999.deadbeef.tmp").write_text('{"epoch": 2, "tens')
    (parts / "resume-epoch0002.safetensors").write_bytes(b"partial")
    resumed = finetune("resnet18", data, parts, resume=True, **options)

    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    final_whole = read_safetensors(whole.run_dir / "model.safetensors")
    final_parts = read_safetensors(parts / "model.safetensors")
    assert final_whole.keys() == final_parts.keys()
    assert all(torch.equal(final_whole[k], final_parts[k]) for k in final_whole)
    assert [r["val_top1"] for r in resumed.metrics] == [r["val_top1"] for r in whole.metrics]
    assert [r["lr"] for r in resumed.metrics] == [r["lr"] for r in whole.metrics]


def test_frozen_stages_keep_their_weights_and_statistics(tmp_path):
    data = write_colour_dataset(tmp_path / "data", train=4, val=1, size=16)
    result = finetune("resnet18", data, tmp_path / "run", epochs=1, freeze_stages=2, **FAST)
    torch.manual_seed(0)
    initial = create_model("resnet18", num_classes=3, bn_mode="inplace").state_dict()
    trained = result.model.state_dict()
    children = [name for name, _ in result.model.named_children()]
    frozen = children[:children.index(result.model.feature_info[1].module) + 1]  # the stem and two stages
    assert len(frozen) >= 2
    for key, value in trained.items():
        if key.split(".")[0] in frozen:
            assert torch.equal(value, initial[key]), key
    later = result.model.feature_info[2].module
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items() if k.startswith(later + "."))


def test_weight_decay_skips_norm_parameters_and_biases_and_classifier_has_its_rate():
    model = create_model("resnet18", num_classes=3)
    cfg = FinetuneConfig("resnet18", "d", "o", lr=0.1, weight_decay=1e-4, classifier_lr_mult=10.0)
    groups = parameter_groups(model, cfg)
    classifier = {id(p) for p in model.get_classifier().parameters()}
    for group in groups:
        for param in group["params"]:
            assert (group["weight_decay"] > 0) == (param.ndim >= 2)
            assert group["lr"] == pytest.approx(1.0 if id(param) in classifier else 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_schedules_start_at_the_base_rate_and_decay_as_documented():
    steps = 10
    cosine = FinetuneConfig("m", "d", "o", epochs=4, schedule="cosine")
    linear = FinetuneConfig("m", "d", "o", epochs=4, schedule="linear")
    step = FinetuneConfig("m", "d", "o", epochs=4, schedule="step", step_epochs=2, gamma=0.5)
    assert lr_factor(cosine, 0, steps) == lr_factor(linear, 0, steps) == lr_factor(step, 0, steps) == 1.0
    assert lr_factor(cosine, 20, steps) == pytest.approx(0.5)
    assert lr_factor(linear, 30, steps) == pytest.approx(0.25)
    assert lr_factor(step, 19, steps) == 1.0 and lr_factor(step, 20, steps) == 0.5
    factors = [lr_factor(cosine, s, steps) for s in range(40)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


@pytest.mark.parametrize("option, value", [
    ("epochs", 0), ("lr", -0.1), ("lr", float("nan")), ("image_size", 4), ("batch_size", 1),
    ("augment", "heavy"), ("optimizer", "adam"), ("schedule", "cyclic"), ("precision", "fp8"),
    ("freeze_stages", -1), ("clip_grad_norm", -1.0), ("on_error", "ignore"), ("bn_mode", "group"),
    ("colour", "red"),
])
def test_out_of_range_options_are_refused_before_anything_is_written(tmp_path, option, value):
    with pytest.raises(InvalidArgumentError, match=option):
        finetune("resnet18", tmp_path / "data", tmp_path / "run", **{option: value})
    assert not (tmp_path / "run").exists()


def test_too_many_frozen_stages_are_refused(tmp_path):
    data = write_colour_dataset(tmp_path / "data", train=2, val=1, size=8)
    with pytest.raises(InvalidArgumentError, match="freeze_stages must be at most"):
        finetune("resnet18", data, tmp_path / "run", freeze_stages=99, **FAST)


def test_unknown_model_is_refused_with_suggestions(tmp_path):
    with pytest.raises(UnknownNameError, match="resnet18"):
        finetune("resnet181", tmp_path, tmp_path / "run")


def make_bad_dataset(root: Path, problem: str) -> Path:
    data = write_colour_dataset(root, train=2, val=1, size=8)
    if problem == "empty":
        for image in data.rglob("*.png"):
            image.unlink()
    elif problem == "one class":
        for split in ("train", "val"):
            for name in ("blue", "green"):
                for image in (data / split / name).iterdir():
                    image.unlink()
                (data / split / name).rmdir()
    elif problem == "mismatch":
        (data / "val" / "green").rename(data / "val" / "grey")
    elif problem == "corrupt":
        (data / "train" / "red" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return data


@pytest.mark.parametrize("problem, message", [
    ("empty", "no images found"), ("one class", "at least 2"), ("mismatch", "grey"), ("corrupt", "000.png"),
])
def test_bad_data_raises_data_error_and_writes_nothing(tmp_path, problem, message):
    data = make_bad_dataset(tmp_path / "data", problem)
    with pytest.raises(DataError, match=message):
        finetune("resnet18", data, tmp_path / "run", **{**FAST, "on_error": "raise"})
    assert not (tmp_path / "run").exists()


def test_existing_run_needs_resume_and_resume_refuses_changed_options(trained):
    data, result = trained
    with pytest.raises(InvalidArgumentError, match="pass resume to continue it"):  # Python names from Python
        finetune("resnet18", data, result.run_dir, epochs=3)
    with pytest.raises(InvalidArgumentError, match="lr"):
        finetune("resnet18", data, result.run_dir, resume=True, lr=0.5)


def test_finetune_command_reports_the_run_and_exits_with_the_data_error_code(tmp_path, capsys):
    data = write_colour_dataset(tmp_path / "data", train=3, val=1, size=8)
    code = cli.main(["finetune", "resnet18", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--batch-size", "4", "--image-size", "16", "--augment", "none", "--num-workers", "0", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and 0 <= summary["val_top1"] <= 100
    Image.new("RGB", (8, 8)).save(data / "train" / "extra.png")  # an image outside any class folder is ignored
    (data / "val" / "red").rename(data / "val" / "pink")
    assert cli.main(["finetune", "resnet18", str(data), "--out", str(tmp_path / "other")]) == exit_code(DataError)
    assert "pink" in capsys.readouterr().err
