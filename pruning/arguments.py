"""The arguments every command line shares, defined once, and the checks that need no data.

Both script families (``*_prune.py``, ``*_finetune.py``) read a dataset, write one run folder and
run on one device; those flags, their defaults and their checks live here so that they cannot
drift apart. Every check runs before any long work and fails with a ``UsageError`` naming the
argument; the scripts print it and exit with status 2 (``pruning.command``).
"""

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch

from pruning import distributed


class UsageError(ValueError):
    """Bad input, found before any long work; the scripts print it and exit with status 2."""


def flag(name: str) -> str:
    """``'batch_size'`` -> ``'--batch-size'``, for messages."""
    return "--" + name.replace("_", "-")


def positive_int(text: str) -> int:
    """An integer argument that must be >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """A float argument that must be a finite number: ``--lr inf`` once trained to NaN weights
    and exited 0. argparse names the flag in its error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not for options whose help already explains theirs, nor for
    options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, "", argparse.SUPPRESS, False):
            return text
        return super()._get_help_string(action)


def add_shared_arguments(parser: argparse.ArgumentParser, title: str, has_width: bool,
                         layouts: tuple[str, ...], output_dir: str) -> None:
    """The flags of every script: data, width, layout, run folder, device, seed, workers,
    progress (``title``, ``has_width``, ``layouts``: the architecture's, from ``models``)."""
    import data  # here, not at the top: the two-layer experiments use this module without it

    d = parser.add_argument_group("data")
    d.add_argument("--dataset", choices=data.DATASETS, default="imagenet", help="dataset")
    d.add_argument("--data-path", help="dataset root (train/ and val/ folders, or CIFAR batches)")
    d.add_argument("--image-size", type=int,
                   help="input resolution (default: 224 ImageNet, 32 otherwise)")
    d.add_argument("--synthetic-images", type=int, default=2000,
                   help="training images of the synthetic dataset")
    d.add_argument("--synthetic-seed", type=int, default=0,
                   help="the synthetic dataset's class patterns and images (independent of "
                        "--seed, so every stage of a pipeline sees the same dataset)")
    d.add_argument("--eval-batch-size", type=int, default=256, help="evaluation batch per process")
    d.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes per process")
    m = parser.add_argument_group("model")
    if has_width:
        m.add_argument("--width", type=finite_float, default=None,
                       help=f"{title} width multiplier (default 1.0; a pruned checkpoint has its "
                            "own)")
    m.add_argument("--layout", choices=layouts,
                   help="input layout: imagenet (torchvision's stems) or cifar (a stride-1 stem "
                        "for 32 px images, Wolfe et al. Section 6.2) (default: cifar on "
                        "cifar10, imagenet otherwise)")
    r = parser.add_argument_group("run")
    r.add_argument("--output-dir", default=output_dir,
                   help="the run folder: checkpoints, summary.json, tb/")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir where it stopped; a finished run is "
                        "reported and left as it is")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run (finished or not) in --output-dir")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda; under torchrun each process uses cuda:LOCAL_RANK")
    r.add_argument("--seed", type=int, default=0,
                   help="every random draw of the run (mini-batches, subsets, initialization)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def check_shared(args: argparse.Namespace, world: distributed.World) -> None:
    """The checks of ``add_shared_arguments``' flags; resolves ``args.device`` (a
    ``torch.device``; ``cuda:LOCAL_RANK`` under torchrun)."""
    for name in ("synthetic_images", "eval_batch_size"):
        require_at_least(args, name, 1)
    require_at_least(args, "workers", 0)
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be >= 8, got {args.image_size}")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --output-dir, --overwrite replaces it: "
                         "give one")
    check_output_dir(Path(args.output_dir))
    try:
        args.device = distributed.resolve_device(args.device, world)
    except ValueError as error:
        raise UsageError(str(error)) from None


def require_at_least(args: argparse.Namespace, name: str, low: int) -> None:
    value = getattr(args, name)
    if value < low:
        raise UsageError(f"{flag(name)} must be >= {low}, got {value}")


def check_output_dir(out: Path) -> None:
    """``--output-dir`` must be a folder that can be written, checked before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {out}: {existing} is not writable")


def plain(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain data, for checkpoints and summary.json."""
    return {k: (str(v) if isinstance(v, torch.device | Path) else v) for k, v in vars(args).items()}


def check_same_run(saved: dict[str, Any], now: dict[str, Any],
                   defaults: dict[str, Any]) -> None:
    """The resume guard: ``--resume`` continues only the run that was interrupted.

    ``now`` holds the arguments that define the run; any that differs from ``saved`` is named.
    An argument the saved run predates counts as unchanged while it keeps its default.
    """
    changed = [f"{flag(k)} (saved {saved[k]!r}, now {v!r})" for k, v in now.items()
               if k in saved and saved[k] != v]
    changed += [f"{flag(k)} (now {v!r}, not saved)" for k, v in now.items()
                if k not in saved and v != defaults.get(k)]
    if changed:
        raise UsageError("--resume: these arguments differ from the interrupted run: "
                         + ", ".join(changed))
