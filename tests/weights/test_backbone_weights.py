"""backbone_weights of deeplabv3_<backbone>: registered classification weights served over loopback, runs of ours,
none and the default; segmentation runs and registered segmentation weights as models."""

import warnings

import pytest
import torch
from support.authors_checkpoints import publish, write_imagenet_checkpoint
from support.run_dirs import write_run_dir
from support.segmentation_fixtures import TINY_WEIGHTS, served_tiny_vistas
from support.small_networks import trained_like

import iabn_zoo as zoo
from iabn_zoo.errors import CheckpointError, InvalidArgumentError
from iabn_zoo import factory
from iabn_zoo.factory import build_run_model, count_parameters, load_run
from iabn_zoo.layers import ABN, convert_norm
from iabn_zoo.system.tensor_files import write_safetensors
from iabn_zoo.weights.catalog import unregister_weights
from iabn_zoo.weights.run_reader import MODEL_FILE, read_run

NAME = "test_resnet18_backbone"


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        unregister_weights(name)


def serve(server, registered, tmp_path, model, *, name=NAME, arch="resnet18", bn_mode="inplace"):
    path = write_imagenet_checkpoint(tmp_path / f"{name}.pth.tar", model.state_dict())
    registered.append(name)
    return publish(server, path, name, arch, arch_kwargs={"bn_mode": bn_mode, "activation": "leaky_relu",
                                                          "activation_param": 0.01}, num_classes=10)


def downloads(server, name=NAME):
    return server.hits(f"/files/{name}/{name}.pth.tar")


def assert_body_is(model, classifier):
    """Every backbone tensor equals the classifier network's (exactly), the classifier's own excepted."""
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    body = model.body.state_dict()
    assert body.keys() == expected.keys()
    different = [key for key in body if not torch.equal(body[key], expected[key])]
    assert not different, f"{len(different)} backbone tensors differ from the source, first {different[:3]}"


@pytest.mark.parametrize("how", ["weights name", "architecture name", "default"])
def test_backbone_from_registered_weights_equals_the_classifier(loopback_server, registered, tmp_path, how):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, source)
    chosen = {"weights name": {"backbone_weights": NAME}, "architecture name": {"backbone_weights": "resnet18"},
              "default": {}}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # published weights exist: no notice
        model = zoo.create_model("deeplabv3_resnet18", num_classes=4, output_stride=16, progress=False, **chosen)
    assert_body_is(model, source)
    assert model.cls.out_channels == 4 and downloads(loopback_server) == 1
    logits = model.eval()(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 4, 2, 2)


def test_default_without_published_weights_is_random_with_a_warning(loopback_server):
    with pytest.warns(UserWarning, match="resnet18 has no published weights") as caught:
        model = zoo.create_model("deeplabv3_resnet18", num_classes=3)
    assert len(caught) == 1 and isinstance(model, zoo.models.ZooModule)


@pytest.mark.parametrize("value", [None, "none"])
def test_none_downloads_nothing_and_is_random(loopback_server, registered, tmp_path, value):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = zoo.create_model("deeplabv3_resnet18", num_classes=3, backbone_weights=value)
    assert downloads(loopback_server) == 0
    assert not torch.equal(model.body.mod2.block1.convs.conv1.weight, source.mod2.block1.convs.conv1.weight)


def test_counting_parameters_downloads_nothing(loopback_server, registered, tmp_path):
    serve(loopback_server, registered, tmp_path, trained_like())
    counted = count_parameters("deeplabv3_resnet18")
    built = sum(p.numel() for p in zoo.create_model("deeplabv3_resnet18", backbone_weights=None).parameters())
    assert counted == built and downloads(loopback_server) == 0


def test_standard_bn_checkpoint_into_inplace_layers_follows_convert_norm(loopback_server, registered, tmp_path):
    source = trained_like(bn_mode="standard")
    serve(loopback_server, registered, tmp_path, source, bn_mode="standard")
    model = zoo.create_model("deeplabv3_resnet18", num_classes=3, backbone_weights=NAME, progress=False)
    assert {m.bn_mode for m in model.modules() if isinstance(m, ABN)} == {"inplace"}
    assert_body_is(model, convert_norm(trained_like(bn_mode="standard"), "inplace"))
    standard = zoo.create_model("deeplabv3_resnet18", num_classes=3, backbone_weights=NAME, bn_mode="standard")
    assert_body_is(standard, source)


@pytest.mark.parametrize("task", [None, "classification"])
def test_backbone_from_a_classification_run_whatever_its_classes(tmp_path, task):
    source = trained_like(num_classes=3, seed=4)
    run = write_run_dir(tmp_path / "run", source, arch="resnet18", classes=["a", "b", "c"], task=task)
    assert read_run(run).task == "classification"
    model = zoo.create_model("deeplabv3_resnet18", num_classes=6, backbone_weights=run)
    assert_body_is(model, source)
    assert zoo.create_model("deeplabv3_resnet18", num_classes=6, backbone_weights=str(run)).cls.out_channels == 6


def segmentation_run(tmp_path, *, output_stride=16):
    torch.manual_seed(3)
    network = zoo.create_model("deeplabv3_resnet18", num_classes=4, backbone_weights=None,
                               output_stride=output_stride, head_channels=16)
    kwargs = {"output_stride": output_stride, "head_channels": 16}
    return write_run_dir(tmp_path / "segrun", network, arch="deeplabv3_resnet18", classes=["bg", "a", "b", "c"],
                         arch_kwargs=kwargs, task="segmentation"), network


@pytest.mark.parametrize("bad,match", [
    ("resnet1800", "neither weights of resnet18 nor a run directory"),
    ("resnet34", "neither weights of resnet18"),
    ("wider_resnet38_deeplab3_vistas", "segmentation weights of wider_resnet38_a2_deeplab3"),
    ("resnext101_ipabn_lr_512", "classification weights of resnext101"),
    (3, "must be a weights name"),
])
def test_bad_backbone_weights_are_typed_errors(bad, match):
    with pytest.raises(InvalidArgumentError, match=match):
        zoo.create_model("deeplabv3_resnet18", backbone_weights=bad)


def test_bad_runs_as_backbones_are_typed_errors(tmp_path):
    seg, _ = segmentation_run(tmp_path)
    with pytest.raises(InvalidArgumentError, match="is a segmentation run of deeplabv3_resnet18"):
        zoo.create_model("deeplabv3_resnet18", backbone_weights=seg)
    other = write_run_dir(tmp_path / "r34", trained_like("resnet34", num_classes=2), arch="resnet34",
                          classes=["a", "b"])
    with pytest.raises(InvalidArgumentError, match="classification run of resnet34; this network's backbone is"):
        zoo.create_model("deeplabv3_resnet18", backbone_weights=other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="not a run directory"):
        zoo.create_model("deeplabv3_resnet18", backbone_weights=tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="does not apply to resnet18"):
        zoo.create_model("resnet18", backbone_weights=other)


def test_a_run_missing_backbone_tensors_is_a_checkpoint_error_naming_them(tmp_path):
    source = trained_like(num_classes=2)
    run = write_run_dir(tmp_path / "run", source, arch="resnet18", classes=["a", "b"])
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("mod5.block2.")}
    write_safetensors(run / MODEL_FILE, state)
    with pytest.raises(CheckpointError, match="missing keys?: mod5.block2"):
        zoo.create_model("deeplabv3_resnet18", backbone_weights=run)


def test_a_segmentation_run_is_a_model_rebuilt_without_backbone_weights(loopback_server, registered, tmp_path):
    serve(loopback_server, registered, tmp_path, trained_like())  # published resnet18 weights exist
    run, network = segmentation_run(tmp_path)
    info = read_run(run)
    assert info.task == "segmentation" and info.arch_kwargs["output_stride"] == 16
    loaded = load_run(run)
    again = zoo.create_model(run, pretrained=True)
    fresh = build_run_model(info)
    assert downloads(loopback_server) == 0, "a run's weights replace the backbone's: nothing to fetch"
    for model in (loaded, again):
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    assert loaded.classes == ["bg", "a", "b", "c"] and fresh.feature_info[-1].stride == 16
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), network.eval()(x)) and loaded(x).shape == (1, 4, 3, 3)
    assert zoo.create_model(run, pretrained=True, num_classes=2).cls.out_channels == 2
    with pytest.raises(InvalidArgumentError, match="does not apply"):
        zoo.create_model(run, pretrained=True, backbone_weights=NAME)


def test_registered_segmentation_weights_fine_tune_onto_new_classes(tmp_path):
    with served_tiny_vistas(tmp_path) as weights:
        published = zoo.create_model(TINY_WEIGHTS, pretrained=True, progress=False)
        model = zoo.create_model(TINY_WEIGHTS, pretrained=True, num_classes=5, progress=False)
    assert weights.task == "segmentation" and model.cls.out_channels == 5 and model.num_classes == 5
    kept = {k: v for k, v in published.state_dict().items() if not k.startswith("cls.")}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in kept.items()), "body and head keep the published weights"
    assert model.cls.weight.shape == (5, published.cls.in_channels, 1, 1)


def test_export_of_a_deeplabv3_network_and_of_a_segmentation_run(tmp_path):
    onnx_file = zoo.export("deeplabv3_resnet18", tmp_path / "net.onnx", image_size=64, pretrained=False,
                           progress=False)
    assert onnx_file.is_file()
    run, _ = segmentation_run(tmp_path, output_stride=8)
    program = zoo.export(run, tmp_path / "run.pt2", image_size=64, dynamic_size=True, progress=False)
    assert program.is_file()


def test_backbone_options_are_what_a_run_records_to_rebuild_without_weights(loopback_server, registered, tmp_path):
    serve(loopback_server, registered, tmp_path, trained_like())
    options = factory.backbone_options("deeplabv3_resnet18", NAME)
    assert options == {"activation": "leaky_relu", "activation_param": 0.01, "backbone_kwargs": {}}
    assert factory.backbone_options("deeplabv3_resnet18", "none") == {} == factory.backbone_options("resnet18")
    assert downloads(loopback_server) == 0


def test_pretrained_deeplabv3_architecture_without_segmentation_weights_says_what_loads():
    with pytest.raises(InvalidArgumentError, match="no published segmentation weights; without pretrained=True"):
        zoo.create_model("deeplabv3_resnet18", pretrained=True)


def test_a_published_segmentation_run_is_registered_as_segmentation_weights(tmp_path):
    run, network = segmentation_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "val_miou": 41.5, '
                                       '"val_pixel_accuracy": 80.25}\n')
    weights = zoo.run_weights(run, name="test_seg_run", url="http://127.0.0.1:1/seg.safetensors")
    assert weights.task == "segmentation" and weights.metrics == {"miou": 41.5, "pixel_accuracy": 80.25}
    assert weights.arch == "deeplabv3_resnet18" and weights.arch_kwargs["output_stride"] == 16
