"""MNIST from a local folder in torchvision's layout, parsed from the IDX files.

Why a reader of its own: Wolfe et al. (2023), Section 6.1, train two-layer networks on MNIST, and
the machines this project runs on cannot download anything, so the files must already be on disk.
torchvision's ``datasets.MNIST`` reads ``<root>/MNIST/raw/train-images-idx3-ubyte`` (and would
otherwise fall back to a pickled ``processed/`` file that is loaded with ``torch.load``); this
module reads the same raw IDX files, also gzipped or placed directly in ``<root>``, with numpy and
``struct`` only. Nothing is ever unpickled, and every header field is checked, so a truncated
download or a wrong file is a :class:`DataError` that names the file instead of a reshape error.

The IDX format (LeCun et al.'s MNIST page): a big-endian header of two zero bytes, one type byte
(0x08 = unsigned byte, ...), one byte giving the number of dimensions, then one 4-byte unsigned
size per dimension; then the values, big-endian, in C order.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

#: The IDX type byte and the numpy type it stands for (all big-endian).
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: The image and label files of each split, as torchvision names them.
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed if it ends in ``.gz``).

    Raises :class:`DataError` naming the file when the magic number, the type byte, the number
    of dimensions or the byte count disagree with the IDX format: a truncated file and one with
    bytes left over are both refused rather than silently reshaped.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes at least)")
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind not in IDX_TYPES or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD "
                        f"with type TT in {{{', '.join(f'{t:02x}' for t in IDX_TYPES)}}} and "
                        f"DD >= 1 dimensions, e.g. 0x00000803 for MNIST images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for the header of a {ndim}-d "
                        f"IDX file ({header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_TYPES[kind]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(raw)} bytes, expected {expected} for an array of "
                        f"shape {shape} of {dtype.name}")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # native byte order, writable


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``): the inverse
    of :func:`read_idx`, for tests and for converting other copies of MNIST."""
    path = Path(path)
    array = np.asarray(array)
    codes = {t.newbyteorder("="): code for code, t in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes or array.ndim == 0:
        raise DataError(f"{path}: cannot store a {array.ndim}-d array of {array.dtype} as IDX")
    header = struct.pack(f">HBB{array.ndim}I", 0, codes[native], array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[codes[native]]).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def find_mnist_file(root: str | Path, name: str) -> Path:
    """Where ``name`` (e.g. ``train-images-idx3-ubyte``) is under ``root``: torchvision's
    ``<root>/MNIST/raw/`` first, then ``<root>/`` itself, each plain before ``.gz``."""
    root = Path(root)
    hint = (f"no download is possible here: put MNIST's {' and '.join(MNIST_FILES['train'])} "
            f"(optionally .gz) in {root / 'MNIST' / 'raw'}/ or in {root}/")
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "folder does not exist"
        raise DataError(f"--data-path {root}: {problem}; {hint}")
    for folder in (root / "MNIST" / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"--data-path {root}: {name} not found; {hint}")


def load_mnist(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST's ``split`` ("train" or "test") from ``root``: uint8 images of shape (n, 28, 28)
    and int64 labels in 0..9, in file order.

    The two files must agree: images 3-d 28 x 28 unsigned bytes, labels 1-d unsigned bytes
    below 10, the same count; anything else is a :class:`DataError` naming the file.
    """
    if split not in MNIST_FILES:
        raise DataError(f"split={split!r}: must be one of {sorted(MNIST_FILES)}")
    image_path, label_path = (find_mnist_file(root, name) for name in MNIST_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected unsigned-byte images of shape (n, 28, 28), got "
                        f"{images.dtype} of shape {images.shape}")
    if len(images) == 0:
        raise DataError(f"{image_path}: holds 0 images (an empty IDX file of shape "
                        f"{images.shape}); expected MNIST's {split} images")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{label_path}: expected a 1-d array of unsigned-byte labels, got "
                        f"{labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in "
                        f"{image_path}")
    if len(labels) and int(labels.max()) > 9:
        raise DataError(f"{label_path}: label {int(labels.max())} found, expected digits 0..9")
    return images, labels.astype(np.int64)
