"""Fuzzing of the three parsers that read untrusted bytes: checkpoint reader, registry loader, Drive page parser.

Each property says the same thing: whatever the input, the parser either answers or raises the package's own
typed error (never another exception, never a hang). The budget is fixed (`max_examples`) and the search
derandomized, so the file runs the same examples on every machine. Hypothesis's per-example deadline is off: on a
busy machine an example that once took over it fails as "flaky"; a hang is caught by `bounded` instead, whose
limit (60 s) is thousands of times what a small input takes.
"""

from __future__ import annotations

import io
import string
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iabn_zoo.errors import CheckpointError, RegistryError
from iabn_zoo.weights.catalog import parse_registry
from iabn_zoo.weights.checkpoint_reader import read_checkpoint
from iabn_zoo.weights.gdrive import DrivePage, classify_page, direct_url

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PARSE_SECONDS = 60.0  # one parse of one small input taking longer than this counts as a hang


def bounded(call, *args):
    """Run `call(*args)` on a helper thread and fail the test if it has not returned within PARSE_SECONDS."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as error:  # handed back to the test thread, re-raised there
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(PARSE_SECONDS)
    assert not worker.is_alive(), f"{getattr(call, '__name__', call)} still running after {PARSE_SECONDS} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


# -- checkpoint reader ------------------------------------------------------------------------------------------

def checkpoint_bytes(legacy: bool) -> bytes:
    """A small, valid checkpoint in the authors' layout (a `module.`-prefixed state_dict and training extras)."""
    state = {"module.conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
             "module.bn.running_mean": torch.zeros(2), "module.bn.running_var": torch.ones(2),
             "module.bn.weight": torch.ones(2), "module.bn.bias": torch.zeros(2)}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "epoch": 3, "arch": "resnet18", "best_prec1": 70.0}, buffer,
               _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


VALID_LEGACY = checkpoint_bytes(legacy=True)
VALID_ZIP = checkpoint_bytes(legacy=False)


def read_or_refuse(path: Path) -> dict[str, torch.Tensor] | None:
    """The reader's answer for `path`: its tensors, or None when it refused with a CheckpointError."""
    try:
        return bounded(read_checkpoint, path)
    except CheckpointError:
        return None


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """`data` with the byte at each (position mod len) xor-ed with a value, then optionally cut short."""
    mutable = bytearray(data)
    for position, value in edits:
        mutable[position % len(mutable)] ^= value or 1
    return bytes(mutable[:cut % len(mutable)] if cut is not None else mutable)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


def test_valid_fixtures_really_load(tmp_path):
    """The mutation seeds are readable, so a mutant's refusal is caused by the mutation."""
    for name, data in (("legacy.pth", VALID_LEGACY), ("zip.pth", VALID_ZIP)):
        (tmp_path / name).write_bytes(data)
        tensors = read_checkpoint(tmp_path / name)
        assert torch.equal(tensors["conv.weight"].flatten(), torch.arange(24, dtype=torch.float32))


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_escape_the_checkpoint_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("random") / "random.pth"
    path.write_bytes(data)
    outcome = read_or_refuse(path)
    assert outcome is None or isinstance(outcome, dict)


@FUZZ
@given(legacy=st.booleans(), edits=EDITS, cut=st.none() | st.integers(0, 1 << 20))
def test_mutated_checkpoints_load_or_raise_checkpoint_error(tmp_path_factory, legacy, edits, cut):
    path = tmp_path_factory.mktemp("mutant") / "mutant.pth.tar"
    path.write_bytes(mutate(VALID_LEGACY if legacy else VALID_ZIP, edits, cut))
    tensors = read_or_refuse(path)
    assert tensors is None or all(isinstance(value, torch.Tensor) for value in tensors.values())


@FUZZ
@given(member=st.sampled_from(["data.pkl", "version", "byteorder", "data/0"]), payload=st.binary(max_size=512))
def test_zip_checkpoint_with_a_replaced_member_is_refused_or_read(tmp_path_factory, member, payload):
    """A well-formed zip archive whose pickle, version, byte order or tensor record is arbitrary bytes."""
    path = tmp_path_factory.mktemp("member") / "member.pth"
    with zipfile.ZipFile(io.BytesIO(VALID_ZIP)) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            target.writestr(name, payload if name.endswith("/" + member) else source.read(name))
    outcome = read_or_refuse(path)
    assert outcome is None or isinstance(outcome, dict)


@FUZZ
@given(header=st.binary(max_size=256), length=st.integers(0, (1 << 64) - 1), body=st.binary(max_size=256))
def test_random_safetensors_files_raise_checkpoint_error(tmp_path_factory, header, length, body):
    path = tmp_path_factory.mktemp("st") / "random.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + header + body)
    outcome = read_or_refuse(path)
    assert outcome is None or isinstance(outcome, dict)


# -- registry loader --------------------------------------------------------------------------------------------

VALID_ENTRY = {
    "arch": '"resnet18"', "arch_kwargs": '{ bn_mode = "inplace", activation = "leaky_relu" }',
    "urls": '["http://127.0.0.1:9/w.pth"]', "md5": '"0123456789abcdef0123456789abcdef"',
    "file_name": '"w.pth.tar"', "task": '"classification"', "num_classes": "10", "metrics": "{ top1 = 70.5 }",
    "license": '"test"', "preprocessing": "{ resize = 40, crop = 32 }", "description": '"fuzzed"',
    "labels": '"imagenet"', "file_size": "1234",
}

TOML_SCALARS = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1).map(str), st.floats(allow_nan=True).map(
        lambda x: "nan" if x != x else ("inf" if x == float("inf") else "-inf" if x == float("-inf") else repr(x))),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').encode(
        "unicode_escape").decode().replace("\\\\", "\\\\") + '"'),
    st.sampled_from(['"http://[::1"', '"file:///etc/passwd"', '"javascript:alert(1)"', '"ftp://h/x"',
                     '"../../etc/passwd"', '"/abs/path"', '"standard"', "1e400", "99999999999999999999"]),
)
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    st.dictionaries(st.sampled_from(["bn_mode", "top1", "a", "mean"]), inner, max_size=3).map(
        lambda table: "{ " + ", ".join(f"{k} = {v}" for k, v in table.items()) + " }")), max_leaves=6)


def entry_text(name: str, fields: dict[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items())


def parse_or_refuse(text: str) -> dict | None:
    try:
        return bounded(parse_registry, text, "fuzz.toml")
    except RegistryError as error:
        assert "fuzz.toml" in str(error)  # every refusal names the file
        return None


def test_valid_entry_parses():
    entries = parse_registry(entry_text("good", VALID_ENTRY), "fuzz.toml")
    assert entries["good"].urls == ("http://127.0.0.1:9/w.pth",) and entries["good"].num_classes == 10


@FUZZ
@given(text=st.text(alphabet=string.printable + "[]{}=\"'é\x00", max_size=400))
def test_random_toml_ish_text_raises_only_registry_error(text):
    entries = parse_or_refuse(text)
    assert entries is None or isinstance(entries, dict)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID_ENTRY) + ["extra"]), TOML_VALUES, min_size=1,
                               max_size=4),
       dropped=st.sets(st.sampled_from(sorted(VALID_ENTRY)), max_size=2),
       name=st.sampled_from(["good", '"../evil"', '"a/b"', '".."', '"x y"', '"ok.name"']))
def test_mutated_entries_parse_or_raise_registry_error(changes, dropped, name):
    fields = {key: value for key, value in {**VALID_ENTRY, **changes}.items() if key not in dropped}
    entries = parse_or_refuse(entry_text(name, fields))
    for weights in (entries or {}).values():  # what is accepted satisfies every invariant the cache relies on
        assert all(url.startswith(("http://", "https://")) for url in weights.urls)
        assert "/" not in weights.file_name and weights.file_name not in (".", "..")
        assert "/" not in weights.name and ".." not in weights.name
        assert all(isinstance(value, float) for value in weights.metrics.values())


def test_deeply_nested_toml_is_a_registry_error():
    with pytest.raises(RegistryError, match="fuzz.toml"):
        parse_registry("x = " + "[" * 5000 + "]" * 5000, "fuzz.toml")


# -- Drive page parser ------------------------------------------------------------------------------------------

TAGS = st.sampled_from(["<form id='download-form' action='{}'>", "<a href='{}'>x</a>", "<input type='hidden' "
                        "name='confirm' value='{}'>", "<title>{}</title>", "</form>", "<!{}", "<![CDATA[{}",
                        "<?{}", "&#{};", "<script>{}</script>", "<{}"])
HOSTILE_VALUES = st.sampled_from(["http://[::1", "javascript:alert(1)", "file:///etc/passwd", "ftp://x/y",
                                  "/uc?confirm=abc&id=1", "?confirm=\x00", "//evil.example/x", "", "&#99999999;"])
PAGE_PIECES = st.one_of(st.text(max_size=30), st.builds(lambda tag, value: tag.format(value), TAGS,
                                                        st.one_of(HOSTILE_VALUES, st.text(max_size=20))))
URLS = st.sampled_from(["https://drive.google.com/uc?export=download&id=1AbC", "http://127.0.0.1:9/uc?id=x",
                        "http://[::1]:9/uc?id=1", "https://drive.google.com/file/d/1AbC/view"])


@FUZZ
@given(pieces=st.lists(PAGE_PIECES, max_size=12), url=URLS,
       cookies=st.dictionaries(st.sampled_from(["download_warning_1", "NID", "download_warning_x_y"]),
                               st.text(max_size=10), max_size=2))
def test_drive_pages_are_always_classified(pieces, url, cookies):
    page = bounded(classify_page, "".join(pieces), url, cookies)
    assert isinstance(page, DrivePage)
    assert page.kind in ("form", "token", "quota", "permission", "unknown")
    if page.next_url is not None:  # a link the downloader would follow is an absolute http(s) URL
        assert page.next_url.startswith(("http://", "https://")), page.next_url


@FUZZ
@given(text=st.text(max_size=200))
def test_random_html_is_always_classified(text):
    assert isinstance(bounded(classify_page, text, "https://drive.google.com/uc?id=1"), DrivePage)


@FUZZ
@given(path=st.text(alphabet=string.ascii_letters + string.digits + "/?&=_-[]:%", max_size=60))
def test_direct_url_never_raises_on_http_links(path):
    assert isinstance(direct_url("https://drive.google.com/" + path), str)
