"""`iabn-zoo list` and `iabn-zoo info`: what the zoo holds, with sizes, scores and whether it is cached."""

from __future__ import annotations

import argparse
from typing import Any

from .output import add_json_flag, emit

LIST_COLUMNS = ("name", "arch", "params", "top1", "top5", "miou", "size", "cached")


def register(subparsers) -> None:
    """Add the `list` and `info` sub-commands."""
    listing = subparsers.add_parser("list", help="list architectures and published weights")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="fnmatch pattern, e.g. 'resnext*'")
    listing.add_argument("--pretrained", action="store_true", help="only names with published weights")
    add_json_flag(listing)
    listing.set_defaults(func=run_list)

    info = subparsers.add_parser("info", help="everything known about one architecture or weights name")
    info.add_argument("name", metavar="NAME")
    add_json_flag(info)
    info.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    """Print one row per matching name: architecture, parameters, top-1/top-5 (mIoU), file size, cached or not."""
    from ..factory import list_models

    rows = [model_row(name) for name in list_models(args.pattern, pretrained=args.pretrained)]
    if not args.json:
        rows = [{**row, "params": _millions(row["params"]), "size": _megabytes(row["size"]),
                 "cached": {True: "yes", False: "no", None: None}[row["cached"]]} for row in rows]
    emit(rows, as_json=args.json, columns=LIST_COLUMNS)
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print every field of a weights entry (or an architecture's summary) as `key: value` lines or JSON."""
    from ..factory import resolve_weights

    weights = resolve_weights(args.name)
    emit(weights_info(weights) if weights is not None else arch_info(args.name), as_json=args.json)
    return 0


def model_row(name: str) -> dict[str, Any]:
    """The `list` row of an architecture or weights name (sizes in bytes, params as a count)."""
    from ..factory import count_parameters, resolve_weights
    from ..weights.cache import cached_file_size, is_cached

    weights = resolve_weights(name)
    if weights is None:
        return {"name": name, "arch": name, "params": count_parameters(name), "top1": None, "top5": None,
                "miou": None, "size": None, "cached": None}
    return {"name": name, "arch": weights.arch, "params": count_parameters(name), "top1": weights.metrics.get("top1"),
            "top5": weights.metrics.get("top5"), "miou": weights.metrics.get("miou"), "size": cached_file_size(weights),
            "cached": is_cached(weights)}


def weights_info(weights) -> dict[str, Any]:
    """All fields of a weights entry, plus parameters and where its files are cached."""
    from ..factory import count_parameters
    from ..weights.cache import cached_file_size, checkpoint_path, converted_path, is_cached

    return {"name": weights.name, "arch": weights.arch, "arch_kwargs": weights.arch_kwargs, "task": weights.task,
            "num_classes": weights.num_classes, "parameters": count_parameters(weights.name),
            "metrics": weights.metrics, "license": weights.license, "preprocessing": weights.preprocessing,
            "labels": weights.labels, "urls": list(weights.urls), "md5": weights.md5, "file_name": weights.file_name,
            "file_size": cached_file_size(weights), "cached": is_cached(weights),
            "checkpoint_path": str(checkpoint_path(weights)), "safetensors_path": str(converted_path(weights)),
            "description": weights.description}


def arch_info(arch: str) -> dict[str, Any]:
    """An architecture's parameter count and the weights published for it."""
    from ..factory import count_parameters
    from ..weights.catalog import weights_for_arch

    published = [weights.name for weights in weights_for_arch(arch)]
    return {"name": arch, "parameters": count_parameters(arch), "weights": published}


def _millions(count: int | None) -> str | None:
    return None if count is None else f"{count / 1e6:.1f}M"


def _megabytes(size: int | None) -> str | None:
    return None if size is None else f"{size / 2**20:.1f} MB"
