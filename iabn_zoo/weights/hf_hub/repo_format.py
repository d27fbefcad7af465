"""The layout of a repository of this package on the Hub (and of a folder `save_pretrained` writes), and reading its
config.json without trusting it.

    config.json        ours, versioned: "format": "iabn-zoo", "format_version"; the task, the architecture and its
                       arguments, the norm mode to build it with, the classes (and "labels" for a built-in label
                       set), the preprocessing, "weights" (file, sha256, md5, size of the tensors file beside it),
                       "source" (what they were made from: a fine-tuning run, or a published checkpoint with the
                       original file's name and md5), metrics, license, description, and the training
                       configuration under "config" (so that the folder also reads as a RUN directory);
    model.safetensors  the tensors, keys as our modules name them;
    classes.csv        index,name of every output;
    README.md          the model card (Hub front matter, then what the network is, metrics, usage, citation).
A config this version cannot read (another format, a newer format version, a missing or mistyped field) raises
CheckpointError naming the repository; nothing in the repository is ever executed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import CheckpointError
from ...layers.norm_act import BN_MODES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CLASSES_FILE = "classes.csv"
CARD_FILE = "README.md"
FORMAT = "iabn-zoo"
FORMAT_VERSION = 1
TASKS = ("classification", "segmentation")
BUILTIN_LABELS = ("imagenet", "vistas")
SHA256 = re.compile(r"[0-9a-f]{64}")
MD5 = re.compile(r"[0-9a-f]{32}")
UPGRADE = "pip install --upgrade iabn-zoo"


def read_config(path: Path, source: str) -> dict[str, Any]:
    """The checked document of the config.json at `path`; `source` names the repository in errors."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{source}: config.json cannot be read ({error}); the repository is damaged or not "
                              "one of this package's") from None
    return check_config(document, source)


def check_config(document: Any, source: str) -> dict[str, Any]:
    """`document` when it is a config.json this version reads; CheckpointError saying what is wrong otherwise."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise CheckpointError(f"{source}: config.json is not an iabn-zoo config (format {found!r}, expected "
                              f"{FORMAT!r}); only repositories written by `iabn-zoo push` load")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{source}: config.json has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: config.json has format version {version}, written by iabn-zoo "
            f"{document.get('library_version', 'newer')}; iabn-zoo {__version__} reads up to version "
            f"{FORMAT_VERSION}: upgrade ({UPGRADE})")
    for field, kind in (("task", str), ("arch", str), ("arch_kwargs", dict), ("bn_mode", str), ("classes", list),
                        ("preprocessing", dict), ("weights", dict), ("source", dict), ("metrics", dict),
                        ("license", str), ("config", dict)):
        if not isinstance(document.get(field), kind):
            raise CheckpointError(f"{source}: config.json field {field!r} is missing or not a {kind.__name__} "
                                  f"(got {document.get(field)!r}); the repository is damaged")
    _check_values(document, source)
    return document


def _check_values(document: dict[str, Any], source: str) -> None:
    weights = document["weights"]
    problems = []
    if document["task"] not in TASKS:
        problems.append(f"task {document['task']!r} is not one of {', '.join(TASKS)}")
    if document["bn_mode"] not in BN_MODES:
        problems.append(f"bn_mode {document['bn_mode']!r} is not one of {', '.join(BN_MODES)}")
    if not document["classes"] or not all(isinstance(name, str) for name in document["classes"]):
        problems.append("classes must be a non-empty list of names")
    if document.get("labels") not in (None, *BUILTIN_LABELS):
        problems.append(f"labels {document.get('labels')!r} is not a built-in label set")
    if not isinstance(weights.get("file"), str) or "/" in weights["file"] or weights["file"].startswith("."):
        problems.append(f"weights.file {weights.get('file')!r} is not a file name")
    if not SHA256.fullmatch(str(weights.get("sha256"))):
        problems.append(f"weights.sha256 {weights.get('sha256')!r} is not a sha256 digest")
    if not isinstance(weights.get("size"), int) or weights["size"] < 0:
        problems.append(f"weights.size {weights.get('size')!r} is not a byte count")
    if not MD5.fullmatch(str(document["source"].get("md5"))):
        problems.append(f"source.md5 {document['source'].get('md5')!r} is not an md5 digest")
    if problems:
        raise CheckpointError(f"{source}: config.json cannot be used: " + "; ".join(problems))


def weights_fields(document: dict[str, Any], *, name: str, source: str, folder: Path) -> dict[str, Any]:
    """The fields of the `Weights` entry a checked config describes: `name` as the user wrote it, `source` the
    pinned Hub source its files come from, `folder` where its classes.csv lies."""
    labels = document.get("labels") or str(folder / CLASSES_FILE)
    metrics = {key: value for key, value in document["metrics"].items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {
        "name": name, "arch": document["arch"], "arch_kwargs": {**document["arch_kwargs"],
                                                                "bn_mode": document["arch_kwargs"].get(
                                                                    "bn_mode", document["bn_mode"])},
        "urls": (source,), "md5": document["source"]["md5"], "sha256": document["weights"]["sha256"],
        "file_name": document["weights"]["file"], "file_size": document["weights"]["size"],
        "num_classes": len(document["classes"]), "task": document["task"], "metrics": metrics,
        "license": document["license"], "preprocessing": document["preprocessing"],
        "description": str(document.get("description", "")), "labels": labels,
    }


def new_config(**fields: Any) -> dict[str, Any]:
    """A config.json document of this format version with `fields` (the checksums of "weights" are filled in by
    whoever writes the tensors file)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, **fields}


def config_text(document: dict[str, Any]) -> str:
    """config.json's text: indented, keys in the order written."""
    return json.dumps(document, indent=2) + "\n"
