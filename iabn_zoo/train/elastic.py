"""Runs that torchrun restarts, and runs on several machines: whether a start continues the run in `--out`, and the
check that every process of the job sees the same run there.

`resume` is "auto" (continue the run in `--out` if it has a resume point, else start one), True / "yes" (continue;
refused without a resume point), False / "no" (start one; refused when `--out` holds a run). The default, None, is
"auto" in a job torchrun may restart (`--max-restarts N` with N >= 1): torchrun's convention is that a restarted
worker continues from its latest checkpoint, and the command it repeats cannot change (a node whose workers are
restarted because another node's failed is not even told it is a restart). Anywhere else it is "no", so that a run
is never continued by accident: a `--out` holding a run is refused unless the command says `--resume`.

Every process reads the resume point from its own `--out` (the same path on every node); rank 0 alone writes there.
Nodes that do not share that folder can start a run (nodes other than rank 0's never read it), but cannot continue
one: before anything is built, every rank's view of `--out` is compared, and a job whose processes see different
resume points (or some none) is refused, naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..errors import InvalidArgumentError, bad_argument
from ..system.distributed import job_place
from ..system.hashing import file_md5
from ..weights.run_reader import RESUME_FILE, read_json
from .processes import Processes
from .run_writer import has_resume_point

RESUME_MODES = {"auto": "auto", "yes": True, "no": False, True: True, False: False}


def resume_wanted(resume: bool | str | None, run_dir: Path) -> bool:
    """Whether this start continues the run in `run_dir` (True) or starts one (False), by the rules above; a
    continuation without a resume point is refused later, by the configuration's checks."""
    if resume is None:
        resume = "auto" if job_place().max_restarts > 0 else False
    if isinstance(resume, str):
        resume = resume.lower()
    if resume not in RESUME_MODES:
        raise bad_argument("resume", f"must be auto, yes or no (True or False), got {resume!r}")
    mode = RESUME_MODES[resume]
    return has_resume_point(run_dir) if mode == "auto" else mode


def run_view(run_dir: Path) -> dict[str, Any]:
    """What this process sees in `run_dir`: its resume point (epoch, step, checksum of resume.json), or none."""
    view: dict[str, Any] = {"where": job_place().describe()}
    if has_resume_point(run_dir):
        meta = read_json(run_dir / RESUME_FILE)
        view.update(epoch=meta["epoch"], step=meta["step"], md5=file_md5(run_dir / RESUME_FILE))
    return view


def view_words(view: dict[str, Any]) -> str:
    seen = f"the resume point at epoch {view['epoch']}, step {view['step']}" if "md5" in view else "no resume point"
    return f"{view['where']} sees {seen}"


def check_same_run_everywhere(run_dir: Path, procs: Processes) -> None:
    """Refuse a job whose processes see different runs in `run_dir` (a folder the nodes do not share, or stale
    copies), before anything is built or written."""
    if not procs.distributed:
        return
    views: list[Any] = [None] * procs.world_size
    dist.all_gather_object(views, run_view(run_dir))
    if len({view.get("md5") for view in views}) == 1:
        return
    listing = "; ".join(view_words(view) for view in views)
    raise InvalidArgumentError(
        f"the processes of this job see different runs in {run_dir}: {listing}. Every node reads the resume point "
        "from its own {out_dir} and only global rank 0 writes there, so continuing a run needs a folder all nodes "
        "share (a network file system): give such a {out_dir}",
        parameters=("out_dir",))
