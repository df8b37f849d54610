"""Tests of data/mnist.py, scripts/two_layer/mnist.py and scripts/mnist_two_layer.py (Wolfe et
al. 2023, Figure 1): the IDX reader on files written here, the vectorised greedy BCE step against
brute force, the dense network as the selection of every neuron once, and the `--quick` run end
to end on a few hundred synthetic 28 x 28 images (no MNIST is available on these machines)."""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DataError, load_mnist
from data.mnist import read_idx, write_idx
from scripts.two_layer import mnist as M
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import mnist_two_layer as cli  # noqa: E402

F64 = torch.float64


def blocks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n MNIST-like images, class balanced: digit c is a bright 6 x 6 block in row band c % 5,
    left half for c < 5 and right half for c >= 5 (so the binarised label is learnable), on
    faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for k, c in enumerate(labels):
        r, col = 1 + 5 * (c % 5), (3 if c < 5 else 17) + rng.integers(0, 3)
        images[k, r:r + 6, col:col + 6] = 200 + rng.integers(0, 56)
    return images, labels.astype(np.uint8)


def write_mnist(root: Path, n: int = 300, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = blocks(n)
    suffix = ".gz" if gz else ""
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", labels)
    return images, labels


# --- the IDX reader -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_torchvision_layout(tmp_path, gz):
    images, labels = write_mnist(tmp_path, n=30, gz=gz)
    got_images, got_labels = load_mnist(tmp_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64
    header = (tmp_path / "MNIST/raw/train-images-idx3-ubyte").read_bytes()[:16] if not gz else b""
    if header:  # the exact bytes of the format: magic 0x00000803, then n, 28, 28 big-endian
        assert header == bytes.fromhex("00000803") + (30).to_bytes(4, "big") + bytes.fromhex(
            "0000001c0000001c")
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx", floats)), floats)


def test_files_directly_in_the_root_are_found(tmp_path):
    images, labels = blocks(20)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(load_mnist(tmp_path)[1], labels)


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    write_mnist(tmp_path, n=20)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(b"\x01\x02" + good[2:])  # corrupted magic number
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad IDX magic number"):
        load_mnist(tmp_path)
    path.write_bytes(good[:-7])  # truncated
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path)
    path.write_bytes(good)
    labels = tmp_path / "MNIST/raw/train-labels-idx1-ubyte"
    write_idx(labels, np.arange(19, dtype=np.uint8) % 10)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 19 labels for 20 images"):
        load_mnist(tmp_path)
    gz = tmp_path / "broken.gz"
    gz.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DataError, match=r"broken.gz: cannot be read"):
        read_idx(gz)


def test_missing_folder_says_no_download(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; no download is possible here"):
        load_mnist(tmp_path / "nowhere")


# --- the network and the greedy step ----------------------------------------------------------


def tiny_network(N: int = 12, m: int = 9, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(N, d, generator=gen, dtype=F64)
    b = torch.randn(N, generator=gen, dtype=F64) / N**0.5
    X = torch.rand(m, d, generator=gen, dtype=F64)
    y = (torch.rand(m, generator=gen, dtype=F64) > 0.5).to(F64)
    return A, b, X, y


def brute_loss(A, b, X, y, multiset) -> float:
    """BCE of f_S(x) = sigmoid((N/|S|) sum_{i in S} b_i relu(a_i^T x)), by the definition."""
    N = A.shape[0]
    logits = sum(b[i] * torch.relu(X @ A[i]) for i in multiset) * (N / len(multiset))
    p = torch.sigmoid(logits)
    return float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())


def test_greedy_scores_equal_brute_force_losses():
    A, b, X, y = tiny_network()
    Phi = M.neuron_outputs(A, b, X, chunk=20)  # chunked over neurons
    S = [3, 7, 3]
    z = Phi[S].sum(0)
    scores = M.greedy_bce_scores(z, len(S) + 1, Phi, y, chunk=25)  # 2 candidates a chunk
    brute = [brute_loss(A, b, X, y, S + [i]) for i in range(A.shape[0])]
    np.testing.assert_allclose(scores.numpy(), brute, rtol=1e-12, atol=0)


def test_greedy_selection_equals_brute_force_with_replacement():
    A, b, X, y = tiny_network(seed=1)
    counts, losses = M.greedy_bce_selection(M.neuron_outputs(A, b, X, 1 << 20), y, 8, chunk=30)
    S, brute_losses = [], []
    for _ in range(8):
        candidates = [brute_loss(A, b, X, y, S + [i]) for i in range(A.shape[0])]
        S.append(int(np.argmin(candidates)))
        brute_losses.append(min(candidates))
    assert counts.tolist() == np.bincount(S, minlength=A.shape[0]).tolist()
    np.testing.assert_allclose(losses, brute_losses, rtol=1e-12)
    assert counts.max() > 1  # this instance picks a neuron again: selection with replacement


def test_every_neuron_once_is_the_dense_network():
    A, b, X, y = tiny_network(N=30)
    dense = M.dense_logits(A, b, X, chunk=50)
    torch.testing.assert_close(M.pruned_logits(A, b, torch.ones(30, dtype=torch.long), X), dense)
    torch.testing.assert_close(M.neuron_outputs(A, b, X, 1 << 20).mean(0), dense)
    twice = M.pruned_logits(A, b, torch.full((30,), 2), X)  # only proportions matter
    torch.testing.assert_close(twice, dense)


def test_hand_gradients_equal_autograd():
    A, b, X, y = tiny_network(N=10, m=23)
    gA, gb, loss = M.bce_gradients(A, b, X, y, chunk=40)  # 4 rows a chunk
    Ar, br = A.clone().requires_grad_(), b.clone().requires_grad_()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.relu(X @ Ar.T) @ br, y)
    ref.backward()
    torch.testing.assert_close(gA, Ar.grad)
    torch.testing.assert_close(gb, br.grad)
    assert loss == pytest.approx(float(ref.detach()))


def test_mini_batch_pretraining_follows_the_engines_batch_stream():
    """With 0 < batch_size < m, step t is a gradient step on batch t of
    ``data.InfiniteBatchSampler`` (reshuffled passes, tails dropped); otherwise full batch."""
    from dataclasses import replace

    from data.samplers import InfiniteBatchSampler

    A, b, X, y = tiny_network(N=10, m=23)
    s = replace(M.quick_mnist_settings(), iterations=7, prune_every=1, batch_size=5, lr=2.0)
    snapshots = [(At.clone(), bt.clone()) for _, At, bt in M.pretrain(A, b, X, y, s, seed=3)]
    sampler = InfiniteBatchSampler(23, 5, 3)
    for t in range(7):  # 4 batches a pass: t = 4..6 are the second pass
        (A0, b0), (A1, b1) = snapshots[t], snapshots[t + 1]
        batch = sampler.batch(t)
        gA, gb, _ = M.bce_gradients(A0, b0, X[batch], y[batch], chunk=1 << 20)
        torch.testing.assert_close(A1, A0 - (2.0 / 10) * gA, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b1, b0 - (2.0 / 10) * gb, rtol=1e-12, atol=1e-12)
    full = [bt.clone() for _, _, bt in M.pretrain(A, b, X, y, replace(s, batch_size=0), 3)]
    covering = [bt.clone() for _, _, bt in M.pretrain(A, b, X, y, replace(s, batch_size=23), 3)]
    assert all(torch.equal(u, v) for u, v in zip(full, covering, strict=True))


def test_red_line_is_the_first_iteration_reaching_the_largest_sizes_best():
    acc = np.array([[0.5, 0.9, 0.95, 0.9],  # reaches 0.9 at the second checkpoint
                    [0.5, 0.6, 0.7, 0.8],  # never
                    [0.5, 0.8, 0.9, 0.85]])  # the largest size: best 0.9 at the third
    target, first = M.red_line(acc, [0, 10, 20, 30])
    assert target == 0.9 and first == [10, None, 20]


# --- the command line, end to end ----------------------------------------------------------


def test_quick_run_end_to_end(tmp_path, capsys):
    write_mnist(tmp_path / "data")
    out = tmp_path / "out"
    result = cli.main(["--data-path", str(tmp_path / "data"), "--quick", "--out", str(out),
                       "--no-progress", "--device", "cpu"])
    s = M.quick_mnist_settings()
    saved = json.loads((out / "mnist_two_layer.json").read_text())
    assert saved["cells"] == result["cells"]
    iterations = list(range(0, s.iterations + 1, s.prune_every))
    assert len(saved["cells"]) == len(s.hidden) * len(s.sizes) * len(iterations) * s.trials
    keys = {"N", "size", "iteration", "trial", "accuracy", "dense_accuracy"}
    for cell in saved["cells"]:
        assert keys <= cell.keys()
        for key in ("accuracy", "dense_accuracy", "subset_accuracy"):
            assert 0.0 <= cell[key] <= 1.0
        assert 1 <= cell["distinct_neurons"] <= s.pruned_size
    for N in s.hidden:  # the blocks are learnable: pre-training and pruning both work
        final = [c for c in saved["cells"] if c["N"] == N and c["iteration"] == s.iterations]
        assert np.mean([c["dense_accuracy"] for c in final]) > 0.9
        assert np.mean([c["accuracy"] for c in final]) > 0.9
        for key in ("red_line", "subset_red_line"):
            assert len(saved["summary"][str(N)][key]) == len(s.sizes)
    assert (out / "mnist_two_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "red line" in capsys.readouterr().out


@pytest.mark.parametrize("n_images, argv, message", [
    (None, [], "no download is possible here"),
    (150, ["--quick"], "150 training images, but the setting needs sub-datasets of up to 300"),
    (None, ["--trials", "0"], "--trials: must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, n_images, argv, message):
    if n_images:
        write_mnist(tmp_path, n=n_images)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--data-path", str(tmp_path if n_images else tmp_path / "none"), *argv,
                  "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
