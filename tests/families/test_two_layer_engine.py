"""The two-layer experiment and the engine pick the same neurons, in the same order, with the
same losses.

``scripts.two_layer.mnist.greedy_bce_selection`` is greedy forward selection with replacement
written over the neuron output matrix Phi (one product per step, the point of the experiment's
own code); ``pruning.prune.prune`` is the engine's Algorithm 1 over a torch module, with masks
and one forward per candidate. Both get the same network here: the experiment's two-layer net,
pre-trained by the experiment's ``pretrain``, and the same module for the engine.

Why the two must agree exactly, not just roughly:

* Loss. The engine minimises softmax cross-entropy only; the experiment the binary
  cross-entropy of sigmoid(z). The module's head emits the two logits [0, z], and
  -log softmax([0, z])_y = -log sigmoid(z) for y = 1 and -log(1 - sigmoid(z)) for y = 0: the BCE.
* Data. The engine scores each step on the batch it draws; the stream here yields the whole
  data set every step, the set the experiment scores on (the engine's losses are batch means, as
  the BCE is).
* Mixture. The engine's mixing weights N c_i / |S| on b_i relu(a_i^T x) (``pruning.masks``) are
  the experiment's (1/|S|) sum_{i in S} phi_i with phi_i = N b_i relu(a_i^T x).
* Loop. ``replacement=True`` offers all N neurons at every step, ties go to the smallest index
  (``torch.argmin``) in both, and ``keep_fraction=1`` does not stop before the engine's cap of N
  steps (N distinct neurons are needed, so it never stops early with replacement).
* Arithmetic. The engine runs in float32 (its masks, forwards and losses); Phi and the
  experiment's scores are float64 from the same weights. The orders could only differ at a step
  where two candidates are within rounding of each other, so the test asserts that at every step
  the runner-up is ten times the losses' tolerance behind the best: the identical orders are not
  luck. (The labels are noisy so that the losses stay around 0.05-0.7; on separable data they
  fall to 1e-4, where float32 cross-entropy loses its digits to cancellation.)

The hidden layer is a 1x1 convolution on a 1x1 input because the engine slims a unit's producer
only if it is a convolution (``pruning.slim``).
"""

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from pruning.prune import PruneConfig, prune
from pruning.units import ChannelSpace, Unit, check_units
from scripts.two_layer import mnist as M

N, D, M_POINTS, CHUNK = 40, 12, 80, 1 << 20
LOSS_TOLERANCE = 1e-6  # engine (float32) vs experiment (float64); measured: 6.5e-8 at most
MARGIN = 10 * LOSS_TOLERANCE  # every step's runner-up is at least this far behind its best


class TwoLayer(nn.Module):
    """x -> [0, b . relu(A x)]: the experiment's network with a two-logit head."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.hidden = nn.Conv2d(A.shape[1], A.shape[0], 1, bias=False)
        self.output = nn.Linear(A.shape[0], 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(A[:, :, None, None])
            self.output.weight.copy_(torch.stack([torch.zeros_like(b), b]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(x[:, :, None, None])).flatten(1))


def hidden_unit() -> Unit:
    """The N hidden neurons: made by ``hidden``, mixed at the input of ``output``."""
    space = ChannelSpace("hidden", N, ("hidden",), ("output",))
    return Unit("hidden", space, site="output", side="input", block="hidden", producer="hidden")


def pretrained_network(seed: int = 0):
    """The experiment's pipeline up to Phi: its initialisation and full-batch pre-training, on
    points labelled by a random halfspace, 15% of the labels flipped (so that no subnetwork
    fits them: the losses stay well above float32 rounding)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(M_POINTS, D, generator=gen)
    y = (X @ torch.randn(D, generator=gen) > 0).float()
    y = torch.where(torch.rand(M_POINTS, generator=gen) < 0.15, 1 - y, y)
    s = replace(M.quick_mnist_settings(), iterations=40, prune_every=40)
    A, b = M.init_network(N, D, s, gen)
    *_, (t, A, b) = M.pretrain(A, b, X, y, s, seed)
    assert t == s.iterations
    return A, b, X, y


def experiment_order(Phi: torch.Tensor, y: torch.Tensor) -> tuple[list[int], list[float]]:
    """The neurons ``greedy_bce_selection`` adds, in order (selection n is the selection n - 1
    plus one neuron), and its losses after each of the N steps."""
    order, previous = [], torch.zeros(N, dtype=torch.long)
    for n in range(1, N + 1):
        counts, losses = M.greedy_bce_selection(Phi, y, n, CHUNK)
        order.append(int(torch.argmax(counts - previous)))
        previous = counts
    return order, losses


def test_engine_picks_the_experiments_neurons_in_order_with_its_losses():
    A, b, X, y = pretrained_network()
    Phi = M.neuron_outputs(A.double(), b.double(), X.double(), CHUNK)
    y64 = y.double()
    order, losses = experiment_order(Phi, y64)

    # every step's best candidate beats the runner-up by more than float32 rounding can close
    z = torch.zeros_like(y64)
    for k, chosen in enumerate(order, start=1):
        scores = M.greedy_bce_scores(z, k, Phi, y64, CHUNK)
        best, runner_up = torch.topk(scores, 2, largest=False).values.tolist()
        assert int(torch.argmin(scores)) == chosen
        assert runner_up - best > MARGIN, (k, best, runner_up)
        z = z + Phi[chosen]

    model = TwoLayer(A, b).eval()
    units = [hidden_unit()]
    check_units(model, units)
    labels = y.long()
    batches = iter(lambda: (X, labels), None)  # the whole data set at every step
    config = PruneConfig(method="greedy", stop="fraction", keep_fraction=1.0, replacement=True)
    result = prune(model, units, config, batches, [(X, labels)])

    assert [step.channel for step in result.history] == order
    np.testing.assert_allclose([step.batch_loss for step in result.history], losses, rtol=0,
                               atol=LOSS_TOLERANCE)
    counts = result.counts["hidden"]
    assert counts.tolist() == np.bincount(order, minlength=N).tolist()
    assert counts.max() > 1  # a neuron was picked again: selection with replacement matters

    # the engine's slim network is the experiment's subnetwork
    with torch.no_grad():
        logits = result.model(X)
    assert torch.equal(logits[:, 0], torch.zeros(M_POINTS))
    torch.testing.assert_close(logits[:, 1], M.pruned_logits(A, b, counts, X),
                               rtol=1e-5, atol=1e-5)
    assert result.model.hidden.out_channels == int((counts > 0).sum()) < N
