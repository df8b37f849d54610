"""Architecture knowledge: which networks exist, how to build them, and their prunable units.

The families register themselves in ``models.registry`` (one module each: ``mobilenet_v2``,
``resnet34``, ``mobilenet_v3`` (Small), ``proxylessnas`` (Mobile)); everything here looks them
up by name, so no other code compares architecture
names. The engine (``pruning/``) never names a layer: it gets units and splits from here.
Your own network joins by registering an ``Architecture`` (README, "Prune your own model").
"""

import os
from collections.abc import Callable

from torch import nn

# they register themselves, in this order (the order of models.names())
from models import mobilenet_v2, resnet34, mobilenet_v3, proxylessnas  # noqa: F401, I001
from models.registry import DEFAULT_LAYOUT, Architecture, get, names, register
from pruning.checkpoint import Checkpoint, CheckpointError, read, rebuild
from pruning.units import Unit, UnitSplit, check_units

__all__ = ["DEFAULT_LAYOUT", "Architecture", "build", "default_layout", "get", "load_model",
           "load_pruned", "names", "prunable_units", "read_pruned", "register", "splitter"]

#: The kinds that hold a pruned network: a prune run's pruned.pth and masked.pth, and the
#: checkpoints a fine-tune run of one writes (last.pth, best.pth).
PRUNED_KINDS = ("pruned", "masked", "training")


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


def read_pruned(path: str | os.PathLike, flag: str = "--pruned", *, arch: str | None = None,
                layout: str | None = None) -> Checkpoint:
    """The checkpoint of a pruned network at ``path``, checked before any work is done on it.

    The one reader of pruned and masked checkpoints (``--pruned``, ``--match-kept``,
    ``load_pruned``), so every caller refuses the same files the same way: a missing or
    unreadable file, another kind, a dense network, a cfg without its kept channels, and, when
    given, another architecture than ``arch`` or another layout than ``layout``. Each refusal is
    a one-line ``CheckpointError`` that starts with ``flag`` and ``path`` (the argument the user
    gave), never a traceback.
    """
    ckpt = read(path, flag, PRUNED_KINDS)
    where = f"{flag} {path}"
    if ckpt.cfg is None:
        raise CheckpointError(f"{where}: holds a dense {ckpt.arch}, not a pruned network (no cfg "
                              "of kept channels): give a prune run's pruned.pth or masked.pth, "
                              "or pass it as --pretrained")
    if not _complete_cfg(ckpt.cfg):
        raise CheckpointError(f"{where}: a damaged checkpoint (its cfg lacks the kept channels "
                              "per space or per unit)")
    if arch is not None and ckpt.arch != arch:
        raise CheckpointError(f"{where}: checkpoint is for {ckpt.arch}, this run is for {arch}")
    if layout is not None and ckpt.layout != layout:
        raise CheckpointError(f"{where}: a network of the {ckpt.layout} layout; this run builds "
                              f"the {layout} layout (--layout, whose default follows --dataset): "
                              f"pass --layout {ckpt.layout} to use it as it is")
    return ckpt


def load_pruned(path: str | os.PathLike, flag: str = "--pruned", *, arch: str | None = None,
                layout: str | None = None) -> tuple[nn.Module, Checkpoint]:
    """The slim network of the pruned checkpoint at ``path`` (``read_pruned``'s checks), and
    the checkpoint: a masked checkpoint comes back as the same slim network (its mixing weights
    folded in). Weights that do not fit the network their cfg describes are a one-line
    ``CheckpointError`` naming ``flag`` and ``path`` too, not the page torch prints."""
    ckpt = read_pruned(path, flag, arch=arch, layout=layout)
    try:
        return load_model(ckpt), ckpt
    except (RuntimeError, ValueError, LookupError, TypeError) as error:
        raise CheckpointError(f"{flag} {path}: a damaged checkpoint (it does not rebuild the "
                              f"{ckpt.arch} network of its cfg: {_gist(error)})") from None


def _complete_cfg(cfg: object) -> bool:
    """Whether ``cfg`` has what the readers use: kept channels per space, and per unit its
    total, kept count and counts (``pruning.checkpoint.selection_cfg``)."""
    if not isinstance(cfg, dict):
        return False
    spaces, units = cfg.get("spaces"), cfg.get("units")
    return (isinstance(spaces, dict) and isinstance(units, dict)
            and all(isinstance(u, dict) and {"total", "kept", "counts"} <= set(u)
                    for u in units.values()))


def _gist(error: BaseException) -> str:
    """One line of why a rebuild failed: torch's load_state_dict error opens with a header line
    and lists every mismatch, where the first mismatch says enough; a missing entry (a
    ``KeyError``) is only its key without its type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith(("size mismatch", "Missing key",
                                                               "Unexpected key"))),
                  lines[0] if lines else "no detail")[:160]
    return f"{type(error).__name__}: {detail}" if isinstance(error, LookupError) else detail
