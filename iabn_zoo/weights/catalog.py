"""The weights registry: published checkpoints (registry/*.toml), extra files from IABN_ZOO_REGISTRY, user entries,
and `hf-hub:ORG/NAME[@REVISION]` names, whose entry is the repository's config.json (read once per process).

Every entry is a frozen `Weights`; a malformed entry is rejected with a `RegistryError` naming the file and field.
A source is an http(s) URL or a Hub repository (`hf-hub:...`, see `hf_hub`).
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidArgumentError, RegistryError, UnknownNameError
from ..layers.norm_act import BN_MODES
from .hf_hub.names import is_hub_name, parse_hub_name
from .hf_hub.resolve import hub_weights_fields

TASKS = ("classification", "segmentation")
REGISTRY_ENV = "IABN_ZOO_REGISTRY"
REGISTRY_SOURCE = "iabn_zoo/weights/registry"  # how error messages name the shipped files
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MD5_PATTERN = re.compile(r"[0-9a-fA-F]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
RESERVED_SUFFIXES = (".part", ".lock")  # the cache's partial downloads and lock files
MAX_METRIC = 1 << 53  # larger integers cannot become floats exactly (and beyond ~1e308 not at all)


@dataclass(frozen=True)
class Weights:
    """One published (or user-registered) checkpoint: what to build, where to fetch it, how to verify and use it."""

    name: str
    arch: str
    arch_kwargs: dict[str, Any] = field(hash=False)
    urls: tuple[str, ...]
    md5: str
    file_name: str
    num_classes: int
    task: str
    metrics: dict[str, float] = field(hash=False)
    license: str
    preprocessing: dict[str, Any] = field(hash=False)
    description: str
    labels: str | None = None
    file_size: int | None = None
    sha256: str | None = None  # of the converted safetensors file a Hub source serves (recorded when published)

    def __post_init__(self) -> None:
        for name, value in _checked_fields(self).items():
            object.__setattr__(self, name, value)


def _checked_fields(weights: Weights) -> dict[str, Any]:
    """Validated, normalised copies of every field of `weights`; the first bad field raises RegistryError."""
    entry = weights.name if isinstance(weights.name, str) else repr(weights.name)
    checked = {"name": _check_name(weights.name)}
    for spec in fields(Weights)[1:]:
        check = _FIELD_CHECKS[spec.name]
        try:
            checked[spec.name] = check(getattr(weights, spec.name))
        except _FieldError as error:
            raise RegistryError(f"entry {entry!r}: field {spec.name!r} {error}") from None
    return checked


class _FieldError(Exception):
    """What is wrong with one field's value; turned into a RegistryError that names entry, field and file."""


def _check_name(value: Any) -> str:
    if is_hub_name(value):  # the entry of a Hub repository, named as the user wrote it
        return parse_hub_name(value).text
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise RegistryError(
            f"weights name {value!r} is invalid: use letters, digits, '_', '-' and '.', "
            "no path separators and no '..'")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, got {type(value).__name__} {value!r}")
    return value


def _nonempty_text(value: Any) -> str:
    if not _text(value).strip():
        raise _FieldError("must not be empty")
    return value


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise _FieldError(f"must be a table with string keys, got {type(value).__name__}")
    return dict(value)


def _arch_kwargs(value: Any) -> dict[str, Any]:
    table = _table(value)
    if "bn_mode" in table and table["bn_mode"] not in BN_MODES:
        raise _FieldError(f"has bn_mode {table['bn_mode']!r}; use one of {', '.join(BN_MODES)}")
    return table


def _urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise _FieldError("must be a non-empty list of http(s) URLs or hf-hub:ORG/NAME[@REVISION] repositories")
    for url in value:
        if is_hub_name(url):
            try:
                parse_hub_name(url, parameter="source")
            except InvalidArgumentError as error:
                raise _FieldError(f"has {url!r}: {error}") from None
            continue
        try:
            parts = urlsplit(_text(url))
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # malformed host or port ("http://[::1", "http://h:x/")
            valid = False
        if not valid:
            raise _FieldError(f"has {url!r}: every source must be a well-formed http:// or https:// URL")
    return tuple(value)


def _optional_sha256(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value)):
        raise _FieldError(f"must be 64 hexadecimal digits (a sha256), got {value!r}")
    return None if value is None else value.lower()


def _md5(value: Any) -> str:
    if not isinstance(value, str) or not MD5_PATTERN.fullmatch(value):
        raise _FieldError(f"must be 32 hexadecimal digits, got {value!r}")
    return value.lower()


def _file_name(value: Any) -> str:
    name = _nonempty_text(value)
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise _FieldError(f"must be a bare file name without path separators, got {name!r}")
    if name.endswith(RESERVED_SUFFIXES):
        raise _FieldError(f"must not end with {' or '.join(RESERVED_SUFFIXES)} (the cache's own files), got {name!r}")
    return name


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _FieldError(f"must be a positive integer, got {value!r}")
    return value


def _task(value: Any) -> str:
    if value not in TASKS:
        raise _FieldError(f"must be one of {', '.join(TASKS)}, got {value!r}")
    return value


def _metrics(value: Any) -> dict[str, float]:
    table = _table(value)
    for key, number in table.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _FieldError(f"has {key} = {number!r}; metrics must be numbers")
        if isinstance(number, int) and abs(number) > MAX_METRIC:
            raise _FieldError(f"has {key} = {number}; metrics are scores, not numbers this large")
    return {key: float(number) for key, number in table.items()}


def _optional_text(value: Any) -> str | None:
    return None if value is None else _nonempty_text(value)


def _optional_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _FieldError(f"must be a byte count >= 0, got {value!r}")
    return value


_FIELD_CHECKS = {
    "arch": _nonempty_text, "arch_kwargs": _arch_kwargs, "urls": _urls, "md5": _md5, "file_name": _file_name,
    "num_classes": _positive_int, "task": _task, "metrics": _metrics, "license": _text, "preprocessing": _table,
    "description": _text, "labels": _optional_text, "file_size": _optional_size, "sha256": _optional_sha256,
}
_OPTIONAL = ("name", "labels", "file_size", "sha256")
_REQUIRED = tuple(spec.name for spec in fields(Weights) if spec.name not in _OPTIONAL)
_KNOWN = frozenset(spec.name for spec in fields(Weights))


def parse_registry(text: str, source: str) -> dict[str, Weights]:
    """The entries of one registry file's TOML `text`; `source` names the file in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RegistryError(f"registry file {source}: not valid TOML ({error}); fix the syntax") from None
    except RecursionError:
        raise RegistryError(f"registry file {source}: values are nested too deeply to read; a registry entry "
                            "needs only flat tables and lists") from None
    entries = {}
    for name, table in document.items():
        if not isinstance(table, dict):
            raise RegistryError(f"registry file {source}: {name!r} must be a table [{name}] describing one checkpoint")
        if is_hub_name(name):
            raise RegistryError(f"registry file {source}: {name!r} is a Hub repository, not an entry name; list it "
                                "among an entry's urls to use it as a source")
        missing = [key for key in _REQUIRED if key not in table]
        unknown = sorted(set(table) - _KNOWN)
        if missing:
            raise RegistryError(f"registry file {source}: entry {name!r} misses field {missing[0]!r}; add it")
        if unknown:
            raise RegistryError(f"registry file {source}: entry {name!r} has unknown field {unknown[0]!r}; "
                                f"known fields are {', '.join(sorted(_KNOWN - {'name'}))}")
        try:
            entries[name] = Weights(name=name, **table)
        except RegistryError as error:
            raise RegistryError(f"registry file {source}: {error}") from None
    return entries


def load_registry_file(path: str | os.PathLike[str]) -> dict[str, Weights]:
    """The entries of the registry file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RegistryError(f"registry file {path} cannot be read ({error.strerror}); "
                            f"check the path (set through {REGISTRY_ENV})") from None
    except UnicodeDecodeError as error:
        raise RegistryError(f"registry file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                            "save it as UTF-8") from None
    return parse_registry(text, str(path))


def builtin_registry_texts() -> list[tuple[str, str]]:
    """(source, TOML text) of the shipped registry files, package data of iabn_zoo.weights (a wheel, an editable
    install and a bare checkout such as torch.hub runs from all find them the same way)."""
    folder = importlib.resources.files(__package__) / "registry"
    return [(f"{REGISTRY_SOURCE}/{item.name}", item.read_text(encoding="utf-8"))
            for item in sorted(folder.iterdir(), key=lambda item: item.name) if item.name.endswith(".toml")]


_lock = threading.Lock()
_builtin: dict[str, Weights] | None = None
_extra_cache: dict[tuple, dict[str, Weights]] = {}
_user: dict[str, Weights] = {}
_hub: dict[str, Weights] = {}


def _merge(into: dict[str, Weights], entries: dict[str, Weights], source: str, sources: dict[str, str]) -> None:
    for name, weights in entries.items():
        if name in into:
            raise RegistryError(f"registry file {source}: entry {name!r} is already defined in {sources[name]}; "
                                "rename one of them")
        into[name] = weights
        sources[name] = source


def _builtin_entries() -> dict[str, Weights]:
    global _builtin
    with _lock:
        if _builtin is None:
            merged: dict[str, Weights] = {}
            sources: dict[str, str] = {}
            for source, text in builtin_registry_texts():
                _merge(merged, parse_registry(text, source), source, sources)
            _builtin = merged
        return _builtin


def extra_registry_paths() -> list[Path]:
    """The files named by IABN_ZOO_REGISTRY (os.pathsep-separated), in order."""
    value = os.environ.get(REGISTRY_ENV, "")
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


def _file_key(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _all_entries() -> dict[str, Weights]:
    merged = dict(_builtin_entries())
    sources = {name: "the built-in registry" for name in merged}
    for path in extra_registry_paths():
        key = _file_key(path)
        with _lock:
            entries = _extra_cache.get(key)
        if entries is None:
            entries = load_registry_file(path)
            with _lock:
                _extra_cache[key] = entries
        _merge(merged, entries, str(path), sources)
    with _lock:
        merged.update(_user)
    return merged


def list_weights(pattern: str = "*") -> list[str]:
    """Names of registered weights matching the fnmatch `pattern` (case ignored), sorted."""
    return sorted(name for name in _all_entries() if fnmatch.fnmatchcase(name.lower(), pattern.lower()))


def get_weights(name: str) -> Weights:
    """The entry called `name`, or for an architecture with published weights its default ones (what
    `create_model(arch, pretrained=True)` loads), or a Hub repository's (`hf-hub:ORG/NAME[@REVISION]`, from its
    config.json); unknown names raise UnknownNameError (a KeyError) with the closest names."""
    if is_hub_name(name):
        return _hub_entry(name)
    entries = _all_entries()
    if name in entries:
        return entries[name]
    if any(weights.arch == name for weights in entries.values()):
        return default_weights_for(name)
    raise UnknownNameError("weights", name, list(entries) + sorted({weights.arch for weights in entries.values()}))


def is_weights(name: str) -> bool:
    """Whether `name` is a registered weights name or a Hub repository name (not contacted here)."""
    return isinstance(name, str) and (is_hub_name(name) or name in _all_entries())


def _hub_entry(name: str) -> Weights:
    """The entry of a Hub repository, resolved once per process (its revision pinned to the commit then read)."""
    with _lock:
        cached = _hub.get(name)
    if cached is None:
        cached = Weights(**hub_weights_fields(name))
        with _lock:
            _hub[name] = cached
    return cached


def weights_for_arch(arch: str) -> list[Weights]:
    """Every registered entry whose checkpoint was trained for architecture `arch`, by name."""
    return [weights for _, weights in sorted(_all_entries().items()) if weights.arch == arch]


def default_weights_for(arch: str) -> Weights:
    """The best published weights (highest top-1, else mIoU) of an architecture, what `pretrained=True` takes."""
    candidates = weights_for_arch(arch)
    if not candidates:
        raise InvalidArgumentError(
            f"architecture {arch!r} has no published weights; `iabn-zoo list --pretrained` shows the ones that do "
            "(random weights only when asked for: pretrained=False, --no-pretrained)")
    return max(candidates, key=lambda w: float(w.metrics.get("top1", w.metrics.get("miou", 0.0))))


def find_weights_by_md5(md5: str) -> list[Weights]:
    """Entries whose checkpoint has this md5 (case-insensitive), for importing a file downloaded by hand."""
    wanted = md5.lower()
    return [weights for weights in _all_entries().values() if weights.md5 == wanted]


def register_weights(weights: Weights, *, overwrite: bool = False) -> Weights:
    """Add a user entry (e.g. a fine-tuned checkpoint on an internal server); an existing name needs overwrite=True."""
    if not isinstance(weights, Weights):
        raise InvalidArgumentError(f"register_weights takes a iabn_zoo.Weights, got {type(weights).__name__}")
    if is_hub_name(weights.name):
        raise InvalidArgumentError(f"{weights.name} names a Hub repository, which needs no registration: pass it "
                                   "wherever a weights name goes; register a plain name to list it as a source")
    if not overwrite and weights.name in _all_entries():
        raise RegistryError(f"weights {weights.name!r} are already registered; pass overwrite=True to replace them "
                            "or choose another name")
    with _lock:
        _user[weights.name] = weights
    return weights


def unregister_weights(name: str) -> None:
    """Remove a user entry added with register_weights (the shipped entries stay)."""
    with _lock:
        if name not in _user:
            raise UnknownNameError("user-registered weights", name, _user)
        del _user[name]
