"""Our models' state_dicts against the manifests generated from the authors' model code (tests/manifests/*.json).

Each published configuration must give exactly the authors' keys, in order, with their shapes and dtypes, or the
published weights would not load. Extend CONFIGURATIONS with (weights name -> architecture and arguments) to
cover a new manifest.
"""

import json
from pathlib import Path

import pytest
import torch

from iabn_zoo.factory import create_model
from iabn_zoo.weights.catalog import get_weights, is_weights

MANIFEST_DIR = Path(__file__).parent / "manifests"
IMAGENET = {"activation": "leaky_relu", "activation_param": 0.01, "num_classes": 1000}

# weights name -> (architecture, arguments of the published configuration, from scripts/experiments/*.json)
CONFIGURATIONS = {
    "resnext101_stdbn_lr_256": ("resnext101", {"bn_mode": "standard", "input_3x3": True, **IMAGENET}),
    "resnext101_ipabn_lr_512": ("resnext101", {"bn_mode": "inplace", "input_3x3": True, **IMAGENET}),
    "resnext152_ipabn_lr_256": ("resnext152", {"bn_mode": "inplace", "input_3x3": True, **IMAGENET}),
    "wider_resnet38_ipabn_lr_256": ("wider_resnet38", {"bn_mode": "inplace", **IMAGENET}),
    "resnext101_ipabn_sync_lr_256": ("resnext101", {"bn_mode": "sync", "input_3x3": True, **IMAGENET}),
    "resnet50_ipabn_sync_lr_512": ("resnet50", {"bn_mode": "sync", **IMAGENET}),
    "resnet34_ipabn_sync_lr_512": ("resnet34", {"bn_mode": "sync", **IMAGENET}),
    "resnet101_ipabn_sync_lr_512": ("resnet101", {"bn_mode": "sync", **IMAGENET}),
    "densenet264_ipabn_lr_256": ("densenet264", {"bn_mode": "inplace", "input_3x3": True, **IMAGENET}),
    "wider_resnet38_deeplab3_vistas": ("wider_resnet38_a2_deeplab3", {
        "bn_mode": "inplace", "activation": "leaky_relu", "activation_param": 0.01, "num_classes": 65,
        "pooling_size": 84}),
}


def load_manifest(name: str) -> list[dict]:
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def layout(model: torch.nn.Module) -> list[dict]:
    """The state_dict layout in the manifests' format."""
    return [{"key": key, "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
            for key, value in model.state_dict().items()]


def first_difference(ours: list[dict], expected: list[dict]) -> str:
    """A readable description of where two layouts part, for assertion messages."""
    for index, (mine, theirs) in enumerate(zip(ours, expected)):
        if mine != theirs:
            return f"entry {index}: ours {mine} vs authors' {theirs}"
    return f"lengths differ: ours {len(ours)} vs authors' {len(expected)}"


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_state_dict_matches_authors_manifest(name):
    arch, config = CONFIGURATIONS[name]
    ours, expected = layout(create_model(arch, **config)), load_manifest(name)
    assert ours == expected, first_difference(ours, expected)


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_registered_weights_build_the_manifest_layout(name):
    """The weights registry's arch and arch_kwargs for a published checkpoint give the same layout."""
    if not is_weights(name):
        pytest.fail(f"{name} is a published checkpoint but is not in the weights registry")
    weights = get_weights(name)
    assert (weights.arch, weights.arch_kwargs.get("bn_mode")) == (CONFIGURATIONS[name][0],
                                                                   CONFIGURATIONS[name][1]["bn_mode"])
    ours, expected = layout(create_model(name)), load_manifest(name)
    assert ours == expected, first_difference(ours, expected)


def test_every_manifest_of_these_families_has_a_configuration():
    """A manifest added without a configuration would silently go untested."""
    families = ("resnext", "wider_resnet", "resnet")
    imagenet = {path.stem for path in MANIFEST_DIR.glob("*.json")
                if path.stem.startswith(families) and "deeplab" not in path.stem}
    assert imagenet <= set(CONFIGURATIONS), sorted(imagenet - set(CONFIGURATIONS))


@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_layout_does_not_depend_on_the_memory_tricks(bn_mode):
    """memory_efficient only changes how the function is computed, never the keys (checkpoints load either way)."""
    for arch in ("resnet50", "wider_resnet38"):
        plain = create_model(arch, bn_mode=bn_mode, memory_efficient=False)
        lean = create_model(arch, bn_mode=bn_mode, memory_efficient=True)
        assert layout(plain) == layout(lean)


def test_a_changed_layout_is_detected():
    """The comparison can fail: a model without classifier differs from the manifest at its end."""
    arch, config = CONFIGURATIONS["resnet34_ipabn_sync_lr_512"]
    ours = layout(create_model(arch, **{**config, "num_classes": 0}))
    expected = load_manifest("resnet34_ipabn_sync_lr_512")
    assert ours != expected
    assert "lengths differ" in first_difference(ours, expected)
