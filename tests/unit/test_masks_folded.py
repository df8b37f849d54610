"""Training between units happens in the slim network's parametrization (``Masks.folded``).

A multiplier w_j on a hook scales the gradient of the weights that read channel j by w_j, so an
SGD step on the masked network is not the step the slim network would take; with w_j in the
hundreds a short fine-tune between units diverged. Inside ``folded`` the step is the slim one.
"""

import copy

import torch
import torch.nn.functional as F

import models
from pruning.masks import Masks
from pruning.slim import slim_model
from tests.support.nets import tiny_net, tiny_units

ARCH = "mobilenet_v2"


def masked_and_slim(kind: str):
    torch.manual_seed(0)
    model = models.build(ARCH, 0.5, num_classes=10).eval()  # eval: BN statistics, no dropout
    model.classifier[1].weight.data.mul_(100)  # torchvision's N(0, 0.01) hides the features
    clean = copy.deepcopy(model)
    units = models.prunable_units(ARCH, model, kind)
    masks = Masks(model, units)
    generator = torch.Generator().manual_seed(0)
    for unit in units:
        counts = torch.zeros(unit.size, dtype=torch.long)
        picked = torch.randperm(unit.size, generator=generator)[: max(1, unit.size // 8)]
        counts[picked] = 1
        counts[picked[0]] = 2  # a repeated pick: a larger multiplier
        masks.set_counts(unit.name, counts)
    slim, _ = slim_model(clean, units, {n: w.clone() for n, w in masks.weights.items()})
    return model, masks, slim


def sgd_step(model, x, y, lr=2.0):
    """One step on the weights that read the units' channels (the sites): the other layers step
    alike in both parametrizations, and the classifier's bias would dominate the change."""
    optimizer = torch.optim.SGD([model[3].weight, model[8].weight], lr=lr)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def tiny_masked_and_slim():
    """A conv-BN-conv-BN-linear network with two input-side units (``test_engine.py``)."""
    model = tiny_net()
    clean = copy.deepcopy(model)
    units = tiny_units()
    masks = Masks(model, units)
    masks.set_counts("u1", torch.tensor([0, 2, 0, 1, 0, 0, 0, 0]))  # w = 8 * 2 / 3 and 8 / 3
    masks.set_counts("u2", torch.tensor([1, 0, 0, 0, 0, 0]))  # w = 6
    slim, _ = slim_model(clean, units, {n: w.clone() for n, w in masks.weights.items()})
    return model, masks, slim


def test_folding_keeps_the_function_and_is_undone_on_exit():
    model, masks, _ = masked_and_slim("hidden+outputs")  # input-side and output-side units
    x = torch.randn(4, 3, 16, 16)
    before = model(x).detach()
    weights = {n: w.clone() for n, w in masks.weights.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with masks.folded(model):
        assert torch.allclose(model(x), before, rtol=1e-4, atol=1e-5)
        assert all(set(w.unique().tolist()) <= {0.0, 1.0} for w in masks.weights.values())
    assert all(torch.equal(masks.weights[n], w) for n, w in weights.items())
    for key, value in model.state_dict().items():
        assert torch.allclose(value, state[key], rtol=1e-6, atol=1e-7), key


def test_a_step_inside_folded_is_the_slim_networks_step_and_outside_it_is_not():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 4, (16,))
    probe = torch.randn(4, 3, 8, 8, generator=generator)

    def change(model, step) -> torch.Tensor:
        """How one SGD step moves the logits on ``probe``."""
        before = model(probe).detach()
        step()
        return model(probe).detach() - before

    model, masks, slim = tiny_masked_and_slim()
    wanted = change(slim, lambda: sgd_step(slim, x, y))

    def folded_step():
        with masks.folded(model):
            sgd_step(model, x, y)

    folded = change(model, folded_step)
    hooked, _, _ = tiny_masked_and_slim()  # the same step with the multipliers on the hooks
    on_hooks = change(hooked, lambda: sgd_step(hooked, x, y))
    assert wanted.norm() > 1e-4
    assert (folded - wanted).norm() < 1e-3 * wanted.norm()
    assert (on_hooks - wanted).norm() > 0.5 * wanted.norm()


def test_the_short_finetune_leaves_batchnorm_statistics_and_the_multipliers_alone():
    """Train-mode BatchNorm would normalize a one-channel unit by that channel's batch
    statistics and pull the running statistics toward them."""
    from scripts.runner import prune_cli

    model, masks, _ = masked_and_slim("hidden")
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    weights = {n: w.clone() for n, w in masks.weights.items()}
    batches = iter([(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)])
    prune_cli.short_finetune(model, masks, batches, steps=3, lr=1e-3, seed=0)
    for key, value in model.state_dict().items():
        if key in statistics:
            assert torch.equal(value, statistics[key]), key
    assert all(torch.equal(masks.weights[n], w) for n, w in weights.items())
    assert not model.training
