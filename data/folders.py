"""ImageNet and CIFAR-10 from local folders, with early, readable errors.

Why the checks: ``ImageFolder`` walks the whole tree before it complains, which on ImageNet takes
minutes, and its messages do not say which command-line argument was wrong. The checks here only
look at a handful of directory entries, then raise :class:`DataError` naming ``--data-path``.

Why val reuses train's class list: ``ImageFolder`` numbers classes by the sorted folder names of
the directory it is given. A val folder that lacks one class would silently shift every label
after it, so when ``train/`` exists its classes define the label numbering for both splits.

Why images are read through :func:`read_image`: a truncated or non-image file in an ImageFolder
otherwise surfaces as PIL's bare ``OSError: image file is truncated`` (or
``UnidentifiedImageError``) from deep inside a DataLoader, in fine-tuning only once training has
started, without the dataset argument; :func:`verify_images` finds such files up front.
"""

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision_compat  # noqa: F401  (must precede torchvision on a CPU-only torch)
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .cifar import META_FILE as _CIFAR10_META
from .cifar import TEST_FILES as _CIFAR10_TEST_FILES
from .cifar import TRAIN_FILES as _CIFAR10_TRAIN_FILES
from .cifar import load_cifar10
from .errors import DataError
from .transforms import cifar10_transform, imagenet_transform

CIFAR10_FOLDER = "cifar-10-batches-py"
# What PIL raises for a file it cannot decode: OSError covers "image file is truncated",
# "Truncated File Read" and UnidentifiedImageError; the others come from malformed headers.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                 Image.DecompressionBombError)

# Folder names accepted for each split, in order of preference.
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "test")}


def build_imagenet(
    data_path: str | os.PathLike, split: str, image_size: int = 224, augment: bool = False
) -> tuple[ImageFolder, int]:
    """ImageNet in ImageFolder layout: ``<data_path>/{train,val}/<class>/<image>``."""
    root = require_dir(data_path)
    transform = imagenet_transform(image_size, train=augment)
    return _image_folder_split(root, split, transform)


def build_cifar10(
    data_path: str | os.PathLike, split: str, image_size: int = 32, augment: bool = False
) -> tuple[CIFAR10 | ImageFolder, int]:
    """CIFAR-10 from a local copy, never downloaded.

    Accepted layouts, tried in this order: ``<data_path>/cifar-10-batches-py/`` (the official
    python version, as torchvision unpacks it), ``<data_path>`` itself holding the pickled
    batches (any folder name), or ImageFolder trees ``<data_path>/train/`` and
    ``<data_path>/val/`` (or ``test/``). For the pickled version ``val`` means the test batch.
    """
    root = require_dir(data_path)
    transform = cifar10_transform(image_size, train=augment)
    for folder in (root / CIFAR10_FOLDER, root):
        if folder.is_dir() and _looks_like_cifar_batches(folder):
            return _load_cifar10_batches(folder, split, transform), 10
    if any((root / name).is_dir() for names in _SPLIT_DIRS.values() for name in names):
        dataset, num_classes = _image_folder_split(root, split, transform)
        if num_classes != 10:
            raise DataError(
                f"--data-path {root}: found {num_classes} class folders in "
                f"{_split_dir(root, 'train') or _split_dir(root, split)}, CIFAR-10 has 10"
            )
        return dataset, num_classes
    hint = ""
    if (root / "cifar-10-python.tar.gz").is_file():
        hint = " (cifar-10-python.tar.gz is there: extract it with tar xzf)"
    raise DataError(
        f"--data-path {root}: no CIFAR-10 found; expected {CIFAR10_FOLDER}/ (the python version), "
        f"the files data_batch_1..5, test_batch, {_CIFAR10_META} themselves, or image folders "
        f"train/ and val/ (or test/){hint}"
    )


def require_dir(path: str | os.PathLike | None, arg: str = "--data-path") -> Path:
    """``path`` as a Path, or :class:`DataError` if it is missing or not a folder."""
    if path is None or str(path) == "":
        raise DataError(f"{arg}: required for this dataset")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{arg} {path}: folder does not exist")
    if not path.is_dir():
        raise DataError(f"{arg} {path}: not a folder")
    return path


def _split_dir(root: Path, split: str) -> Path | None:
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _image_folder_split(
    root: Path, split: str, transform: Callable
) -> tuple[ImageFolder, int]:
    folder = _split_dir(root, split)
    if folder is None:
        names = " or ".join(f"{name}/" for name in _SPLIT_DIRS[split])
        raise DataError(f"--data-path {root}: has no {names} folder for the {split} split")
    class_names = _class_dirs(folder)
    _require_images(folder, class_names)
    train_dir = _split_dir(root, "train")
    if split != "train" and train_dir is not None:
        # Number the labels as in train (see the module docstring).
        train_classes = _class_dirs(train_dir)
        unknown = sorted(set(class_names) - set(train_classes))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                f"--data-path {folder}: {len(unknown)} class folder(s) not in {train_dir}: {shown}"
            )
        class_names = train_classes
    dataset = _FixedClassesImageFolder(folder, class_names, transform, allow_empty=split != "train")
    return dataset, len(class_names)


def _class_dirs(folder: Path) -> list[str]:
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not names:
        has_images = any(_is_image(entry.name) for entry in os.scandir(folder))
        detail = (
            "images must be sorted into one subfolder per class (<split>/<class>/<image>)"
            if has_images
            else "no images found"
        )
        raise DataError(f"--data-path {folder}: {detail}")
    return names


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _require_images(folder: Path, class_names: list[str]) -> None:
    """Stop at the first image found; an empty tree costs one walk over (empty) folders."""
    for name in class_names:
        for _, _, files in os.walk(folder / name, followlinks=True):
            if any(_is_image(file) for file in files):
                return
    raise DataError(
        f"--data-path {folder}: no images found (looked for {', '.join(IMG_EXTENSIONS)} "
        f"files in {len(class_names)} class folders)"
    )


class _FixedClassesImageFolder(ImageFolder):
    """ImageFolder whose classes are given rather than read from the folder (see above), and
    whose images are read by :func:`read_image`."""

    def __init__(
        self, root: Path, class_names: list[str], transform: Callable, allow_empty: bool
    ) -> None:
        self._given_classes = list(class_names)
        try:
            super().__init__(
                str(root), transform=transform, loader=read_image, allow_empty=allow_empty
            )
        except FileNotFoundError as error:  # a class folder without images
            raise DataError(f"--data-path {root}: {error}") from error

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}


def read_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image at ``path`` (torchvision's PIL loader), or :class:`DataError` naming it.

    Module-level so DataLoader workers can pickle it. In a worker the DataError reaches the main
    process re-raised by the DataLoader, still a DataError and still naming the file (see
    :class:`~data.errors.DataError`).
    """
    try:
        with open(path, "rb") as infile:
            image = Image.open(infile)
            return image.convert("RGB")
    except _IMAGE_ERRORS as error:
        raise _image_error(path, error) from error


def verify_images(dataset: Dataset, limit: int | None = None, decode: bool = True) -> int:
    """Open each image of an ImageFolder-style dataset; :class:`DataError` at the first bad one.

    A pre-scan so that a corrupt file stops a run before hours of work rather than midway
    through an epoch. ``dataset`` is anything with ``.samples`` (``(path, label)`` pairs, as
    :func:`build_dataset` returns for image folders) or a ``Subset`` of one, whose images only
    are checked. ``limit`` checks only the first ``limit`` images. Every image gets PIL's
    ``verify()`` (headers and, for PNG, chunk checksums; fast); ``decode=True`` also decodes the
    pixels, which is the only way to notice a truncated JPEG (``verify()`` passes it) and costs
    about as much as reading the images once. Returns the number of images checked.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit={limit!r}: must be a non-negative integer or None")
    paths = _image_paths(dataset)
    if limit is not None:
        paths = paths[:limit]
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
            if decode:
                with Image.open(path) as image:
                    image.load()
        except _IMAGE_ERRORS as error:
            raise _image_error(path, error) from error
    return len(paths)


def _image_paths(dataset: Any) -> list[str]:
    if isinstance(dataset, Subset):
        paths = _image_paths(dataset.dataset)
        return [paths[int(i)] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise DataError(
            f"{type(dataset).__name__}: has no image files (.samples) to verify; only image "
            f"folder datasets have"
        )
    return [str(path) for path, _ in samples]


def _image_error(path: str | os.PathLike, error: BaseException) -> DataError:
    if isinstance(error, UnidentifiedImageError):
        detail = "PIL cannot identify it as an image (not an image file, or its header is damaged)"
    else:
        detail = str(error) or type(error).__name__
    return DataError(
        f"--data-path: cannot read image {path}: {detail}; replace or remove the file"
    )


def _looks_like_cifar_batches(folder: Path) -> bool:
    names = (*_CIFAR10_TRAIN_FILES, *_CIFAR10_TEST_FILES, _CIFAR10_META)
    return any((folder / name).is_file() for name in names)


def _load_cifar10_batches(folder: Path, split: str, transform: Callable) -> CIFAR10:
    needed = (_CIFAR10_TRAIN_FILES if split == "train" else _CIFAR10_TEST_FILES) + (
        _CIFAR10_META,
    )
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"--data-path {folder}: CIFAR-10 python batches incomplete, "
            f"missing {', '.join(missing)}"
        )
    return load_cifar10(folder, train=split == "train", transform=transform)
