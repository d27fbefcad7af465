"""Hostile input: each is refused with a typed error and leaves no side effect (no marker, no file, no import).

Pickle gadgets, absurd tensor sizes, corrupt safetensors headers, registry files with wrong types, image bombs for
predict and segment, names and file names that try to leave the cache, and URLs of other schemes.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from support.authors_checkpoints import publish

from iabn_zoo import cli
from iabn_zoo.cli.exit_codes import exit_code
from iabn_zoo.errors import CheckpointError, DataError, DownloadError, RegistryError, UnknownNameError
from iabn_zoo.weights.catalog import Weights, get_weights, list_weights, unregister_weights
from iabn_zoo.weights.checkpoint_reader import read_checkpoint
from iabn_zoo.weights.downloader import DownloadPolicy, download
from iabn_zoo.weights.loading import load_state_dict

FAST = DownloadPolicy(connect_timeout=10.0, read_timeout=30.0, retries=1, backoff=0.01)


# -- pickles that try to run code ------------------------------------------------------------------------------

class Gadget:
    """An object whose unpickling calls `function(*arguments)`."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def gadgets(marker: Path) -> dict[str, Gadget]:
    """Ways a pickle can run code; each would create `marker` if it ran."""
    touch = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "os.system": Gadget(os.system, f"touch {marker}"),
        "subprocess.Popen": Gadget(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": Gadget(builtins.eval, touch),
        "builtins.exec": Gadget(builtins.exec, touch),
        "builtins.open": Gadget(builtins.open, str(marker), "w"),
        "torch.save": Gadget(torch.save, {"x": 1}, str(marker)),
    }


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("gadget", list(gadgets(Path("m"))))
def test_pickle_gadgets_are_refused_and_never_run(tmp_path, gadget, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"module.fc.weight": torch.ones(2)}, "payload": gadgets(marker)[gadget]}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="evil.pth.tar") as caught:
        read_checkpoint(path)
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth.tar"]
    if gadget != "subprocess.Popen":  # pickled under an alias name that resolves to nothing loaded
        assert "arbitrary code" in str(caught.value)  # the message says why, not "truncated"


def test_a_global_from_an_unknown_module_is_never_imported(tmp_path, monkeypatch):
    """A pickle naming a module that would run code on import: the module is neither imported nor run."""
    marker = tmp_path / "imported"
    (tmp_path / "zoo_gadget_module.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nrun = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    body = (b"\x80\x02}q\x00X\x0a\x00\x00\x00state_dictq\x01"  # {"state_dict": zoo_gadget_module.run("hi")}
            b"czoo_gadget_module\nrun\nq\x02X\x02\x00\x00\x00hiq\x03\x85q\x04Rq\x05s.")
    for legacy in (True, False):
        path = tmp_path / f"import_{legacy}.pth"
        if legacy:
            path.write_bytes(body)
        else:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("archive/data.pkl", body)
                archive.writestr("archive/version", "3\n")
                archive.writestr("archive/byteorder", "little")
        with pytest.raises(CheckpointError):
            read_checkpoint(path)
    assert not marker.exists() and "zoo_gadget_module" not in sys.modules


def test_a_malicious_published_file_is_refused_through_the_registry(loopback_server, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "published.pth.tar"
    torch.save({"state_dict": {"module.fc.weight": torch.ones(2)}, "x": gadgets(marker)["os.system"]}, path)
    publish(loopback_server, path, "hostile_published", "resnet18")
    try:
        with pytest.raises(CheckpointError, match="arbitrary code"):
            load_state_dict("hostile_published")
    finally:
        unregister_weights("hostile_published")
    assert not marker.exists()


# -- absurd sizes and corrupt headers -------------------------------------------------------------------------

class _StorageRef:
    """Stands for a storage in a hand-written pickle (emitted as a persistent id)."""


def absurd_tensor_pickle(numel: int, legacy: bool) -> bytes:
    """The pickle of {'state_dict': {'w': tensor}} whose tensor and storage claim `numel` float elements."""
    storage = _StorageRef()

    class Absurd:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, OrderedDict())

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is not storage:
                return None
            return ("storage", torch.FloatStorage, "0", "cpu", numel) + ((None,) if legacy else ())

    buffer = io.BytesIO()
    Writer(buffer, protocol=2).dump({"state_dict": {"w": Absurd()}})
    return buffer.getvalue()


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_tensors_of_absurd_declared_size_are_refused(tmp_path, legacy):
    path = tmp_path / "absurd.pth"
    if legacy:
        with open(path, "wb") as handle:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, handle, protocol=2)
            handle.write(absurd_tensor_pickle(2 ** 40, legacy=True))
            pickle.dump(["0"], handle, protocol=2)
            handle.write((3).to_bytes(8, "little") + bytes(12))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("absurd/data.pkl", absurd_tensor_pickle(2 ** 40, legacy=False))
            archive.writestr("absurd/data/0", bytes(12))
            archive.writestr("absurd/version", "3\n")
            archive.writestr("absurd/byteorder", "little")
    with pytest.raises(CheckpointError, match="absurd.pth"):
        read_checkpoint(path)


def safetensors_bytes(header: bytes, body: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


@pytest.mark.parametrize("content", [
    safetensors_bytes(b"{}", length=2 ** 62),
    safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', b"\0" * 8),
    safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 8]}}', b"\0" * 8),
    safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4398046511104]}}', b"\0" * 8),
    safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}', b"\0" * 8),
    safetensors_bytes(b'{"w": {"dtype": "EVIL", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 8),
    b"\x01\x02",
], ids=["huge-header-length", "bad-json", "huge-shape", "offset-out-of-range", "reversed-offsets", "bad-dtype",
        "short-file"])
def test_corrupt_safetensors_headers_are_refused(tmp_path, content):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_state_dict(path)


# -- registry files ------------------------------------------------------------------------------------------

GOOD = {"arch": '"resnet18"', "arch_kwargs": "{}", "urls": '["http://127.0.0.1:9/w.pth"]',
        "md5": '"0123456789abcdef0123456789abcdef"', "file_name": '"w.pth"', "task": '"classification"',
        "num_classes": "10", "metrics": "{}", "license": '"x"', "preprocessing": "{}", "description": '"x"'}


def write_registry(tmp_path: Path, monkeypatch, name: str = "hostile", **changes: str) -> Path:
    path = tmp_path / "hostile.toml"
    fields = {**GOOD, **changes}
    path.write_text(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items()))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(path))
    return path


@pytest.mark.parametrize("field, value", [
    ("urls", '"http://127.0.0.1:9/w.pth"'), ("urls", "[1, 2]"), ("md5", "123"), ("num_classes", '"10"'),
    ("num_classes", "true"), ("metrics", '{ top1 = "high" }'), ("metrics", "{ top1 = 99999999999999999999999 }"),
    ("arch_kwargs", "[1]"), ("arch_kwargs", '{ bn_mode = "magic" }'), ("task", '"detection"'),
    ("preprocessing", '"none"'), ("file_size", "-1"), ("labels", '""'), ("extra_field", "1"),
    ("urls", '["file:///etc/passwd"]'), ("urls", '["ftp://127.0.0.1/w.pth"]'), ("urls", '["javascript:alert(1)"]'),
    ("urls", '["http://[::1/w.pth"]'), ("urls", '["http://127.0.0.1:port/w.pth"]'),
    ("file_name", '"../../outside.pth"'), ("file_name", '"/etc/passwd"'), ("file_name", '"..\\\\x.pth"'),
    ("file_name", '".."'), ("file_name", '"other.pth.part"'), ("file_name", '"other.pth.lock"'),
])
def test_registry_entries_with_wrong_types_or_hostile_values_are_refused(tmp_path, monkeypatch, field, value):
    path = write_registry(tmp_path, monkeypatch, **{field: value})
    with pytest.raises(RegistryError) as caught:
        list_weights()
    assert str(path) in str(caught.value) and repr(field) in str(caught.value)


@pytest.mark.parametrize("name", ['"../evil"', '"/abs/evil"', '".."', '"a/b"', '"a\\\\b"'])
def test_registry_names_that_leave_the_cache_are_refused(tmp_path, monkeypatch, name):
    write_registry(tmp_path, monkeypatch, name=name)
    with pytest.raises(RegistryError, match="invalid"):
        get_weights("anything")


def test_registry_files_that_are_not_text_or_nest_too_deep(tmp_path, monkeypatch):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[x]\n")
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 3000 + "]" * 3000)
    for path in (binary, deep):
        monkeypatch.setenv("IABN_ZOO_REGISTRY", str(path))
        with pytest.raises(RegistryError, match=str(path)):
            list_weights()


# -- names, paths and schemes at run time ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "resnet18/../../x"])
def test_path_like_names_are_unknown_names_everywhere(tmp_path, capsys, zoo_home, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    for argv in (["download", name], ["cache", "remove", name], ["cache", "path", name], ["verify", name],
                 ["import", str(outside), "--name", name]):
        assert cli.main(argv) == exit_code(UnknownNameError), argv
    with pytest.raises(UnknownNameError):
        download(name)
    assert outside.read_text() == "keep me" and not zoo_home.exists()


def test_weights_with_hostile_fields_cannot_be_made_in_code():
    good = dict(name="w", arch="resnet18", arch_kwargs={}, urls=("https://h/w",), md5="0" * 32, file_name="w.pth",
                num_classes=10, task="classification", metrics={}, license="", preprocessing={}, description="")
    Weights(**good)  # the baseline is accepted
    for changes in ({"name": "../w"}, {"file_name": "../w.pth"}, {"file_name": "/abs/w.pth"},
                    {"urls": ("file:///etc/passwd",)}, {"urls": ("javascript:alert(1)",)}, {"urls": ("ftp://h/w",)}):
        with pytest.raises(RegistryError):
            Weights(**{**good, **changes})


@pytest.mark.parametrize("action", ["file:///etc/passwd", "javascript:alert(1)", "ftp://127.0.0.1/x", "http://[::1"])
def test_drive_pages_leading_to_other_schemes_are_not_followed(loopback_server, zoo_home, action):
    page = (f'<html><head><title>Google Drive - Virus scan warning</title></head><body><form id="download-form" '
            f'action="{action}"><input type="hidden" name="confirm" value="t"></form></body></html>')
    url = loopback_server.add("/page", page)
    weights = Weights(name="paged", arch="resnet18", arch_kwargs={}, urls=(url,), md5="0" * 32, file_name="p.pth",
                      num_classes=10, task="classification", metrics={}, license="", preprocessing={},
                      description="")
    with pytest.raises(DownloadError, match="HTML page"):
        download(weights, progress=False, policy=FAST)
    assert [record.path for record in loopback_server.requests] == ["/page"]
    assert not (zoo_home / "checkpoints" / "p.pth").exists()


# -- image bombs ------------------------------------------------------------------------------------------------

def png_bomb(path: Path, side: int) -> Path:
    """A tiny PNG whose header declares a `side` x `side` grayscale image (past Pillow's bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes(side + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def bomb_side() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS ** 0.5) + 10  # past the warning limit, below the 2x error limit


def test_image_bomb_is_refused_by_predict(loopback_server, tmp_path, capsys):
    import iabn_zoo as zoo

    torch.manual_seed(0)
    state = zoo.create_model("resnet18", num_classes=10).state_dict()
    path = tmp_path / "small.pth"
    torch.save({"state_dict": state}, path)
    publish(loopback_server, path, "bomb_classifier", "resnet18", num_classes=10)
    bomb = png_bomb(tmp_path / "bomb.png", bomb_side())
    try:
        code = cli.main(["predict", "bomb_classifier", str(bomb), "--json", "--no-progress"])
    finally:
        unregister_weights("bomb_classifier")
    captured = capsys.readouterr()
    assert code == exit_code(DataError) and "decompression bomb" in captured.err and "Traceback" not in captured.err


def test_image_bomb_is_refused_by_segment(tmp_path, capsys):
    from support.segmentation_fixtures import TINY_WEIGHTS, served_tiny_vistas

    bomb = png_bomb(tmp_path / "bomb.png", bomb_side())
    out = tmp_path / "out"
    with served_tiny_vistas(tmp_path):
        code = cli.main(["segment", str(bomb), "--out", str(out), "--weights", TINY_WEIGHTS, "--scales", "1",
                         "--no-progress"])
    captured = capsys.readouterr()
    assert code == exit_code(DataError) and "decompression bomb" in captured.err
    assert list(out.iterdir()) == []  # no output, not even a temporary
