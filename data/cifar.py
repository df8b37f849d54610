"""CIFAR-10's pickled python batches, read without running anything the files ask for.

Why not ``pickle.load`` (what torchvision's ``CIFAR10`` does): a pickle is a small program, and
unpickling a tampered ``data_batch_1`` calls whatever it names, ``os.system`` included. The
official files (Python 2 pickles, protocol 2) only name the numpy globals that rebuild an array,
so :class:`_BatchUnpickler` admits those few and refuses anything else before it is called.

Why the contents are checked too: a file of the wrong shape (another dataset, a truncated
re-export) would otherwise fail far away, in a reshape or as a label out of range in the middle
of a training step, without saying which file was at fault.

The official md5 sums are not checked: reading all 170 MB on every start costs seconds, the
tests' tiny fake batches could not pass it, and the restricted unpickler already makes a foreign
file harmless.
"""

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torchvision_compat  # noqa: F401  (must precede torchvision on a CPU-only torch)
from torchvision.datasets import CIFAR10
from torchvision.datasets.vision import VisionDataset

from .errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
NUM_CLASSES = 10
_PIXELS = 3 * 32 * 32

# Everything a CIFAR-10 pickle may name. The official files name numpy.core.multiarray
# _reconstruct, numpy.ndarray and numpy.dtype; numpy 2 writes numpy._core, Python 3's protocol 2
# writes bytes through _codecs.encode, and protocol 5 rebuilds arrays with _frombuffer. All of
# them only build arrays, dtypes or bytes.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :data:`_ALLOWED_GLOBALS`; nothing has been called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, strings, numbers and numpy arrays, nothing else.

    ``find_class`` is the only way a pickle reaches code (REDUCE, BUILD, NEWOBJ and INST all
    call what it returns); persistent ids are refused by the base class, which has no
    ``persistent_load``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _RefusedGlobal(module, name)
        return _resolve(module, name)


def _resolve(module: str, name: str) -> Any:
    """The admitted global; numpy names from ``numpy._core`` where it exists (numpy 2, where
    ``numpy.core`` is a deprecated alias), else from ``numpy.core`` (numpy 1)."""
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    modern = module.replace("numpy.core.", "numpy._core.")
    for candidate in dict.fromkeys((modern, modern.replace("numpy._core.", "numpy.core."))):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes under protocol 2, for latin1 only: no
    pickle of bytes needs another codec, so none is looked up."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def read_pickle(path: Path) -> Any:
    """The object pickled in ``path``, built by :class:`_BatchUnpickler`.

    ``encoding="latin1"`` as for the official Python 2 files: their byte strings (keys, names and
    the raw pixel buffers) arrive as ``str``, which numpy turns back into bytes losslessly.
    Raises :class:`DataError` naming the file for a refused global or any unreadable content.
    """
    try:
        with open(path, "rb") as infile:
            return _BatchUnpickler(infile, encoding="latin1").load()
    except _RefusedGlobal as error:
        raise DataError(
            f"--data-path {path}: refused to load: the pickle asks to call "
            f"{error.qualified_name}, which a CIFAR-10 python batch never does (it holds only "
            f"numpy arrays, lists, strings and numbers); the file is not the official one and "
            f"may be malicious, so nothing in it was run"
        ) from None
    except OSError as error:
        raise DataError(f"--data-path {path}: cannot read: {error}") from error
    except Exception as error:  # anything else the unpickler or numpy raises means a bad file
        raise DataError(
            f"--data-path {path}: not a readable CIFAR-10 python batch ({error!r})"
        ) from error


def load_cifar10(folder: Path, train: bool, transform: Callable | None) -> "CIFAR10Batches":
    """The training (``data_batch_1..5``) or test (``test_batch``) split of a batches folder.

    Every file is read with :func:`read_pickle` and checked; the caller has already checked the
    files exist.
    """
    arrays, targets = [], []
    for name in TRAIN_FILES if train else TEST_FILES:
        data, labels = _check_batch(folder / name, read_pickle(folder / name))
        arrays.append(data)
        targets.extend(labels)
    classes = _check_meta(folder / META_FILE, read_pickle(folder / META_FILE))
    return CIFAR10Batches(folder, np.concatenate(arrays), targets, classes, train, transform)


class CIFAR10Batches(CIFAR10):
    """torchvision's ``CIFAR10`` built from arrays that were loaded and checked beforehand.

    A subclass rather than a new Dataset so that items, ``.data`` (N, 32, 32, 3 uint8, HWC),
    ``.targets``, ``.classes``, ``.class_to_idx`` and the repr stay exactly torchvision's.
    ``CIFAR10.__init__`` is skipped on purpose: it is what unpickles the files unsafely.
    """

    def __init__(
        self,
        folder: Path,
        data: np.ndarray,
        targets: list[int],
        classes: list[str],
        train: bool,
        transform: Callable | None,
    ) -> None:
        VisionDataset.__init__(self, str(folder.parent), transform=transform)
        self.base_folder = folder.name
        self.train = train
        self.data = data.reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # CHW rows to HWC
        self.targets = targets
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(classes)}


def _as_str(value: Any) -> Any:
    """Keys and names as ``str``: Python 3 re-exports pickle bytes, which latin1 keeps bytes."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _entries(path: Path, loaded: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(loaded, dict):
        raise DataError(
            f"--data-path {path}: holds a {type(loaded).__name__}, a CIFAR-10 python batch "
            f"holds a dict"
        )
    entries = {_as_str(key): value for key, value in loaded.items()}
    missing = [key for key in required if key not in entries]
    if missing:
        hint = " (fine_labels: this looks like CIFAR-100)" if "fine_labels" in entries else ""
        raise DataError(
            f"--data-path {path}: no {', '.join(repr(key) for key in missing)} entry in the "
            f"batch; it has {', '.join(sorted(map(str, entries))) or 'nothing'}{hint}"
        )
    return entries


def _check_batch(path: Path, loaded: Any) -> tuple[np.ndarray, list[int]]:
    """``(data, labels)`` of one batch, or :class:`DataError` saying what is wrong with it."""
    entries = _entries(path, loaded, ("data", "labels"))
    data, labels = entries["data"], entries["labels"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _PIXELS
    ):
        found = (
            f"a {data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else f"a {type(data).__name__}"
        )
        raise DataError(
            f"--data-path {path}: 'data' is {found}, expected a uint8 array of shape "
            f"(N, {_PIXELS}) (3x32x32 pixels per row)"
        )
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list | tuple) or not all(
        isinstance(label, int) and not isinstance(label, bool) for label in labels
    ):
        raise DataError(f"--data-path {path}: 'labels' must be a list of integers")
    bad = [label for label in labels if not 0 <= label < NUM_CLASSES]
    if bad:
        raise DataError(
            f"--data-path {path}: label {bad[0]} out of range, CIFAR-10 labels are "
            f"0..{NUM_CLASSES - 1}"
        )
    if len(labels) != len(data):
        raise DataError(
            f"--data-path {path}: {len(data)} images but {len(labels)} labels"
        )
    return data, list(labels)


def _check_meta(path: Path, loaded: Any) -> list[str]:
    """The class names of ``batches.meta``, in label order."""
    names = _entries(path, loaded, ("label_names",))["label_names"]
    if not isinstance(names, list | tuple) or not all(
        isinstance(name, str | bytes) for name in names
    ):
        raise DataError(f"--data-path {path}: 'label_names' must be a list of strings")
    if len(names) != NUM_CLASSES:
        raise DataError(
            f"--data-path {path}: {len(names)} label_names, CIFAR-10 has {NUM_CLASSES}"
        )
    return [_as_str(name) for name in names]

