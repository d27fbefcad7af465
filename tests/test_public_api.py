"""The public names the README documents resolve to what they promise, whatever was imported before them."""

import re
import subprocess
import sys
import types
from pathlib import Path

import iabn_zoo as zoo

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

CONTRACT = ("list_models", "list_weights", "get_weights", "register_weights", "create_model", "download",
            "load_state_dict", "Weights", "ZooError", "DownloadError", "ChecksumError", "CheckpointError",
            "convert_norm", "make_norm_act")

# Import every submodule first (as the CLI or a user's `from iabn_zoo.x import y` does), then read the exports.
AFTER_SUBMODULES = """
import importlib, pkgutil, types, iabn_zoo
for info in pkgutil.walk_packages(iabn_zoo.__path__, "iabn_zoo."):
    if info.name != "iabn_zoo.__main__":
        importlib.import_module(info.name)
shadowed = [n for n in iabn_zoo.__all__ if isinstance(getattr(iabn_zoo, n), types.ModuleType)]
print(",".join(shadowed))
"""


def test_contract_names_are_exported():
    for name in CONTRACT:
        assert name in zoo.__all__
        assert not isinstance(getattr(zoo, name), types.ModuleType)
    assert issubclass(zoo.ChecksumError, zoo.ZooError) and issubclass(zoo.CheckpointError, zoo.ZooError)


def test_every_name_the_readme_uses_is_exported():
    used = set(re.findall(r"\bzoo\.([A-Za-z_]\w*)", README))
    assert {"create_model", "run_weights", "load_run", "finetune", "convert_norm"} <= used, used
    missing = sorted(name for name in used if name not in zoo.__all__)
    assert not missing, f"the README uses zoo.{missing}, which iabn_zoo does not export"
    for name in used:
        assert callable(getattr(zoo, name)) and not isinstance(getattr(zoo, name), types.ModuleType), name


def test_every_error_the_readme_lists_is_a_zoo_error():
    listed = re.search(r"Errors are typed \(([^)]*)\)", README).group(1)
    names = re.findall(r"`(?:zoo\.)?(\w+Error)`", listed)
    assert "ZooError" in names and len(names) >= 8, names
    for name in names:
        assert issubclass(getattr(zoo, name), zoo.ZooError), name


def test_no_export_is_shadowed_by_a_submodule_of_the_same_name():
    result = subprocess.run([sys.executable, "-c", AFTER_SUBMODULES], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_import_is_lazy():
    result = subprocess.run([sys.executable, "-c", "import sys, iabn_zoo; print(sorted(m for m in sys.modules "
                             "if m.startswith(('iabn_zoo.', 'requests', 'PIL', 'safetensors', 'inplace_abn'))))"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
