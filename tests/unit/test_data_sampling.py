"""Balanced subsets, the infinite batch stream and the loaders built on it."""

from collections import Counter
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from data import (
    DataError,
    InfiniteBatchSampler,
    SyntheticPatterns,
    class_balanced_subset,
    get_targets,
    make_infinite_loader,
    make_loader,
)

LABELS = [i % 10 for i in range(100)]


def test_subset_is_balanced_sorted_and_reproducible():
    indices = class_balanced_subset(LABELS, 25, seed=0)
    counts = Counter(LABELS[i] for i in indices)
    assert len(indices) == len(set(indices)) == 25 and indices == sorted(indices)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert class_balanced_subset(LABELS, 25, seed=0) == indices
    assert class_balanced_subset(LABELS, 25, seed=1) != indices
    assert class_balanced_subset(LABELS, 100, seed=0) == list(range(100))
    few = class_balanced_subset(LABELS, 3, seed=5)
    assert len({LABELS[i] for i in few}) == 3  # fewer than one per class: distinct classes


def test_subset_fills_up_from_larger_classes():
    labels = [0] * 2 + [1] * 50 + [2] * 50
    counts = Counter(labels[i] for i in class_balanced_subset(labels, 30, seed=0))
    assert counts == {0: 2, 1: 14, 2: 14}


@pytest.mark.parametrize("k", [0, -1, 101])
def test_subset_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"k={k}: must be between 1 and .*100"):
        class_balanced_subset(LABELS, k, seed=0)


def test_subset_accepts_datasets_subsets_and_tensors():
    synthetic = SyntheticPatterns(40, num_classes=4, split="val")
    assert get_targets(synthetic) == [i % 4 for i in range(40)]
    picked = class_balanced_subset(synthetic, 8, seed=0)
    assert Counter(synthetic.targets[i] for i in picked) == {0: 2, 1: 2, 2: 2, 3: 2}
    # For a Subset, indices are positions in the Subset.
    subset = Subset(synthetic, list(range(1, 40, 2)))  # labels 1, 3, 1, 3, ...
    inner = class_balanced_subset(subset, 6, seed=0)
    assert Counter(subset[i][1] for i in inner) == {1: 3, 3: 3}
    assert get_targets(torch.tensor([[2], [0]])) == [2, 0]
    with pytest.raises(DataError, match="has no .targets"):
        get_targets(TensorDataset(torch.zeros(3)))


def _take(sampler, count):
    return list(islice(iter(sampler), count))


def test_sampler_is_deterministic_and_reshuffles_each_pass():
    sampler = InfiniteBatchSampler(10, 3, seed=0)
    batches = _take(sampler, 9)  # 3 batches per pass (one sample dropped per pass)
    assert batches == _take(InfiniteBatchSampler(10, 3, seed=0), 9)
    assert batches != _take(InfiniteBatchSampler(10, 3, seed=1), 9)
    passes = [sum(batches[i : i + 3], []) for i in (0, 3, 6)]
    for indices in passes:
        assert len(set(indices)) == 9 and set(indices) <= set(range(10))
    assert len({tuple(p) for p in passes}) == 3
    assert all(sampler.batch(i) == batches[i] for i in range(9))


@pytest.mark.parametrize("start", [1, 3, 4, 7])
def test_sampler_resume_matches_uninterrupted_stream(start):
    full = _take(InfiniteBatchSampler(10, 3, seed=7), 20)
    resumed = _take(InfiniteBatchSampler(10, 3, seed=7, start_batch=start), 20 - start)
    assert resumed == full[start:]


def test_sampler_rank_slices_are_disjoint_and_cover_the_global_batch():
    world = 3
    single = _take(InfiniteBatchSampler(50, 4 * world, seed=2), 10)
    per_rank = [_take(InfiniteBatchSampler(50, 4, 2, rank=r, world_size=world), 10) for r in
                range(world)]
    for step in range(10):
        slices = [per_rank[r][step] for r in range(world)]
        assert all(len(s) == 4 for s in slices)
        assert len(set().union(*slices)) == 4 * world  # disjoint
        assert sum(slices, []) == single[step]  # together: the single-process global batch


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 5, "batch_size": 6}, "larger than the dataset"),
        ({"num_samples": 10, "batch_size": 3, "world_size": 4}, "larger than the dataset"),
        ({"num_samples": 10, "batch_size": 0}, "batch_size=0"),
        ({"num_samples": 10, "batch_size": 2, "rank": 2, "world_size": 2}, "rank=2"),
        ({"num_samples": 10, "batch_size": 2, "start_batch": -1}, "start_batch=-1"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        InfiniteBatchSampler(seed=0, **kwargs)


def test_infinite_loader_with_persistent_worker_follows_the_sampler():
    dataset = TensorDataset(torch.arange(20))
    loader = make_infinite_loader(dataset, 4, seed=3, start_batch=2, workers=1)
    assert loader.persistent_workers and isinstance(loader.batch_sampler, InfiniteBatchSampler)
    stream = iter(loader)
    got = [next(stream)[0].tolist() for _ in range(12)]  # 12 batches = 2.4 passes, one iterator
    expected = _take(InfiniteBatchSampler(20, 4, seed=3), 14)[2:]
    assert got == expected


def test_plain_dataloader_accepts_the_sampler():
    dataset = TensorDataset(torch.arange(8))
    sampler = InfiniteBatchSampler(8, 2, seed=0)
    batches = list(islice(DataLoader(dataset, batch_sampler=sampler), 5))
    assert [b[0].tolist() for b in batches] == _take(sampler, 5)


def test_make_loader_shards_ranks_and_reshuffles_per_epoch():
    dataset = TensorDataset(torch.arange(10))
    shards = []
    for rank in range(2):
        loader = make_loader(dataset, 3, shuffle=True, seed=0, rank=rank, world_size=2)
        loader.sampler.set_epoch(0)
        shards.append([i for (batch,) in loader for i in batch.tolist()])
    assert sorted(shards[0] + shards[1]) == list(range(10))
    loader = make_loader(dataset, 3, shuffle=True, seed=0)
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        epochs.append([i for (batch,) in loader for i in batch.tolist()])
    assert sorted(epochs[0]) == list(range(10)) and epochs[0] != epochs[1]
    ordered = make_loader(dataset, 4, shuffle=False)
    assert [b.tolist() for (b,) in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(DataError, match="--batch-size 0"):
        make_loader(dataset, 0, shuffle=False)
