"""The download manager against a real HTTP server on 127.0.0.1: faults, resume, Drive pages, locking, offline."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path

import pytest
from support import forkserver
from support.loopback_server import Fault, md5_of, random_payload

from iabn_zoo.errors import ChecksumError, DownloadError, UnknownNameError
from iabn_zoo.weights.cache import checkpoint_path, has_valid_stamp, part_path
from iabn_zoo.weights.catalog import Weights
from iabn_zoo.weights.downloader import DownloadPolicy, download

PAYLOAD = random_payload(3 * (1 << 20) + 12345, seed=9)
# No test here waits for a read timeout but the stall test, which gets its own: a busy machine must not turn a
# normal read into a timeout (and a retry the request counts would see).
FAST = DownloadPolicy(connect_timeout=10.0, read_timeout=30.0, retries=3, backoff=0.01, chunk_size=64 * 1024)
STALL_TIMEOUT = 2.0  # the stall test's read timeout; the stall itself lasts until the server stops


def entry(*urls: str, payload: bytes = PAYLOAD, name: str = "test_net", **changes) -> Weights:
    """A registry entry for `payload` served at `urls`."""
    weights = Weights(name=name, arch="resnet34", arch_kwargs={"bn_mode": "inplace"}, urls=tuple(urls),
                      md5=md5_of(payload), file_name=f"{name}.pth.tar", num_classes=10, task="classification",
                      metrics={}, license="test", preprocessing={}, description="served from loopback")
    return dataclasses.replace(weights, **changes) if changes else weights


def cache_files(home: Path) -> list[str]:
    """Names of the data files in the checkpoint cache (locks and stamps left out)."""
    folder = home / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".lock")) \
        if folder.is_dir() else []


def fetch(weights: Weights, **kwargs) -> Path:
    return download(weights, progress=False, policy=FAST, **kwargs)


def assert_verified(path: Path, weights: Weights, payload: bytes = PAYLOAD) -> None:
    assert path == checkpoint_path(weights)
    assert path.read_bytes() == payload
    assert has_valid_stamp(path, weights.md5)
    assert not part_path(path).exists()


def test_download_verifies_and_caches_then_serves_from_cache(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    path = fetch(weights)
    assert_verified(path, weights)
    assert path.parent == zoo_home / "checkpoints"
    assert fetch(weights) == path
    assert loopback_server.hits("/w.pth") == 1
    fetch(weights, force=True)
    assert loopback_server.hits("/w.pth") == 2


def test_cache_dir_argument_replaces_the_root(loopback_server, tmp_path):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    path = download(weights, cache_dir=tmp_path / "elsewhere", progress=False, policy=FAST)
    assert path == tmp_path / "elsewhere" / "checkpoints" / weights.file_name and path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("fault", [
    Fault("reset", at=1_500_000),
    Fault("truncate", at=2_000_000),
    Fault("wrong_length", length=len(PAYLOAD) + 4096),
    Fault("stall", at=1_000_000, seconds=600.0),
], ids=lambda fault: fault.kind)
def test_interrupted_transfer_resumes_with_range(loopback_server, fault):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, faults=[fault]))
    policy = dataclasses.replace(FAST, read_timeout=STALL_TIMEOUT) if fault.kind == "stall" else FAST
    assert_verified(download(weights, progress=False, policy=policy), weights)
    first, second = [r for r in loopback_server.requests if r.path == "/w.pth"]
    assert first.range is None
    offset = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= fault.at if fault.kind != "wrong_length" else 0 < offset
    assert second.status == 206


def test_server_without_range_support_restarts_cleanly(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, ranges=False, faults=[Fault("reset", at=2_000_000)]))
    assert_verified(fetch(weights), weights)
    statuses = [(r.range is not None, r.status) for r in loopback_server.requests]
    assert statuses == [(False, 200), (True, 200)]  # asked to resume, got the whole file, started over


def test_server_errors_are_retried_with_backoff(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, faults=[Fault("status", status=503, times=2)]))
    assert_verified(fetch(weights), weights)
    assert [r.status for r in loopback_server.requests] == [503, 503, 200]


def test_persistent_server_error_gives_up_without_a_file(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, faults=[Fault("status", times=None)]))
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch(weights)
    assert loopback_server.hits("/w.pth") == FAST.retries + 1
    assert cache_files(zoo_home) == []


def test_client_error_is_not_retried(loopback_server, zoo_home):
    weights = entry(loopback_server.url("/missing.pth"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(weights)
    assert loopback_server.hits("/missing.pth") == 1 and cache_files(zoo_home) == []


@dataclasses.dataclass(frozen=True)
class RecordedPauses(DownloadPolicy):
    """A policy that records each backoff pause instead of sleeping it: retries are counted, not timed."""

    pauses: list[int] = dataclasses.field(default_factory=list)

    def pause(self, attempt: int) -> None:
        self.pauses.append(attempt)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("url,reason", [("http://127.0.0.1:{port}/w.pth", "cannot reach 127.0.0.1: connection refused"),
                                        ("http://nonexistent.invalid/w.pth", "its name does not resolve")],
                         ids=["refused", "unresolvable"])
def test_an_unreachable_host_fails_at_once_without_a_retry(zoo_home, url, reason):
    """Issue 15, defect 5: an offline machine used to sit through the whole retry ladder (15.5 s a name)."""
    policy = RecordedPauses(retries=5)
    with pytest.raises(DownloadError, match=reason):
        download(entry(url.format(port=closed_port())), progress=False, policy=policy)
    assert policy.pauses == [] and cache_files(zoo_home) == []


def test_flipped_byte_is_a_checksum_error_and_leaves_nothing(loopback_server, zoo_home):
    url = loopback_server.add("/w.pth", PAYLOAD, faults=[Fault("flip", at=777_777)])
    weights = entry(url)
    with pytest.raises(ChecksumError) as caught:
        fetch(weights)
    error = caught.value
    assert error.expected == weights.md5 and error.source == url
    flipped = bytearray(PAYLOAD)
    flipped[777_777] ^= 0xFF
    assert error.actual == md5_of(bytes(flipped))
    assert cache_files(zoo_home) == []


def test_short_body_with_a_short_content_length_fails_the_md5(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, faults=[Fault("wrong_length", length=1000)]))
    with pytest.raises(ChecksumError):
        fetch(weights)
    assert cache_files(zoo_home) == []


def test_known_file_size_catches_a_body_that_is_too_long(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD), file_size=len(PAYLOAD) - 10)
    with pytest.raises(ChecksumError, match="bytes"):
        fetch(weights)
    assert cache_files(zoo_home) == []


def test_a_bad_source_falls_through_to_the_next_one(loopback_server):
    bad = loopback_server.add("/bad.pth", PAYLOAD, faults=[Fault("flip", at=10, times=None)])
    html = loopback_server.add("/html.pth", PAYLOAD, faults=[Fault("html", times=None)])
    weights = entry(bad, html, loopback_server.add("/good.pth", PAYLOAD))
    assert_verified(fetch(weights), weights)
    assert [loopback_server.hits(p) for p in ("/bad.pth", "/html.pth", "/good.pth")] == [1, 1, 1]


def test_every_source_failing_reports_each(loopback_server, zoo_home):
    bad = loopback_server.add("/bad.pth", PAYLOAD, faults=[Fault("flip", at=10, times=None)])
    worse = loopback_server.add("/worse.pth", PAYLOAD, faults=[Fault("flip", at=20, times=None)])
    with pytest.raises(ChecksumError) as caught:
        fetch(entry(bad, worse))
    assert bad in str(caught.value) and worse in str(caught.value) and caught.value.source == worse
    assert cache_files(zoo_home) == []


def test_html_instead_of_the_file_is_a_download_error(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD, faults=[Fault("html")]))
    with pytest.raises(DownloadError, match="iabn-zoo import") as caught:
        fetch(weights)
    assert not isinstance(caught.value, ChecksumError)
    assert cache_files(zoo_home) == []


def test_html_sniffed_from_the_body_even_when_labelled_binary(loopback_server, zoo_home):
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
    weights = entry(loopback_server.add("/w.pth", page), payload=PAYLOAD)
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(weights)
    assert cache_files(zoo_home) == []


def test_a_kept_partial_file_is_resumed_and_its_prefix_rehashed(loopback_server, zoo_home):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    part = part_path(checkpoint_path(weights))
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1_000_000])
    assert_verified(fetch(weights), weights)
    assert [r.range for r in loopback_server.requests] == ["bytes=1000000-"]


def test_a_damaged_partial_file_is_restarted_once_from_scratch(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    part = part_path(checkpoint_path(weights))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1_000_000)
    assert_verified(fetch(weights), weights)
    assert [r.range for r in loopback_server.requests] == ["bytes=1000000-", None]


def test_a_complete_partial_file_needs_no_request(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    part = part_path(checkpoint_path(weights))
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    assert_verified(fetch(weights), weights)
    assert loopback_server.requests == []


def test_a_wrong_file_at_the_cache_path_is_replaced(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    target = checkpoint_path(weights)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the checkpoint")
    with pytest.warns(UserWarning) as caught:
        assert_verified(fetch(weights), weights)
    assert [str(w.message) for w in caught] == [
        f"cached copy of test_net is corrupt (md5 {md5_of(b'not the checkpoint')}, want {weights.md5}): "
        "downloading again"]
    assert loopback_server.hits("/w.pth") == 1


def test_an_unstamped_right_file_is_adopted_without_a_request(loopback_server):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    target = checkpoint_path(weights)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    assert_verified(fetch(weights), weights)
    assert loopback_server.requests == []


@pytest.mark.parametrize("page", ["form", "token"])
def test_drive_confirmation_pages_are_followed(loopback_server, page):
    view_link = loopback_server.add_drive_file("1AbC-dEf_G", PAYLOAD, page=page)
    weights = entry(view_link)
    assert_verified(fetch(weights), weights)
    paths = [r.path for r in loopback_server.requests]
    assert paths == (["/uc", "/download"] if page == "form" else ["/uc", "/uc"])
    assert loopback_server.requests[-1].query["confirm"] != ""


def test_drive_page_is_followed_again_on_resume(loopback_server):
    view_link = loopback_server.add_drive_file("1AbC-dEf_G", PAYLOAD, page="form")
    weights = entry(view_link)
    part = part_path(checkpoint_path(weights))
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:500_000])
    assert_verified(fetch(weights), weights)
    assert loopback_server.requests[-1].range == "bytes=500000-"


@pytest.mark.parametrize("page, words", [("quota", "quota"), ("permission", "permission")])
def test_drive_refusals_tell_the_user_to_import(loopback_server, zoo_home, page, words):
    view_link = loopback_server.add_drive_file("1AbC-dEf_G", PAYLOAD, page=page)
    with pytest.raises(DownloadError) as caught:
        fetch(entry(view_link))
    message = str(caught.value)
    assert words in message and view_link in message and "iabn-zoo import FILE --name test_net" in message
    assert loopback_server.hits("/uc") == 1  # a refusal is not retried
    assert cache_files(zoo_home) == []


def test_offline_mode_opens_no_connection_and_names_the_file(loopback_server, zoo_home, monkeypatch):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    with pytest.raises(DownloadError) as caught:
        fetch(weights)
    assert str(checkpoint_path(weights)) in str(caught.value) and "IABN_ZOO_OFFLINE" in str(caught.value)
    assert loopback_server.requests == []
    monkeypatch.delenv("IABN_ZOO_OFFLINE")
    path = fetch(weights)
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    assert fetch(weights) == path and loopback_server.hits("/w.pth") == 1


def test_unwritable_cache_root_names_the_path(loopback_server, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    with pytest.raises(DownloadError, match=str(blocker)):
        download(weights, cache_dir=blocker, progress=False, policy=FAST)
    assert loopback_server.requests == []


def test_unknown_name_raises_with_suggestions():
    with pytest.raises(UnknownNameError, match="resnet50_ipabn_sync_lr_512"):
        download("resnet50_ipabn_sync_lr512")


def test_offline_force_returns_the_valid_cached_copy(loopback_server, monkeypatch):
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    path = fetch(weights)
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    assert fetch(weights, force=True) == path and loopback_server.hits("/w.pth") == 1
    path.write_bytes(b"damaged")
    with pytest.raises(DownloadError, match="was removed"):
        fetch(weights)
    assert not path.exists() and loopback_server.hits("/w.pth") == 1


DISK_FULL_WORKER = """
import resource, signal, sys
from iabn_zoo.weights.downloader import download
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    download(sys.argv[1], progress=False)
except Exception as error:
    print(type(error).__name__, error)
"""


def test_a_full_disk_is_a_download_error_naming_the_file_and_leaves_nothing(loopback_server, tmp_path, zoo_home):
    url = loopback_server.add("/w.pth", PAYLOAD)
    registry = tmp_path / "extra.toml"
    registry.write_text(f'[big_net]\narch = "resnet34"\narch_kwargs = {{}}\nurls = ["{url}"]\n'
                        f'md5 = "{md5_of(PAYLOAD)}"\nfile_name = "big.pth"\ntask = "classification"\n'
                        'num_classes = 10\nmetrics = {}\nlicense = "test"\npreprocessing = {}\ndescription = "x"\n')
    env = {**os.environ, "IABN_ZOO_REGISTRY": str(registry), "IABN_ZOO_HOME": str(zoo_home)}
    done = forkserver.run([sys.executable, "-c", DISK_FULL_WORKER, "big_net"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.startswith("CacheWriteError"), done.stdout + done.stderr
    assert str(zoo_home / "checkpoints" / "big.pth.part") in done.stdout
    assert cache_files(zoo_home) == [] and loopback_server.hits("/w.pth") == 1


def test_drive_form_page_leads_to_its_action_with_the_hidden_fields():
    from iabn_zoo.weights.gdrive import classify_page

    page = ('<html><head><title>Google Drive - Virus scan warning</title></head><body>'
            '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="submit" value="Download anyway"><input type="hidden" name="id" value="1AbC">'
            '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="u-1"></form></body></html>')
    result = classify_page(page, "https://drive.google.com/uc?export=download&id=1AbC")
    assert result.kind == "form" and result.title == "Google Drive - Virus scan warning"
    assert result.next_url == ("https://drive.usercontent.google.com/download"
                               "?id=1AbC&export=download&confirm=t&uuid=u-1")
    token_page = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_9&amp;id=1AbC">Download</a>'
    token = classify_page(token_page, "https://drive.google.com/uc?export=download&id=1AbC")
    assert token.kind == "token"
    assert token.next_url == "https://drive.google.com/uc?export=download&confirm=Xy_9&id=1AbC"
    by_cookie = classify_page("<p>virus scan</p>", "https://drive.google.com/uc?export=download&id=1AbC",
                              {"download_warning_123_1AbC": "Zz"})
    assert by_cookie.next_url == "https://drive.google.com/uc?export=download&id=1AbC&confirm=Zz"
    assert classify_page("<title>Quota exceeded</title>", "https://x/uc").kind == "quota"
    assert classify_page("<p>hello</p>", "https://x/uc").kind == "unknown"
