"""The arguments every command line shares, defined once, and the checks that need no data.

Both script families (``*_prune.py``, ``*_finetune.py``) read a dataset, write one run folder and
run on one device; those flags, their defaults and their checks live here so that they cannot
drift apart. Every check runs before any long work and fails with a ``UsageError`` naming the
argument; the scripts print it and exit with status 2 (``scripts.runner.command``).

The other entry points (the table launchers, ``report.py``, ``pipeline.py``, ``bench_select.py``,
``gpu_check.py``, the two-layer experiments) take their argument types from here too: seeds in
0..2**63-1, finite numbers, devices that exist on this machine, folders that are folders, and
``ArgumentParser``, whose usage errors are one line with exit status 2. Image sizes and batches
are checked against what a network's layout needs and what the device's memory can hold
(``check_image_and_batch``: estimated from the shapes on the ``meta`` device, never allocated).
"""

# Why this module is longer than 400 lines: it is the one argument module of every entry point
# (issue 22: the checks are shared, not written again per script): the shared flags, the argument
# types, the device and folder checks, and the image-size and memory estimate.

import argparse
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scripts.runner import distributed


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


#: The largest seed any entry point takes: torch's generators hold 64 bits, NumPy's and the
#: derived seeds (``data.seeding.mix_seed``) 63.
MAX_SEED = 2**63 - 1


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def nonnegative_int(text: str) -> int:
    """An integer argument that must be >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed_below(high: int, why: str = "") -> Any:
    """The type of a seed argument: an integer in 0..high (``why``: where a smaller bound than
    ``MAX_SEED`` comes from)."""
    bound = "2**63-1" if high == MAX_SEED else str(high)

    def seed(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not 0 <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in 0..{bound}{why}, got "
                                             f"{text}")
        return value

    seed.__name__ = "seed"
    return seed


#: ``--seed``: an integer in 0..2**63-1 (``--seed 2**70`` once overflowed inside torch).
seed = seed_below(MAX_SEED)


def positive_floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of finite numbers > 0 (``--mobilenet-v2-epsilons 0.01,0.02``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.01,0.02, got {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got {bad[0]} in {text!r}")
    return values


def unit_fraction(text: str) -> float:
    """A fraction in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def output_folder(text: str) -> Path:
    """A folder to write into: not empty (an unset shell variable), not a file, creatable."""
    try:
        check_output_dir(text, "")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).lstrip(": ")) from None
    return Path(text)


def input_folder(text: str) -> Path:
    """A folder that exists, to read from."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give a folder")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder")
    return path


def check_device(text: Any, kinds: tuple[str, ...] = ("cpu", "cuda", "mps"),
                 name: str = "--device", index: bool = True) -> torch.device:
    """``text`` as a device of this machine, or a ``UsageError``: one of ``kinds``, CUDA (and a
    ``cuda:N`` below the device count, unless ``index`` is False: torchrun picks the GPU) and
    MPS only where available."""
    names = ["cuda[:N]" if k == "cuda" else k for k in kinds]
    expected = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    if str(text).split(":")[0].lower() == "tpu":
        raise UsageError(f"{name} {text}: TPUs are not supported (PyTorch reaches them only "
                         f"through torch_xla); expected {expected}")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise UsageError(f"{name} {text!r}: not a device; expected {expected}") from None
    if device.type not in kinds:
        raise UsageError(f"{name} {text}: expected {expected}")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UsageError(f"{name} {text}: there is one cpu device; give cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{name} {text}: CUDA is not available on this machine (use "
                             "--device cpu)")
        count = torch.cuda.device_count()
        if index and device.index is not None and device.index >= count:
            raise UsageError(f"{name} {text}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{name} {text}: MPS is not available on this machine (use --device "
                         "cpu)")
    return device


def device(text: str) -> torch.device:
    """The type of ``--device``: cpu, cuda[:N] or mps, existing on this machine."""
    try:
        return check_device(text, name="")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None


def script_device(text: str) -> str:
    """The type of a launcher's ``--device``, passed on to the prune and fine-tune scripts: cpu
    or cuda[:N] (what they accept), existing on this machine; kept as the text given."""
    try:
        check_device(text, ("cpu", "cuda"), name="")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None
    return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``prog: error: message``, and exit status 2:
    the usage summary is left to ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- what a network and the memory can take ------------------------------------------------------

#: The map the first pruned layer reads must be at least this many pixels on a side: at 2x2
#: (ResNet34's ImageNet stem at 8 px) fine-tuning went to NaN in its first epoch on any data.
MIN_FIRST_MAP = 4
#: No network is run on images smaller than this (``data.build_dataset`` refuses them too).
MIN_IMAGE_SIZE = 8
#: A run is refused only when its estimated activations exceed the memory this many times: the
#: estimate is rough, and a run near the limit (the fine-tune defaults on a 24 GiB CPU machine)
#: is left to try; what is refused (``--image-size 1000000``: petabytes) cannot fit.
MEMORY_SLACK = 2


@dataclass(frozen=True)
class NetworkSizes:
    """What a network's layout needs of its input, from one forward on the ``meta`` device
    (shapes only: nothing is allocated). Floats are per image and per input pixel."""

    title: str
    stride: int  # input pixels per pixel of the map the first unit's channels live on
    train_floats: float  # every layer's output but in-place ones: what a backward keeps
    eval_floats: float  # the largest layer's input and output: the peak of a forward

    @property
    def min_image_size(self) -> int:
        return max(MIN_IMAGE_SIZE, MIN_FIRST_MAP * self.stride)


@functools.cache
def network_sizes(arch: str, layout: str, width: float) -> NetworkSizes | None:
    """The ``NetworkSizes`` of a family's network, or None where the trace fails (a family
    whose forward the ``meta`` device cannot run: only the size-free checks apply then)."""
    import models

    family = models.get(arch)
    side = 64
    try:
        with torch.device("meta"):
            model = models.build(arch, width, 10, layout).eval()
        unit = family.units(model, family.default_units)[0]
        outputs: list[int] = []
        first: list[int] = []

        def record(module: nn.Module, inputs: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):
                outputs.append(output.numel())  # an in-place activation reuses its input

        def at_site(module: nn.Module, inputs: tuple, output: Any) -> None:
            first.append((inputs[0] if unit.side == "input" else output).shape[-1])

        handles = [m.register_forward_hook(record) for m in model.modules()
                   if not list(m.children())]
        handles.append(model.get_submodule(unit.site).register_forward_hook(at_site))
        with torch.no_grad():
            model(torch.empty(1, 3, side, side, device="meta"))
        for handle in handles:
            handle.remove()
    except Exception:  # noqa: BLE001 - a trace is an estimate; without one, no size check
        return None
    pixels = side * side
    return NetworkSizes(family.title, max(1, side // first[0]), sum(outputs) / pixels,
                        (3 * pixels + 2 * max(outputs)) / pixels)


def memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device``: the GPU's, or this machine's RAM for the CPU (None: unknown)."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device.index or 0).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        pass
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_image_and_batch(arch: str, layout: str, width: float, image_size: int,
                          batches: dict[str, int], device: torch.device, training: bool,
                          size_given: bool = True, bytes_per_float: int = 4) -> None:
    """Refuse, before anything is built, an ``--image-size`` below what the network's layout
    needs, and an image size and batch whose activations cannot fit in the device's memory
    (an estimate from the shapes: every layer's output when ``training``, the largest layer
    otherwise; refused above ``MEMORY_SLACK`` times the memory). ``batches``: flag -> images
    per process and step; ``size_given``: whether --image-size was given (else a too-large
    batch is named)."""
    sizes = network_sizes(arch, layout, width)
    if sizes is None:
        return
    where = f"{sizes.title} ({layout} layout)"
    if image_size < sizes.min_image_size:
        why = (f": its stem downsamples by {sizes.stride} and the first pruned layer needs a "
               f"{MIN_FIRST_MAP}x{MIN_FIRST_MAP} map" if sizes.min_image_size > MIN_IMAGE_SIZE
               else "")
        raise UsageError(f"--image-size {image_size}: {where} needs at least "
                         f"{sizes.min_image_size} px{why}")
    memory = memory_bytes(device)
    if memory is None or not batches:
        return
    per_pixel = (sizes.train_floats if training else sizes.eval_floats) * bytes_per_float
    name, batch = max(batches.items(), key=lambda item: item[1])
    need = batch * image_size**2 * per_pixel
    budget = MEMORY_SLACK * memory
    if need <= budget:
        return
    largest_side = int(math.sqrt(budget / (batch * per_pixel)))
    largest_batch = int(budget // (image_size**2 * per_pixel))
    what = "training" if training else "a forward pass"
    head = (f"--image-size {image_size}" if size_given or largest_batch < 1
            else f"{name} {batch}")
    limit = (f"at {name} {batch} the largest image size accepted is about {largest_side} px"
             if head.startswith("--image-size") else
             f"at --image-size {image_size} at most {name} {largest_batch} is accepted")
    raise UsageError(f"{head}: {what} of {where} on {batch} images of {image_size}x{image_size} "
                     f"px needs about {_size(need)} (estimated from the shapes), more than "
                     f"{MEMORY_SLACK} x the {_size(memory)} of {device}; {limit}")


def require_batchnorm_batch(batch: int, name: str = "--batch-size", processes: int = 1) -> None:
    """BatchNorm trains on batch statistics: each process needs at least 2 images a step
    (with 1 it fails as "Expected more than 1 value per channel", or normalises to 0)."""
    if batch // processes < 2:
        per = f" ({batch // processes} per process on {processes})" if processes > 1 else ""
        raise UsageError(f"{name} {batch}{per}: BatchNorm trains on batch statistics, which "
                         "need at least 2 images per process and step")


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
    d.add_argument("--synthetic-seed", type=seed, default=0,
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
    r.add_argument("--seed", type=seed, default=0,
                   help="every random draw of the run (mini-batches, subsets, initialization)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def check_shared(args: argparse.Namespace, world: distributed.World) -> None:
    """The checks of ``add_shared_arguments``' flags; resolves ``args.device`` (a
    ``torch.device``; ``cuda:LOCAL_RANK`` under torchrun)."""
    for name in ("synthetic_images", "eval_batch_size"):
        require_at_least(args, name, 1)
    require_at_least(args, "workers", 0)
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --output-dir, --overwrite replaces it: "
                         "give one")
    check_output_dir(args.output_dir)
    check_device(args.device, ("cpu", "cuda"), index=not world.distributed)
    try:
        args.device = distributed.resolve_device(args.device, world)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_images(args, {}, training=False)


def check_images(args: argparse.Namespace, batches: dict[str, int], training: bool,
                 bytes_per_float: int = 4) -> None:
    """``check_image_and_batch`` for a prune or fine-tune run's arguments (``args.arch``, its
    layout, width, ``--image-size`` or the dataset's default, ``args.device``)."""
    import data
    import models

    layout = args.layout or models.default_layout(args.arch, args.dataset)
    width = getattr(args, "width", None) or 1.0
    size = args.image_size if args.image_size is not None else data.default_image_size(
        args.dataset)
    device = args.device if isinstance(args.device, torch.device) else torch.device("cpu")
    check_image_and_batch(args.arch, layout, width, size, batches, device, training,
                          size_given=args.image_size is not None, bytes_per_float=bytes_per_float)


def require_at_least(args: argparse.Namespace, name: str, low: int) -> None:
    value = getattr(args, name)
    if value < low:
        raise UsageError(f"{flag(name)} must be >= {low}, got {value}")


def check_output_dir(out: str | Path, name: str = "--output-dir") -> None:
    """``--output-dir`` must be a folder that can be written, checked before any work; an empty
    one (an unset shell variable) would write the run into the current folder."""
    if not str(out).strip():
        raise UsageError(f"{name} {str(out)!r}: an empty path (an unset shell variable?); give "
                         "a folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{name} {out}: exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"{name} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {out}: {existing} is not writable")


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
