"""DataLoader construction with the seeding and worker settings the scripts need.

Why: every script needs the same few decisions, made once here: workers stay alive between
epochs / selection steps (``persistent_workers``), DDP ranks read disjoint shards, shuffling
and augmentation randomness follow a seed, and the greedy-selection stream can be resumed.
"""

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .errors import DataError
from .samplers import InfiniteBatchSampler
from .seeding import mix_seed
from .subsets import class_balanced_subset, get_targets

_WORKER_STREAM = 0x3043


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> DataLoader:
    """An epoch-based loader; call ``set_epoch(loader, seed, rank, epoch)`` before each epoch.

    The sampler is always a ``DistributedSampler`` (given ``rank`` and ``world_size``
    explicitly, so no process group is needed for ``world_size=1``): one code path for single
    process and DDP, reshuffled per epoch from ``(seed, epoch)``. ``batch_size`` is per rank.
    Note that with ``world_size > 1`` and ``drop_last=False`` the sampler pads the last shard
    with repeated samples, so an evaluation over all ranks counts a few images twice; exact
    evaluation should run on one rank or account for ``len(dataset)``. A run that must resume
    exactly passes ``persistent_workers=False``, so that ``set_epoch`` re-seeds the workers.
    """
    _check_loader_args(batch_size, workers)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
        drop_last=drop_last,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=persistent_workers and workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=_worker_generator(seed, rank),
    )


def set_epoch(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Fix epoch ``epoch``'s shuffle and its workers' random augmentation from the seed alone, so
    that a resumed run draws what the uninterrupted run drew (workers started afresh each epoch
    take their seeds from the loader's generator)."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(mix_seed(seed, _WORKER_STREAM, rank, epoch))


def make_infinite_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start_batch: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over an :class:`InfiniteBatchSampler`: create once, then ``next()`` one iterator.

    ``it = iter(make_infinite_loader(...)); images, labels = next(it)`` per selection step.
    ``batch_size`` is per rank; ``start_batch`` resumes the stream (see the sampler).
    """
    _check_loader_args(batch_size, workers)
    sampler = InfiniteBatchSampler(
        len(dataset), batch_size, seed, start_batch=start_batch, rank=rank, world_size=world_size
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        generator=_worker_generator(seed, rank),
    )


def evaluation_batches(dataset: Dataset, images: int, batch_size: int, *, seed: int,
                       device: torch.device, workers: int = 0
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The stop rule's fixed evaluation subset: ``images`` (at most the whole dataset) drawn
    class-balanced from ``dataset`` by ``seed``, as a list of ``(x, y)`` batches on ``device``.
    Held in memory, so that every measurement of a selection sees the same images in the same
    order at no loading cost."""
    indices = class_balanced_subset(get_targets(dataset), min(images, len(dataset)), seed=seed)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers)
    return [(x.to(device), y.to(device)) for x, y in loader]


def _check_loader_args(batch_size: int, workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"--batch-size {batch_size!r}: must be a positive integer")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DataError(f"--workers {workers!r}: must be a non-negative integer")


def _worker_generator(seed: int, rank: int) -> torch.Generator:
    """Seeds the workers' RNGs (hence augmentation) per (seed, rank), so ranks augment
    differently and a rerun augments identically. With ``workers=0`` augmentation uses the main
    process's global RNG instead (seed it with ``torch.manual_seed``)."""
    return torch.Generator().manual_seed(mix_seed(seed, _WORKER_STREAM, rank))
