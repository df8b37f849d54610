"""Load pretrained weights into a registered architecture (``models.registry``).

Why this module exists: the paper prunes *pretrained* networks, and the weights come from two
places that torchvision's own ``load_state_dict`` cannot take as they are:

* torchvision's weights enums (``IMAGENET1K_V1`` ...), which download from the internet. Here a
  download happens only when such a name is asked for, and a failed download (no network) says
  so and points to the local-file alternative instead of showing a bare ``URLError``.
* local files: plain state_dicts, training checkpoints that wrap them (``{'state_dict': ...}``,
  ``{'model': ...}``), ``module.`` prefixes from (Distributed)DataParallel, and the checkpoint of
  d-li14/mobilenetv2.pytorch that the paper starts from (MobileNetV2 1.0, 72.192% top-1), whose
  keys follow that repository's module names and are mapped onto torchvision's by the family's
  ``map_state``.

Every file is checked key by key and shape by shape against the model *before* anything is
copied, so a file for another architecture or width is refused with a message naming what does
not match, rather than half-loaded.

Architecture knowledge comes from the registry (``models.registry.Architecture``): the
torchvision weights enum of the family, its classifier keys, and ``map_state`` for foreign key
layouts (d-li14's MobileNetV2: ``models.mobilenet_v2``).
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

from models.registry import Architecture, get
from pruning.checkpoint import load_error

__all__ = [
    "PretrainedDownloadError",
    "flagged",
    "load_pretrained",
    "load_state_dict_file",
]

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
    layout: str | None = None,
) -> str:
    """Copy pretrained weights into ``model`` (in place) and describe what was loaded.

    Args:
        model: a torchvision-layout ``mobilenet_v2`` (any width) or ``resnet34``, unwrapped
            (not inside DataParallel/DDP or ``torch.compile``), before any pruning.
        arch: a registered architecture name (``models.registry``); selects the torchvision
            weights enum, the classifier keys and the foreign layouts it recognises.
        spec: either a torchvision weights name (``'IMAGENET1K_V1'``, ``'IMAGENET1K_V2'``,
            ``'DEFAULT'``, also ``'MobileNet_V2_Weights.IMAGENET1K_V1'``), which downloads into
            the torch hub cache unless already there, or the path of a local file. An existing
            file always wins over an enum name.
        allow_head_mismatch: skip the classifier (``classifier.1`` / ``fc``) when only its shape
            differs, e.g. to fine-tune ImageNet weights on a 10-class dataset; the model keeps
            its own initialisation there, and the returned text says so.
        progress: show torch.hub's download progress bar.
        layout: the model's input layout; a checkpoint of this repository that records another
            one is refused (MobileNetV2's CIFAR layout has the ImageNet layout's shapes, so the
            shape check alone would let it through).

    Returns:
        A one-line human description, e.g. for logs and run summaries.

    Raises:
        ValueError: unknown ``arch``, unknown weights name (the message lists the valid ones),
            MobileNetV2 enum weights asked for a model that is not width 1.0, or a file whose
            keys/shapes do not fit the model (the message lists them).
        FileNotFoundError: ``spec`` is neither an existing file nor a weights name.
        PretrainedDownloadError: the enum weights are not cached and could not be downloaded.
    """
    family = get(arch)
    path = Path(spec).expanduser()
    if path.is_file():
        state, source = load_state_dict_file(path, layout)
        mapped = family.map_state(state) if family.map_state is not None else None
        if mapped is not None:
            state, source = mapped[0], f"{mapped[1]} {path}"
    elif _ENUM_NAME.match(str(spec)) and family.torchvision_weights is not None:
        state, source = _download_enum_weights(model, family, str(spec), progress=progress)
    else:
        valid = (f"valid for {arch}: {', '.join(_enum_names(family))}"
                 if family.torchvision_weights else f"{arch} has no torchvision weights")
        raise FileNotFoundError(
            f"{path}: no such file, and not a torchvision weights name ({valid})"
        )
    skipped = _load_checked(model, family, state, allow_head_mismatch=allow_head_mismatch,
                            source=str(path) if path.is_file() else f"torchvision {spec}")
    description = f"{arch} ({family.describe(model.state_dict())}) <- {source}"
    if skipped:
        details = ", ".join(f"{k} {list(f)} in file vs {list(m)} in model" for k, f, m in skipped)
        description += f"; classifier not loaded (kept at initialisation): {details}"
    return description


def flagged(flag: str, spec: str | Path, error: BaseException) -> str:
    """``load_pretrained``'s refusal of ``spec`` as the command lines print it, naming the flag:
    ``--pretrained w.pth: ...``. Its messages about a file start with the file, so the flag goes
    in front rather than the file twice."""
    text = str(error)
    if text.startswith(f"{Path(spec).expanduser()}: "):
        return f"{flag} {text}"
    return f"{flag} {spec}: {text}"


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path,
                         layout: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint on the CPU and return ``(state_dict, where in the file it was)``;
    a checkpoint of this repository whose recorded layout is not ``layout`` is refused.

    Unwraps ``{'state_dict': ...}``-style checkpoints and strips ``module.`` / ``_orig_mod.``
    prefixes. Loads with ``weights_only=True`` so that a file cannot run code when unpickled;
    ``argparse.Namespace`` is allowed because torchvision's reference training checkpoints store
    their ``args`` next to the weights.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors have no common base class
        detail = load_error(error)  # torch's own text runs to a page: its gist in one clause
        advice = (" (if the file is yours, re-save just its state_dict: "
                  "torch.save(checkpoint['state_dict'], 'weights.pth'))"
                  if "Python object" in detail else "")
        what = "" if advice else "cannot read it as a PyTorch checkpoint with weights_only=True: "
        raise ValueError(f"{path}: {what}{detail}{advice}") from None
    recorded = obj.get("layout") if isinstance(obj, Mapping) and "arch" in obj else None
    if layout is not None and recorded is not None and recorded != layout:
        raise ValueError(f"{path}: holds a network of the {recorded} layout; this run builds the "
                         f"{layout} layout (--layout {recorded} to continue from it)")
    if isinstance(obj, Mapping) and obj.get("cfg") is not None and "arch" in obj:
        raise ValueError(
            f"{path}: is a pruned checkpoint (a slim {obj['arch']} and the cfg of its kept "
            "channels), not dense weights: give it to the fine-tune script's --pruned"
        )
    entries: list[str] = []
    for _ in range(2):  # e.g. {'model': {'state_dict': ...}} - unwrap at most twice
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
        entries.append(repr(key))
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path}: holds no state_dict: expected a mapping of parameter names to tensors, "
            f"possibly under one of the keys {list(_WRAPPER_KEYS)}; found {keys}"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    form = (f"the {' / '.join(entries)} entry of {path}" if entries else f"state_dict {path}")
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            form += f" ('{prefix}' prefixes stripped)"
    return state, form


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    """True when ``obj`` looks like a state_dict: non-empty, and mostly tensors by value."""
    values = list(obj.values())
    tensors = sum(isinstance(v, torch.Tensor) for v in values)
    return bool(values) and tensors >= max(1, len(values) // 2)


# ----------------------------------------------------------------------------------------------
# torchvision weights enums
# ----------------------------------------------------------------------------------------------


def _enum_names(family: Architecture) -> list[str]:
    return list(get_model_weights(family.torchvision_weights).__members__)


def _download_enum_weights(
    model: nn.Module, family: Architecture, name: str, *, progress: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """Resolve ``name`` in the family's torchvision weights enum and fetch its state_dict."""
    arch = family.name
    enum = get_model_weights(family.torchvision_weights)
    short = name.split(".", 1)[1] if "." in name else name
    if "." in name and name.split(".", 1)[0] != enum.__name__:
        raise ValueError(f"{name!r} are not {arch} weights; valid: "
                         f"{', '.join(_enum_names(family))}")
    if short not in enum.__members__:
        raise ValueError(
            f"unknown torchvision weights {name!r} for {arch}; valid names: "
            f"{', '.join(_enum_names(family))} (or give the path of a local file)"
        )
    weights = enum[short]
    if family.has_width and family.infer_width is not None:
        width = family.infer_width(model.state_dict())
        if width != 1.0:
            built = f"width {width}" if width is not None else "an unrecognised width"
            raise ValueError(
                f"torchvision only has pretrained {family.title} weights for width 1.0, but the "
                f"model was built with {built} ({family.describe(model.state_dict())}); for other "
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
    family: Architecture,
    state: Mapping[str, torch.Tensor],
    *,
    allow_head_mismatch: bool,
    source: str = "pretrained weights",
) -> list[tuple[str, torch.Size, torch.Size]]:
    """Compare every key and shape with the model, refuse any mismatch (naming ``source``, the
    file or the torchvision weights), then load strictly.

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
        head = set(family.head_keys)
        skipped = [(k, file, mine) for k, mine, file in wrong_shape if k in head]
        wrong_shape = [item for item in wrong_shape if item[0] not in head]
    if missing or unexpected or wrong_shape:
        raise ValueError(_mismatch_message(model, family, state, missing, unexpected,
                                           wrong_shape, source))
    for key, _, _ in skipped:
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    return skipped


def _mismatch_message(
    model: nn.Module,
    family: Architecture,
    state: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[tuple[str, torch.Size, torch.Size]],
    source: str = "pretrained weights",
) -> str:
    """Two lines: what is wrong with ``source`` (another width, another architecture, only the
    classifier, or the counts), then the names that differ, a few of each kind."""
    infer = family.infer_width if family.has_width else None
    file_width = infer(state) if infer is not None else None
    counts = (f"{len(missing)} missing, {len(unexpected)} unexpected, "
              f"{len(wrong_shape)} shape mismatches")
    head = set(family.head_keys)
    if file_width is not None and file_width != infer(model.state_dict()):
        verdict = f"the file holds a {family.title} of width {file_width} ({counts})"
    elif len(unexpected) > len(missing) // 2 > 0:
        verdict = f"most names differ: the file is probably for another architecture ({counts})"
    elif wrong_shape and not missing and not unexpected and all(k in head for k, _, _ in
                                                                 wrong_shape):
        verdict = ("only the classifier differs (another number of classes; in Python, "
                   "allow_head_mismatch=True loads the rest)")
    else:
        verdict = counts
    details = []

    def listing(title: str, items: list[str]) -> None:
        if items:
            shown = items[:_MAX_LISTED]
            more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
            details.append(f"{title} ({len(items)}): " + ", ".join(shown) + more)

    listing("missing in file", missing)
    listing("unexpected in file", unexpected)
    listing(
        "shape mismatches (model vs file)",
        [f"{k} {list(mine)} vs {list(file)}" for k, mine, file in wrong_shape],
    )
    return (f"{source}: does not fit the {family.name} model "
            f"({family.describe(model.state_dict())}): {verdict}\n  " + "; ".join(details))
