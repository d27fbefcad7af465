"""Writing a repository (`save_pretrained`, no network) and pushing it to the Hub (`push_to_hub`).

A push checks, before any file is made, that there is a token, that the Hub accepts it, that it may write the
repository (or create it in that namespace); the folder is then written in a temporary directory (removed on every
path), the repository and branch created if needed, and everything committed at once. An existing model card on
the Hub is kept unless `replace_card`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import InvalidArgumentError, PublishError
from ...system.hashing import file_md5, file_sha256
from ...system.storage import check_output_folder, storage_guard
from ...system.tensor_files import write_safetensors
from . import client
from .card import render_card
from .names import PREFIX, parse_hub_name
from .publication import Publication, check_publishable, publication
from .repo_format import CARD_FILE, CLASSES_FILE, CONFIG_FILE, WEIGHTS_FILE, config_text

CREATING_ROLES = ("admin", "write", "contributor")


@dataclass(frozen=True)
class PushResult:
    """Where a push went: repository, branch, the commit made, its URL, the files sent and whether the existing
    card was kept."""

    repo_id: str
    revision: str
    commit: str
    url: str
    files: tuple[str, ...]
    card_kept: bool


def save_pretrained(model: str | os.PathLike[str], folder: str | os.PathLike[str], *, repo_id: str | None = None,
                    progress: bool = True) -> Path:
    """Write the repository MODEL (a finished fine-tuning RUN directory or a registered weights name) makes into
    `folder` (new or empty), without any network; `repo_id` (ORG/NAME) is what its card's usage lines name."""
    folder = Path(folder)
    if repo_id is not None:
        _repo_id(repo_id)
    check_publishable(model)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidArgumentError(f"{folder} is not an empty folder; save into a new one", parameters=("folder",))
    check_output_folder(folder, advice="choose another folder")
    return write_repository(publication(model, progress=progress), folder, repo_id)


def write_repository(content: Publication, folder: Path, repo_id: str | None) -> Path:
    """Write `content` into a temporary folder beside `folder`, then rename it into place (nothing is left of a
    failed write)."""
    parent = folder.parent
    with storage_guard(folder, advice="choose another folder"):
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
        try:
            _write_files(content, staging, repo_id)
            if folder.exists():
                folder.rmdir()  # empty, checked before
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder


def _write_files(content: Publication, folder: Path, repo_id: str | None) -> None:
    weights = folder / WEIGHTS_FILE
    if content.tensors_file is not None:
        shutil.copyfile(content.tensors_file, weights)
    else:
        write_safetensors(weights, content.tensors or {}, content.metadata)
    sha256 = file_sha256(weights)
    content.document["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256, "md5": file_md5(weights),
                                   "size": weights.stat().st_size}
    (folder / CONFIG_FILE).write_text(config_text(content.document), encoding="utf-8")
    (folder / CLASSES_FILE).write_bytes(content.classes_csv)
    line = f"`{WEIGHTS_FILE}`, sha256 `{sha256}`"
    if content.document["source"]["kind"] == "published":
        line += f", converted from `{content.document['source']['file']}` (md5 `{content.document['source']['md5']}`)"
    card = dataclasses.replace(content.card, weights_line=line)
    (folder / CARD_FILE).write_text(render_card(card, repo_id), encoding="utf-8")
    for name, source in content.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / name)


def push_to_hub(model: str | os.PathLike[str], repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, replace_card: bool = False, commit_message: str | None = None,
                progress: bool = True) -> PushResult:
    """Publish MODEL (a finished fine-tuning RUN directory or a registered weights name) to the Hub repository
    `repo_id` (ORG/NAME; created, `private` if asked, when it does not exist) on branch `revision` (default main).
    `token` defaults to HF_TOKEN or the one saved by `hf auth login`."""
    repo_id = _repo_id(repo_id)
    hub = client.library()
    check_publishable(model)
    token = token or hub.get_token()
    if not token:
        raise PublishError(f"pushing to {repo_id} needs a Hugging Face token with write access: set HF_TOKEN (or run "
                           "`hf auth login`); nothing was sent", repo=repo_id, reason="no-token")
    api = hub.HfApi(token=token, library_name="iabn-zoo", library_version=__version__)
    exists = _check_write_access(api, repo_id)
    with tempfile.TemporaryDirectory(prefix="iabn-zoo-push-") as staging:
        folder = write_repository(publication(model, progress=progress), Path(staging) / "repo", repo_id)
        with _refusals(repo_id), client.library_bars(progress):
            if not exists:
                client.call_hub(api.create_repo, repo_id, private=private, exist_ok=True)
            if revision not in (None, "main"):
                client.call_hub(api.create_branch, repo_id, branch=revision, exist_ok=True)
            keep_card = exists and not replace_card and client.call_hub(
                api.file_exists, repo_id, CARD_FILE, revision=revision)
            files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
            files = [name for name in files if not (keep_card and name == CARD_FILE)]
            operations = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                          for name in files]
            info = client.call_hub(api.create_commit, repo_id, operations, revision=revision,
                                   commit_message=commit_message or f"Upload {Path(os.fspath(model)).name} with "
                                                                    f"iabn-zoo {__version__}")
    return PushResult(repo_id, revision or "main", info.oid, str(info.commit_url), tuple(files), bool(keep_card))


def _repo_id(text: str) -> str:
    """ORG/NAME (an `hf-hub:` prefix is allowed; a revision is not: it is `revision`)."""
    name = parse_hub_name(text if text.startswith(PREFIX) else PREFIX + text, parameter="repository")
    if name.revision is not None:
        raise InvalidArgumentError(f"give the branch to push to as revision, not in the repository id {text!r}")
    return name.repo_id


def _check_write_access(api: Any, repo_id: str) -> bool:
    """Whether `repo_id` exists; PublishError when the token is invalid, read-only, or may not write it (or create
    it in its namespace)."""
    errors = client.library().errors
    try:
        me = client.call_hub(api.whoami)
    except errors.HfHubHTTPError:
        raise PublishError(f"the Hub at {client.endpoint()} refused the token (invalid or expired): set a valid one "
                           "in HF_TOKEN (or run `hf auth login`); nothing was sent", repo=repo_id,
                           reason="invalid-token") from None
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(f"the token of {me.get('name')} is read-only: pushing to {repo_id} needs a token with write "
                           "access (create one in your Hub settings)", repo=repo_id, reason="read-only-token")
    try:
        client.call_hub(api.auth_check, repo_id, write=True)
        return True
    except errors.RepositoryNotFoundError:
        pass  # not there (or not visible): it is created, where the namespace allows
    except errors.HfHubHTTPError as error:
        raise PublishError(f"the token of {me.get('name')} may not write {repo_id} (HTTP "
                           f"{error.response.status_code}): ask its owners for write access, or push to a "
                           "repository of your own; nothing was sent", repo=repo_id, reason="forbidden") from None
    namespace = repo_id.partition("/")[0]
    allowed = {me.get("name")} | {org.get("name") for org in me.get("orgs") or []
                                  if org.get("roleInOrg") in CREATING_ROLES}
    if namespace not in allowed and role != "fineGrained":
        raise PublishError(f"{repo_id} does not exist and {me.get('name')} may not create repositories in "
                           f"{namespace}: push to {me.get('name')}/{repo_id.partition('/')[2]}, or ask for a role in "
                           f"{namespace}; nothing was sent", repo=repo_id, reason="forbidden")
    return False


@contextmanager
def _refusals(repo_id: str) -> Iterator[None]:
    """Around the requests that change the repository: the Hub's refusals as PublishError."""
    errors = client.library().errors
    try:
        yield
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        raise PublishError(f"the Hub refused the push to {repo_id} (HTTP {status}: {client.first_line(error)})",
                           repo=repo_id, reason="rejected") from None
