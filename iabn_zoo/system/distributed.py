"""This process's place in a torchrun job (rank, node, host) read from the variables torchrun sets, joining and leaving
the job's process group, and sums over its ranks: one owner for what fine-tuning and evaluation share.

torchrun gives every worker RANK and WORLD_SIZE (the whole job), LOCAL_RANK (on its node), GROUP_RANK and
GROUP_WORLD_SIZE (its node among the job's nodes) and TORCHELASTIC_MAX_RESTARTS (`--max-restarts`: how often the
job may be restarted; TORCHELASTIC_RESTART_COUNT is kept by each node's agent and stays 0 on a node whose workers
were restarted because another node's failed, so it cannot tell a restart); a process started without torchrun is
rank 0 of 1 on node 0 of 1.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from ..errors import ZooError, bad_argument
from .devices import resolve_device

ROUND_KEY = "iabn_zoo/round"
ROUND_POLL_S = 0.05


@dataclass(frozen=True)
class JobPlace:
    """Where this process sits in its torchrun job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node: int = 0
    nodes: int = 1
    max_restarts: int = 0
    host: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        """'rank 1 of 4 (node 1 of 2, host gpu7)': how errors and warnings name a process of the job."""
        return f"rank {self.rank} of {self.world_size} (node {self.node} of {self.nodes}, host {self.host})"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else default


def job_place() -> JobPlace:
    """This process's place, from torchrun's variables (a plain process: rank 0 of 1)."""
    return JobPlace(rank=_int("RANK", 0), world_size=_int("WORLD_SIZE", 1), local_rank=_int("LOCAL_RANK", 0),
                    node=_int("GROUP_RANK", 0), nodes=_int("GROUP_WORLD_SIZE", 1),
                    max_restarts=_int("TORCHELASTIC_MAX_RESTARTS", 0), host=socket.gethostname())


# what gloo and NCCL say when a peer of a collective is gone
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "ProcessGroupNCCL's watchdog")


def lost_peer(error: BaseException) -> ZooError | None:
    """The error to report for a collective that failed because another process of the torchrun job is gone (it
    crashed, was killed, or its node went away): not a bug of this process; None for any other error."""
    if not job_place().distributed:
        return None
    text = str(error)
    if not (isinstance(error, dist.DistError) or any(words in text for words in PEER_LOST)):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return ZooError(f"lost contact with another process of this torchrun job ({first}); that process's own log says "
                    "why it stopped. Under torchrun --max-restarts N the job restarts and continues from its last "
                    "resume point")


def process_device(device: str | torch.device | None) -> torch.device:
    """The device this process runs on: `device` checked by resolve_device; a CUDA device without an index is this
    process's GPU under torchrun (LOCAL_RANK), the first one otherwise."""
    target = resolve_device(device)
    if target.type != "cuda" or target.index is not None:
        return target
    local_rank = job_place().local_rank
    if local_rank >= torch.cuda.device_count():
        raise bad_argument("device", f"cuda: this process has LOCAL_RANK {local_rank} but the machine has "
                                     f"{torch.cuda.device_count()} GPU(s); start fewer processes per node")
    return torch.device("cuda", local_rank)


def round_store(place: JobPlace, timeout: timedelta) -> dist.Store:
    """The store of torchrun's agent, under a key prefix that the workers of this round of the job agree on and no
    earlier round used.

    torchrun (torch >= 2.5) lets the workers share its rendezvous store, which outlives a restart of the group:
    the keys the previous round's process group left there (peer addresses) make a restarted group's first
    collective wait forever (pytorch#135712). Rank 0 of the round publishes a new random token; every other rank
    registers a fresh nonce under the token it reads and takes the token once rank 0 has answered with the nonces
    it saw (an earlier round's token, read before rank 0 replaced it, never lists this round's nonces).
    """
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    deadline = time.monotonic() + timeout.total_seconds()
    if place.rank == 0:
        token = secrets.token_hex(8)
        store.set(ROUND_KEY, token)
        store.wait([f"{ROUND_KEY}/{token}/nonce/{rank}" for rank in range(1, place.world_size)], timeout)
        nonces = [store.get(f"{ROUND_KEY}/{token}/nonce/{rank}") for rank in range(1, place.world_size)]
        store.set(f"{ROUND_KEY}/{token}/go", b",".join(nonces))
        return dist.PrefixStore(f"{ROUND_KEY}/{token}/", store)
    nonce, registered = secrets.token_hex(8).encode(), None
    while time.monotonic() < deadline:
        token = store.get(ROUND_KEY).decode()
        if token != registered:
            store.set(f"{ROUND_KEY}/{token}/nonce/{place.rank}", nonce)
            registered = token
        answer = f"{ROUND_KEY}/{token}/go"
        if store.check([answer]) and nonce in store.get(answer).split(b","):
            return dist.PrefixStore(f"{ROUND_KEY}/{token}/", store)
        time.sleep(ROUND_POLL_S)  # not answered yet, or an earlier round's answer: this round's token comes
    raise ZooError(f"{place.describe()} met no rank 0 of its torchrun job in {timeout}; see the other processes' logs")


@contextmanager
def joined_group(device_type: str) -> Iterator[JobPlace]:
    """Join the torchrun job's process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo otherwise) unless the caller
    has already, and leave it afterwards if joined here."""
    place = job_place()
    started_here = place.distributed and not dist.is_initialized()
    if started_here:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            timeout = default_pg_timeout
            dist.init_process_group(backend, store=round_store(place, timeout), rank=place.rank,
                                    world_size=place.world_size, timeout=timeout)
        else:
            dist.init_process_group(backend)
    try:
        yield place
    finally:
        if started_here:
            dist.destroy_process_group()


def in_group() -> bool:
    """Whether this process belongs to a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def communication_device(device: torch.device) -> torch.device:
    """Where tensors must be for the group's collectives: the GPU under NCCL, the CPU under gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def summed(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` summed over every rank of the group (as they are on one process), on the CPU."""
    if not in_group():
        return values
    packed = values.to(communication_device(device))
    dist.all_reduce(packed)
    return packed.cpu()


def highest(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (`value` itself on one process)."""
    if not in_group():
        return value
    packed = torch.tensor([value], device=communication_device(device))
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return int(packed.item())


def shard(count: int) -> range:
    """The indices of `count` items this rank handles when the group shares them (r, r + W, ...; all of them on one
    process)."""
    if not in_group():
        return range(count)
    return range(dist.get_rank(), count, dist.get_world_size())
