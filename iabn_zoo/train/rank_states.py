"""What each rank of a run holds that its resume point must give back to it: its random generators (torch, CUDA,
Python's `random`, NumPy's), the torch generator as the epoch began (the data loader drew its workers' base seed
from it), and its share of the epoch's running tallies; gathered to rank 0, which writes them for every rank.

Tensors go to the resume point's tensor file as `rng.rank{r}.torch`, `rng.rank{r}.epoch_start`, `rng.rank{r}.cuda`
(`rng.torch` keeps rank 0's generator, as earlier versions wrote and read it); the rest is JSON, one object per rank,
in resume.json's `ranks`. A training meter keeps its running sums as plain numbers, tensors or dataclasses of numbers
(`tasks.accuracy.Tally`), which is what `meter_tallies` captures and `restore_tallies` puts back, bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from .processes import Processes

try:  # NumPy's generator is saved where NumPy is installed (torch does not need it)
    import numpy
except ImportError:  # pragma: no cover - every supported set-up has it, through the logs extra
    numpy = None


@dataclass
class RankState:
    """One rank's generators and running tallies at a step boundary."""

    torch_rng: torch.Tensor
    python_rng: list[Any]
    numpy_rng: list[Any] | None
    cuda_rng: torch.Tensor | None = None
    epoch_start_rng: torch.Tensor | None = None  # None at an epoch's end
    tallies: dict[str, Any] = field(default_factory=dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def meter_tallies(meter: Any) -> dict[str, Any]:
    """The running sums of a training meter: its number, tensor and number-dataclass attributes, JSON-ready."""
    tallies: dict[str, Any] = {}
    for name, value in vars(meter).items():
        if _is_number(value):
            tallies[name] = value
        elif isinstance(value, torch.Tensor):
            tallies[name] = {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
        elif is_dataclass(value) and not isinstance(value, type) and \
                all(_is_number(getattr(value, f.name)) for f in fields(value)):
            tallies[name] = {"fields": asdict(value)}
    return tallies


def restore_tallies(meter: Any, tallies: dict[str, Any]) -> None:
    """Put running sums captured by `meter_tallies` back into a fresh meter of the same task."""
    for name, value in tallies.items():
        if isinstance(value, dict) and "fields" in value:
            setattr(meter, name, replace(getattr(meter, name), **value["fields"]))
        elif isinstance(value, dict) and "tensor" in value:
            setattr(meter, name, torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"])))
        else:
            setattr(meter, name, value)


def capture(device: torch.device, *, epoch_start_rng: torch.Tensor | None = None,
            meter: Any = None) -> RankState:
    """This rank's generators now, the epoch's starting generator and the meter's tallies (inside an epoch)."""
    version, internal, gauss = random.getstate()
    return RankState(torch_rng=torch.get_rng_state(), python_rng=[version, list(internal), gauss],
                     numpy_rng=numpy_state(),
                     cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                     epoch_start_rng=epoch_start_rng, tallies=meter_tallies(meter) if meter is not None else {})


def numpy_state() -> list[Any] | None:
    """NumPy's global generator as JSON-ready values; None without NumPy."""
    if numpy is None:
        return None
    kind, keys, position, has_gauss, cached = numpy.random.get_state(legacy=True)
    return [kind, keys.tolist(), position, has_gauss, cached]


def seed_all(seed: int) -> None:
    """Seed every generator a resume point restores (torch's, Python's, NumPy's), so a run repeats whatever draws."""
    torch.manual_seed(seed)
    random.seed(seed)
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def apply(state: RankState, device: torch.device) -> None:
    """Set this rank's generators to `state` (the epoch's starting generator is the loop's to use)."""
    torch.set_rng_state(state.torch_rng)
    version, internal, gauss = state.python_rng
    random.setstate((version, tuple(internal), gauss))
    if state.numpy_rng is not None and numpy is not None:
        kind, keys, position, has_gauss, cached = state.numpy_rng
        numpy.random.set_state((kind, numpy.asarray(keys, dtype=numpy.uint32), position, has_gauss, cached))
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)


def gather(state: RankState, procs: Processes) -> list[RankState]:
    """Every rank's state, in rank order, on rank 0 (an empty list elsewhere); a collective under torchrun."""
    if not procs.distributed:
        return [state]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, state)
    return gathered if procs.is_writer else []


def encode(states: list[RankState]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(the tensors for the tensor file, keyed under `rng.`; resume.json's `ranks`) of every rank's state."""
    tensors = {"torch": states[0].torch_rng}
    documents = []
    for rank, state in enumerate(states):
        tensors[f"rank{rank}.torch"] = state.torch_rng
        for name, value in (("cuda", state.cuda_rng), ("epoch_start", state.epoch_start_rng)):
            if value is not None:
                tensors[f"rank{rank}.{name}"] = value
        documents.append({"python_rng": state.python_rng, "numpy_rng": state.numpy_rng, "tallies": state.tallies})
    return tensors, documents


def decode(rng: dict[str, torch.Tensor], documents: list[dict[str, Any]], rank: int) -> RankState | None:
    """Rank `rank`'s state from a resume point's `rng` tensors and `ranks` documents; None when the point has none
    for it (written by an earlier version: only `rng.torch`)."""
    if rank >= len(documents) or f"rank{rank}.torch" not in rng:
        return None
    document = documents[rank]
    return RankState(torch_rng=rng[f"rank{rank}.torch"], python_rng=document["python_rng"],
                     numpy_rng=document["numpy_rng"], cuda_rng=rng.get(f"rank{rank}.cuda"),
                     epoch_start_rng=rng.get(f"rank{rank}.epoch_start"), tallies=document.get("tallies", {}))
