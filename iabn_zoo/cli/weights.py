"""`iabn-zoo download`, `import`, `verify` and `cache`: getting checkpoints into the cache and keeping it sound."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .exit_codes import exit_code
from .output import add_json_flag, emit


def register(subparsers) -> None:
    """Add the `download`, `import`, `verify` and `cache` sub-commands."""
    fetch = subparsers.add_parser("download", help="download and md5-verify published checkpoints into the cache")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="weights names (see `iabn-zoo list --pretrained`)")
    fetch.add_argument("--all", action="store_true", help="every registered checkpoint")
    fetch.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(fetch)
    fetch.set_defaults(func=run_download)

    importing = subparsers.add_parser("import", help="put a checkpoint downloaded by hand into the cache")
    importing.add_argument("file", type=Path, metavar="FILE")
    importing.add_argument("--name", help="the weights it should be (found by md5 when omitted)")
    add_json_flag(importing)
    importing.set_defaults(func=run_import)

    verify = subparsers.add_parser("verify", help="re-check the md5 of cached checkpoints")
    verify.add_argument("names", nargs="*", metavar="NAME", help="weights names (default: every cached one)")
    add_json_flag(verify)
    verify.set_defaults(func=run_verify)

    cache = subparsers.add_parser("cache", help="inspect and clean the checkpoint cache")
    actions = cache.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="cached files, their size and whether they are verified")
    add_json_flag(listing)
    listing.set_defaults(func=run_cache_list)
    where = actions.add_parser("path", help="the cache root, or where NAME's checkpoint lives")
    where.add_argument("name", nargs="?", metavar="NAME")
    where.set_defaults(func=run_cache_path)
    remove = actions.add_parser("remove", help="delete NAME's checkpoint, partial download and safetensors copy")
    remove.add_argument("names", nargs="+", metavar="NAME")
    add_json_flag(remove)
    remove.set_defaults(func=run_cache_remove)
    prune = actions.add_parser("prune", help="delete partial downloads and files no registry entry refers to")
    add_json_flag(prune)
    prune.set_defaults(func=run_cache_prune)


def run_download(args: argparse.Namespace) -> int:
    """Download each named checkpoint (or all with --all) and print where it is."""
    from ..errors import InvalidArgumentError
    from ..weights.catalog import get_weights, list_weights
    from ..weights.downloader import download

    if args.all == bool(args.names):
        raise InvalidArgumentError("give weights names or --all (not both); `iabn-zoo list --pretrained` shows them")
    names = list_weights() if args.all else args.names
    entries = [get_weights(name) for name in names]  # every name is checked before anything is fetched
    rows = []
    for weights in entries:
        path = download(weights, progress=not args.no_progress, force=args.force)
        rows.append({"name": weights.name, "size": path.stat().st_size, "md5": weights.md5, "path": str(path)})
    emit(rows, as_json=args.json, columns=("name", "size", "md5", "path"))
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Verify a manually downloaded file against the registry and copy it into the cache."""
    from ..weights.cache_admin import import_file

    weights, path = import_file(args.file, args.name)
    emit({"name": weights.name, "md5": weights.md5, "path": str(path)}, as_json=args.json)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Re-hash cached checkpoints; a mismatching file is removed and the exit code is 6."""
    from ..errors import ChecksumError, DownloadError
    from ..weights.cache_admin import cached_files, verify_cached
    from ..weights.catalog import get_weights

    if args.names:
        entries = [get_weights(name) for name in args.names]
    else:
        entries = [get_weights(item.name) for item in cached_files() if item.kind == "checkpoint"]
    results = [verify_cached(weights) for weights in entries]
    rows = [{"name": r.name, "state": r.state, "expected": r.expected, "actual": r.actual, "path": str(r.path)}
            for r in results]
    emit(rows, as_json=args.json, columns=("name", "state", "expected", "actual", "path"))
    for result in results:
        if result.state == "mismatch":
            print(f"iabn-zoo: {result.name} did not match its md5 and was removed; run `iabn-zoo download "
                  f"{result.name}`", file=sys.stderr)
        elif result.state == "missing":
            print(f"iabn-zoo: {result.name} is not cached; run `iabn-zoo download {result.name}`", file=sys.stderr)
    states = {result.state for result in results}
    if "mismatch" in states:
        return exit_code(ChecksumError)
    return exit_code(DownloadError) if "missing" in states else 0


def run_cache_list(args: argparse.Namespace) -> int:
    """One row per cached file: weights name, kind, size, state and path."""
    from ..weights.cache_admin import cached_files

    rows = [{"name": item.name, "kind": item.kind, "size": item.size, "state": item.state, "path": str(item.path)}
            for item in cached_files()]
    emit(rows, as_json=args.json, columns=("name", "kind", "size", "state", "path"))
    return 0


def run_cache_path(args: argparse.Namespace) -> int:
    """Print the cache root, or the checkpoint path of NAME (whether or not it is cached yet)."""
    from ..weights.cache import cache_root, checkpoint_path
    from ..weights.catalog import get_weights

    print(checkpoint_path(get_weights(args.name)) if args.name else cache_root())
    return 0


def run_cache_remove(args: argparse.Namespace) -> int:
    """Delete every cached file of each NAME (checkpoint, partial download, stamp, safetensors copy)."""
    from ..weights.cache_admin import remove_cached
    from ..weights.catalog import get_weights

    entries = [get_weights(name) for name in args.names]
    rows = []
    for weights in entries:
        removed = remove_cached(weights)
        if not removed:
            print(f"iabn-zoo: nothing cached for {weights.name}", file=sys.stderr)
        rows += [{"name": weights.name, "removed": str(path)} for path in removed]
    emit(rows, as_json=args.json, columns=("name", "removed"))
    return 0


def run_cache_prune(args: argparse.Namespace) -> int:
    """Delete idle partial downloads and orphan files; print what went and how many bytes were freed."""
    from ..weights.cache_admin import prune

    rows = [{"name": item.name, "kind": item.kind, "size": item.size, "path": str(item.path)} for item in prune()]
    emit(rows, as_json=args.json, columns=("name", "kind", "size", "path"))
    if not args.json:
        print(f"freed {sum(row['size'] for row in rows)} bytes", file=sys.stderr)
    return 0
