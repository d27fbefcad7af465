"""`iabn-zoo download`, `import`, `verify` and `cache`: getting checkpoints into the cache and keeping it sound.

Nothing the user may need is deleted without being asked: `verify` reports a damaged file and deletes it only with
--delete-mismatched, and `cache prune` shows what it would delete and asks first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .exit_codes import exit_code
from .options import add_command, progress_allowed
from .output import emit

PRUNE_COLUMNS = ("name", "kind", "size", "path")
WEIGHTS_NAMES = "weights names, or architectures for their default weights (see `iabn-zoo list --pretrained`)"


def register(subparsers) -> None:
    """Add the `download`, `import`, `verify` and `cache` sub-commands."""
    fetch = add_command(subparsers, "download", help="download and md5-verify published checkpoints into the cache",
                        description="Fetch each named checkpoint (or every registered one with --all) into the "
                                    "cache and verify its md5. A failure is reported and the others go on; the exit "
                                    "code is non-zero when any failed.")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=WEIGHTS_NAMES)
    fetch.add_argument("--all", action="store_true", help="every registered checkpoint")
    fetch.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    fetch.add_argument("--source", action="append", metavar="SOURCE",
                       help="the source to try (repeat for more, tried in order): a position in the entry's list "
                            "(1 first, after IABN_ZOO_MIRRORS), a kind (hf-hub, http), or a URL or hf-hub:ORG/NAME "
                            "of your own; every source is verified (default: all, in order)")
    fetch.set_defaults(func=run_download)

    importing = add_command(subparsers, "import", help="put a checkpoint downloaded by hand into the cache",
                            description="Verify FILE (a checkpoint fetched in a browser) against the registry and "
                                        "copy it into the cache, where every command then finds it.")
    importing.add_argument("file", type=Path, metavar="FILE", help="the downloaded checkpoint")
    importing.add_argument("--name", help="the weights it should be (default: found by its md5)")
    importing.set_defaults(func=run_import)

    verify = add_command(subparsers, "verify", help="re-check the md5 of cached checkpoints",
                         description="Re-hash cached checkpoints against the registry. A file that does not match "
                                     "is reported (exit code 6) and kept, unless --delete-mismatched.")
    verify.add_argument("names", nargs="*", metavar="NAME", help=f"{WEIGHTS_NAMES} (default: every cached one)")
    verify.add_argument("--delete-mismatched", action="store_true",
                        help="delete files that do not match, so that `iabn-zoo download` fetches them again")
    verify.set_defaults(func=run_verify)

    cache = add_command(subparsers, "cache", help="inspect and clean the checkpoint cache",
                        description="List, locate, remove and prune the files of the checkpoint cache.")
    actions = cache.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    listing = add_command(actions, "list", help="cached files, their size and whether they are verified",
                          description="One row per cached file: the weights it belongs to, its kind (checkpoint, "
                                      "converted, partial, unregistered, orphan), size and state.")
    listing.set_defaults(func=run_cache_list)
    where = add_command(actions, "path", help="the cache root, or where NAME's checkpoint lives",
                        description="Print the cache root, or the path of NAME's checkpoint (cached or not).")
    where.add_argument("name", nargs="?", metavar="NAME", help="weights name (default: print the cache root)")
    where.set_defaults(func=run_cache_path)
    remove = add_command(actions, "remove", help="delete NAME's checkpoint, partial download and safetensors copy",
                         description="Delete every cached file of each NAME: checkpoint, partial download, "
                                     "verification stamp, safetensors copy and lock files.")
    remove.add_argument("names", nargs="+", metavar="NAME", help=WEIGHTS_NAMES)
    remove.set_defaults(func=run_cache_remove)
    prune = add_command(actions, "prune", help="delete partial downloads, lock files and orphans, after asking",
                        description="Show the files no registry entry refers to, partial downloads and lock files "
                                    "nobody holds, then delete them once confirmed (--yes, or answering yes at a "
                                    "terminal; never when standard input is not a terminal). Files iabn-zoo "
                                    "verified or converted for weights this process does not know (registered from "
                                    "Python, or from a registry file not in IABN_ZOO_REGISTRY now) are kept unless "
                                    "--include-unregistered.")
    prune.add_argument("--yes", action="store_true", help="delete without asking")
    prune.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    prune.add_argument("--include-unregistered", action="store_true",
                       help="also delete checkpoints and copies of weights this process does not know")
    prune.set_defaults(func=run_cache_prune)


def run_download(args: argparse.Namespace) -> int:
    """Download each named checkpoint (or all with --all), going on past failures; print where each one is."""
    from ..errors import InvalidArgumentError, ZooError
    from ..weights.catalog import get_weights, list_weights
    from ..weights.downloader import download

    if args.all == bool(args.names):
        raise InvalidArgumentError("give weights names or --all (not both); `iabn-zoo list --pretrained` shows them")
    names = list_weights() if args.all else args.names
    entries = list({weights.name: weights for weights in map(get_weights, names)}.values())  # checked up front
    if args.source:
        from ..weights.sources import ordered_sources

        for weights in entries:
            ordered_sources(weights, args.source)  # a source that cannot be is refused before any download
    rows, failures = [], []
    for weights in entries:
        try:
            path = download(weights, progress=progress_allowed(args), force=args.force, sources=args.source)
        except ZooError as error:
            failures.append(error)
            print(f"iabn-zoo: error: {weights.name}: {error}", file=sys.stderr)
            rows.append({"name": weights.name, "status": "failed", "size": None, "md5": weights.md5, "path": None,
                         "error": str(error)})
            continue
        rows.append({"name": weights.name, "status": "cached", "size": path.stat().st_size, "md5": weights.md5,
                     "path": str(path), "error": None})
    emit(rows, as_json=args.json, columns=("name", "status", "size", "md5", "path"))
    if not failures:
        return 0
    failed = [row["name"] for row in rows if row["status"] == "failed"]
    print(f"iabn-zoo: {len(failed)} of {len(rows)} download(s) failed: {', '.join(failed)}", file=sys.stderr)
    return exit_code(failures[0])


def run_import(args: argparse.Namespace) -> int:
    """Verify a manually downloaded file against the registry and copy it into the cache."""
    from ..weights.cache_admin import import_file

    weights, path = import_file(args.file, args.name)
    emit({"name": weights.name, "md5": weights.md5, "path": str(path)}, as_json=args.json)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Re-hash cached checkpoints; a mismatch gives exit code 6 (and is deleted only with --delete-mismatched)."""
    from ..errors import ChecksumError, DownloadError
    from ..weights.cache import cache_root
    from ..weights.cache_admin import cached_files, verify_cached
    from ..weights.catalog import get_weights

    if args.names:
        refuse_hub_names(args.names)
        entries = [get_weights(name) for name in args.names]
    else:
        entries = [get_weights(item.name) for item in cached_files() if item.kind == "checkpoint"]
    if not entries:
        print(f"iabn-zoo: no checkpoint is cached in {cache_root()}; nothing to verify", file=sys.stderr)
    results = [verify_cached(weights, delete_mismatched=args.delete_mismatched) for weights in entries]
    rows = [{"name": r.name, "state": r.state, "expected": r.expected, "actual": r.actual, "path": str(r.path)}
            for r in results]
    if rows or args.json:
        emit(rows, as_json=args.json, columns=("name", "state", "expected", "actual", "path"))
    for result in results:
        if result.state == "mismatch":
            print(f"iabn-zoo: {result.path} does not match the md5 of {result.name} and is kept; run `iabn-zoo "
                  f"verify {result.name} --delete-mismatched`, then `iabn-zoo download {result.name}`",
                  file=sys.stderr)
        elif result.state == "removed":
            print(f"iabn-zoo: {result.path} did not match the md5 of {result.name} and was deleted; run `iabn-zoo "
                  f"download {result.name}`", file=sys.stderr)
        elif result.state == "missing":
            print(f"iabn-zoo: {result.name} is not cached; run `iabn-zoo download {result.name}`", file=sys.stderr)
    states = {result.state for result in results}
    if states & {"mismatch", "removed"}:
        return exit_code(ChecksumError)
    return exit_code(DownloadError) if "missing" in states else 0


def refuse_hub_names(names: list[str]) -> None:
    """Hub repositories live in the Hugging Face cache, which its own tools manage: say so instead of acting."""
    from ..errors import InvalidArgumentError
    from ..weights.hf_hub.names import is_hub_name

    hub = [name for name in names if is_hub_name(name)]
    if hub:
        raise InvalidArgumentError(f"{hub[0]} is kept in the Hugging Face cache, not in iabn-zoo's: `hf cache scan` "
                                   "lists it and `hf cache delete` removes it; `iabn-zoo download NAME` fetches and "
                                   "verifies it again")


def run_cache_list(args: argparse.Namespace) -> int:
    """One row per cached file: weights name, kind, size, state and path."""
    from ..weights.cache import cache_root
    from ..weights.cache_admin import cached_files

    rows = [{"name": item.name, "kind": item.kind, "size": item.size, "state": item.state, "path": str(item.path)}
            for item in cached_files()]
    if rows or args.json:
        emit(rows, as_json=args.json, columns=("name", "kind", "size", "state", "path"))
    if not rows:
        print(f"iabn-zoo: the cache in {cache_root()} is empty; `iabn-zoo download NAME` fills it", file=sys.stderr)
    return 0


def run_cache_path(args: argparse.Namespace) -> int:
    """Print the cache root, or the checkpoint path of NAME (whether or not it is cached yet)."""
    from ..weights.cache import cache_root, checkpoint_path
    from ..weights.catalog import get_weights

    refuse_hub_names([args.name] if args.name else [])
    path = checkpoint_path(get_weights(args.name)) if args.name else cache_root()
    if args.json:
        emit({"path": str(path)}, as_json=True)
    else:
        print(path)
    return 0


def run_cache_remove(args: argparse.Namespace) -> int:
    """Delete every cached file of each NAME (checkpoint, partial download, stamp, safetensors copy, locks)."""
    from ..weights.cache_admin import remove_cached
    from ..weights.catalog import get_weights

    refuse_hub_names(args.names)
    entries = [get_weights(name) for name in args.names]
    rows = []
    for weights in entries:
        removed = remove_cached(weights)
        if not removed:
            print(f"iabn-zoo: nothing cached for {weights.name}", file=sys.stderr)
        rows += [{"name": weights.name, "removed": str(path)} for path in removed]
    if rows or args.json:
        emit(rows, as_json=args.json, columns=("name", "removed"))
    return 0


def run_cache_prune(args: argparse.Namespace) -> int:
    """Show what prune would delete; delete it with --yes or a yes at a terminal; say how much was freed."""
    from ..errors import InvalidArgumentError
    from ..weights.cache_admin import prune, prune_candidates

    candidates = prune_candidates(include_unregistered=args.include_unregistered)
    if not args.include_unregistered:
        say_what_is_kept()
    if not candidates:
        if args.json:
            emit([], as_json=True)
        print("iabn-zoo: nothing to prune", file=sys.stderr)
        return 0
    rows = file_rows(candidates)
    if args.dry_run or not args.yes:
        emit(rows, as_json=args.json, columns=PRUNE_COLUMNS)
    if args.dry_run:
        print(f"iabn-zoo: {len(rows)} file(s), {total_size(rows)}, would be deleted (--dry-run)", file=sys.stderr)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidArgumentError("nothing was deleted: standard input is not a terminal to confirm at; pass "
                                       "--yes to delete these files, or --dry-run to only list them")
        if not confirmed(f"delete these {len(rows)} file(s), {total_size(rows)}? [y/N] "):
            print("iabn-zoo: nothing was deleted", file=sys.stderr)
            return 0
    gone = file_rows(prune(candidates))
    if args.yes:
        emit(gone, as_json=args.json, columns=PRUNE_COLUMNS)
    print(f"iabn-zoo: deleted {len(gone)} file(s), freed {total_size(gone)}", file=sys.stderr)
    return 0


def say_what_is_kept() -> None:
    """Name the files prune keeps because this process does not know their weights (the one way it could be wrong)."""
    from ..weights.cache_admin import cached_files

    kept = [item for item in cached_files() if item.kind == "unregistered"]
    if kept:
        print(f"iabn-zoo: keeping {len(kept)} file(s), {total_size(file_rows(kept))}, that iabn-zoo verified or "
              "converted for weights this process does not know (registered from Python, or from a registry file "
              "not in IABN_ZOO_REGISTRY now): " + ", ".join(item.path.name for item in kept)
              + "; --include-unregistered deletes them too", file=sys.stderr)


def file_rows(items: list) -> list[dict]:
    """Rows of cached files for the prune table."""
    return [{"name": item.name, "kind": item.kind, "size": item.size, "path": str(item.path)} for item in items]


def confirmed(question: str) -> bool:
    """A yes typed at the terminal."""
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def total_size(rows: list[dict]) -> str:
    """The bytes of some files, for people."""
    from ..system.resources import format_bytes

    return format_bytes(sum(row["size"] for row in rows))
