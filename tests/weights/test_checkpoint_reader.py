"""Reading checkpoints: the authors' layouts normalised to our keys, unsafe or damaged files refused, safetensors copy."""

import sys

import pytest
import torch
from support import forkserver
from support.authors_checkpoints import (
    to_2017_layout,
    with_module_prefix,
    without_num_batches_tracked,
    write_imagenet_checkpoint,
    write_malicious_checkpoint,
    write_vistas_checkpoint,
)

import iabn_zoo as zoo
from iabn_zoo.errors import CheckpointError, UnknownNameError
from iabn_zoo.weights.checkpoint_reader import read_checkpoint
from iabn_zoo.weights.loading import check_keys, read_converted, write_converted


@pytest.fixture(scope="module")
def resnet_state():
    """A small real network's tensors, with non-trivial BN statistics and counters."""
    torch.manual_seed(0)
    model = zoo.create_model("resnet18", num_classes=7)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
        elif key.endswith("num_batches_tracked"):
            value.fill_(1234)
    return {key: value.clone() for key, value in state.items()}


def assert_same_tensors(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_authors_imagenet_file_reads_back_to_model_keys(tmp_path, resnet_state, legacy):
    path = write_imagenet_checkpoint(tmp_path / "ckpt.pth.tar", resnet_state, legacy=legacy)
    with open(path, "rb") as handle:
        assert (handle.read(2) == b"PK") is not legacy  # really the serialization we meant
    assert_same_tensors(zoo.load_state_dict(path), resnet_state)
    assert_same_tensors(zoo.load_state_dict(str(path)), resnet_state)


def test_missing_num_batches_tracked_is_filled_with_zero(tmp_path, resnet_state):
    path = write_imagenet_checkpoint(tmp_path / "old.pth.tar", without_num_batches_tracked(resnet_state))
    loaded = read_checkpoint(path)
    assert sorted(loaded) == sorted(resnet_state)
    counters = [key for key in loaded if key.endswith("num_batches_tracked")]
    assert counters and all(loaded[key].dtype == torch.long and loaded[key].item() == 0 for key in counters)


def test_2017_wrapped_bn_layout_is_remapped(tmp_path, resnet_state):
    legacy_state = to_2017_layout(resnet_state)
    assert any(".bn1.bn.weight" in key for key in legacy_state)
    loaded = read_checkpoint(write_imagenet_checkpoint(tmp_path / "2017.pth.tar", legacy_state))
    expected = {key: value for key, value in resnet_state.items() if not key.endswith("num_batches_tracked")}
    assert sorted(loaded) == sorted(resnet_state)
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_current_layout_with_a_module_named_bn_is_left_alone(tmp_path):
    # DenseNet's `convs1.0.bn` is a real module name; `bn_out` shows the file is not the 2017 layout.
    state = {name: torch.rand(4) for name in
             ("convs1.0.bn.weight", "convs1.0.bn.bias", "convs1.0.bn.running_mean", "convs1.0.bn.running_var",
              "bn_out.weight", "bn_out.bias", "bn_out.running_mean", "bn_out.running_var")}
    loaded = read_checkpoint(write_imagenet_checkpoint(tmp_path / "dense.pth.tar", state))
    assert "convs1.0.bn.weight" in loaded and "convs1.0.weight" not in loaded


def test_vistas_dict_flattens_to_the_segmentation_architecture_keys(tmp_path):
    with torch.device("meta"):
        model = zoo.create_model("wider_resnet38_a2_deeplab3")
    expected = model.state_dict()
    # Real tensors of the right shapes without 500 MB: one stored element, broadcast (saved as stride-0 views).
    cheap = {key: torch.full((), 0.5, dtype=value.dtype).expand(value.shape) for key, value in expected.items()}
    path = write_vistas_checkpoint(tmp_path / "vistas.pth", without_num_batches_tracked(cheap))
    raw = torch.load(path, weights_only=True)
    assert sorted(raw["state_dict"]) == ["body", "cls", "head"]
    loaded = read_checkpoint(path)
    check_keys(expected, loaded, source=str(path))  # raises on any missing, unexpected or mis-shaped key
    assert sorted(loaded) == sorted(expected)


def test_nested_module_prefixes_are_stripped(tmp_path, resnet_state):
    doubly_wrapped = with_module_prefix(with_module_prefix(resnet_state))
    torch.save({"state_dict": doubly_wrapped}, tmp_path / "wrapped.pth")
    assert_same_tensors(read_checkpoint(tmp_path / "wrapped.pth"), resnet_state)


def test_bare_state_dict_file_is_accepted(tmp_path, resnet_state):
    torch.save(resnet_state, tmp_path / "bare.pth")
    assert_same_tensors(read_checkpoint(tmp_path / "bare.pth"), resnet_state)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, resnet_state, legacy):
    marker = tmp_path / "marker"
    path = write_malicious_checkpoint(tmp_path / "evil.pth.tar", marker, resnet_state, legacy=legacy)
    with pytest.raises(CheckpointError, match="refused") as error:
        zoo.load_state_dict(path)
    assert "exec" in str(error.value)
    assert not marker.exists()


def test_malicious_fixture_really_runs_code_when_unpickled_unsafely(tmp_path):
    # The control for the test above: an unsafe torch.load (in a child process) does create the marker.
    marker = tmp_path / "marker"
    path = write_malicious_checkpoint(tmp_path / "evil.pth.tar", marker)
    forkserver.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   check=True, capture_output=True, timeout=120)
    assert marker.read_text() == "unpickled"


@pytest.mark.parametrize("damage", ["truncated_legacy", "truncated_zip", "random", "empty", "text"])
def test_damaged_files_give_checkpoint_error(tmp_path, resnet_state, damage):
    kind, _, serialization = damage.partition("_")
    if kind == "truncated":
        good = write_imagenet_checkpoint(tmp_path / "good.pth", resnet_state, legacy=serialization == "legacy")
        data = good.read_bytes()[: good.stat().st_size // 2]
    else:
        data = {"random": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                        dtype=torch.uint8).numpy().tobytes(),
                "empty": b"", "text": b"<html><body>Quota exceeded</body></html>"}[kind]
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content", [[1, 2, 3], {"state_dict": {"conv.weight": "not a tensor"}}, {}],
                         ids=["list", "non-tensor", "empty-dict"])
def test_files_without_a_state_dict_give_checkpoint_error(tmp_path, content):
    torch.save(content, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "odd.pth")


def test_unknown_name_suggests_close_weights_names():
    with pytest.raises(UnknownNameError) as error:
        zoo.load_state_dict("resnext101_ipabn_lr_51")
    assert isinstance(error.value, KeyError)
    assert "resnext101_ipabn_lr_512" in str(error.value)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="is not a file"):
        zoo.load_state_dict(tmp_path / "nowhere.pth.tar")
    with pytest.raises(CheckpointError, match="is not a file"):
        zoo.load_state_dict("downloads/model.pth")


def test_safetensors_copy_roundtrip_and_validation(tmp_path, resnet_state):
    target = tmp_path / "cache" / "model.safetensors"
    assert write_converted(resnet_state, target, source="model.pth.tar", md5="a" * 32)
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]  # no temporary left behind
    assert_same_tensors(read_converted(target, md5="a" * 32), resnet_state)
    assert read_converted(target, md5="b" * 32) is None  # made from another file: not used
    assert_same_tensors(zoo.load_state_dict(target), resnet_state)
    target.write_bytes(target.read_bytes()[:100])
    assert read_converted(target, md5="a" * 32) is None  # damaged: rebuilt by the caller
    with pytest.raises(CheckpointError):
        read_checkpoint(target)


def test_safetensors_copy_of_shared_views(tmp_path):
    base = torch.arange(8.0)
    views = {"a.weight": base[:4], "b.weight": base[4:], "c.weight": base}
    target = tmp_path / "views.safetensors"
    assert write_converted(views, target, source="x", md5="c" * 32)
    assert_same_tensors(read_converted(target, md5="c" * 32), {k: v.clone() for k, v in views.items()})
