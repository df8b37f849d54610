"""The architecture registry: one ``Architecture`` per network family, found by name.

Everything the rest of the repository needs to know about a network family is declared once, in
the family's own module (``models/mobilenet_v2.py``, ``models/resnet34.py``), as the fields of
an ``Architecture``: how to build it, its prunable units per kind, where the fast evaluators cut
it, how foreign weight files map onto it, and the paper's fine-tuning recipe for it. The engine
(``pruning/``), the command lines and the launchers ask the registry and never compare
architecture names, so adding a family (ResNet50, a CIFAR layout, your own network) is one new
module and one ``register`` call.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.units import Unit, UnitSplit


#: The layout every family's ``build`` makes (torchvision's ImageNet stems for the two families).
DEFAULT_LAYOUT = "imagenet"


def _pytorch_default(linear: nn.Linear) -> None:
    linear.reset_parameters()


@dataclass(frozen=True)
class Architecture:
    """A network family as the pruning engine, the CLIs and the launchers see it.

    Required:
        name: the registry key, also stored in checkpoints (``"mobilenet_v2"``).
        title: for messages (``"MobileNetV2"``).
        build: ``(width, num_classes) -> nn.Module`` at full width, randomly initialized.
        units: ``(model, kind) -> list[Unit]`` in input-to-output order.
        unit_kinds: the kinds ``units`` accepts; the first is the default.

    Optional:
        split: ``(model, unit) -> UnitSplit``, the network cut at a unit for the fast evaluators
            (``pruning.fast_evaluators``); without it only ``--evaluator plain`` works.
        widths: the width multipliers ``build`` accepts; more than one gives the CLIs ``--width``.
        head_keys: the classifier's state_dict keys, the only ones a 10-class fine-tune of
            1000-class weights may leave unloaded.
        classifier_init: how ``reinitialize`` draws the classifier (torchvision's own choice).
        recipe: the paper's fine-tuning defaults (``lr``, ``lr_schedule``; Section 4.1).
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


def register(arch: Architecture) -> Architecture:
    """Make ``arch`` known by its name (to ``get``, checkpoints and the CLIs); returns it."""
    known = _REGISTRY.get(arch.name)
    if known is not None and known is not arch:
        raise ValueError(f"architecture {arch.name!r} is already registered")
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
