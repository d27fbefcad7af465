"""The one door to `huggingface_hub` (the `hub` extra): importing it, fetching one file of a repository into the
Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE as huggingface_hub reads them;
IABN_ZOO_OFFLINE as well), and turning its exceptions into this package's typed errors with the way around.

A Hub that cannot be reached at all (connection refused, a name that does not resolve) is said at once, as for
any other source: huggingface_hub would otherwise retry a refused connection for about half a minute before it
looks into its cache. A file already cached is then used, as huggingface_hub itself does.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from ... import __version__
from ...errors import DownloadError, HubError, MissingExtraError, ZooError
from ...system.progress import progress_bar_class, shows_progress
from ..offline import OFFLINE_ENV, is_offline
from .names import HubName, is_commit

EXTRA = "hub"
INSTALL = "pip install 'iabn-zoo[hub]'"
PROBE_TIMEOUT = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_reachable: set[str] = set()  # endpoints this process has connected to


def library() -> ModuleType:
    """huggingface_hub, or a MissingExtraError naming the extra that brings it."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError:
        raise MissingExtraError(f"the Hugging Face Hub needs the `{EXTRA}` extra (huggingface_hub), which is not "
                                f"installed: {INSTALL}", extra=EXTRA) from None
    return huggingface_hub


def endpoint() -> str:
    """The Hub's address: HF_ENDPOINT as huggingface_hub read it at import, else https://huggingface.co."""
    return library().constants.ENDPOINT


def hub_cache() -> Path:
    """The Hugging Face cache of repositories (HF_HUB_CACHE, else HF_HOME/hub)."""
    return Path(library().constants.HF_HUB_CACHE)


def repo_cache_dir(repo_id: str) -> Path:
    """The folder of `repo_id` in the Hugging Face cache (`models--ORG--NAME`, its documented layout)."""
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def offline_flag() -> str | None:
    """The variable that forbids the network (IABN_ZOO_OFFLINE or HF_HUB_OFFLINE), None when online."""
    if is_offline():
        return OFFLINE_ENV
    return "HF_HUB_OFFLINE" if library().constants.HF_HUB_OFFLINE else None


def has_token() -> bool:
    """Whether a token will be sent (HF_TOKEN, or one saved by `hf auth login`)."""
    return library().get_token() is not None


def download_file(name: HubName, filename: str, *, progress: bool = True, force: bool = False) -> Path:
    """`filename` of repository `name` (at its revision) in the Hugging Face cache, downloaded unless cached."""
    hub = library()
    offline = offline_flag() is not None
    if not offline and not (is_commit(name.revision) and cached_file(name, filename) is not None):
        reason = unreachable_reason(endpoint())
        if reason is not None:
            cached = cached_file(name, filename)
            if cached is not None and not force:
                return cached
            raise HubError(unreachable_message(name, filename, reason), repo=name.repo_id, reason="unreachable")
    try:
        path = hub.hf_hub_download(name.repo_id, filename, revision=name.revision, local_files_only=offline,
                                   force_download=force and not offline, tqdm_class=progress_bar_class(progress),
                                   library_name="iabn-zoo", library_version=__version__)
    except Exception as error:
        raise hub_error(error, name, filename) from None
    return Path(path)


def cached_file(name: HubName, filename: str) -> Path | None:
    """The cached copy of `filename` at `name`'s revision (a branch as last resolved), None when not cached."""
    found = library().try_to_load_from_cache(name.repo_id, filename, revision=name.revision)
    return Path(found) if isinstance(found, str) else None


def snapshot_commit(path: Path) -> str:
    """The commit a file of the cache belongs to (its folder under `snapshots/`)."""
    return path.parent.name


def unreachable_reason(url: str) -> str | None:
    """Why no connection to `url`'s host can be opened (refused, no route, unresolvable name), None when one can or
    a proxy stands between (then huggingface_hub finds out itself)."""
    if url in _reachable or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT).close()
    except socket.gaierror:
        return "its name does not resolve"
    except TimeoutError:
        return f"it did not answer within {PROBE_TIMEOUT:.0f} s"
    except (OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or str(error) or "no connection could be made"
        return detail[0].lower() + detail[1:]
    _reachable.add(url)
    return None


def unreachable_message(name: HubName, filename: str, reason: str) -> str:
    """What to do when the Hub cannot be reached and the file is not cached."""
    return (f"cannot reach the Hugging Face Hub at {endpoint()} ({reason}), and {filename} of {name} is not in the "
            f"Hugging Face cache ({hub_cache()}). Is this machine offline? Set HF_ENDPOINT to a mirror of the Hub you "
            "can reach; or, where the files were downloaded before, HF_HUB_OFFLINE=1; or download the repository's "
            "files by hand into a folder and pass that folder as the MODEL (for a registered weights name, "
            "`iabn-zoo import FILE --name NAME`)")


def hub_error(error: Exception, name: HubName, filename: str) -> ZooError | Exception:
    """The typed error of a huggingface_hub failure fetching `filename` of `name`; unknown failures are kept."""
    errors = library().errors
    repo = name.repo_id
    where = f"{endpoint()}/{repo}"
    if isinstance(error, errors.GatedRepoError):
        return HubError(f"{name} is gated: accept its conditions at {where} while signed in, then set HF_TOKEN to a "
                        "token of that account (or run `hf auth login`)", repo=repo, reason="gated")
    if isinstance(error, errors.RepositoryNotFoundError):
        access = ("the token sent has no access to it" if has_token() else
                  "no token was sent: set HF_TOKEN (or run `hf auth login`)")
        return HubError(f"no repository {repo} at {endpoint()}, or it is private or gated and {access}; check the "
                        "name", repo=repo, reason="repo-not-found")
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{repo} has no revision {name.revision!r}; give a branch, tag or commit it has (see "
                        f"{where}), or none for its default branch", repo=repo, reason="revision-not-found")
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return HubError(f"{name} has no file {filename}" + (
            "; it is not a repository of this package's layout (publish one with `iabn-zoo push`)"
            if filename == "config.json" else ""), repo=repo, reason="file-not-found")
    if isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        flag = offline_flag()
        if flag is not None:
            return HubError(f"{filename} of {name} is not in the Hugging Face cache ({hub_cache()}) and {flag}=1 "
                            f"forbids downloading it: unset {flag} to download it once", repo=repo, reason="offline")
        return HubError(unreachable_message(name, filename, str(error).splitlines()[0]), repo=repo,
                        reason="unreachable")
    if isinstance(error, errors.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return HubError(f"the Hub refused the token for {name} (HTTP 401): HF_TOKEN (or the token saved by "
                            "`hf auth login`) is invalid or expired; set a valid one", repo=repo,
                            reason="unauthorized")
        return HubError(f"the Hub answered HTTP {status} for {filename} of {name}: {first_line(error)}; try again "
                        "later", repo=repo, reason="http")
    if type(error).__module__.startswith(("httpx", "httpcore")):
        return HubError(unreachable_message(name, filename, first_line(error)), repo=repo, reason="unreachable")
    if isinstance(error, OSError) and "Consistency check failed" in str(error):
        return DownloadError(f"{filename} of {name} arrived incomplete ({first_line(error)}); run the command again")
    return error


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's text (huggingface_hub's messages run over several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def discard(path: Path, *, whole_repo: bool) -> None:
    """Remove a file of the cache that failed verification: its snapshot link and the blob behind it; with
    `whole_repo` (the repository was not cached before this call) its whole folder and lock folder."""
    blob = path.resolve()
    for item in (path, blob):
        try:
            item.unlink()
        except FileNotFoundError:
            pass
    if whole_repo:
        folder = path.parents[2] if path.parent.parent.name == "snapshots" else blob.parent.parent
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder.parent / ".locks" / folder.name, ignore_errors=True)


@contextmanager
def library_bars(progress: bool) -> Iterator[None]:
    """huggingface_hub's own bars (an upload's) only where ours may be drawn: at a terminal, when allowed."""
    hub = library()
    if (shows_progress(progress) or hub.utils.are_progress_bars_disabled()
            or hub.constants.HF_HUB_DISABLE_PROGRESS_BARS is False):
        yield
        return
    hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        hub.utils.enable_progress_bars()


def call_hub(action: Any, *args: Any, **kwargs: Any) -> Any:
    """`action(*args, **kwargs)` of huggingface_hub, its connection failures said as HubError (for the calls that
    are not a file download)."""
    try:
        return action(*args, **kwargs)
    except Exception as error:
        if type(error).__module__.startswith(("httpx", "httpcore")):
            raise HubError(f"cannot reach the Hugging Face Hub at {endpoint()} ({first_line(error)}); check the "
                           "connection or HF_ENDPOINT", reason="unreachable") from None
        raise
