"""The single entry point scripts use to get a dataset by name.

Why one function: the prune, fine-tune and evaluation scripts all take ``--dataset``,
``--data-path`` and ``--image-size``; routing them through one function keeps the three scripts'
preprocessing identical and validates the arguments (raising :class:`DataError`) before any slow
work such as walking an ImageNet tree.
"""

import os

from torch.utils.data import Dataset

from .errors import DataError
from .folders import build_cifar10, build_imagenet
from .synthetic import SyntheticPatterns

DATASETS = ("imagenet", "cifar10", "synthetic")
SPLITS = ("train", "val")
_DEFAULT_IMAGE_SIZE = {"imagenet": 224, "cifar10": 32, "synthetic": 32}
# Synthetic images are generated on demand, so these only set the epoch length.
SYNTHETIC_DEFAULT_NUM_IMAGES = {"train": 5000, "val": 1000}


def default_image_size(name: str) -> int:
    """The input resolution a dataset is normally used at: 224 for ImageNet, 32 otherwise."""
    return _DEFAULT_IMAGE_SIZE[_check_name(name)]


def build_dataset(
    name: str,
    data_path: str | os.PathLike | None,
    split: str,
    image_size: int | None = None,
    augment: bool | None = None,
    *,
    num_images: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, int]:
    """Return ``(dataset, num_classes)`` for ``name`` in :data:`DATASETS`, ``split`` in
    :data:`SPLITS`.

    ``image_size`` defaults to :func:`default_image_size`. ``augment`` defaults to
    ``split == "train"``; pass ``augment=False`` to read training images with the eval
    preprocessing (e.g. to score candidate networks on training data without random crops).
    Items are ``(float tensor of shape (3, image_size, image_size), int label)``.

    ``num_images``, ``num_classes`` and ``seed`` configure the synthetic dataset only (defaults
    :data:`SYNTHETIC_DEFAULT_NUM_IMAGES`, 10 classes, seed 0); ``seed`` fixes the class patterns
    and images, so train and val must use the same one. For ``synthetic``, ``data_path`` is
    ignored and may be None.
    """
    name = _check_name(name)
    if split not in SPLITS:
        raise DataError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    if image_size is None:
        image_size = _DEFAULT_IMAGE_SIZE[name]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"--image-size {image_size!r}: must be an integer >= 8")
    if augment is None:
        augment = split == "train"

    if name == "synthetic":
        if num_images is None:
            num_images = SYNTHETIC_DEFAULT_NUM_IMAGES[split]
        if num_classes is None:
            num_classes = 10
        try:
            dataset = SyntheticPatterns(
                num_images, num_classes, image_size, split=split, seed=seed, augment=augment
            )
        except ValueError as error:
            raise DataError(str(error)) from error
        return dataset, num_classes

    for arg, value in (("num_images", num_images), ("num_classes", num_classes)):
        if value is not None:
            raise DataError(f"{arg}={value!r}: only the synthetic dataset takes {arg}")
    if name == "imagenet":
        return build_imagenet(data_path, split, image_size, augment)
    return build_cifar10(data_path, split, image_size, augment)


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r}: unknown dataset, choose from {', '.join(DATASETS)}")
    return name
