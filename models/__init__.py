"""Architecture knowledge: which networks exist, how to build them, and their prunable units.

Everything the pruning engine needs to know about an architecture goes through ``build`` and
``prunable_units``; the engine itself (``pruning/``) never names a layer.
"""

from torch import nn

from models import mobilenetv2, resnet
from pruning.units import Unit

ARCHS = ("mobilenet_v2", "resnet34")
DEFAULT_UNITS = {"mobilenet_v2": "hidden", "resnet34": "inner"}
UNIT_KINDS = {"mobilenet_v2": mobilenetv2.UNIT_KINDS, "resnet34": resnet.UNIT_KINDS}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def build(arch: str, width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """A full-width torchvision model with random initialization."""
    _check_arch(arch)
    if arch == "mobilenet_v2":
        return mobilenetv2.build(width, num_classes)
    if width != 1.0:
        raise ValueError(f"--width: ResNet34 has no width multiplier, got {width}")
    return resnet.build(num_classes)


def prunable_units(arch: str, model: nn.Module, kind: str | None = None) -> list[Unit]:
    """The architecture's units of the given kind (its default kind when None)."""
    _check_arch(arch)
    kind = kind or DEFAULT_UNITS[arch]
    module = mobilenetv2 if arch == "mobilenet_v2" else resnet
    return module.units(model, kind)


def load_pruned(path: str) -> tuple[nn.Module, dict]:
    """The slim model saved by a prune script, rebuilt from its cfg, and the checkpoint dict."""
    from pruning.checkpoint import load, rebuild

    ckpt = load(path)
    if ckpt.get("arch") not in ARCHS:
        raise ValueError(f"--pruned {path}: not a pruned checkpoint of {ARCHS}")
    return rebuild(ckpt, build, prunable_units), ckpt
