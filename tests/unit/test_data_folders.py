"""ImageNet / CIFAR-10 from local folders, on tiny trees written into tmp_path."""

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataError,
    build_dataset,
    class_balanced_subset,
    default_image_size,
    get_targets,
    verify_images,
)


def _write_images(folder: Path, count: int, size=(40, 30), start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(folder.name) + start)
    for i in range(start, start + count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        suffix = ".JPEG" if i % 2 else ".png"
        Image.fromarray(pixels).save(folder / f"img{i}{suffix}")


def _imagenet_tree(root: Path, classes=("n01", "n02", "n03"), val_classes=None) -> Path:
    for name in classes:
        _write_images(root / "train" / name, 3)
    for name in classes if val_classes is None else val_classes:
        _write_images(root / "val" / name, 1, size=(30, 40))
    return root


def test_imagenet_train_and_val(tmp_path):
    root = _imagenet_tree(tmp_path)
    train, num_classes = build_dataset("imagenet", root, "train", image_size=16)
    assert num_classes == 3 and len(train) == 9
    image, label = train[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    assert image.min() < 0  # normalised, not raw [0, 1] pixels
    val, num_classes = build_dataset("imagenet", root, "val", image_size=16)
    assert num_classes == 3 and len(val) == 3 and val.targets == [0, 1, 2]
    assert torch.equal(val[1][0], val[1][0])  # eval transform: no randomness
    plain, _ = build_dataset("imagenet", str(root), "train", image_size=16, augment=False)
    assert torch.equal(plain[0][0], plain[0][0])
    assert default_image_size("imagenet") == 224


def test_imagenet_val_labels_follow_train_classes(tmp_path):
    root = _imagenet_tree(tmp_path, val_classes=("n01", "n03"))
    val, num_classes = build_dataset("imagenet", root, "val", image_size=16)
    assert num_classes == 3 and val.targets == [0, 2]  # n03 keeps label 2, not 1
    _write_images(root / "val" / "n99", 1)
    with pytest.raises(DataError, match=r"not in .*train: n99"):
        build_dataset("imagenet", root, "val", image_size=16)


def test_imagenet_balanced_subset(tmp_path):
    train, _ = build_dataset("imagenet", _imagenet_tree(tmp_path), "train", image_size=16)
    indices = class_balanced_subset(train, 6, seed=0)
    assert sorted(get_targets(train)[i] for i in indices) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("setup", "path", "message"),
    [
        (lambda root: None, "missing", "folder does not exist"),
        (lambda root: (root / "afile").write_text("x"), "afile", "not a folder"),
        (lambda root: (root / "val").mkdir(), ".", "has no train/ folder"),
        (lambda root: (root / "train" / "n01").mkdir(parents=True), ".", "no images found"),
        (lambda root: _write_images(root / "train", 2), ".", "one subfolder per class"),
        (lambda root: (root / "train").mkdir(), ".", "no images found"),
    ],
    ids=["missing", "file", "no-train", "empty-classes", "flat", "empty-train"],
)
def test_imagenet_errors_name_the_path(tmp_path, setup, path, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message) as caught:
        build_dataset("imagenet", tmp_path / path, "train", image_size=16)
    assert str(caught.value).startswith("--data-path ")
    assert isinstance(caught.value, ValueError)


def test_imagenet_class_without_images(tmp_path):
    root = _imagenet_tree(tmp_path)
    (root / "train" / "n04").mkdir()
    with pytest.raises(DataError, match="n04"):
        build_dataset("imagenet", root, "train", image_size=16)


def test_argument_errors(tmp_path):
    with pytest.raises(DataError, match="--dataset 'mnist': unknown dataset"):
        build_dataset("mnist", tmp_path, "train")
    with pytest.raises(DataError, match="split 'test'"):
        build_dataset("synthetic", None, "test")
    with pytest.raises(DataError, match="--image-size"):
        build_dataset("synthetic", None, "train", image_size=0)
    with pytest.raises(DataError, match="--data-path: required"):
        build_dataset("imagenet", None, "train")
    with pytest.raises(DataError, match="only the synthetic dataset"):
        build_dataset("cifar10", tmp_path, "train", num_images=5)


def _write_cifar_batches(folder: Path, per_batch: int = 2, test_size: int = 3) -> dict:
    """The official python pickle layout, with a handful of images per batch."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test_size if name == "test_batch" else per_batch
        entry = {
            "batch_label": name,
            "labels": [int(x) for x in rng.integers(0, 10, count)],
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(count)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        written[name] = entry
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return written


def test_cifar10_python_batches(tmp_path):
    written = _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    train, num_classes = build_dataset("cifar10", tmp_path, "train")
    assert num_classes == 10 and len(train) == 10
    expected = [label for i in range(1, 6) for label in written[f"data_batch_{i}"]["labels"]]
    assert train.targets == expected and get_targets(train) == expected
    assert train[0][0].shape == (3, 32, 32)
    val, _ = build_dataset("cifar10", tmp_path, "val")
    assert len(val) == 3 and val.targets == written["test_batch"]["labels"]
    # Eval preprocessing is ToTensor + Normalize only: check against the raw pixels.
    raw = torch.tensor(written["test_batch"]["data"][1], dtype=torch.float32).view(3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(val[1][0], (raw / 255 - mean) / std)
    assert len(class_balanced_subset(train, 5, seed=1)) == 5
    resized, _ = build_dataset("cifar10", tmp_path, "train", image_size=40)
    assert resized[0][0].shape == (3, 40, 40)


def test_cifar10_batches_folder_given_directly(tmp_path):
    written = _write_cifar_batches(tmp_path / "my_cifar")
    val, _ = build_dataset("cifar10", tmp_path / "my_cifar", "val")
    assert val.targets == written["test_batch"]["labels"]


def test_cifar10_incomplete_or_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(folder)
    (folder / "data_batch_3").unlink()
    build_dataset("cifar10", tmp_path, "val")  # the test batch alone is enough for val
    with pytest.raises(DataError, match="missing data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        build_dataset("cifar10", tmp_path / "other", "train")


def test_cifar10_image_folders(tmp_path):
    for c in range(10):
        _write_images(tmp_path / "train" / f"c{c}", 1, size=(32, 32))
        _write_images(tmp_path / "test" / f"c{c}", 1, size=(32, 32))
    train, num_classes = build_dataset("cifar10", tmp_path, "train")
    val, _ = build_dataset("cifar10", tmp_path, "val")  # test/ serves as val
    assert num_classes == 10 and len(train) == 10 and len(val) == 10
    assert train[3][0].shape == val[3][0].shape == (3, 32, 32)
    (tmp_path / "train" / "c0").rename(tmp_path / "c0")
    with pytest.raises(DataError, match="9 class folders"):
        build_dataset("cifar10", tmp_path, "train")


def _encoded(fmt: str, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


_BAD_IMAGES = {
    # file name: (its bytes, the reason the DataError gives)
    "cut.jpg": (_encoded("JPEG")[: len(_encoded("JPEG")) // 2], "image file is truncated"),
    "cut.png": (_encoded("PNG")[: len(_encoded("PNG")) // 2], "image file is truncated"),
    "head.png": (_encoded("PNG")[:20], "Truncated File Read"),
    "short.png": (_encoded("PNG")[:40], "not an image file, or its header is damaged"),
    "notes.jpg": (b"shopping list: milk, eggs\n", "PIL cannot identify it as an image"),
}


def _tree_with_bad_image(root: Path, bad: str) -> Path:
    """Two classes of good images and one bad file; returns the bad file's path."""
    _imagenet_tree(root, classes=("n01", "n02"))
    path = root / "train" / "n02" / bad
    path.write_bytes(_BAD_IMAGES[bad][0])
    return path


@pytest.mark.parametrize("bad", list(_BAD_IMAGES))
def test_unreadable_image_names_the_file(tmp_path, bad):
    path = _tree_with_bad_image(tmp_path, bad)
    train, _ = build_dataset("imagenet", tmp_path, "train", image_size=16)
    index = [p for p, _ in train.samples].index(str(path))
    assert train[0][0].shape == (3, 16, 16)  # the good images still load
    with pytest.raises(DataError, match=_BAD_IMAGES[bad][1]) as caught:
        train[index]
    assert str(caught.value).startswith(f"--data-path: cannot read image {path}: ")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_in_a_dataloader(tmp_path, workers):
    """Through worker processes too: the message names the file, without the worker traceback."""
    path = _tree_with_bad_image(tmp_path, "notes.jpg")
    train, _ = build_dataset("imagenet", tmp_path, "train", image_size=16)
    with pytest.raises(DataError) as caught:
        for _ in DataLoader(train, batch_size=4, num_workers=workers):
            pass
    message = str(caught.value)
    assert message.startswith(f"--data-path: cannot read image {path}: PIL cannot identify")
    assert "Traceback" not in message and "\n" not in message
    if workers:
        assert re.search(r" \(in DataLoader worker process [01]\)$", message)
        assert "Traceback" in caught.value.worker_traceback
    else:
        assert caught.value.worker_traceback is None


def test_data_error_unwraps_only_dataloader_worker_messages():
    wrapped = (
        "Caught DataError in DataLoader worker process 3.\nOriginal Traceback (most recent call "
        "last):\n  File \"x.py\", line 1, in f\n    raise DataError(msg)\n"
        "data.errors.DataError: --data-path: cannot read image /a b.jpg: broken\n"
    )
    error = DataError(wrapped)
    assert str(error) == "--data-path: cannot read image /a b.jpg: broken (in DataLoader worker " \
        "process 3)"
    assert error.worker_traceback == wrapped
    plain = DataError("--data-path /x: Caught DataError in a folder name")
    assert str(plain) == "--data-path /x: Caught DataError in a folder name"
    assert plain.worker_traceback is None
    assert isinstance(pickle.loads(pickle.dumps(error)), DataError)


@pytest.mark.parametrize("bad", list(_BAD_IMAGES))
def test_verify_images_finds_the_bad_file(tmp_path, bad):
    path = _tree_with_bad_image(tmp_path, bad)
    train, _ = build_dataset("imagenet", tmp_path, "train", image_size=16)
    with pytest.raises(DataError, match=f"cannot read image {path}: ") as caught:
        verify_images(train)
    assert str(caught.value).startswith("--data-path: ")
    position = [p for p, _ in train.samples].index(str(path))
    assert verify_images(train, limit=position) == position  # the ones before it are fine
    good = [i for i in range(len(train)) if i != position]
    assert verify_images(Subset(Subset(train, good), [0, 2, 4])) == 3
    if bad == "cut.jpg":  # verify() alone passes a truncated JPEG; decoding catches it
        assert verify_images(train, decode=False) == len(train)
    else:
        with pytest.raises(DataError, match=str(path)):
            verify_images(train, decode=False)


def test_verify_images_arguments(tmp_path):
    train, _ = build_dataset("imagenet", _imagenet_tree(tmp_path), "train", image_size=16)
    assert verify_images(train) == len(train) == 9
    assert verify_images(train, limit=0) == 0 and verify_images(train, limit=50) == 9
    with pytest.raises(DataError, match="limit=-1"):
        verify_images(train, limit=-1)
    synthetic, _ = build_dataset("synthetic", None, "train", num_images=4)
    with pytest.raises(DataError, match=r"SyntheticPatterns: has no image files"):
        verify_images(synthetic)
