"""The batches of an epoch, from its start or from a resume point inside it, drawn exactly as a run that never
stopped draws them.

An epoch's sample order is the sampler's (seeded by the run's seed and the epoch: `DistributedSampler`, or the
segmentation task's `RankBatchSampler`), and each sample's augmentation draws from a generator seeded by (seed, epoch,
sample index), so a resumed epoch needs only the position: its loader runs the same batch sampler past the batches
already trained (indices only, no image is read). The loader's iterator draws its workers' base seed from torch's
generator; on resume that generator is first set to what it was when the epoch began, so the workers get the seeds
they had, and then to its state at the resume point.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from . import rank_states


class SkippedBatches(torch.utils.data.Sampler[list[int]]):
    """A batch sampler's batches after the first `skip`."""

    def __init__(self, batches: torch.utils.data.Sampler, skip: int):
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


def skipping(loader: torch.utils.data.DataLoader, skip: int) -> torch.utils.data.DataLoader:
    """`loader` with the same data, workers and collation, starting at its batch `skip`."""
    return torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=SkippedBatches(loader.batch_sampler, skip), num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device)


def epoch_batches(loader: torch.utils.data.DataLoader, position: dict[str, Any] | None,
                  state: rank_states.RankState | None, meter: Any,
                  device: torch.device) -> tuple[Iterator[Any], torch.Tensor]:
    """(this epoch's batches, torch's generator as the epoch began); at a resume point inside the epoch (`position`,
    this rank's `state`) the remaining batches, with the generators and the meter's tallies put back."""
    if position is None or state is None:
        epoch_start = torch.get_rng_state()
        return iter(loader), epoch_start
    torch.set_rng_state(state.epoch_start_rng)
    batches = iter(skipping(loader, position["batches_done"]))
    rank_states.apply(state, device)
    rank_states.restore_tallies(meter, state.tallies)
    return batches, state.epoch_start_rng
