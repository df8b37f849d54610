"""One checkpoint schema for every file the scripts write: plain data, written atomically.

A ``Checkpoint`` is what nanoGPT's checkpoints are: the constructor arguments of the network
(architecture name, width, classes, input layout, and for a pruned network the *cfg* of its kept
channels) and
its state_dict, so the network is rebuilt from the file without the code that made it, and a file
of another architecture fails loudly on shapes rather than silently. Its ``kind`` says what the
weights are and what else the file carries:

* ``pruned``: the slim network a prune run ends with (``pruned.pth``);
* ``masked``: the same network at full width, the dense weights plus every unit's mixing weights
  (``state["mixing_weights"]``), as the released code saved it (``masked.pth``); its eval outputs
  equal the slim network's, and the fine-tune scripts accept it as ``--pruned``;
* ``training``: a dense or pruned network during training (``last.pth``, ``best.pth``), with the
  optimizer, scheduler, scaler, epoch counters and generator states in ``state``;
* ``selection``: a prune run in progress (``selection_state.pth``): the model after the completed
  units and, in ``state``, their counts and the number of mini-batches drawn.

``cfg`` is, per channel space, the kept channel indices of the full-width network, and per unit
its selection as ``{channel: count}`` (``selection_cfg``). ``args`` are the arguments of the run
that wrote the file, ``metrics`` its last measurements. Files are read with
``weights_only=True`` (nothing in them can run code); the two formats written before this schema
(``pruned-v1``, ``train-v1``, and the untagged selection state) are still read.

Writes go to a temporary file in the same folder followed by ``os.replace``, so a crash leaves
either the old file or the new one, never half of one. A write that fails (a full disk: torch
says ``[enforce fail at inline_container.cc] ... unexpected pos``; any other ``OSError``) removes
its temporary file and raises ``WriteError``, one line naming the file; the scripts end with it
(exit status 1, the command line's exit policy).
"""

import errno
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.slim import slice_to_cfg
from pruning.units import Unit

FORMAT = "greedy-forward-selection/checkpoint-v2"
KINDS = ("pruned", "masked", "training", "selection")
_LEGACY_PRUNED = "greedy-forward-selection/pruned-v1"
_LEGACY_TRAIN = "greedy-forward-selection/train-v1"
#: The entries of a legacy training checkpoint that now live in ``Checkpoint.state``.
_TRAINING_STATE = ("optimizer", "scheduler", "scaler", "epoch", "best_top1", "best_epoch",
                   "seconds", "rng")


class CheckpointError(ValueError):
    """A file that is missing, unreadable, or not a checkpoint of the expected kind; ``detail``
    says why in a few words."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class WriteError(Exception):
    """A file of the run could not be written (a full disk, a read-only or vanished folder):
    one line naming the file, saying that what was saved before is intact and how to go on."""


def write_error(path: str | os.PathLike, error: BaseException, existed: bool,
                kept: str | None = None) -> WriteError:
    """The ``WriteError`` of a failed write of ``path`` (``existed``: an older version of it is
    still there, untouched; ``kept``: what is intact, when that says it better)."""
    if kept is None:
        kept = "the previous checkpoint is intact" if existed else "no partial file was left"
    text = str(error)
    if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
            "inline_container" in text or "unexpected pos" in text):
        return WriteError(f"no space left on device while writing {path}; {kept}; free space "
                          "and --resume")
    if isinstance(error, OSError):
        reason = error.strerror or text or type(error).__name__
        return WriteError(f"{reason.lower()} while writing {path}; {kept}; fix that and --resume")
    return WriteError(f"could not write {path} ({text.splitlines()[0][:120] if text else error!r});"
                      f" {kept}; fix that and --resume")


def is_write_failure(error: BaseException) -> bool:
    """An ``OSError``, or the ``RuntimeError`` torch.save raises when its stream fails (a full
    disk: ``[enforce fail at inline_container.cc:672] . unexpected pos``)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and re.search(
        r"inline_container|unexpected pos|PytorchStreamWriter", str(error)) is not None)


@dataclass
class Checkpoint:
    """The one schema (see the module docstring for what each kind carries)."""

    kind: str
    arch: str
    width: float
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    unit_kind: str | None = None
    cfg: dict | None = None
    args: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    layout: str = "imagenet"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def slim(self) -> bool:
        """Whether ``state_dict`` holds the slim network (sliced to ``cfg``)."""
        return self.cfg is not None and self.kind != "masked"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, obj: Any) -> "Checkpoint":
        """Read the current format and the formats written before it."""
        if not isinstance(obj, dict):
            raise CheckpointError(f"not a checkpoint of this repository ({type(obj).__name__})")
        tag = obj.get("format")
        if tag == FORMAT:
            return cls(**{k: v for k, v in obj.items() if k != "format"})
        if tag in (_LEGACY_PRUNED, _LEGACY_TRAIN):
            training = "optimizer" in obj
            return cls(
                kind="training" if training else "pruned", arch=obj["arch"],
                width=obj["width"], num_classes=obj["num_classes"],
                state_dict=obj["state_dict"] if "state_dict" in obj else obj["model"],
                unit_kind=obj.get("unit_kind"), cfg=obj.get("cfg"), args=obj.get("args", {}),
                metrics=obj.get("metrics", {}),
                state={k: obj[k] for k in _TRAINING_STATE if k in obj} if training else {},
            )
        if tag is None and {"args", "completed", "batches_drawn", "model"} <= set(obj):
            args = obj["args"]  # the untagged selection state of the first prune scripts
            return cls(kind="selection", arch=args.get("arch", ""), width=args.get("width", 1.0),
                       num_classes=0, state_dict=obj["model"], unit_kind=args.get("units"),
                       args=args, state={k: obj[k] for k in ("completed", "batches_drawn",
                                                             "seconds")})
        raise CheckpointError(f"not a checkpoint of this repository (format {tag!r})")


def save(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """The one writer: ``ckpt`` as plain data, atomically."""
    save_atomic(ckpt.to_dict(), path)


def read(path: str | os.PathLike, flag: str, kinds: tuple[str, ...] = KINDS) -> Checkpoint:
    """The one reader: the checkpoint at ``path`` if it is one of ``kinds``.

    Every failure is a ``CheckpointError`` naming ``flag`` (the argument that gave the path) and
    what was expected, never a traceback from the unpickler.
    """
    try:
        obj = load(path)
    except FileNotFoundError:
        raise CheckpointError(f"{flag} {path}: no such file") from None
    except Exception as error:  # pickle/zip errors share no base class
        detail = load_error(error)
        raise CheckpointError(f"{flag} {path}: not a checkpoint ({detail})", detail) from None
    try:
        ckpt = Checkpoint.from_dict(obj)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{flag} {path}: a damaged checkpoint ({error!r})") from None
    except CheckpointError as error:
        raise CheckpointError(f"{flag} {path}: {error}") from None
    if ckpt.kind not in kinds:
        raise CheckpointError(f"{flag} {path}: holds a {ckpt.kind} checkpoint of {ckpt.arch}; "
                              f"expected {' or '.join(kinds)}")
    return ckpt


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file, flush it to the disk, then rename it over ``path``.

    An interruption (Ctrl-C, an error) removes the temporary file; a crash of the machine leaves
    the old file or the new one whole, never half of one. A failed write (a full disk, any
    ``OSError``) is a ``WriteError`` naming ``path``.
    """
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary binary file next to ``path``, flushed to the disk and
    renamed over ``path``: the old file or the new one, never half of one (``save_atomic``)."""
    path = Path(path)
    existed = path.exists()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, Exception) and is_write_failure(error):
            raise write_error(path, error, existed) from None
        raise


def load(path: str | os.PathLike) -> dict:
    """A file of plain data (tensors, numbers, strings, lists, dicts), loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_error(error: BaseException) -> str:
    """The gist of why ``load`` failed, for a one-line message: torch's own text runs to a page
    and suggests ``weights_only=False``, which a damaged or foreign file never needs."""
    text = str(error).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:  # the file pickles a Python object: the rest of torch's text is how to run it
        return (f"it holds a Python object ({found.group(1)}) besides tensors, which "
                "weights_only=True refuses to load (it could run code)")
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if found:
        return f"loading with weights_only=True failed: {found.group(1).split('. ')[0][:120]}"
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


def unit_counts(cfg: dict, unit: Unit) -> torch.Tensor:
    """A unit's selection counts (length N) from the cfg: the inverse of ``selection_cfg``."""
    counts = torch.zeros(unit.size, dtype=torch.long)
    for channel, count in cfg["units"][unit.name]["counts"].items():
        counts[int(channel)] = count
    return counts


def rebuild(ckpt: Checkpoint, build: Callable[[], nn.Module],
            units: Callable[[nn.Module], list[Unit]]) -> nn.Module:
    """The network of ``ckpt`` with its weights: ``build`` makes the full-width network and
    ``units`` its units; a slim checkpoint is sliced to its cfg before the weights are loaded.

    A masked checkpoint comes back at full width without its masks: ``models.load_model``
    installs them (or folds them into the slim network).
    """
    model = build()
    if ckpt.slim:
        slice_to_cfg(model, units(model), ckpt.cfg["spaces"])
    model.load_state_dict(ckpt.state_dict)
    return model
