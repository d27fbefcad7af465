"""`iabn-zoo list` and `iabn-zoo info`: what the zoo holds, with sizes, scores and whether it is cached.

Listing builds no network: parameter counts come from `parameter_counts` (names outside it are counted on the meta
device), sizes from the registry or the cache.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import add_command
from .output import emit
from .parameter_counts import PARAMETER_COUNTS

LIST_COLUMNS = ("name", "arch", "weights", "params", "top1", "top5", "miou", "download", "cached")
MIB = 2 ** 20


def register(subparsers) -> None:
    """Add the `list` and `info` sub-commands."""
    listing = add_command(
        subparsers, "list", help="list architectures and published weights",
        description="One row per architecture and weights name matching PATTERN (an fnmatch glob, case ignored): "
                    "its architecture, the weights an architecture name stands for (its best published ones), "
                    "parameters, published scores (percent), download size in MiB where known, and whether it is "
                    "cached.")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                         help="fnmatch pattern, e.g. 'resnext*' (default: *, every name)")
    listing.add_argument("--pretrained", action="store_true",
                         help="only weights names and the architectures that have published weights")
    listing.set_defaults(func=run_list)

    info = add_command(subparsers, "info", help="everything known about one architecture or weights name",
                       description="Every field of a weights entry (source, md5, scores, preprocessing, license, "
                                   "cache paths), or an architecture's parameters and published weights.")
    info.add_argument("name", metavar="NAME", help="an architecture or weights name (see `iabn-zoo list`), or a "
                                                   "fine-tuning RUN directory")
    info.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    """Print one row per matching name; an empty result says so and suggests a pattern that finds something."""
    from ..factory import list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    rows = [model_row(name) for name in names]
    if not args.json:
        rows = [{**row, "params": _millions(row["params"]), "download": _mebibytes(row["size"]),
                 "cached": {True: "yes", False: "no", None: None}[row["cached"]]} for row in rows]
    if rows or args.json:
        emit(rows, as_json=args.json, columns=LIST_COLUMNS)
    if not rows:
        print(f"iabn-zoo: no name matches {args.pattern!r}{empty_list_hint(args.pattern, args.pretrained)}",
              file=sys.stderr)
    return 0


def empty_list_hint(pattern: str, pretrained: bool) -> str:
    """What to try when a pattern finds nothing: a wider glob, the names without --pretrained, or close names."""
    from ..errors import close_matches
    from ..factory import list_models

    if pretrained and list_models(pattern):
        return f"; {len(list_models(pattern))} name(s) match without --pretrained (no published weights)"
    if not any(char in pattern for char in "*?["):
        for wider in (f"{pattern}*", f"*{pattern}*"):
            if list_models(wider, pretrained=pretrained):
                return f"; patterns match whole names: try {wider!r}"
    similar = close_matches(pattern.lower(), list_models())
    return f"; similar names: {', '.join(similar)}" if similar else "; `iabn-zoo list` shows every name"


def parameter_count(name: str) -> int:
    """Parameters of the network `name` builds: from the table, else counted on the meta device."""
    from ..factory import count_parameters

    return PARAMETER_COUNTS[name] if name in PARAMETER_COUNTS else count_parameters(name)


def model_row(name: str) -> dict[str, Any]:
    """The `list` row of an architecture or weights name (sizes in bytes, params as a count)."""
    from ..factory import resolve_weights
    from ..weights.cache import cached_file_size, is_cached
    from ..weights.catalog import weights_for_arch

    weights = resolve_weights(name)
    if weights is None:
        default = _default_weights_name(name) if weights_for_arch(name) else None
        return {"name": name, "kind": "arch", "arch": name, "weights": default,
                "params": parameter_count(name), "top1": None, "top5": None, "miou": None, "size": None,
                "cached": None}
    return {"name": name, "kind": "weights", "arch": weights.arch, "weights": None, "params": parameter_count(name),
            "top1": weights.metrics.get("top1"), "top5": weights.metrics.get("top5"),
            "miou": weights.metrics.get("miou"), "size": cached_file_size(weights), "cached": is_cached(weights)}


def _default_weights_name(arch: str) -> str:
    from ..weights.catalog import default_weights_for

    return default_weights_for(arch).name


def run_info(args: argparse.Namespace) -> int:
    """Print every field of a weights entry (or an architecture's, or a RUN's summary) as `key: value` lines or
    JSON."""
    from ..factory import resolve_weights
    from ..models import is_arch
    from ..weights.catalog import is_weights
    from ..weights.run_reader import is_run_dir

    if not is_arch(args.name) and not is_weights(args.name) and is_run_dir(args.name):
        emit(run_info_fields(args.name), as_json=args.json)
        return 0
    weights = resolve_weights(args.name)
    emit(weights_info(weights) if weights is not None else arch_info(args.name), as_json=args.json)
    return 0


def passes_in_words(model: str, task: str) -> str | None:
    """A segmentation model's recommended test-time passes in words (None for a classifier)."""
    from ..tasks.inference_passes import recommended_passes

    return recommended_passes(model).said() if task == "segmentation" else None


def run_info_fields(run_dir: str) -> dict[str, Any]:
    """What a fine-tuning run's config.json says, and its epochs so far."""
    from ..weights.run_reader import read_metrics, read_run

    info = read_run(run_dir)
    return {"run": str(info.run_dir), "task": info.task, "arch": info.arch, "arch_kwargs": info.arch_kwargs,
            "bn_mode": info.bn_mode, "num_classes": info.num_classes, "epochs": len(read_metrics(info.run_dir)),
            "preprocessing": info.preprocessing, "test_time": passes_in_words(run_dir, info.task),
            "source_weights": info.config.get("model")}


def weights_info(weights) -> dict[str, Any]:
    """All fields of a weights entry, plus parameters and where its files are cached."""
    from ..weights.cache import cached_file_size, checkpoint_path, converted_path, is_cached
    from ..weights.hf_hub.names import is_hub_name

    if is_hub_name(weights.name):
        return hub_info(weights)

    return {"name": weights.name, "arch": weights.arch, "arch_kwargs": weights.arch_kwargs, "task": weights.task,
            "num_classes": weights.num_classes, "parameters": parameter_count(weights.name),
            "metrics": weights.metrics, "license": weights.license, "preprocessing": weights.preprocessing,
            "test_time": passes_in_words(weights.name, weights.task),
            "labels": weights.labels, "urls": list(weights.urls), "md5": weights.md5, "file_name": weights.file_name,
            "file_size": cached_file_size(weights), "cached": is_cached(weights),
            "checkpoint_path": str(checkpoint_path(weights)), "safetensors_path": str(converted_path(weights)),
            "description": weights.description}


def hub_info(weights) -> dict[str, Any]:
    """All fields of a Hub repository's entry, plus its pinned commit and where the Hugging Face cache keeps it."""
    from ..weights.hf_hub.resolve import hub_details

    return {"name": weights.name, "arch": weights.arch, "arch_kwargs": weights.arch_kwargs, "task": weights.task,
            "num_classes": weights.num_classes, "parameters": parameter_count(weights.name),
            "metrics": weights.metrics, "license": weights.license, "preprocessing": weights.preprocessing,
            "labels": weights.labels, **hub_details(weights), "file_name": weights.file_name,
            "file_size": weights.file_size, "sha256": weights.sha256, "source_md5": weights.md5,
            "description": weights.description}


def arch_info(arch: str) -> dict[str, Any]:
    """An architecture's parameter count, the weights published for it and the ones its name stands for."""
    from ..weights.catalog import weights_for_arch

    published = [weights.name for weights in weights_for_arch(arch)]
    return {"name": arch, "parameters": parameter_count(arch), "weights": published,
            "default_weights": _default_weights_name(arch) if published else None}


def _millions(count: int | None) -> str | None:
    return None if count is None else f"{count / 1e6:.1f}M"


def _mebibytes(size: int | None) -> str | None:
    return None if size is None else f"{size / MIB:.1f} MiB"
