"""An endless, resumable, rank-aware stream of index batches.

Why: greedy forward selection draws a fresh mini-batch at every selection step, for thousands of
steps. Building a DataLoader (and forking its workers) per step would dominate the run time, so
one DataLoader with persistent workers is created once and iterated forever; this sampler is its
``batch_sampler``. Long runs get interrupted, so the stream is a pure function of
``(seed, batch number)``: a run restarted with ``start_batch=b`` sees exactly the batches
``b, b+1, ...`` that the uninterrupted run would have seen, without replaying the first ``b``.

The stream: pass ``p`` over the data is ``torch.randperm(num_samples)`` drawn from a generator
seeded with ``(seed, p)``, cut into consecutive *global* batches of ``batch_size * world_size``
indices; the incomplete tail of each pass is dropped (the next pass reshuffles, so no sample is
systematically left out). Global batch ``b`` of the stream is split into ``world_size`` slices of
``batch_size`` indices, and rank ``r`` yields slice ``r``. So ``batch_size`` is the per-rank batch
size, the slices of one global batch are disjoint, and together they are the global batch a
single process with ``batch_size * world_size`` would see.
"""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .errors import DataError
from .seeding import mix_seed

_SHUFFLE_STREAM = 0x5A3B


class InfiniteBatchSampler(Sampler[list[int]]):
    """Endless deterministic batches of indices in ``range(num_samples)``; see module docstring.

    Use as ``DataLoader(dataset, batch_sampler=sampler, num_workers=w,
    persistent_workers=w > 0)`` and call ``next()`` on ONE iterator of that loader for as long as
    needed. Every new ``iter()`` restarts at ``start_batch``. To resume, pass as ``start_batch``
    the number of batches the interrupted run had *consumed* (the loader prefetches ahead of the
    consumer, so count batches received, not batches the sampler produced).

    Train-time augmentation is not part of the stream: a resumed run sees the same images in
    the same batches, but with random crops/flips drawn anew.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for name, value, low in (
            ("num_samples", num_samples, 1),
            ("batch_size", batch_size, 1),
            ("start_batch", start_batch, 0),
            ("world_size", world_size, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DataError(f"{name}={value!r}: must be an integer >= {low}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r}: must be an integer in [0, world_size={world_size})")
        global_batch = batch_size * world_size
        if global_batch > num_samples:
            raise DataError(
                f"batch_size={batch_size} x world_size={world_size} = {global_batch}: larger than "
                f"the dataset ({num_samples} samples)"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = global_batch
        self.batches_per_pass = num_samples // global_batch

    def permutation(self, pass_index: int) -> torch.Tensor:
        """The shuffled order of all samples for pass ``pass_index`` over the data."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, _SHUFFLE_STREAM, pass_index))
        return torch.randperm(self.num_samples, generator=generator)

    def batch(self, batch_index: int) -> list[int]:
        """This rank's batch number ``batch_index`` of the stream (random access, for checks).

        Recomputes that pass's permutation: cheap for tests, wasteful in a loop; iterate instead.
        """
        pass_index, position = divmod(batch_index, self.batches_per_pass)
        start = position * self.global_batch_size + self.rank * self.batch_size
        return self.permutation(pass_index)[start : start + self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        pass_index, position = divmod(self.start_batch, self.batches_per_pass)
        while True:
            order = self.permutation(pass_index).tolist()
            for index in range(position, self.batches_per_pass):
                start = index * self.global_batch_size + self.rank * self.batch_size
                yield order[start : start + self.batch_size]
            pass_index += 1
            position = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"seed={self.seed}, start_batch={self.start_batch}, rank={self.rank}, "
            f"world_size={self.world_size})"
        )
