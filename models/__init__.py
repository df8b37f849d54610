"""Architecture knowledge: which networks exist, how to build them, and their prunable units.

The families register themselves in ``models.registry`` (one module each: ``mobilenet_v2``,
``resnet34``, ``mobilenet_v3`` (Small), ``proxylessnas`` (Mobile)); everything here looks them
up by name, so no other code compares architecture
names. The engine (``pruning/``) never names a layer: it gets units and splits from here.
Your own network joins by registering an ``Architecture`` (README, "Prune your own model").
"""

from collections.abc import Callable

from torch import nn

# they register themselves, in this order (the order of models.names())
from models import mobilenet_v2, resnet34, mobilenet_v3, proxylessnas  # noqa: F401, I001
from models.registry import DEFAULT_LAYOUT, Architecture, get, names, register
from pruning.checkpoint import Checkpoint, read, rebuild
from pruning.units import Unit, UnitSplit, check_units

__all__ = ["DEFAULT_LAYOUT", "Architecture", "build", "default_layout", "get", "load_model",
           "load_pruned", "names", "prunable_units", "register", "splitter"]


def build(arch: str, width: float = 1.0, num_classes: int = 1000,
          layout: str = DEFAULT_LAYOUT) -> nn.Module:
    """A full-width network of the family ``arch`` in ``layout``, randomly initialized."""
    family = get(arch)
    family.check_width(width)
    family.check_layout(layout)
    model = family.build(width, num_classes)
    if layout != DEFAULT_LAYOUT:
        family.layouts[layout](model)
    return model


def default_layout(arch: str, dataset: str) -> str:
    """The layout a dataset's images call for: ``cifar`` for CIFAR-10 where the family has one
    (32 px images shrink to 1x1 in the ImageNet stems), else the family's own."""
    return "cifar" if dataset == "cifar10" and "cifar" in get(arch).layouts else DEFAULT_LAYOUT


def prunable_units(arch: str, model: nn.Module, kind: str | None = None) -> list[Unit]:
    """The family's units of the given kind (its default kind when None)."""
    family = get(arch)
    kind = kind or family.default_units
    if kind not in family.unit_kinds:
        raise ValueError(f"--units: {family.title} unit kind must be one of "
                         f"{family.unit_kinds}, got {kind!r}")
    units = family.units(model, kind)
    check_units(model, units)
    return units


def splitter(arch: str, model: nn.Module) -> Callable[[Unit], UnitSplit]:
    """unit -> its ``UnitSplit`` for ``model`` (for the fast evaluators), built once per unit."""
    family = get(arch)
    if family.split is None:
        raise ValueError(f"{family.title} declares no fast-evaluator split: use --evaluator plain")
    cache: dict[str, UnitSplit] = {}

    def split(unit: Unit) -> UnitSplit:
        if unit.name not in cache:
            cache[unit.name] = family.split(model, unit)
        return cache[unit.name]

    return split


def load_model(ckpt: Checkpoint, slim: bool = True) -> nn.Module:
    """The network of any checkpoint kind, rebuilt from its constructor arguments and cfg.

    A masked checkpoint (full width, mixing weights on hooks) comes back as the slim network
    (the mixing weights folded in: the same function), or with ``slim=False`` at full width with
    its masks installed (``model.masks``, a ``pruning.masks.Masks``).
    """
    from pruning.masks import Masks
    from pruning.slim import slim_model

    def full() -> nn.Module:
        return build(ckpt.arch, ckpt.width, ckpt.num_classes, ckpt.layout)

    def units(model: nn.Module) -> list[Unit]:
        return prunable_units(ckpt.arch, model, ckpt.unit_kind)

    model = rebuild(ckpt, full, units)
    if ckpt.kind != "masked":
        return model
    weights = ckpt.state["mixing_weights"]
    if slim:
        return slim_model(model, units(model), weights)[0]
    masks = Masks(model, units(model))
    for name, w in weights.items():
        masks.set_weights(name, w)
    model.masks = masks
    return model


def load_pruned(path: str) -> tuple[nn.Module, Checkpoint]:
    """The slim network saved by a prune script (``pruned.pth`` or ``masked.pth``), or a
    fine-tuned one (``last.pth`` of a pruned run), and its checkpoint."""
    ckpt = read(path, "--pruned", ("pruned", "masked", "training"))
    if ckpt.cfg is None:
        raise ValueError(f"--pruned {path}: holds a dense {ckpt.arch}, not a pruned network")
    return load_model(ckpt), ckpt
