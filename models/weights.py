"""Load pretrained ImageNet weights into torchvision ``mobilenet_v2`` / ``resnet34`` models.

Why this module exists: the paper prunes *pretrained* networks, and the weights come from two
places that torchvision's own ``load_state_dict`` cannot take as they are:

* torchvision's weights enums (``IMAGENET1K_V1`` ...), which download from the internet. Here a
  download happens only when such a name is asked for, and a failed download (no network) says
  so and points to the local-file alternative instead of showing a bare ``URLError``.
* local files: plain state_dicts, training checkpoints that wrap them (``{'state_dict': ...}``,
  ``{'model': ...}``), ``module.`` prefixes from (Distributed)DataParallel, and the checkpoint of
  d-li14/mobilenetv2.pytorch that the paper starts from (MobileNetV2 1.0, 72.192% top-1), whose
  keys follow that repository's module names and are mapped here onto torchvision's.

Every file is checked key by key and shape by shape against the model *before* anything is
copied, so a file for another architecture or width is refused with a message naming what does
not match, rather than half-loaded.

d-li14 layout (``models/imagenet/mobilenetv2.py`` of d-li14/mobilenetv2.pytorch) versus
torchvision's ``torchvision/models/mobilenetv2.py``:

* stem ``features.0.{0,1}`` (conv, BN): same names in both.
* block ``features.i`` (i = 1..17) is a plain ``conv`` Sequential of Conv/BN/ReLU6 in d-li14;
  torchvision nests the conv+BN+ReLU6 triples in ``Conv2dNormActivation``:

  - expand ratio 1 (block 1): ``conv.{0,1,3,4}`` -> ``conv.{0.0, 0.1, 1, 2}``
  - expand ratio 6: ``conv.{0,1,3,4,6,7}`` -> ``conv.{0.0, 0.1, 1.0, 1.1, 2, 3}``

* final 1x1 conv: ``conv.{0,1}`` -> ``features.18.{0,1}``.
* classifier: ``classifier`` (a bare Linear) -> ``classifier.1`` (after torchvision's Dropout).

Channel counts agree for widths 1.0, 0.75 and 0.5: both repositories round with the same
``_make_divisible(c * width, 8)``, use ``round(inp * t)`` hidden widths and keep the last conv at
1280 channels for widths <= 1 (parameter counts 3,504,872 / 2,636,424 / 1,968,680, the numbers
d-li14's README lists). Only d-li14's width 0.1 rounds to multiples of 4 and does not fit a
torchvision model; the shape check refuses it like any other mismatch.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchvision_compat  # noqa: F401  (must precede torchvision on the CPU-only torch)
from torchvision.models import get_model_weights
from torchvision.models._utils import _make_divisible

__all__ = [
    "ARCHS",
    "HEAD_KEYS",
    "PretrainedDownloadError",
    "load_pretrained",
    "load_state_dict_file",
    "map_dli14_mobilenet_v2",
    "is_dli14_mobilenet_v2",
]

ARCHS = ("mobilenet_v2", "resnet34")

#: Classifier parameters per architecture: the only keys ``allow_head_mismatch`` may skip.
HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "mobilenet_v2": ("classifier.1.weight", "classifier.1.bias"),
    "resnet34": ("fc.weight", "fc.bias"),
}

#: Checkpoint dictionaries that wrap the state_dict under one of these keys (the d-li14 and
#: timm-style training scripts use ``state_dict``, torchvision's reference scripts ``model``).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")

#: Prefixes added by DataParallel/DistributedDataParallel and by ``torch.compile``.
_STRIP_PREFIXES = ("module.", "_orig_mod.")

#: How many names of each kind a mismatch message lists before summarising the rest.
_MAX_LISTED = 8

_ENUM_NAME = re.compile(r"^(?:[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_Weights\.)?[A-Z][A-Z0-9_]*$")


class PretrainedDownloadError(RuntimeError):
    """A torchvision weights download failed (typically: this machine is offline)."""


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_pretrained(
    model: nn.Module,
    arch: str,
    spec: str | Path,
    *,
    allow_head_mismatch: bool = False,
    progress: bool = False,
) -> str:
    """Copy pretrained weights into ``model`` (in place) and describe what was loaded.

    Args:
        model: a torchvision-layout ``mobilenet_v2`` (any width) or ``resnet34``, unwrapped
            (not inside DataParallel/DDP or ``torch.compile``), before any pruning.
        arch: ``'mobilenet_v2'`` or ``'resnet34'``; selects the torchvision weights enum and the
            classifier keys, and names the architecture in error messages.
        spec: either a torchvision weights name (``'IMAGENET1K_V1'``, ``'IMAGENET1K_V2'``,
            ``'DEFAULT'``, also ``'MobileNet_V2_Weights.IMAGENET1K_V1'``), which downloads into
            the torch hub cache unless already there, or the path of a local file. An existing
            file always wins over an enum name.
        allow_head_mismatch: skip the classifier (``classifier.1`` / ``fc``) when only its shape
            differs, e.g. to fine-tune ImageNet weights on a 10-class dataset; the model keeps
            its own initialisation there, and the returned text says so.
        progress: show torch.hub's download progress bar.

    Returns:
        A one-line human description, e.g. for logs and run summaries.

    Raises:
        ValueError: unknown ``arch``, unknown weights name (the message lists the valid ones),
            MobileNetV2 enum weights asked for a model that is not width 1.0, or a file whose
            keys/shapes do not fit the model (the message lists them).
        FileNotFoundError: ``spec`` is neither an existing file nor a weights name.
        PretrainedDownloadError: the enum weights are not cached and could not be downloaded.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    path = Path(spec).expanduser()
    if path.is_file():
        state, source = load_state_dict_file(path)
        if arch == "mobilenet_v2" and is_dli14_mobilenet_v2(state):
            state = map_dli14_mobilenet_v2(state)
            source = f"d-li14/mobilenetv2.pytorch checkpoint {path} (keys mapped to torchvision)"
        else:
            source = f"{source} {path}"
    elif _ENUM_NAME.match(str(spec)):
        state, source = _download_enum_weights(model, arch, str(spec), progress=progress)
    else:
        raise FileNotFoundError(
            f"pretrained weights {str(spec)!r}: no such file, and not a torchvision weights name "
            f"(valid for {arch}: {', '.join(_enum_names(arch))})"
        )
    skipped = _load_checked(model, arch, state, allow_head_mismatch=allow_head_mismatch)
    description = f"{arch} ({_describe_model(model, arch)}) <- {source}"
    if skipped:
        details = ", ".join(f"{k} {list(f)} in file vs {list(m)} in model" for k, f, m in skipped)
        description += f"; classifier not loaded (kept at initialisation): {details}"
    return description


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint on the CPU and return ``(state_dict, short description of its form)``.

    Unwraps ``{'state_dict': ...}``-style checkpoints and strips ``module.`` / ``_orig_mod.``
    prefixes. Loads with ``weights_only=True`` so that a file cannot run code when unpickled;
    ``argparse.Namespace`` is allowed because torchvision's reference training checkpoints store
    their ``args`` next to the weights.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors have no common base class
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint with weights_only=True ({error}). "
            "If it holds Python objects besides tensors, re-save just its state_dict: "
            "torch.save(checkpoint['state_dict'], 'weights.pth')"
        ) from error
    if isinstance(obj, Mapping) and obj.get("cfg") is not None and "arch" in obj:
        raise ValueError(
            f"{path} is a pruned checkpoint (a slim {obj['arch']} and the cfg of its kept "
            "channels), not dense weights: give it to the fine-tune script's --pruned"
        )
    form = "state_dict"
    for _ in range(2):  # e.g. {'model': {'state_dict': ...}} - unwrap at most twice
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
        form = f"{{'{key}': state_dict}}" if form == "state_dict" else f"{form}[{key!r}]"
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path} holds no state_dict: expected a mapping of parameter names to tensors, "
            f"possibly under one of the keys {list(_WRAPPER_KEYS)}; found {keys}"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            form += f" with '{prefix}' prefixes"
    return state, form


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    """True when ``obj`` looks like a state_dict: non-empty, and mostly tensors by value."""
    values = list(obj.values())
    tensors = sum(isinstance(v, torch.Tensor) for v in values)
    return bool(values) and tensors >= max(1, len(values) // 2)


# ----------------------------------------------------------------------------------------------
# d-li14/mobilenetv2.pytorch key layout
# ----------------------------------------------------------------------------------------------

_DLI14_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
# d-li14 Sequential index -> torchvision path inside InvertedResidual.conv
_DLI14_EXPAND1 = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
_DLI14_EXPAND = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}


def is_dli14_mobilenet_v2(state: Mapping[str, Any]) -> bool:
    """Recognise d-li14's layout: a top-level ``conv`` (final 1x1 conv) and a bare Linear
    ``classifier``; torchvision has neither (its last conv is ``features.18``)."""
    return "conv.0.weight" in state and not any(k.startswith("features.18.") for k in state)


def map_dli14_mobilenet_v2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a d-li14/mobilenetv2.pytorch state_dict to torchvision ``mobilenet_v2`` keys.

    A block's expand ratio is read from the file itself (a block whose Sequential ends at index
    4 has no expansion conv), so the map needs no width or configuration. Keys that fit no rule
    keep their name and are then reported as unexpected by the shape check.
    """
    block_len: dict[int, int] = {}
    for key in state:
        match = _DLI14_BLOCK.match(key)
        if match:
            block, index = int(match[1]), int(match[2])
            block_len[block] = max(block_len.get(block, 0), index)
    last_feature = max([0, *block_len]) + 1  # torchvision's index of the final 1x1 conv
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = key
        match = _DLI14_BLOCK.match(key)
        if match:
            block, index, rest = int(match[1]), int(match[2]), match[3]
            table = _DLI14_EXPAND1 if block_len[block] <= 4 else _DLI14_EXPAND
            if index in table:
                new_key = f"features.{block}.conv.{table[index]}.{rest}"
        elif key.startswith("conv."):
            new_key = f"features.{last_feature}." + key[len("conv.") :]
        elif key in ("classifier.weight", "classifier.bias"):
            new_key = "classifier.1." + key.split(".")[-1]
        mapped[new_key] = value
    return mapped


# ----------------------------------------------------------------------------------------------
# torchvision weights enums
# ----------------------------------------------------------------------------------------------


def _enum_names(arch: str) -> list[str]:
    return list(get_model_weights(arch).__members__)


def _download_enum_weights(
    model: nn.Module, arch: str, name: str, *, progress: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """Resolve ``name`` in the arch's torchvision weights enum and fetch its state_dict."""
    enum = get_model_weights(arch)
    short = name.split(".", 1)[1] if "." in name else name
    if "." in name and name.split(".", 1)[0] != enum.__name__:
        raise ValueError(f"{name!r} are not {arch} weights; valid: {', '.join(_enum_names(arch))}")
    if short not in enum.__members__:
        raise ValueError(
            f"unknown torchvision weights {name!r} for {arch}; valid names: "
            f"{', '.join(_enum_names(arch))} (or give the path of a local file)"
        )
    weights = enum[short]
    if arch == "mobilenet_v2":
        width = _infer_mobilenet_width(model.state_dict())
        if width != 1.0:
            built = f"width {width}" if width is not None else "an unrecognised width"
            raise ValueError(
                f"torchvision only has pretrained MobileNetV2 weights for width 1.0, but the "
                f"model was built with {built} ({_describe_model(model, arch)}); for other "
                "widths pass a local checkpoint, e.g. d-li14/mobilenetv2.pytorch's "
                "mobilenetv2_0.75-dace9791.pth or mobilenetv2_0.5-eaa6f9ad.pth"
            )
    try:
        state = weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except OSError as error:  # URLError/HTTPError/socket errors all derive from OSError
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise PretrainedDownloadError(
            f"could not download {weights} from {weights.url} ({error}); this machine is "
            f"probably offline. Download that file elsewhere and either pass its local path "
            f"as the weights spec or copy it to {cached}"
        ) from error
    acc = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    source = f"torchvision {weights}" + (f" (ImageNet top-1 {acc}%)" if acc is not None else "")
    return state, source


# ----------------------------------------------------------------------------------------------
# Checked loading
# ----------------------------------------------------------------------------------------------


def _load_checked(
    model: nn.Module,
    arch: str,
    state: Mapping[str, torch.Tensor],
    *,
    allow_head_mismatch: bool,
) -> list[tuple[str, torch.Size, torch.Size]]:
    """Compare every key and shape with the model, refuse any mismatch, then load strictly.

    Returns the classifier entries skipped under ``allow_head_mismatch`` as
    ``(key, file shape, model shape)``. A BatchNorm ``num_batches_tracked`` counter missing
    from an old file is not an error: it only matters for ``momentum=None``, and the model's
    own counter is kept.
    """
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        (k, expected[k].shape, state[k].shape)
        for k in expected
        if k in state and expected[k].shape != state[k].shape
    ]
    skipped: list[tuple[str, torch.Size, torch.Size]] = []
    if allow_head_mismatch and not missing and not unexpected:
        head = set(HEAD_KEYS[arch])
        skipped = [(k, file, mine) for k, mine, file in wrong_shape if k in head]
        wrong_shape = [item for item in wrong_shape if item[0] not in head]
    if missing or unexpected or wrong_shape:
        raise ValueError(_mismatch_message(model, arch, state, missing, unexpected, wrong_shape))
    for key, _, _ in skipped:
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    return skipped


def _mismatch_message(
    model: nn.Module,
    arch: str,
    state: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[tuple[str, torch.Size, torch.Size]],
) -> str:
    file_width = _infer_mobilenet_width(state) if arch == "mobilenet_v2" else None
    lines = [
        f"pretrained weights do not fit the {arch} model ({_describe_model(model, arch)}): "
        f"{len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(wrong_shape)} shape mismatches"
    ]

    def listing(title: str, items: list[str]) -> None:
        if items:
            shown = items[:_MAX_LISTED]
            more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
            lines.append(f"  {title} ({len(items)}): " + ", ".join(shown) + more)

    listing("missing in file", missing)
    listing("unexpected in file", unexpected)
    listing(
        "shape mismatches (model vs file)",
        [f"{k} {list(mine)} vs {list(file)}" for k, mine, file in wrong_shape],
    )
    if file_width is not None and file_width != _infer_mobilenet_width(model.state_dict()):
        lines.append(f"  the file holds a MobileNetV2 of width {file_width}")
    if len(unexpected) > len(missing) // 2 > 0:
        lines.append("  most names differ: the file is probably for another architecture")
    head = set(HEAD_KEYS[arch])
    if wrong_shape and all(k in head for k, _, _ in wrong_shape):
        lines.append(
            "  only the classifier differs: pass allow_head_mismatch=True to load the rest"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Describing the target model (for messages)
# ----------------------------------------------------------------------------------------------

_MOBILENET_STAGES = (16, 24, 32, 64, 96, 160, 320)
_MOBILENET_STAGE_LAST_BLOCK = (1, 3, 6, 10, 13, 16, 17)
_MOBILENET_WIDTHS = (1.4, 1.3, 1.0, 0.75, 0.5, 0.35, 0.25, 0.1)


def _infer_mobilenet_width(state: Mapping[str, torch.Tensor]) -> float | None:
    """The torchvision width multiplier whose channel counts the model has, or None.

    Compares the stem, the output of each stage and the final conv with what torchvision's
    ``mobilenet_v2(width_mult=w)`` builds (``_make_divisible(c * w, 8)``).
    """
    try:
        channels = [state["features.0.0.weight"].shape[0]]
        for block in _MOBILENET_STAGE_LAST_BLOCK:
            convs = [k for k in state if re.fullmatch(rf"features\.{block}\.conv\.\d+\.weight", k)]
            channels.append(state[max(convs, key=lambda k: int(k.split(".")[3]))].shape[0])
        channels.append(state["features.18.0.weight"].shape[0])
    except (KeyError, ValueError):
        return None
    for width in _MOBILENET_WIDTHS:
        expect = [_make_divisible(32 * width, 8)]
        expect += [_make_divisible(c * width, 8) for c in _MOBILENET_STAGES]
        expect.append(_make_divisible(1280 * max(1.0, width), 8))
        if channels == expect:
            return width
    return None


def _describe_model(model: nn.Module, arch: str) -> str:
    """E.g. ``'width 0.5, 10 classes'`` for messages; ``'n classes'`` only for ResNet."""
    state = model.state_dict()
    head = state.get(HEAD_KEYS[arch][0])
    classes = f"{head.shape[0]} classes" if head is not None else "no recognised classifier"
    if arch != "mobilenet_v2":
        return classes
    width = _infer_mobilenet_width(state)
    return f"width {width if width is not None else 'unrecognised'}, {classes}"
