"""Checkpoints: plain data written atomically, never pickled modules.

A pruned checkpoint holds what is needed to rebuild the slim network without the code that
pruned it: the architecture name and width, the unit kind, the *cfg* (per channel space, the
kept channel indices of the full-width network; per unit, the selection counts), and the slim
state_dict. ``rebuild`` builds the full-width model, slices it to the cfg's shapes and loads the
weights, so a checkpoint of another architecture fails loudly on shapes instead of silently.

Writes go to a temporary file in the same folder followed by ``os.replace``, so a crash leaves
either the old file or the new one, never half of one.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.slim import slice_to_cfg
from pruning.units import Unit

FORMAT = "greedy-forward-selection/pruned-v1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file, flush it to the disk, then rename it over ``path``.

    An interruption (Ctrl-C, an error) removes the temporary file; a crash of the machine leaves
    the old file or the new one whole, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint of plain data (tensors, numbers, strings, lists, dicts) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_error(error: BaseException) -> str:
    """The gist of why ``load`` failed, for a one-line message: torch's own text runs to a page
    and suggests ``weights_only=False``, which a damaged or foreign file never needs."""
    text = str(error).strip()
    first = text.splitlines()[0].split(". ")[0] if text else "no detail"
    return f"{type(error).__name__}: {first[:120]}"


def selection_cfg(
    units: list[Unit], counts: dict[str, torch.Tensor], kept: dict[str, list[int]]
) -> dict:
    """The cfg: kept channels per space, and per unit its selection as {channel: count}."""
    per_unit = {}
    for unit in units:
        c = counts[unit.name]
        nonzero = torch.nonzero(c).flatten().tolist()
        per_unit[unit.name] = {
            "space": unit.space.name,
            "total": unit.size,
            "kept": len(nonzero),
            "selections": int(c.sum()),
            "counts": {int(k): int(c[k]) for k in nonzero},
        }
    return {"spaces": {name: list(idx) for name, idx in kept.items()}, "units": per_unit}


def pruned_checkpoint(
    arch: str, width: float, num_classes: int, unit_kind: str, cfg: dict,
    state_dict: dict[str, torch.Tensor], args: dict, metrics: dict,
) -> dict:
    return {
        "format": FORMAT, "arch": arch, "width": width, "num_classes": num_classes,
        "unit_kind": unit_kind, "cfg": cfg, "state_dict": state_dict,
        "args": args, "metrics": metrics,
    }


def rebuild(
    ckpt: dict,
    build: Callable[[str, float, int], nn.Module],
    units_of: Callable[[str, nn.Module, str], list[Unit]],
) -> nn.Module:
    """The slim model of a pruned checkpoint, rebuilt from its cfg, with its weights loaded."""
    if ckpt.get("format") != FORMAT:
        raise ValueError(
            f"not a pruned checkpoint of this repository (format {ckpt.get('format')})")
    model = build(ckpt["arch"], ckpt["width"], ckpt["num_classes"])
    slice_to_cfg(model, units_of(ckpt["arch"], model, ckpt["unit_kind"]), ckpt["cfg"]["spaces"])
    model.load_state_dict(ckpt["state_dict"])
    return model
