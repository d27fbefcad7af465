"""From `hf-hub:ORG/NAME[@REVISION]` to the fields of a `Weights` entry: the repository's config.json (and classes.csv)
fetched into the Hugging Face cache and checked, the revision pinned to the commit they came from, so that the
tensors are later read from the same commit. The weights file itself is fetched only when the network is built
(`fetch`), after the architecture and its arguments have been checked: a config this version cannot read costs no
download of the tensors, and a refused config.json fetched by this call is removed from the cache again.
"""

from __future__ import annotations

from typing import Any

from ...errors import CheckpointError
from . import client
from .names import parse_hub_name
from .repo_format import CLASSES_FILE, CONFIG_FILE, read_config, weights_fields


def hub_weights_fields(text: str) -> dict[str, Any]:
    """The `Weights` fields of the repository `text` names (see `repo_format.weights_fields`)."""
    name = parse_hub_name(text)
    repo_was_cached = client.repo_cache_dir(name.repo_id).exists()
    config_was_cached = client.cached_file(name, CONFIG_FILE) is not None
    config_path = client.download_file(name, CONFIG_FILE, progress=False)
    pinned = name.at(client.snapshot_commit(config_path))
    try:
        document = read_config(config_path, source=name.text)
    except CheckpointError:
        if not config_was_cached:
            client.discard(config_path, whole_repo=not repo_was_cached)
        raise
    if not document.get("labels"):
        client.download_file(pinned, CLASSES_FILE, progress=False)
    return weights_fields(document, name=name.text, source=pinned.text, folder=config_path.parent)


def hub_details(weights: Any) -> dict[str, Any]:
    """Where a Hub repository's entry comes from: repository, pinned commit, Hub, whether its weights file is in
    the Hugging Face cache and where."""
    pinned = parse_hub_name(weights.urls[0])
    cached = client.cached_file(pinned, weights.file_name)
    return {"repo": pinned.repo_id, "commit": pinned.revision, "endpoint": client.endpoint(),
            "cached": cached is not None, "cache_path": str(cached or client.repo_cache_dir(pinned.repo_id))}
