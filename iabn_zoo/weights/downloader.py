"""The download manager: fetch a checkpoint into the cache, verified by md5, or fail with a typed error.

A transfer streams into `<file>.part` while another thread hashes the bytes already written (one pass, no re-read),
retries connection errors and 5xx with backoff, resumes with HTTP Range (restarting cleanly when a server ignores
it), follows Drive's "Download anyway" pages and turns quota or permission pages into advice. Only a file whose
size and md5 check out is renamed onto the cache path; a cross-process lock makes concurrent callers share one
transfer.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from .. import __version__
from ..errors import CacheWriteError, ChecksumError, DownloadError
from ..system.hashing import file_md5
from .cache import (
    HOME_ENV,
    OFFLINE_ENV,
    checkpoint_path,
    ensure_directory,
    file_lock,
    has_valid_stamp,
    install_verified,
    is_offline,
    part_path,
    remove_quietly,
    stamp_path,
    write_stamp,
)
from .catalog import Weights, get_weights
from .gdrive import classify_page, direct_url

HTML_PAGE_LIMIT = 2 << 20
FLUSH_EVERY = 64 << 20
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
             progress: bool = True, force: bool = False, policy: DownloadPolicy | None = None) -> Path:
    """The verified checkpoint of a weights entry in the cache (`cache_dir` replaces the cache root), downloading
    it first if needed; `force` fetches it again even when a verified copy exists."""
    weights = name_or_weights if isinstance(name_or_weights, Weights) else get_weights(name_or_weights)
    target = checkpoint_path(weights, Path(cache_dir).expanduser() if cache_dir is not None else None)
    if not force and has_valid_stamp(target, weights.md5):
        return target
    if is_offline() and not target.exists():
        raise DownloadError(f"{weights.name} is not cached ({target} is missing) and {OFFLINE_ENV}=1 forbids "
                            f"downloading it: unset {OFFLINE_ENV}, or fetch it elsewhere and run "
                            f"`iabn-zoo import FILE --name {weights.name}`")
    with file_lock(target):
        if (not force or is_offline()) and _cached_copy_is_valid(target, weights):
            return target  # offline, `force` cannot refetch: a valid cached copy is the answer
        if is_offline():
            raise DownloadError(f"the cached {target} does not match md5 {weights.md5} and was removed; "
                                f"{OFFLINE_ENV}=1 forbids downloading it again: unset {OFFLINE_ENV}")
        return _download_locked(weights, target, progress, policy or DownloadPolicy())


def _cached_copy_is_valid(target: Path, weights: Weights) -> bool:
    """Whether `target` holds the right file (re-hashing an unstamped one); a wrong file is removed."""
    if has_valid_stamp(target, weights.md5):
        return True
    if not target.exists():
        return False
    if file_md5(target) == weights.md5:
        write_stamp(target, weights.md5)
        return True
    remove_quietly(target)
    remove_quietly(stamp_path(target))
    return False


def _download_locked(weights: Weights, target: Path, progress: bool, policy: DownloadPolicy) -> Path:
    failures: list[tuple[str, DownloadError]] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = f"iabn-zoo/{__version__}"
        for url in weights.urls:
            try:
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


class _PartialFile:
    """The `.part` file of one transfer, with the md5 of the bytes it holds (kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.md5()
        self.size = 0
        self.resumed = False
        if path.exists():
            self._hash_kept_prefix()

    def _hash_kept_prefix(self) -> None:
        buffer = bytearray(1 << 20)
        with open(self.path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                self.digest.update(memoryview(buffer)[:count])
                self.size += count
        self.resumed = self.size > 0

    def restart(self) -> None:
        """Forget the kept bytes: truncate the file and the hash."""
        self.digest, self.size, self.resumed = hashlib.md5(), 0, False
        _write_guard(self.path, lambda: open(self.path, "wb").close())


def _write_guard(path: Path, action):
    """Run a file-system `action`; an OSError becomes a CacheWriteError naming `path` (the partial file removed)."""
    try:
        return action()
    except OSError as error:
        remove_quietly(path)
        raise CacheWriteError(f"cannot write {path} ({error.strerror or error}); free some space, fix the "
                              f"permissions or point {HOME_ENV} to another disk") from None


def _fetch(session: requests.Session, url: str, part: Path, weights: Weights, progress: bool,
           policy: DownloadPolicy) -> None:
    """Bring `part` to the complete, md5-verified file from one source, resuming and retrying as needed."""
    ensure_directory(part.parent)
    partial = _PartialFile(part)
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
                                f"registry, or download {weights.file_name} in a browser and run "
                                "`iabn-zoo import FILE`") from None
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
            failures += 1
            if failures > policy.retries:
                raise DownloadError(f"cannot reach {url} ({error}); check the network or the mirror") from None
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
                                f"of date: download {weights.file_name} in a browser and run `iabn-zoo import FILE`")
        if not _declares_html(response):
            return response
        url = _next_page(session, response, weights, url)
        hops += 1
        if hops > policy.max_page_hops:
            raise DownloadError(f"{url} kept answering HTML pages instead of {weights.file_name}; download it in a "
                                "browser and run `iabn-zoo import FILE`")


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
    original = weights.urls[0]
    if page.kind == "quota":
        reason = "Google Drive's download quota for this file is exhausted (too many users downloaded it recently)"
    elif page.kind == "permission":
        reason = "the file needs a sign-in or permission the download manager does not have"
    else:
        reason = f"{url} answered an HTML page ({page.title or 'untitled'!r}) instead of the file"
    raise DownloadError(f"{reason}. Open {original} in a browser, download {weights.file_name}, then run "
                        f"`iabn-zoo import FILE --name {weights.name}`")


def _receive(response: requests.Response, partial: _PartialFile, weights: Weights, progress: bool,
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
        raise DownloadError(f"{response.url} sent an HTML page instead of {weights.file_name}; download it in a "
                            "browser and run `iabn-zoo import FILE`")
    show = progress and sys.stderr.isatty()
    with tqdm(total=expected, initial=partial.size, unit="B", unit_scale=True, unit_divisor=1024,
              desc=weights.file_name, disable=not show, leave=False) as bar:
        _stream_into(partial, first, chunks, bar)
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


def _stream_into(partial: _PartialFile, first: bytes, chunks, bar: tqdm) -> None:
    """Write chunks to the partial file on this thread while a worker thread hashes them, in order, and another
    flushes written data to disk now and then, so that the final fsync has little left to do."""
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    worker = threading.Thread(target=_hash_worker, args=(partial.digest, pending), daemon=True)
    handle = _write_guard(partial.path, lambda: open(partial.path, "ab"))
    flusher = _BackgroundFlush(handle)
    worker.start()
    try:
        chunk = first
        while True:
            if chunk:
                _write_guard(partial.path, lambda: handle.write(chunk))
                partial.size += len(chunk)
                pending.put(chunk)
                bar.update(len(chunk))
                flusher.written(len(chunk))
            chunk = next(chunks, None)
            if chunk is None:
                break
    finally:
        pending.put(None)
        worker.join()
        flusher.join()
        handle.close()


class _BackgroundFlush:
    """Starts an fdatasync of the partial file on a helper thread every FLUSH_EVERY bytes (one at a time), so
    disk writeback overlaps the transfer instead of adding to it."""

    def __init__(self, handle):
        self.handle = handle
        self.unflushed = 0
        self.thread: threading.Thread | None = None

    def written(self, count: int) -> None:
        self.unflushed += count
        if self.unflushed < FLUSH_EVERY or (self.thread is not None and self.thread.is_alive()):
            return
        self.handle.flush()
        self.unflushed = 0
        self.thread = threading.Thread(target=_quiet_fdatasync, args=(self.handle.fileno(),), daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _quiet_fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # a real disk error surfaces at the final fsync, which names the file


def _hash_worker(digest, pending: queue.Queue) -> None:
    while (chunk := pending.get()) is not None:
        digest.update(chunk)
