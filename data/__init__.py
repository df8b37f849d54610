"""Datasets, subsets and loaders for pruning and fine-tuning.

Public API (one concept per module):

- :func:`build_dataset` / :func:`default_image_size` (``build``): ImageNet, CIFAR-10 or the
  synthetic dataset by name, with the standard transforms and early argument checks.
- :class:`SyntheticPatterns` (``synthetic``): a learnable, file-free dataset for tests and demos.
- :func:`class_balanced_subset` / :func:`get_targets` (``subsets``): reproducible balanced subsets.
- :class:`InfiniteBatchSampler` (``samplers``): the endless, resumable, rank-sliced batch stream
  greedy selection draws from.
- :func:`make_loader` / :func:`make_infinite_loader` (``loaders``): DataLoaders wired to the above;
  :func:`evaluation_batches`: the stop rule's fixed class-balanced subset, as device batches.
- :func:`verify_images` (``folders``): an optional pre-scan of an image folder for corrupt files.
- :func:`load_mnist` (``mnist``): MNIST's IDX files from a local folder, parsed and checked
  without unpickling (Wolfe et al.'s two-layer experiment).
- :class:`DataError` (``errors``): raised for bad input; scripts print its message and exit.

CIFAR-10's pickled batches are read by a restricted unpickler (``cifar``) that refuses to run
anything a tampered file asks for.
"""

from .build import DATASETS, SPLITS, build_dataset, default_image_size
from .errors import DataError
from .folders import verify_images
from .loaders import evaluation_batches, make_infinite_loader, make_loader, set_epoch
from .mnist import load_mnist
from .samplers import InfiniteBatchSampler
from .subsets import class_balanced_subset, get_targets
from .synthetic import SyntheticPatterns
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10_transform,
    imagenet_transform,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "DataError",
    "InfiniteBatchSampler",
    "SyntheticPatterns",
    "build_dataset",
    "class_balanced_subset",
    "cifar10_transform",
    "default_image_size",
    "evaluation_batches",
    "get_targets",
    "imagenet_transform",
    "load_mnist",
    "make_infinite_loader",
    "make_loader",
    "set_epoch",
    "verify_images",
]
