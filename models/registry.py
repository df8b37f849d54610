"""The architecture registry: one ``Architecture`` per network family, found by name.

Everything the rest of the repository needs to know about a network family is declared once, in
the family's own module (``models/mobilenet_v2.py``, ``models/resnet34.py``), as the fields of
an ``Architecture``: how to build it, its prunable units per kind, where the fast evaluators cut
it, how foreign weight files map onto it, and the paper's fine-tuning recipe for it. The engine
(``pruning/``), the command lines and the launchers ask the registry and never compare
architecture names, so adding a family (ResNet50, a CIFAR layout, your own network) is one new
module and one ``register`` call.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.units import Unit, UnitSplit, check_units


#: The layout every family's ``build`` makes (torchvision's ImageNet stems for the two families).
DEFAULT_LAYOUT = "imagenet"


def _pytorch_default(linear: nn.Linear) -> None:
    linear.reset_parameters()


@dataclass(frozen=True)
class Architecture:
    """A network family as the pruning engine, the CLIs and the launchers see it.

    Required (``register`` checks them, see ``validate``):
        name: the registry key, also stored in checkpoints (``"mobilenet_v2"``).
        title: for messages (``"MobileNetV2"``).
        build: ``(width, num_classes) -> nn.Module`` at full width, randomly initialized.
        units: ``(model, kind) -> list[Unit]`` in input-to-output order; every module a unit
            names must exist in the model ``build`` makes, in every layout.
        unit_kinds: the kinds ``units`` accepts; the first is the default.
        recipe: the paper's fine-tuning defaults, ``lr`` (> 0) and ``lr_schedule`` (``cosine``
            or ``constant``; Section 4.1), and optionally ``momentum``, ``weight_decay`` or
            ``nesterov``: the fine-tune scripts' defaults for this family.

    Optional:
        split: ``(model, unit) -> UnitSplit``, the network cut at a unit for the fast evaluators
            (``pruning.fast_evaluators``); without it only ``--evaluator plain`` works.
        widths: the width multipliers ``build`` accepts; more than one gives the CLIs ``--width``.
        head_keys: the classifier's state_dict keys, the only ones a 10-class fine-tune of
            1000-class weights may leave unloaded.
        classifier_init: how ``reinitialize`` draws the classifier (torchvision's own choice).
        torchvision_weights: the torchvision model name whose weights enum names
            (``IMAGENET1K_V1``) may be given as ``--pretrained``; None: files only.
        map_state: ``state -> (state, description) | None``: recognise a foreign key layout
            (d-li14's MobileNetV2) and rename it to this family's keys.
        infer_width: ``state -> width | None``: read the width multiplier of a state_dict, for
            messages about files of another width.
        script: the prefix of the family's command-line scripts (``mobile2`` for
            ``mobile2_prune.py`` / ``mobile2_finetune.py``).
        layouts: input layouts besides the one ``build`` makes (``"imagenet"``): name -> a
            function that adapts a freshly built network in place (the CIFAR layouts change the
            stem, Wolfe et al. Section 6.2); units, splits and slimming see the adapted network.
    """

    name: str
    title: str
    build: Callable[[float, int], nn.Module]
    units: Callable[[nn.Module, str], list[Unit]]
    unit_kinds: tuple[str, ...]
    split: Callable[[nn.Module, Unit], UnitSplit] | None = None
    widths: tuple[float, ...] = (1.0,)
    head_keys: tuple[str, ...] = ()
    classifier_init: Callable[[nn.Linear], None] = _pytorch_default
    recipe: Mapping[str, Any] = field(default_factory=dict)
    torchvision_weights: str | None = None
    map_state: Callable[[Mapping[str, torch.Tensor]],
                        tuple[dict[str, torch.Tensor], str] | None] | None = None
    infer_width: Callable[[Mapping[str, torch.Tensor]], float | None] | None = None
    script: str | None = None
    layouts: Mapping[str, Callable[[nn.Module], None]] = field(default_factory=dict)

    @property
    def default_units(self) -> str:
        return self.unit_kinds[0]

    @property
    def has_width(self) -> bool:
        """Whether the family has a width multiplier (and its scripts a ``--width`` flag)."""
        return len(self.widths) > 1

    @property
    def layout_names(self) -> tuple[str, ...]:
        return (DEFAULT_LAYOUT, *self.layouts)

    def check_layout(self, layout: str) -> None:
        if layout not in self.layout_names:
            raise ValueError(f"--layout: {self.title} has the layouts {self.layout_names}, got "
                             f"{layout!r}")

    def check_width(self, width: float) -> None:
        if width not in self.widths:
            if not self.has_width:
                raise ValueError(f"--width: {self.title} has no width multiplier, got {width}")
            raise ValueError(f"--width: {self.title} width must be one of {self.widths}, "
                             f"got {width}")

    def describe(self, state: Mapping[str, torch.Tensor]) -> str:
        """E.g. ``'width 0.5, 10 classes'`` for messages (the width only where there is one)."""
        head = state.get(self.head_keys[0]) if self.head_keys else None
        classes = f"{head.shape[0]} classes" if head is not None else "no recognised classifier"
        if not self.has_width or self.infer_width is None:
            return classes
        width = self.infer_width(state)
        return f"width {width if width is not None else 'unrecognised'}, {classes}"

    def reinitialize(self, model: nn.Module) -> nn.Module:
        """A new random initialization of every layer, drawn for the layer's own (slim) shape.

        Re-training "from new random initialization" (Ye et al., Section 4.2; Liu et al.'s
        Scratch setting) means the architecture's usual initializer, not the dense model's
        initial weights cut to the slim shapes (their scale would follow the dense fan-out):
        torchvision's Kaiming-normal (fan_out) convs with zero bias, BatchNorm at identity with
        fresh running statistics, and the family's ``classifier_init``.
        """
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1
            elif isinstance(module, nn.Linear):
                self.classifier_init(module)
        return model


_REGISTRY: dict[str, Architecture] = {}


LR_SCHEDULES = ("cosine", "constant")
_RECIPE_REQUIRED = ("lr", "lr_schedule")
_RECIPE_OPTIONAL = ("momentum", "weight_decay", "nesterov")


class ArchitectureError(ValueError):
    """A family declared wrongly: the message names the family and the field."""


def _recipe_problem(recipe: Any) -> str | None:
    if not isinstance(recipe, Mapping):
        return f"expected a mapping, got {type(recipe).__name__}"
    missing = [k for k in _RECIPE_REQUIRED if k not in recipe]
    if missing:
        return (f"needs {' and '.join(map(repr, missing))} (the fine-tuning defaults; a missing "
                f"schedule would silently be a constant learning rate)")
    unknown = sorted(set(recipe) - set(_RECIPE_REQUIRED) - set(_RECIPE_OPTIONAL))
    if unknown:
        return f"unknown keys {unknown}; expected {_RECIPE_REQUIRED + _RECIPE_OPTIONAL}"
    lr = recipe["lr"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) \
            or lr <= 0:
        return f"'lr' must be a finite number > 0, got {lr!r}"
    if recipe["lr_schedule"] not in LR_SCHEDULES:
        return f"'lr_schedule' must be one of {LR_SCHEDULES}, got {recipe['lr_schedule']!r}"
    return None


def validate(arch: Architecture) -> None:
    """Check what the engine and the CLIs rely on, so a family declared wrongly fails when it is
    registered, with its name and the field, not later in a script with a raw TypeError.

    The structure is checked on networks built on the ``meta`` device (shapes only, no memory,
    no initialization cost): for every layout and unit kind, ``units`` gives at least one unit
    and every module a unit names exists (``pruning.units.check_units``).
    """
    def fail(name: str, problem: str) -> None:
        raise ArchitectureError(f"architecture {arch.name!r}: {name}: {problem}")

    for name in ("name", "title"):
        if not isinstance(getattr(arch, name), str) or not getattr(arch, name):
            fail(name, "a non-empty string is required")
    for name in ("build", "units"):
        if not callable(getattr(arch, name)):
            fail(name, "a function is required")
    for name in ("split", "map_state", "infer_width"):
        if getattr(arch, name) is not None and not callable(getattr(arch, name)):
            fail(name, "must be a function or None")
    if not isinstance(arch.unit_kinds, tuple) or not arch.unit_kinds \
            or not all(isinstance(k, str) and k for k in arch.unit_kinds):
        fail("unit_kinds", f"a non-empty tuple of names is required, got {arch.unit_kinds!r}")
    if not isinstance(arch.widths, tuple) or not arch.widths or not all(
            isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in arch.widths):
        fail("widths", f"a non-empty tuple of positive numbers is required, got {arch.widths!r}")
    problem = _recipe_problem(arch.recipe)
    if problem:
        fail("recipe", problem)
    if not isinstance(arch.head_keys, tuple) or not all(isinstance(k, str)
                                                        for k in arch.head_keys):
        fail("head_keys", f"a tuple of state_dict keys is required, got {arch.head_keys!r}")
    for layout, adapt in arch.layouts.items():
        if layout == DEFAULT_LAYOUT or not callable(adapt):
            fail("layouts", f"{layout!r} must be a new name mapped to a function")
    width = min(arch.widths)
    for layout in arch.layout_names:
        with torch.device("meta"):  # one network per layout: declaring units does not change it
            model = arch.build(width, 10)
            if layout != DEFAULT_LAYOUT:
                arch.layouts[layout](model)
        for kind in arch.unit_kinds:
            try:
                units = arch.units(model, kind)
                if not units:
                    raise ValueError("no units")
                check_units(model, units)
            except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
                fail("units", f"kind {kind!r}, layout {layout!r}: {error}")


def register(arch: Architecture) -> Architecture:
    """Make ``arch`` known by its name (to ``get``, checkpoints and the CLIs) once ``validate``
    accepts it; returns it."""
    known = _REGISTRY.get(arch.name)
    if known is not None and known is not arch:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    validate(arch)
    _REGISTRY[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    """The registered architecture ``name``, or a ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; expected one of {names()}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered architecture names, in registration order."""
    return tuple(_REGISTRY)
