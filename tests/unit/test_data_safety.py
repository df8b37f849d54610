"""CIFAR-10 batches are read without running code from them, and checked before use.

The fakes are written as the official files are: Python 2's cPickle, protocol 2, str keys and
strings as byte strings, arrays rebuilt by numpy.core.multiarray._reconstruct (see _py2_pickle);
plus the ways a Python 3 re-export differs (bytes keys, protocols 2 to 5).
"""

import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data import CIFAR10_MEAN, CIFAR10_STD, DataError, build_dataset, get_targets

_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled the way Python 2's cPickle wrote CIFAR-10's python version (protocol 2).

    Handles what those files hold: dicts, lists, str (written as Python 2 byte strings), ints and
    uint8 arrays (numpy.core.multiarray._reconstruct, then a BUILD with the raw pixel string).
    """
    out = bytearray(b"\x80\x02")

    def string(raw: bytes) -> None:
        if len(raw) < 256:
            out.extend(b"U" + bytes([len(raw)]) + raw)
        else:
            out.extend(b"T" + struct.pack("<i", len(raw)) + raw)

    def integer(value: int) -> None:
        if 0 <= value < 256:
            out.extend(b"K" + bytes([value]))
        else:
            out.extend(b"J" + struct.pack("<i", value))

    def put(value) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                put(key)
                put(item)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                put(item)
            out.extend(b"e")
        elif isinstance(value, str):
            string(value.encode("latin1"))
        elif isinstance(value, int):
            integer(value)
        else:
            assert isinstance(value, np.ndarray) and value.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                       b"K\x00\x85U\x01b\x87R(K\x01(")
            for size in value.shape:
                integer(size)
            out.extend(b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
                       b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(value.tobytes())
            out.extend(b"tb")

    put(obj)
    out.extend(b".")
    return bytes(out)


def _batch(name: str, count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        "labels": [int(x) for x in rng.integers(0, 10, count)],
        "batch_label": f"{name} of the fake",
        "filenames": [f"{name}_{i}.png" for i in range(count)],
    }


_META = {"num_cases_per_batch": 2, "label_names": [f"class{i}" for i in range(10)],
         "num_vis": 3072}


def _write_folder(folder: Path, dump=_py2_pickle, counts=None) -> dict:
    """A complete batches folder; ``dump`` turns each dict into the file's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, name in enumerate(_BATCHES):
        count = (counts or {}).get(name, 3 if name == "test_batch" else 2)
        written[name] = _batch(name, count, seed)
        (folder / name).write_bytes(dump(written[name]))
    (folder / "batches.meta").write_bytes(dump(_META))
    return written


def _normalized(row: np.ndarray) -> torch.Tensor:
    raw = torch.tensor(row, dtype=torch.float32).view(3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    return (raw / 255 - mean) / std


def test_python2_style_batches_load_with_the_right_images_and_labels(tmp_path):
    written = _write_folder(tmp_path / "cifar-10-batches-py")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy.core names must not trip numpy 2's deprecation
        train, num_classes = build_dataset("cifar10", tmp_path, "train")
        val, _ = build_dataset("cifar10", tmp_path, "val")
    assert num_classes == 10 and len(train) == 10 and len(val) == 3
    expected = [label for name in _BATCHES[:5] for label in written[name]["labels"]]
    assert train.targets == expected and get_targets(train) == expected
    assert val.targets == written["test_batch"]["labels"]
    assert train.classes == _META["label_names"] and train.class_to_idx["class3"] == 3
    rows = np.concatenate([written[name]["data"] for name in _BATCHES[:5]])
    assert train.data.shape == (10, 32, 32, 3) and train.data.dtype == np.uint8
    # HWC: pixel (y, x) of channel c is row[c * 1024 + y * 32 + x].
    assert train.data[7, 5, 9, 2] == rows[7, 2 * 1024 + 5 * 32 + 9]
    torch.testing.assert_close(val[2][0], _normalized(written["test_batch"]["data"][2]))
    assert val[2][1] == written["test_batch"]["labels"][2]
    assert "Split: Test" in repr(val)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_reexports_load(tmp_path, protocol):
    """Bytes keys and names (as pickle.load(..., encoding="bytes") users re-save them)."""

    def dump(entry: dict) -> bytes:
        as_bytes = {
            key.encode(): [v.encode() for v in value] if key in ("label_names", "filenames")
            else value.encode() if isinstance(value, str) else value
            for key, value in entry.items()
        }
        return pickle.dumps(as_bytes, protocol=protocol)

    written = _write_folder(tmp_path / "b", dump=dump)
    val, _ = build_dataset("cifar10", tmp_path / "b", "val")
    assert val.targets == written["test_batch"]["labels"] and val.classes[9] == "class9"
    torch.testing.assert_close(val[0][0], _normalized(written["test_batch"]["data"][0]))


class _System:
    """Unpickling calls os.system("touch <marker>")."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    """Unpickling calls open(<marker>, "w"), which creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _refused(data_path: Path, split: str, file: Path, match: str) -> str:
    """The DataError of loading ``split``, which must match ``match`` and name ``file`` first."""
    with pytest.raises(DataError, match=match) as caught:
        build_dataset("cifar10", data_path, split)
    message = str(caught.value)
    assert message.startswith(f"--data-path {file}: ")
    return message


def _system_protocol0(marker: Path) -> bytes:
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def _hostile_payloads(marker: Path) -> dict:
    legit = _batch("data_batch_1", 2, 0)
    return {
        "os.system": pickle.dumps(_System(marker)),
        "open": pickle.dumps(_Open(marker), protocol=2),
        "protocol-0": _system_protocol0(marker),
        "inside-a-batch": pickle.dumps({**legit, "labels": _System(marker)}),
        "inside-an-array": pickle.dumps({**legit, "data": np.array([_Open(marker)])}),
    }


@pytest.mark.parametrize("payload", list(_hostile_payloads(Path("x"))))
def test_the_hostile_payloads_do_run_under_plain_pickle(tmp_path, payload):
    """So the refusals below are not vacuous: pickle.load (torchvision's way) runs each one."""
    marker = tmp_path / "marker"
    loaded = pickle.loads(_hostile_payloads(marker)[payload], encoding="latin1")
    assert marker.exists()
    found = [loaded, *(loaded.values() if isinstance(loaded, dict) else [])]
    for item in found:  # close the files the open payloads returned
        if isinstance(item, np.ndarray) and item.dtype == object:
            found.extend(item.tolist())
        elif hasattr(item, "close"):
            item.close()


@pytest.mark.parametrize("payload", list(_hostile_payloads(Path("x"))))
@pytest.mark.parametrize(
    ("name", "split"),
    [("data_batch_1", "train"), ("data_batch_5", "train"), ("test_batch", "val"),
     ("batches.meta", "val"), ("batches.meta", "train")],
)
def test_hostile_pickles_are_refused_before_anything_runs(tmp_path, name, split, payload):
    folder = tmp_path / "cifar-10-batches-py"
    _write_folder(folder)
    marker = tmp_path / "marker"
    (folder / name).write_bytes(_hostile_payloads(marker)[payload])
    message = _refused(tmp_path, split, folder / name, "refused to load")
    assert not marker.exists()
    assert ("system" in message) or ("open" in message)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([1, 2, 3], "holds a list, a CIFAR-10 python batch holds a dict"),
        ({"data": np.zeros((2, 3072), np.uint8)}, r"no 'labels' entry"),
        ({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}, "CIFAR-100"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]},
         r"'data' is a float32 array of shape \(2, 3072\), expected a uint8 array"),
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, r"shape \(2, 3071\)"),
        ({"data": np.zeros(3072, np.uint8), "labels": [0]}, r"shape \(3072,\)"),
        ({"data": [[0] * 3072], "labels": [0]}, "'data' is a list"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "label 10 out of range"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, -1]}, "label -1 out of range"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, "list of integers"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 2]}, "2 images but 3 labels"),
    ],
    ids=["not-a-dict", "no-labels", "cifar100", "float", "3071-columns", "1d", "list-data",
         "label-10", "label-negative", "string-labels", "length-mismatch"],
)
def test_malformed_batches_name_the_file(tmp_path, entry, message):
    _write_folder(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(entry))
    _refused(tmp_path, "train", tmp_path / "data_batch_3", message)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"label_names": ["a"] * 9}, "9 label_names, CIFAR-10 has 10"),
        ({"label_names": list(range(10))}, "list of strings"),
        ({"num_vis": 3072}, "no 'label_names' entry"),
    ],
)
def test_malformed_meta_names_the_file(tmp_path, meta, message):
    _write_folder(tmp_path)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta))
    _refused(tmp_path, "val", tmp_path / "batches.meta", message)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a pickle at all", "truncated"],
    ids=["empty", "text", "truncated"],
)
def test_unreadable_batches_name_the_file(tmp_path, content):
    _write_folder(tmp_path)
    if content == "truncated":
        content = (tmp_path / "test_batch").read_bytes()[:5000]
    (tmp_path / "test_batch").write_bytes(content)
    _refused(tmp_path, "val", tmp_path / "test_batch", "not a readable CIFAR-10 python batch")


def test_codecs_other_than_latin1_are_refused(tmp_path):
    """_codecs.encode is admitted for the bytes of protocol 2 pickles, with latin1 only."""
    _write_folder(tmp_path)
    rot13 = b"\x80\x02c_codecs\nencode\nX\x05\x00\x00\x00helloX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "test_batch").write_bytes(rot13)
    with pytest.raises(DataError, match=r"not a readable .*encoding 'rot13'"):
        build_dataset("cifar10", tmp_path, "val")
