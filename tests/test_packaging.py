"""The package data (registry, label lists) ships in the wheel and the sdist, and is found from an installed wheel
and from a bare checkout."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REGISTRY_FILES = sorted(path.name for path in (REPO / "iabn_zoo" / "weights" / "registry").glob("*.toml"))

PROBE = (
    "import json, iabn_zoo, iabn_zoo.weights.catalog as w, iabn_zoo.data.labels as l;"
    "print(json.dumps({'package': iabn_zoo.__file__, 'sources': [s for s, _ in w.builtin_registry_texts()],"
    " 'weights': w.list_weights(), 'labels': len(l.imagenet_classes())}))"
)


def run_probe(pythonpath: Path, cwd: Path) -> dict:
    """Import iabn_zoo in a fresh interpreter with `pythonpath` first on sys.path; report where things came from."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def source_tree(module_tmp) -> Path:
    """A copy of what git tracks, so that builds neither see nor leave build/ folders in the checkout."""
    tree = module_tmp("source")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(module_tmp, source_tree) -> Path:
    out = module_tmp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source_tree)], check=True, capture_output=True, timeout=300)
    return next(out.glob("iabn_zoo-*.whl"))


def test_wheel_contains_registry_labels_and_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for toml in REGISTRY_FILES:
        assert f"iabn_zoo/weights/registry/{toml}" in names
    assert "iabn_zoo/data/label_files/imagenet_classes.csv" in names
    assert "iabn_zoo/data/label_files/vistas_classes.csv" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "iabn-zoo = iabn_zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_reads_its_own_registry(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    report = run_probe(target, cwd=tmp_path)
    assert report["package"].startswith(str(target))
    assert all(source.startswith("iabn_zoo/weights/registry/") for source in report["sources"])
    assert len(report["weights"]) == 10 and "resnext101_ipabn_lr_512" in report["weights"]


def test_bare_checkout_reads_its_package_data(tmp_path):
    """What torch.hub runs from: the package folder alone, not installed; registry and labels come with it."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "iabn_zoo", checkout / "iabn_zoo", ignore=shutil.ignore_patterns("__pycache__"))
    report = run_probe(checkout, cwd=tmp_path)
    assert report["package"].startswith(str(checkout))
    assert sorted(Path(s).name for s in report["sources"]) == REGISTRY_FILES
    assert report["labels"] == 1000
    assert len(report["weights"]) == 10


def test_sdist_contains_registry_and_labels(tmp_path, source_tree):
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path), str(source_tree)],
                   check=True, capture_output=True, timeout=300)
    sdist = next(tmp_path.glob("iabn_zoo-*.tar.gz"))
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    for toml in REGISTRY_FILES:
        assert f"iabn_zoo/weights/registry/{toml}" in names
    assert "iabn_zoo/data/label_files/imagenet_classes.csv" in names


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "iabn_zoo", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("list", "info", "download", "import", "verify", "cache", "predict", "segment", "evaluate",
                    "finetune", "memory"):
        assert command in result.stdout
