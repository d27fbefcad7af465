"""The one rule for progress bars (system.progress) and the memory guard (system.resources)."""

from __future__ import annotations

import io

import pytest
import torch

from iabn_zoo.errors import ResourceLimitError
from iabn_zoo.system import progress
from iabn_zoo.system.resources import check_fits, format_bytes, is_out_of_memory, out_of_memory_guard


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_bars_need_permission_and_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.shows_progress(True) and not progress.shows_progress(None)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert progress.shows_progress(True) and progress.shows_progress(None) and not progress.shows_progress(False)
    for _ in progress.progress_bar(range(3), desc="work"):
        pass
    assert "work: 100%" in terminal.getvalue()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
])
def test_out_of_memory_becomes_a_resource_limit_that_says_what_to_lower(error):
    with pytest.raises(ResourceLimitError) as caught:
        with out_of_memory_guard("training at 512 px", ("image_size", "batch_size")):
            raise error
    assert str(caught.value).startswith("out of memory while training at 512 px")
    assert str(caught.value).endswith("lower image_size or batch_size")
    assert caught.value.render(lambda name: "--" + name.replace("_", "-")).endswith("lower --image-size or --batch-size")
    if isinstance(error, RuntimeError) and "1099511627776" in str(error):
        assert "(an allocation of 1.0 TiB failed)" in str(caught.value)


def test_other_errors_pass_the_guard_unchanged():
    assert not is_out_of_memory(ValueError("bad")) and not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_guard("x", ("batch_size",)):
            raise RuntimeError("shape mismatch")


def test_what_cannot_fit_is_refused_with_the_memory_it_needs():
    check_fits(1 << 20, torch.device("cpu"), what="a small job", lower=("batch_size",))
    with pytest.raises(ResourceLimitError, match=r"a big job needs at least 1024.0 TiB of memory, and this machine "
                                                 r"has [\d.]+ [MGT]iB in all; lower batch_size"):
        check_fits(1 << 50, torch.device("cpu"), what="a big job", lower=("batch_size",))
    assert [format_bytes(n) for n in (512, 3 << 20, 1536 << 20)] == ["512 B", "3.0 MiB", "1.5 GiB"]
