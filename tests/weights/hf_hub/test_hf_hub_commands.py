"""`hf-hub:ORG/NAME` as a MODEL everywhere one is taken: create_model (pretrained, num_classes, bn_mode), torch.hub,
backbone_weights, SegmentationPredictor, and the commands info, predict, evaluate, segment --weights, export, memory
and finetune; each gives what the same command gives for the local RUN the repository was pushed from."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

import iabn_zoo as zoo
import iabn_zoo.cli as cli
from iabn_zoo.factory import load_run
from iabn_zoo.layers import InPlaceABN

CHECKOUT = Path(__file__).resolve().parents[3]


def run_json(capsys, *argv) -> object:
    assert cli.main([*map(str, argv), "--json", "--no-progress"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def scores_of(capsys, model, data) -> dict:
    """What `evaluate MODEL DATA --json` measures (the model's own name left out)."""
    return {key: value for key, value in run_json(capsys, "evaluate", model, data).items() if key != "model"}


def same_tensors(model: torch.nn.Module, reference: torch.nn.Module, prefix: str = "") -> None:
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[prefix + key]), f"{key} differs"


def test_create_model_pretrained_num_classes_and_bn_mode_mean_what_they_mean(runs, pushed):
    name = f"hf-hub:{pushed['classification']}"
    local = load_run(runs["classification"])
    same_tensors(zoo.create_model(name), local)  # a repository means its weights, as a RUN does
    fresh = zoo.create_model(name, pretrained=False)
    assert not torch.equal(fresh.get_classifier().weight, local.get_classifier().weight)
    wider = zoo.create_model(name, pretrained=True, num_classes=5)
    assert wider.get_classifier().out_features == 5
    for key, value in local.state_dict().items():
        assert key.startswith("classifier.") or torch.equal(wider.state_dict()[key], value), key
    standard = zoo.create_model(name, pretrained=True, bn_mode="standard")
    assert not any(isinstance(module, InPlaceABN) for module in standard.modules())
    same_tensors(standard, zoo.convert_norm(local, "standard"))  # the exact conversion, as for the local run


def test_torch_hub_entry_backbone_weights_and_the_segmentation_predictor(runs, pushed):
    repo = pushed["classification"]
    loaded = torch.hub.load(str(CHECKOUT), "hf_hub", repo, source="local", trust_repo=True)
    same_tensors(loaded, load_run(runs["classification"]))
    segmenter = zoo.create_model("deeplabv3_resnet18", backbone_weights=f"hf-hub:{repo}")
    backbone = {k: v for k, v in load_run(runs["classification"]).state_dict().items()
                if not k.startswith("classifier.")}
    for key, value in backbone.items():
        assert torch.equal(segmenter.body.state_dict()[key], value), f"backbone tensor {key} differs"
    predictor = zoo.SegmentationPredictor.from_weights(f"hf-hub:{pushed['segmentation']}", scales=(1.0,))
    reference = zoo.SegmentationPredictor.from_weights(str(runs["segmentation"]), scales=(1.0,))
    image = Image.open(next((runs["scenes"] / "val" / "images").iterdir())).convert("RGB")
    assert torch.equal(predictor.predict(image).classes, reference.predict(image).classes)
    assert predictor.long_side == reference.long_side


def test_info_predict_and_evaluate_take_a_hub_repository(runs, pushed, capsys):
    name = f"hf-hub:{pushed['classification']}"
    zoo.create_model(name)  # its weights in the Hugging Face cache, whichever test of the session ran first
    info = run_json(capsys, "info", name)
    assert info["repo"] == pushed["classification"] and info["arch"] == "resnet18" and info["cached"]
    assert len(info["commit"]) == 40 and info["num_classes"] == 3 and info["parameters"] > 1e6
    images = runs["colours"] / "val"
    assert run_json(capsys, "predict", name, images) == run_json(capsys, "predict", runs["classification"], images)
    assert scores_of(capsys, name, images) == scores_of(capsys, runs["classification"], images)
    segmentation = f"hf-hub:{pushed['segmentation']}"
    scores = scores_of(capsys, segmentation, runs["scenes"])
    assert scores == scores_of(capsys, runs["segmentation"], runs["scenes"])
    assert list(scores["per_class_iou"]) == ["background", "red", "green", "blue"]


def test_segment_writes_what_the_run_writes(runs, pushed, tmp_path, capsys):
    images = runs["scenes"] / "val" / "images"
    for source, out in ((f"hf-hub:{pushed['segmentation']}", "hub"), (runs["segmentation"], "run")):
        run_json(capsys, "segment", images, "--weights", source, "--out", tmp_path / out, "--scales", "1",
                 "--output", "overlay")
    for picture in sorted((tmp_path / "run").iterdir()):
        with Image.open(picture) as expected, Image.open(tmp_path / "hub" / picture.name) as actual:
            assert actual.tobytes() == expected.tobytes(), f"{picture.name} differs"


def test_export_and_memory_take_a_hub_repository(runs, pushed, tmp_path, capsys):
    name = f"hf-hub:{pushed['classification']}"
    summary = run_json(capsys, "export", name, "--out", tmp_path / "net.pt2")
    assert summary["max_difference"] <= 1e-4 and summary["input_size"] == "16x16"
    memory = run_json(capsys, "memory", name, "--batch-size", "2", "--image-size", "32")
    assert memory["arch"] == name and {mode["bn_mode"] for mode in memory["modes"]} >= {"standard", "inplace"}


def test_finetune_starts_from_a_hub_repository(runs, pushed, tmp_path, capsys):
    name = f"hf-hub:{pushed['classification']}"
    assert cli.main(["finetune", name, str(runs["colours"]), "--out", str(tmp_path / "again"), "--epochs", "1",
                     "--batch-size", "6", "--image-size", "16", "--augment", "light", "--num-workers", "0",
                     "--no-progress"]) == 0, capsys.readouterr().err
    described = json.loads((tmp_path / "again" / "config.json").read_text())
    assert described["source_weights"] == name and described["arch"] == "resnet18"
    assert described["config"]["model"] == name
