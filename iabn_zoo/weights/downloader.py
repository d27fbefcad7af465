"""The download manager: fetch a checkpoint into the cache, verified by md5, or fail with a typed error.

A transfer streams into `<file>.part` while another thread hashes the bytes already written (one pass, no re-read),
retries transient failures (timeouts, connections reset mid-transfer, 5xx answers) with backoff, resumes with HTTP
Range (restarting cleanly when a server ignores it), follows Drive's "Download anyway" pages and turns quota or
permission pages into advice. A host that cannot be reached at all (connection refused, no route, a name that does
not resolve: an offline machine) fails at once, with the way to fetch the file by hand. Only a file whose
size and md5 check out is renamed onto the cache path; a cross-process lock makes concurrent callers share one
transfer. A Hub source (`hf-hub:...`, see `hf_hub.fetch`) leaves its verified file in the Hugging Face cache and
answers with that path; so does a Hub repository's own entry.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError

from .. import __version__
from ..errors import CacheWriteError, ChecksumError, DownloadError
from ..system.hashing import file_md5
from ..system.progress import progress_bar
from .cache import (
    checkpoint_path,
    ensure_directory,
    file_lock,
    has_valid_stamp,
    install_verified,
    part_path,
    remove_quietly,
    stamp_path,
    write_stamp,
)
from .catalog import Weights, get_weights
from .gdrive import classify_page, direct_url
from .hf_hub.fetch import fetch_mirror, fetch_repo_weights
from .hf_hub.names import is_hub_name
from .offline import OFFLINE_ENV, is_offline
from .sources import ordered_sources
from .partial_file import PartialFile, stream_into

HTML_PAGE_LIMIT = 2 << 20
HTML_PREFIXES = (b"<!doctype html", b"<html")
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts (seconds), retries of transient failures with exponential backoff, and transfer chunk size."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    chunk_size: int = 1 << 20
    max_page_hops: int = 3

    def pause(self, attempt: int) -> None:
        """Sleep before retry number `attempt` (1-based)."""
        time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


class _Interrupted(Exception):
    """The transfer stopped early (connection lost, short body); the partial file is kept for a resume unless
    `restart` says its bytes cannot be continued."""

    def __init__(self, message: str, *, restart: bool = False):
        super().__init__(message)
        self.restart = restart


def download(name_or_weights: str | Weights, *, cache_dir: str | os.PathLike[str] | None = None,
             progress: bool = True, force: bool = False, policy: DownloadPolicy | None = None,
             sources: list[str] | tuple[str, ...] | None = None) -> Path:
    """The verified checkpoint of a weights entry in the cache (`cache_dir` replaces the cache root), downloading
    it first if needed; `force` fetches it again even when a verified copy exists. Sources are tried in order
    (IABN_ZOO_MIRRORS first); `sources` picks and orders them for this call (see `sources.ordered_sources`). A Hub
    source, and a Hub repository's own entry, answer with the verified file in the Hugging Face cache."""
    weights = name_or_weights if isinstance(name_or_weights, Weights) else get_weights(name_or_weights)
    chosen = ordered_sources(weights, sources)
    if is_hub_name(weights.name):
        return fetch_repo_weights(weights, progress=progress, force=force)
    target = checkpoint_path(weights, Path(cache_dir).expanduser() if cache_dir is not None else None)
    if not force and has_valid_stamp(target, weights.md5):
        return target
    if is_offline() and not target.exists():
        cached = _cached_hub_copy(weights, chosen)
        if cached is not None:
            return cached
        raise DownloadError(f"{weights.name} is not cached ({target} is missing) and {OFFLINE_ENV}=1 forbids "
                            f"downloading it: unset {OFFLINE_ENV}, or fetch it elsewhere and run "
                            f"`iabn-zoo import FILE --name {weights.name}`")
    with file_lock(target):
        if (not force or is_offline()) and _cached_copy_is_valid(target, weights):
            return target  # offline, `force` cannot refetch: a valid cached copy is the answer
        if is_offline():
            raise DownloadError(f"the cached {target} does not match md5 {weights.md5} and was removed; "
                                f"{OFFLINE_ENV}=1 forbids downloading it again: unset {OFFLINE_ENV}")
        return _download_locked(weights, target, progress, policy or DownloadPolicy(), chosen, force)


def _cached_hub_copy(weights: Weights, sources: tuple[str, ...]) -> Path | None:
    """Offline: the verified file a Hub source left in the Hugging Face cache, if any."""
    for source in filter(is_hub_name, sources):
        try:
            return fetch_mirror(source, weights, progress=False)
        except DownloadError:
            continue
    return None


def _cached_copy_is_valid(target: Path, weights: Weights) -> bool:
    """Whether `target` holds the right file (re-hashing an unstamped one); a wrong file is removed."""
    if has_valid_stamp(target, weights.md5):
        return True
    if not target.exists():
        return False
    actual = file_md5(target)
    if actual == weights.md5:
        write_stamp(target, weights.md5)
        return True
    if not is_offline():  # offline, the error that follows says it
        warnings.warn(f"cached copy of {weights.name} is corrupt (md5 {actual}, want {weights.md5}): downloading "
                      "again", stacklevel=3)
    remove_quietly(target)
    remove_quietly(stamp_path(target))
    return False


def _download_locked(weights: Weights, target: Path, progress: bool, policy: DownloadPolicy,
                     sources: tuple[str, ...], force: bool) -> Path:
    if weights.file_size:  # room for what is still to come, before any request
        kept = part_path(target).stat().st_size if part_path(target).is_file() else 0
        ensure_directory(target.parent, needed=max(weights.file_size - kept, 0))
    failures: list[tuple[str, DownloadError]] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = f"iabn-zoo/{__version__}"
        for url in sources:
            try:
                if is_hub_name(url):
                    return fetch_mirror(url, weights, progress=progress, force=force)
                _fetch(session, url, part_path(target), weights, progress, policy)
            except CacheWriteError:
                raise
            except DownloadError as error:
                failures.append((url, error))
                continue
            return install_verified(part_path(target), target, weights.md5)
    raise _combined_error(weights, failures)


def _combined_error(weights: Weights, failures: list[tuple[str, DownloadError]]) -> DownloadError:
    if len(failures) == 1:
        return failures[0][1]
    summary = "; ".join(f"[{url}] {error}" for url, error in failures)
    checksum_errors = [error for _, error in failures if isinstance(error, ChecksumError)]
    if len(checksum_errors) == len(failures):
        last = checksum_errors[-1]
        return ChecksumError(f"every source of {weights.name} failed verification: {summary}",
                             expected=last.expected, actual=last.actual, source=last.source)
    return DownloadError(f"every source of {weights.name} failed: {summary}")


def _fetch(session: requests.Session, url: str, part: Path, weights: Weights, progress: bool,
           policy: DownloadPolicy) -> None:
    """Bring `part` to the complete, md5-verified file from one source, resuming and retrying as needed."""
    ensure_directory(part.parent)
    partial = PartialFile(part)
    source = direct_url(url)
    failed_attempts = 0
    while True:
        if partial.size and partial.digest.hexdigest() == weights.md5:
            return  # a complete file was kept from an earlier, interrupted run
        before = partial.size
        try:
            response = _open(session, source, partial.size, weights, policy)
            with response:
                _receive(response, partial, weights, progress, policy)
        except (_Interrupted, *TRANSIENT) as error:
            if isinstance(error, _Interrupted) and error.restart:
                partial.restart()
            failed_attempts = 0 if partial.size > before else failed_attempts + 1
            if failed_attempts > policy.retries:
                raise DownloadError(f"{url} kept failing ({error}); {partial.size} bytes are kept in {part} and "
                                    "the next `iabn-zoo download` resumes from there") from None
            policy.pause(max(failed_attempts, 1))
            continue
        except requests.RequestException as error:  # not transient: a redirect to file://, a loop, a bad URL
            raise DownloadError(f"{url} cannot be fetched ({type(error).__name__}: {error}); check the source in the "
                                f"registry, or {by_hand(weights)}") from None
        actual = partial.digest.hexdigest()
        if actual == weights.md5:
            return
        if partial.resumed:  # the kept prefix may be the damaged part: one clean restart
            partial.restart()
            continue
        remove_quietly(part)
        raise ChecksumError(f"{weights.file_name} from {url} has md5 {actual}, expected {weights.md5}; the damaged "
                            "file was removed (run the download again, or check the registry entry)",
                            expected=weights.md5, actual=actual, source=url)


def _open(session: requests.Session, url: str, offset: int, weights: Weights,
          policy: DownloadPolicy) -> requests.Response:
    """A streaming response with the file's bytes from `offset`, after following Drive's confirmation pages;
    5xx answers and connection errors are retried here, other answers raise."""
    hops = failures = 0
    while True:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = session.get(url, headers=headers, stream=True,
                                   timeout=(policy.connect_timeout, policy.read_timeout))
        except TRANSIENT as error:
            reason = unreachable_reason(error)
            if reason is not None:
                raise DownloadError(f"cannot reach {urlsplit(url).hostname}: {reason}. Is this machine offline? "
                                    f"To get the file by hand, {by_hand(weights)}") from None
            failures += 1
            if failures > policy.retries:
                raise DownloadError(f"{url} kept failing ({error}); check the network, or {by_hand(weights)}") \
                    from None
            policy.pause(failures)
            continue
        if response.status_code >= 500:
            response.close()
            failures += 1
            if failures > policy.retries:
                raise DownloadError(f"{url} answered HTTP {response.status_code} {failures} times; the server is "
                                    "failing: try again later or use another source")
            policy.pause(failures)
            continue
        if response.status_code == 416 and offset:
            response.close()
            raise _Interrupted("the server refused the resume range", restart=True)
        if response.status_code >= 400:
            response.close()
            raise DownloadError(f"{url} answered HTTP {response.status_code} {response.reason}; the link may be out "
                                f"of date: {by_hand(weights)}")
        if not _declares_html(response):
            return response
        url = _next_page(session, response, weights, url)
        hops += 1
        if hops > policy.max_page_hops:
            raise DownloadError(f"{url} kept answering HTML pages instead of {weights.file_name}; {by_hand(weights)}")


def by_hand(weights: Weights) -> str:
    """The way around any download failure: the browser, then `iabn-zoo import`."""
    link = next((url for url in weights.urls if not is_hub_name(url)), weights.urls[0])
    return (f"open {link} in a browser, download {weights.file_name}, then run "
            f"`iabn-zoo import FILE --name {weights.name}`")


def unreachable_reason(error: Exception) -> str | None:
    """Why a connection could not even be opened (refused, no route, unresolvable name), None for failures worth
    retrying (timeouts, resets, broken transfers)."""
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # requests wraps urllib3's MaxRetryError around the cause
    if isinstance(reason, NameResolutionError):
        return "its name does not resolve"
    if isinstance(reason, NewConnectionError):
        cause = reason.__context__ or reason.__cause__
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else "no connection could be made"
        return detail[0].lower() + detail[1:]
    return None


def _declares_html(response: requests.Response) -> bool:
    return "text/html" in response.headers.get("Content-Type", "").lower()


def _next_page(session: requests.Session, response: requests.Response, weights: Weights, url: str) -> str:
    """The URL a Drive confirmation page leads to; quota, permission and unknown pages raise a DownloadError."""
    body = b""
    with response:  # iter_content turns a broken page transfer into requests' (retried) exceptions
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) >= HTML_PAGE_LIMIT:
                break
    page = classify_page(body.decode("utf-8", "replace"), response.url, session.cookies.get_dict())
    if page.next_url is not None:
        return page.next_url
    if page.kind == "quota":
        reason = "Google Drive's download quota for this file is exhausted (too many users downloaded it recently)"
    elif page.kind == "permission":
        reason = "the file needs a sign-in or permission the download manager does not have"
    else:
        reason = f"{url} answered an HTML page ({page.title or 'untitled'!r}) instead of the file"
    raise DownloadError(f"{reason}. To get the file by hand, {by_hand(weights)}")


def _receive(response: requests.Response, partial: PartialFile, weights: Weights, progress: bool,
             policy: DownloadPolicy) -> None:
    """Append the response body to the partial file, hashing on another thread; raise _Interrupted if short."""
    if response.status_code == 206 and _range_start(response) != partial.size:
        raise _Interrupted("the server answered another range than asked", restart=True)
    if response.status_code != 206 and partial.size:
        partial.restart()  # the server ignored Range: start over from its first byte
    expected = _expected_size(response, partial.size, weights)
    chunks = response.iter_content(chunk_size=policy.chunk_size)
    first = next(chunks, b"")
    if partial.size == 0 and first.lstrip()[:14].lower().startswith(HTML_PREFIXES):
        raise DownloadError(f"{response.url} sent an HTML page instead of {weights.file_name}; {by_hand(weights)}")
    with progress_bar(total=expected, initial=partial.size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=weights.file_name, enabled=progress, leave=False) as bar:
        stream_into(partial, first, chunks, bar)
    if expected is not None and partial.size < expected:
        raise _Interrupted(f"received {partial.size} of {expected} bytes")
    if expected is not None and partial.size > expected:
        remove_quietly(partial.path)
        raise ChecksumError(f"{weights.file_name} from {response.url} has {partial.size} bytes, expected "
                            f"{expected}; the file was removed", expected=weights.md5, actual="", source=response.url)


def _range_start(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _expected_size(response: requests.Response, offset: int, weights: Weights) -> int | None:
    if weights.file_size is not None:
        return weights.file_size
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length", "")
    return offset + int(length) if length.isdigit() and not response.headers.get("Content-Encoding") else None
