"""``register`` refuses a family declared wrongly, naming the family and the field."""

import dataclasses

import pytest
from torch import nn

import models
from models.registry import ArchitectureError, validate
from pruning.units import ChannelSpace, Unit


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x))).mean((2, 3))


def tiny_units(model, kind, reader="head"):
    return [Unit("u", ChannelSpace("u", 8, ("conv", "bn"), (reader,)), reader, "input", "conv",
                 producer="conv")]


GOOD = models.Architecture(name="tiny_registry_test", title="Tiny",
                           build=lambda width, classes: Tiny(classes), units=tiny_units,
                           unit_kinds=("conv",), recipe={"lr": 0.1, "lr_schedule": "cosine"})


def test_a_correct_family_passes():
    validate(GOOD)


@pytest.mark.parametrize("change,field,words", [
    ({"recipe": {}}, "recipe", "'lr' and 'lr_schedule'"),
    ({"recipe": {"lr": 0.01}}, "recipe", "'lr_schedule'"),
    ({"recipe": {"lr": 0.01, "lr_schedule": "step"}}, "recipe", "cosine"),
    ({"recipe": {"lr": -1, "lr_schedule": "cosine"}}, "recipe", "> 0"),
    ({"recipe": {"lr": 0.01, "lr_schedule": "cosine", "lr_decay": 2}}, "recipe", "unknown"),
    ({"title": ""}, "title", "non-empty"),
    ({"build": None}, "build", "function"),
    ({"unit_kinds": ()}, "unit_kinds", "non-empty"),
    ({"widths": (0.0,)}, "widths", "positive"),
    ({"units": lambda m, k: tiny_units(m, k, reader="missing")}, "units", "'missing'"),
    ({"units": lambda m, k: []}, "units", "no units"),
    ({"layouts": {"cifar": None}}, "layouts", "function"),
])
def test_a_missing_or_wrong_field_is_named(change, field, words):
    with pytest.raises(ArchitectureError) as info:
        validate(dataclasses.replace(GOOD, **change))
    message = str(info.value)
    assert message.startswith(f"architecture 'tiny_registry_test': {field}: ")
    assert words in message


def test_register_validates_before_the_family_is_known():
    bad = dataclasses.replace(GOOD, name="tiny_without_recipe", recipe={})
    with pytest.raises(ArchitectureError, match="recipe"):
        models.register(bad)
    assert "tiny_without_recipe" not in models.names()


@pytest.mark.parametrize("arch", models.names())
def test_every_registered_family_validates(arch):
    validate(models.get(arch))
