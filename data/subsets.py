"""Class-balanced subsets of a labelled dataset.

Why: greedy selection and quick evaluations run on a few thousand training images. A plain random
subset of ImageNet can miss classes or over-represent some; an evenly spread subset gives every
class the same say in the selection loss, and a seed makes it reproducible across runs and ranks.
"""

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .errors import DataError
from .seeding import mix_seed

_CLASS_ORDER_STREAM = 0xC1A5
_WITHIN_CLASS_STREAM = 0xC1A6


def get_targets(dataset_or_targets: Any) -> list[int]:
    """Integer labels of a dataset, without loading any images.

    Accepts a sequence / tensor / array of labels, any dataset with a ``targets`` attribute
    (ImageFolder, CIFAR10, :class:`~data.synthetic.SyntheticPatterns`), or a
    ``torch.utils.data.Subset`` (possibly nested) of one; for a Subset the labels are listed in
    Subset order.
    """
    source = dataset_or_targets
    if isinstance(source, Subset):
        parent = get_targets(source.dataset)
        return [parent[int(i)] for i in source.indices]
    if hasattr(source, "targets"):
        source = source.targets
    elif isinstance(source, Dataset):
        raise DataError(
            f"{type(source).__name__}: has no .targets; pass the list of labels instead"
        )
    if isinstance(source, torch.Tensor):
        source = source.reshape(-1).tolist()
    return [int(t) for t in source]


def class_balanced_subset(targets: Any, k: int, seed: int) -> list[int]:
    """``k`` indices spread as evenly as possible over the classes, sorted ascending.

    ``targets`` is anything :func:`get_targets` accepts; indices refer to positions in it (for
    a Subset: positions in the Subset, ready for ``Subset(subset, indices)``). Every class gets
    ``k // C`` or one more; which classes get the ``k % C`` extra ones is drawn from ``seed``.
    A class with fewer samples than its share gives all it has and the rest is spread over the
    others. Samples within each class are drawn uniformly from ``seed``. The same
    ``(targets, k, seed)`` always gives the same list.
    """
    labels = get_targets(targets)
    n = len(labels)
    if isinstance(k, bool) or not isinstance(k, int):
        raise DataError(f"k={k!r}: must be an integer")
    if not 1 <= k <= n:
        raise DataError(f"k={k}: must be between 1 and the number of samples ({n})")

    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    classes = sorted(by_class)
    order_gen = torch.Generator().manual_seed(mix_seed(seed, _CLASS_ORDER_STREAM))
    order = [classes[i] for i in torch.randperm(len(classes), generator=order_gen).tolist()]

    # Water-filling: equal shares, capped by class size, until k samples are allotted.
    share = dict.fromkeys(classes, 0)
    remaining = k
    while remaining:
        open_classes = [c for c in order if share[c] < len(by_class[c])]
        each = remaining // len(open_classes)
        if each == 0:
            for c in open_classes[:remaining]:
                share[c] += 1
            break
        for c in open_classes:
            take = min(each, len(by_class[c]) - share[c])
            share[c] += take
            remaining -= take

    chosen: list[int] = []
    for c in classes:
        if share[c]:
            gen = torch.Generator().manual_seed(mix_seed(seed, _WITHIN_CLASS_STREAM, c))
            members = by_class[c]
            picks = torch.randperm(len(members), generator=gen)[: share[c]].tolist()
            chosen.extend(members[i] for i in picks)
    return sorted(chosen)
