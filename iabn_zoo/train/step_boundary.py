"""What happens between two optimizer steps: a resume point inside the epoch when `--save-every` says one is due, and
a stop (after writing one) when the process was sent SIGTERM, decided by every rank together.

`--save-every` takes optimizer steps (`500`) or minutes of training (`10min`, the default: a bounded cost whatever
the network, and at most ten minutes lost to a crash); `0` turns periodic points off (SIGTERM still writes one).
SIGTERM, what clusters send before they take a machine (torchrun forwards it to its workers), only sets a flag; at
the next step boundary every rank contributes its flags and its clock's verdict to one all_reduce (MAX) of two
numbers, so all ranks save, and stop, at the same step even when the signal reached them at different moments.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

from ..errors import bad_argument
from ..system.distributed import communication_device
from .processes import Processes

DEFAULT_SAVE_EVERY = "10min"
_MINUTES = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*min")


@dataclass(frozen=True)
class SaveEvery:
    """The schedule of resume points inside an epoch: every `steps` optimizer steps or `seconds` of training."""

    steps: int = 0
    seconds: float = 0.0


def parse_save_every(value: int | str | None) -> SaveEvery:
    """`500` (steps), `"10min"` (minutes), `0`, `"0"` or None (off); anything else is refused naming the option."""
    if value is None:
        return SaveEvery()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return SaveEvery(steps=value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return SaveEvery(steps=int(text))
        minutes = _MINUTES.fullmatch(text)
        if minutes and float(minutes.group(1)) > 0:
            return SaveEvery(seconds=60 * float(minutes.group(1)))
    raise bad_argument("save_every", f"takes a number of optimizer steps (500), minutes of training (10min) or 0 "
                                     f"(no resume points inside an epoch), got {value!r}")


class SigtermWatch:
    """SIGTERM noted instead of obeyed while the block runs (in the main thread, where Python allows handlers);
    the previous handler is back afterwards."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> SigtermWatch:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


class StepBoundary:
    """The decisions of the step boundaries of one run: save a resume point here, stop here."""

    def __init__(self, save_every: int | str | None, procs: Processes):
        self.schedule = parse_save_every(save_every)
        self.procs = procs
        self.watch = SigtermWatch()
        self.last_point = time.monotonic()

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag raised on any rank (one all_reduce of all flags under torchrun)."""
        if not self.procs.distributed:
            return list(flags)
        packed = torch.tensor([float(flag) for flag in flags], device=communication_device(self.procs.device))
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        return [bool(value) for value in packed.tolist()]

    def after_step(self, step: int, last_of_epoch: bool) -> tuple[bool, bool]:
        """(write a resume point, stop) after optimizer step `step`; the same answer on every rank. The last step of
        an epoch writes none of its own (the epoch's save follows) unless the run stops there."""
        periodic = (self.schedule.steps > 0 and step % self.schedule.steps == 0) or \
            (self.schedule.seconds > 0 and time.monotonic() - self.last_point >= self.schedule.seconds)
        due, stop = self.agree(periodic and not last_of_epoch, self.watch.requested)
        return due or stop, stop

    def stop_requested(self) -> bool:
        """Whether any rank was sent SIGTERM (between epochs)."""
        return self.agree(self.watch.requested)[0]

    def point_written(self) -> None:
        """Start the clock of the next periodic point."""
        self.last_point = time.monotonic()
