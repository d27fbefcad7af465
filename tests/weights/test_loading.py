"""Pretrained models end to end: authors' files served from a real loopback server, registered, downloaded, loaded."""

import copy
import hashlib

import pytest
import torch
from support.authors_checkpoints import publish, to_2017_layout, write_imagenet_checkpoint, write_malicious_checkpoint
from support.numerics import assert_as_close_as_standard
from support.small_networks import trained_like

import iabn_zoo as zoo
from iabn_zoo.errors import CheckpointError
from iabn_zoo.layers import ABN, InPlaceABN
from iabn_zoo.weights.cache import checkpoint_path, converted_path
from iabn_zoo.weights.catalog import unregister_weights
from iabn_zoo.weights.loading import load_pretrained

NAME = "test_resnet18_ipabn"


@pytest.fixture
def registered():
    """Names registered during a test; unregistered afterwards so no other test sees them."""
    names = []
    yield names
    for name in names:
        unregister_weights(name)


def serve(server, registered, tmp_path, state, *, name=NAME, bn_mode="inplace", writer=write_imagenet_checkpoint):
    path = writer(tmp_path / f"{name}.pth.tar", state)
    registered.append(name)
    return publish(server, path, name, "resnet18", arch_kwargs={"bn_mode": bn_mode, "activation": "leaky_relu",
                                                                 "activation_param": 0.01}, num_classes=10)


def outputs(model, seed=1, dtype=torch.float32):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32).to(dtype))


def file_md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_pretrained_reproduces_a_model_loaded_directly(loopback_server, registered, tmp_path):
    source = trained_like()
    weights = serve(loopback_server, registered, tmp_path, source.state_dict())
    raw = torch.load(tmp_path / f"{NAME}.pth.tar", weights_only=True)["state_dict"]  # the authors' way
    direct = zoo.create_model("resnet18", num_classes=10)
    direct.load_state_dict({key.removeprefix("module."): value for key, value in raw.items()})
    model = zoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(outputs(model), outputs(direct))
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(p.requires_grad for p in model.parameters())
    assert loopback_server.hits(f"/files/{NAME}/{NAME}.pth.tar") >= 1
    assert checkpoint_path(weights).is_file() and converted_path(weights).is_file()


def test_second_load_comes_from_safetensors_without_network(loopback_server, registered, tmp_path, monkeypatch):
    from safetensors import safe_open

    source = trained_like()
    weights = serve(loopback_server, registered, tmp_path, source.state_dict())
    first = zoo.create_model(NAME, pretrained=True, progress=False)
    requests_after_first = len(loopback_server.requests)
    with safe_open(converted_path(weights), framework="pt") as handle:
        assert handle.metadata()["md5"] == weights.md5
        assert handle.metadata()["source"] == checkpoint_path(weights).name

    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    checkpoint_path(weights).unlink()  # only the safetensors copy can serve the second load
    copy_md5 = file_md5(converted_path(weights))
    second = zoo.create_model(NAME, pretrained=True, progress=False)
    assert len(loopback_server.requests) == requests_after_first
    assert torch.equal(outputs(second), outputs(first))

    # The memory-mapped tensors are the model's own: training them leaves the cached copy untouched.
    optimizer = torch.optim.SGD(second.parameters(), lr=0.5)
    second.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert file_md5(converted_path(weights)) == copy_md5
    assert not torch.equal(outputs(second), outputs(first))


def test_load_state_dict_by_name_gives_normalised_tensors(loopback_server, registered, tmp_path):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, source.state_dict())
    for _ in range(2):  # downloaded and converted, then from the safetensors copy
        tensors = zoo.load_state_dict(NAME)
        assert sorted(tensors) == sorted(source.state_dict())
        assert all(torch.equal(tensors[k], v) for k, v in source.state_dict().items())


def test_other_num_classes_keeps_the_backbone(loopback_server, registered, tmp_path):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, source.state_dict())
    model = zoo.create_model(NAME, pretrained=True, num_classes=3, progress=False).eval()
    assert model.get_classifier().out_features == 3
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))
        assert model(x).shape == (1, 3)


def test_features_only_and_user_built_models_load(loopback_server, registered, tmp_path):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, source.state_dict())
    stages = zoo.create_model(NAME, pretrained=True, features_only=True, progress=False).eval()
    user_model = load_pretrained(zoo.create_model("resnet18", num_classes=10), NAME, progress=False)
    direct = zoo.create_model("resnet18", features_only=True)
    direct.load_state_dict({k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(stages(x), direct.eval()(x)))
    assert torch.equal(outputs(user_model), outputs(source))


def test_standard_bn_checkpoint_loads_into_standard_layers(loopback_server, registered, tmp_path):
    source = trained_like(bn_mode="standard")
    serve(loopback_server, registered, tmp_path, source.state_dict(), bn_mode="standard")
    model = zoo.create_model(NAME, pretrained=True, progress=False)
    norms = [m for m in model.modules() if isinstance(m, ABN)]
    assert norms and all(type(m) is ABN for m in norms)
    assert torch.equal(outputs(model), outputs(source))


def test_sync_checkpoint_loads_into_inplace_layers(loopback_server, registered, tmp_path):
    source = trained_like(bn_mode="inplace")
    serve(loopback_server, registered, tmp_path, source.state_dict(), bn_mode="sync")
    model = zoo.create_model(NAME, pretrained=True, progress=False)
    norms = [m for m in model.modules() if isinstance(m, ABN)]
    assert norms and all(type(m) is InPlaceABN for m in norms)
    assert torch.equal(outputs(model), outputs(source))


def test_bn_mode_override_converts_exactly(loopback_server, registered, tmp_path):
    source = trained_like(bn_mode="inplace")
    serve(loopback_server, registered, tmp_path, source.state_dict())
    model = zoo.create_model(NAME, pretrained=True, bn_mode="standard", progress=False)
    assert all(type(m) is ABN for m in model.modules() if isinstance(m, ABN))
    ours, theirs = dict(model.named_modules()), dict(source.named_modules())
    for name in (name for name, m in theirs.items() if isinstance(m, InPlaceABN)):  # w' = |w| + eps, in float32
        assert torch.equal(ours[name].weight, theirs[name].weight.abs() + theirs[name].eps), f"{name}.weight"
    # converted at load time in the checkpoint's float32: judged against the float64 source network, with the
    # float32 source network's own distance from it as the floor
    reference = outputs(copy.deepcopy(source).double(), dtype=torch.float64)
    assert_as_close_as_standard(outputs(model), outputs(source), reference, "float32 logits of the converted model")


def test_2017_layout_file_loads(loopback_server, registered, tmp_path):
    source = trained_like()
    serve(loopback_server, registered, tmp_path, to_2017_layout(source.state_dict()))
    model = zoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(outputs(model), outputs(source))


def test_mismatched_keys_are_all_listed(loopback_server, registered, tmp_path):
    state = trained_like().state_dict()
    missing = sorted(k for k in state if k.endswith("conv1.weight"))[-1]
    reshaped = sorted(k for k in state if k.endswith("conv2.weight"))[0]
    del state[missing]
    state[reshaped] = torch.zeros(3, 3, 1, 1)
    state["mod9.extra.weight"] = torch.zeros(2)
    serve(loopback_server, registered, tmp_path, state)
    with pytest.raises(CheckpointError) as error:
        zoo.create_model(NAME, pretrained=True, progress=False)
    message = str(error.value)
    for text in (missing, reshaped, "mod9.extra.weight", "1 missing key", "1 unexpected key", "1 mis-shaped key",
                 "(3, 3, 1, 1)"):
        assert text in message


def test_malicious_published_file_is_refused(loopback_server, registered, tmp_path):
    marker = tmp_path / "marker"
    weights = serve(loopback_server, registered, tmp_path, trained_like().state_dict(),
                    writer=lambda path, state: write_malicious_checkpoint(path, marker, state))
    with pytest.raises(CheckpointError, match="refused"):
        zoo.create_model(NAME, pretrained=True, progress=False)
    assert not marker.exists()
    assert not converted_path(weights).exists()


def test_truncated_published_file_gives_checkpoint_error(loopback_server, registered, tmp_path):
    def truncated(path, state):
        full = write_imagenet_checkpoint(path, state)
        full.write_bytes(full.read_bytes()[:1000])
        return full

    weights = serve(loopback_server, registered, tmp_path, trained_like().state_dict(), writer=truncated)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        zoo.create_model(NAME, pretrained=True, progress=False)
    assert not converted_path(weights).exists()


def test_stale_safetensors_copy_is_rebuilt(loopback_server, registered, tmp_path):
    from safetensors.torch import save_file

    source = trained_like()
    weights = serve(loopback_server, registered, tmp_path, source.state_dict())
    stale = {key: torch.zeros_like(value) for key, value in source.state_dict().items()}
    converted_path(weights).parent.mkdir(parents=True)
    save_file(stale, converted_path(weights), metadata={"format": "iabn-zoo-state-dict/1", "md5": "0" * 32})
    model = zoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(outputs(model), outputs(source))
    assert loopback_server.hits(f"/files/{NAME}/{NAME}.pth.tar") >= 1
