"""The public names of DESIGN.md resolve to what they promise, whatever was imported before them."""

import subprocess
import sys
import types

import iabn_zoo as zoo

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
