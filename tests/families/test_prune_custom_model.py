"""Prune your own model: declare its units, call ``pruning.prune.prune``, save the slim network.

The README's "Prune your own model" section is this test: a small VGG-style CNN that is not one of
the repository's architectures, registered with its three units declared by module name,
Algorithm 1 with the paper's loss-gap rule through ``prune(model, units, PruneConfig(...), ...)``,
the slim network checked against the masked one, and the pruned checkpoint reloaded through the
registry. No command-line script is involved.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

import data
import models
from pruning.checkpoint import Checkpoint, save, selection_cfg
from pruning.masks import Masks
from pruning.prune import PruneConfig, prune
from pruning.units import ChannelSpace, Unit, check_units


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),      # 0 1 2
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),     # 3 4 5
            nn.MaxPool2d(2),                                                    # 6
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),     # 7 8 9
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def small_vgg_units() -> list[Unit]:
    """Each conv's output channels are one unit: made by the conv and its BatchNorm, read by the
    next layer, and mixed (f_S) at that next layer's input."""
    layers = [("conv1", 16, "features.0", "features.1", "features.3"),
              ("conv2", 32, "features.3", "features.4", "features.7"),
              ("conv3", 32, "features.7", "features.8", "classifier")]
    return [Unit(name, ChannelSpace(name, size, (conv, bn), (reader,)), site=reader,
                 side="input", block=conv, producer=conv)
            for name, size, conv, bn, reader in layers]


SMALL_VGG = models.register(models.Architecture(
    name="small_vgg", title="SmallVGG", build=lambda width, num_classes: SmallVGG(num_classes),
    units=lambda model, kind: small_vgg_units(), unit_kinds=("conv",),
    recipe={"lr": 0.01, "lr_schedule": "cosine"}))


@functools.cache
def _training() -> tuple[dict[str, torch.Tensor], list, torch.Tensor, torch.Tensor]:
    """The trained weights, the evaluation batches, and the states of the generator and of
    torch's global generator after training: trained once for the tests here (each gets its own
    copy of the network, and both generators as the training left them)."""
    torch.manual_seed(0)
    train = data.SyntheticPatterns(512, 10, 16, "train", seed=0, augment=False)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor(train.targets)
    model = SmallVGG()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(x), 128)]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, batches, generator.get_state(), torch.get_rng_state()


def trained_model() -> tuple[nn.Module, list, torch.Generator]:
    state, batches, generator_state, global_state = _training()
    model = SmallVGG()
    model.load_state_dict(state)
    generator = torch.Generator()
    generator.set_state(generator_state)
    torch.set_rng_state(global_state)
    return model.eval(), list(batches), generator


def test_prune_custom_model(tmp_path):
    model, eval_batches, generator = trained_model()
    units = models.prunable_units("small_vgg", model)
    check_units(model, units)

    def batches():
        x, y = torch.cat([b[0] for b in eval_batches]), torch.cat([b[1] for b in eval_batches])
        while True:
            idx = torch.randint(0, len(x), (64,), generator=generator)
            yield x[idx], y[idx]

    minibatches = batches()
    epsilon = 0.05
    # the README's lines
    config = PruneConfig(method="greedy", stop="loss_gap", epsilon=epsilon)  # the paper's rule
    result = prune(model, units, config, minibatches, eval_batches)  # an iterator; a fixed list
    save(Checkpoint("pruned", "small_vgg", 1.0, 10, result.model.state_dict(), "conv",
                    selection_cfg(units, result.counts, result.kept)), tmp_path / "pruned.pth")
    reloaded, ckpt = models.load_pruned(tmp_path / "pruned.pth")  # rebuilt through the registry

    counts, slim, kept = result.counts, result.model, result.kept
    (dense_loss, dense_top1), (pruned_loss, _) = result.dense, result.masked
    probe = eval_batches[0][0]
    masks = Masks(model, units)  # the masked network again: prune() took its masks off
    for name, c in counts.items():
        masks.set_counts(name, c)
    with torch.no_grad():
        masked = model(probe)
    masks.remove()

    assert dense_top1 > 0.5  # the network learned something worth keeping
    assert pruned_loss - dense_loss < epsilon  # the paper's stop rule, after the last unit
    assert sum(len(v) for v in kept.values()) < 16 + 32 + 32  # channels were removed
    assert slim.features[0].out_channels == len(kept["conv1"]) == int((counts["conv1"] > 0).sum())
    with torch.no_grad():
        assert torch.allclose(slim(probe), masked, rtol=1e-4, atol=1e-5)
    assert result.verification["slim_exact"]
    assert [s.unit for s in result.history][:1] == ["conv1"] and len(result.history) == sum(
        int(c.sum()) for c in counts.values())  # one history entry per greedy step

    # saved as the prune scripts save it, rebuilt from the registry (no pickled module)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(probe), slim(probe))


def test_prune_config_names_the_field_it_refuses():
    import pytest

    for kwargs, field in [({"method": "forward"}, "method"), ({"epsilon": 0}, "epsilon"),
                          ({"top1_tol": 1.0}, "top1_tol"), ({"keep_fraction": 0}, "keep_fraction"),
                          ({"method": "random"}, "method"), ({"shortlist": 4}, "shortlist"),
                          ({"exact_steps": 2}, "exact_steps"), ({"precision": "bf16"}, "precision"),
                          ({"candidates": 0}, "candidates"), ({"evaluator": "quick"}, "evaluator"),
                          ({"samples_per_pass": 0}, "samples_per_pass")]:
        with pytest.raises(ValueError, match=f"PruneConfig.{field}"):
            PruneConfig(**kwargs)


def test_prune_backward_and_a_baseline_share_the_call():
    import copy

    model, eval_batches, _ = trained_model()
    dense = copy.deepcopy(model)
    batches = iter([(x[:16], y[:16]) for x, y in eval_batches] * 10)
    backward = prune(model, models.prunable_units("small_vgg", model),
                     PruneConfig(method="backward", stop="fraction", keep_fraction=0.5), batches,
                     eval_batches[:1])
    assert backward.kept_counts == {"conv1": 8, "conv2": 16, "conv3": 16}
    assert len(backward.history) == 8 + 16 + 16 and backward.verification["slim_exact"]
    magnitude = prune(dense, models.prunable_units("small_vgg", dense),
                      PruneConfig(method="magnitude", match_kept=backward.kept_counts), None,
                      eval_batches[:1])
    assert magnitude.kept_counts == backward.kept_counts and not magnitude.history
