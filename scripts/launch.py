"""What the table launchers share: the runs they start, how they start them, their tables.

Each launcher (``table1.py``, ``table2.py``, ``table3.py``, ``table5_backward.py``,
``pretraining.py``) lists its runs as :class:`Step` s (one call of a prune or fine-tune script
with its own ``--output-dir`` under ``runs/<table>/<row>/``), runs the missing ones, and ends by
building ``runs/<table>/table.md`` from the runs' ``summary.json`` files alone.

Why it is built this way:

* A step is done when its ``summary.json`` exists (both scripts write it last), so a launcher can
  be stopped and started again: finished steps are skipped, and every step is started with
  ``--resume``, so an interrupted prune or fine-tune continues where it stopped. A finished step
  made with other arguments is refused rather than silently reused (``launch.json`` records
  them). Tables 1, 2 and 5 share Table 1's epsilon sweep this way: the same pruned networks are
  found by whichever launcher runs first and reused by the others.
* ``--dry-run`` prints every command and runs nothing; steps that depend on results not yet
  there (the sweep's MACs decide which pruned networks are fine-tuned) are described instead.
* ``--smoke`` is the whole pipeline in miniature on the synthetic dataset (tiny images,
  MobileNetV2 width 0.5, MobileNetV3-Small 0.75, few candidates per greedy step, one fine-tune
  epoch), used by the tests; on the CPU unless ``--device`` says otherwise
  (``scripts/gpu_check.py`` runs one on CUDA).
  Its steps run inside the launcher's process (``runpy``), because starting Python and importing
  torch for each of dozens of tiny steps would cost more than the steps. Full runs start every
  step as its own process, under ``torchrun`` with ``--nproc-per-node`` > 1 (training is data
  parallel, selection splits each step's candidates over the ranks), so a long GPU run leaves
  nothing behind for the next one.
* MAC targets are compared as fractions of the dense network's MACs (the paper's count over the
  paper's dense count), so the same rule picks runs at 224 px on ImageNet and in a smoke run,
  and where this repository counts another dense number than the paper (MobileNetV3-Small
  60.9M vs 64M, ProxylessNAS-Mobile 336M vs 324M) the target keeps the paper's proportion.
* What a launcher knows about a network family (its scripts, whether it has a ``--width``, its
  title) comes from the registry (``models.get``); run folders and per-family flags
  (``--mobilenet-v2-pretrained``) are named after the registry name. Only the papers' numbers
  (and the smoke runs' sizes) are tables keyed by that name.
"""

# Why this module is longer than 400 lines: it is everything the five table launchers share (steps,
# their resumable running, the smoke mode, the epsilon sweep and the table helpers), so that each
# launcher is a short list of its runs.

from __future__ import annotations

import argparse
import json
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repository's modules, for steps run in this process
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from scripts.runner.arguments import (  # noqa: E402
    ArgumentParser,
    UsageError,
    check_output_dir,
    output_folder,
    positive_floats,
    positive_int,
    script_device,
)

SUMMARY = "summary.json"
RECORD = "launch.json"
#: Flags that change how a step runs but not what it computes (flag -> number of values).
RUN_ONLY = {"--workers": 1, "--device": 1, "--no-progress": 0, "--resume": 0}

#: Table 1's epsilon sweep, shared with Tables 2 and 5. The paper does not give the epsilon of
#: each row; Wolfe et al. (2023) report 0.02 -> 60% and 0.05 -> 40% of MobileNetV2's MACs, 0.05
#: -> 60% and 0.08 -> 40% of ResNet34's, so these lists bracket the paper's MAC targets. No
#: epsilon is published for MobileNetV3-Small (target 49/64 = 0.77 of dense) or ProxylessNAS-Mobile
#: (232/324 = 0.72): their lists are wide brackets around MobileNetV2's 0.70 (220M) epsilons; the
#: sweep's section of Table 1 shows where each landed (``--<arch>-epsilons`` to move them).
SWEEP_EPSILONS = {
    "mobilenet_v2": (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1),
    "resnet34": (0.02, 0.03, 0.05, 0.08),
    "mobilenet_v3_small": (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1),
    "proxylessnas_mobile": (0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
}
SMOKE_EPSILONS = {"mobilenet_v2": (0.3, 1.0), "resnet34": (4.0,), "mobilenet_v3_small": (1.0,),
                  "proxylessnas_mobile": (1.0,)}
#: The smoke runs' image size (a family not listed gets 32): ResNet34, MobileNetV3-Small and
#: ProxylessNAS-Mobile are cheaper at 16 px and still run (no --amp in the smoke runs).
SMOKE_IMAGE_SIZE = {"mobilenet_v2": 32, "resnet34": 16, "mobilenet_v3_small": 16,
                    "proxylessnas_mobile": 16}
#: The weights the paper started from, for the help of ``--<arch>-pretrained``.
PAPER_WEIGHTS = {"mobilenet_v2": "d-li14's mobilenetv2_1.0-0c6065bc.pth"}
#: The paper's dense MACs (Table 1's "Full Model" rows), the unit of its MAC targets. This
#: repository's dense counts (ptflops, pytorch backend, 224 px) differ for the two newer families:
#: MobileNetV3-Small 60.9M (no ptflops setting gives the paper's 64M), ProxylessNAS-Mobile 336M.
#: So targets are fractions: 49M of 64M is 0.766 of whatever dense count the run measures.
PAPER_DENSE_MACS = {"mobilenet_v2": 314e6, "resnet34": 3.68e9, "mobilenet_v3_small": 64e6,
                    "proxylessnas_mobile": 324e6}


def prune_script(arch: str) -> str:
    """The family's prune script, e.g. ``mobile2_prune.py``."""
    return f"{script_prefix(arch)}_prune.py"


def train_script(arch: str) -> str:
    """The family's fine-tune / training script, e.g. ``mobile2_finetune.py``."""
    return f"{script_prefix(arch)}_finetune.py"


def script_prefix(arch: str) -> str:
    family = models.get(arch)
    if family.script is None:
        raise SystemExit(f"error: {family.title} has no command-line scripts (Architecture.script)")
    return family.script


def width_args(arch: str, width: float) -> list[str]:
    """``--width`` for a family with a width multiplier, nothing for one without."""
    return ["--width", str(width)] if models.get(arch).has_width else []


def arch_flag(arch: str, what: str) -> str:
    """A per-family flag of the launchers: ``--mobilenet-v2-pretrained``."""
    return f"--{arch.replace('_', '-')}-{what}"


def arch_option(args: argparse.Namespace, arch: str, what: str) -> Any:
    """The value of ``arch_flag(arch, what)`` (None when the launcher has no such flag)."""
    return getattr(args, f"{arch}_{what}".replace("-", "_"), None)


def add_arch_options(p: argparse.ArgumentParser, archs: Sequence[str],
                     shared: bool = False) -> None:
    """``--<arch>-pretrained`` and ``--<arch>-epsilons`` for each of ``archs``; ``shared``:
    the sweep is Table 1's, shared with this launcher."""
    for arch in archs:
        family = models.get(arch)
        default = ("torchvision's IMAGENET1K_V1" if family.torchvision_weights
                   else "required without --smoke or --dry-run")
        paper = f"; the paper used {PAPER_WEIGHTS[arch]}" if arch in PAPER_WEIGHTS else ""
        sweep = "Table 1's " if shared else ""
        epsilons = ",".join(map(str, SWEEP_EPSILONS[arch]))
        p.add_argument(arch_flag(arch, "pretrained"), metavar="WEIGHTS",
                       help=f"{family.title} weights (default: {default}{paper})")
        p.add_argument(arch_flag(arch, "epsilons"), type=epsilon_list, metavar="E1,E2",
                       help=f"{sweep}{family.title} sweep (default: {epsilons})")


def sweep_epsilons(ctx: Context, args: argparse.Namespace, arch: str) -> tuple[float, ...]:
    """``--<arch>-epsilons``, or the (smoke) sweep of Table 1."""
    given = arch_option(args, arch, "epsilons")
    return given or (SMOKE_EPSILONS if ctx.smoke else SWEEP_EPSILONS)[arch]


class StepFailed(RuntimeError):
    """A step exited with an error, or its output directory holds another run."""


@dataclass(frozen=True)
class Step:
    """One call of a repository script; done once ``out/summary.json`` exists."""

    script: str
    args: tuple[str, ...]
    out: Path
    resumable: bool = True  # --evaluate-only takes no --resume

    @property
    def argv(self) -> list[str]:
        argv = [*self.args, "--output-dir", str(self.out)]
        return [*argv, "--resume"] if self.resumable else argv

    def record(self) -> dict[str, Any]:
        """What the step computes: its script and arguments without the run-only flags."""
        kept, skip = [], 0
        for arg in self.argv:
            if skip:
                skip -= 1
            elif arg in RUN_ONLY:
                skip = RUN_ONLY[arg]
            else:
                kept.append(arg)
        return {"script": self.script, "args": kept}

    def done(self) -> bool:
        if not (self.out / SUMMARY).exists():
            return False
        path = self.out / RECORD
        if path.exists() and read_json(path, f"the arguments of the finished run in {self.out}"
                                       ) != self.record():
            raise StepFailed(f"{self.out} holds a finished run made with other arguments (see "
                             f"{path}); remove it or choose another --runs-dir")
        return True

    def summary(self) -> dict[str, Any] | None:
        """The step's summary.json, or None while it has not run."""
        path = self.out / SUMMARY
        return read_json(path, f"the results of {self.out}") if path.exists() else None


def read_json(path: Path, what: str) -> Any:
    """A JSON file a step wrote (``what`` it records, for the message); a damaged one is a
    ``StepFailed`` naming it, not a traceback."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StepFailed(f"{path}: damaged ({type(error).__name__}: {str(error)[:80]}); it "
                         f"records {what}: restore it, or remove {path.parent} to run the step "
                         "again") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once: not for flags, unset options, or help that already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every launcher has."""
    p = ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="a tiny version on the synthetic dataset on the CPU (minutes)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--runs-dir", type=output_folder, default=None,
                   help="root of the runs (default: runs, or runs/smoke with --smoke)")
    p.add_argument("--data-path", help="dataset root (ImageNet train/ and val/ folders, or the "
                                       "CIFAR-10 batches); required unless --smoke")
    p.add_argument("--nproc-per-node", type=positive_int, default=1,
                   help="processes per step (torchrun), e.g. one per GPU")
    p.add_argument("--device", type=script_device, default=None,
                   help="--device of every step (default: the scripts' own, cuda when "
                        "available; cpu with --smoke)")
    return p


class Context:
    """The mode of one launcher call and the steps it builds and runs."""

    def __init__(self, table: str, args: argparse.Namespace, dataset: str = "imagenet"):
        if args.nproc_per_node < 1:
            raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        if not (args.smoke or args.dry_run or args.data_path):
            raise UsageError(f"--data-path is required for the {dataset} runs "
                             "(or use --smoke, or --dry-run to see the commands)")
        check_data_path(args.data_path, args.dry_run or args.smoke)
        self.table = table
        self.smoke = args.smoke
        self.dry_run = args.dry_run
        self.nproc = args.nproc_per_node
        self.dataset = "synthetic" if args.smoke else dataset
        self.paper_dataset = dataset
        self.data_path = args.data_path or "DATA_PATH"
        self.runs = args.runs_dir or Path("runs/smoke" if args.smoke else "runs")
        check_output_dir(self.runs, "--runs-dir")
        self.in_process = args.smoke  # see the module docstring
        self.device = args.device or ("cpu" if args.smoke else None)

    @property
    def dir(self) -> Path:
        return self.runs / self.table

    # -- steps ----------------------------------------------------------------------------------

    def layout_args(self, arch: str) -> list[str]:
        """``--layout`` of the paper's dataset where the data run has another default: a
        --smoke run of a CIFAR-10 table trains the CIFAR layout on synthetic images."""
        layout = models.default_layout(arch, self.paper_dataset)
        return [] if layout == models.default_layout(arch, self.dataset) else ["--layout", layout]

    def data_args(self, arch: str, train: bool) -> list[str]:
        device = ["--device", self.device] if self.device else []
        if not self.smoke:
            return ["--dataset", self.dataset, "--data-path", self.data_path, *device]
        args = ["--dataset", "synthetic", "--synthetic-images", "256",
                "--image-size", str(SMOKE_IMAGE_SIZE.get(arch, 32)),
                "--workers", "0", "--no-progress", *self.layout_args(arch), *device]
        return [*args, "--synthetic-val-images", "128"] if train else args

    @property
    def width(self) -> float:
        """The width of a family with a width multiplier (MobileNetV2 in Tables 1, 2 and 5):
        1.0, or the tiny 0.5 with --smoke."""
        return 0.5 if self.smoke else 1.0

    def width_for(self, arch: str) -> float:
        """:attr:`width` where the family has it, else its smallest width (MobileNetV3-Small,
        widths 1.0 and 0.75: 0.75 with --smoke)."""
        widths = models.get(arch).widths
        return self.width if self.width in widths else min(widths)

    def prune(self, arch: str, out: Path, pretrained: str, *extra: str,
              width: float | None = None) -> Step:
        """A prune step: the paper's selection settings, or tiny ones with --smoke; a family
        with a width multiplier at ``width`` (default :attr:`width`)."""
        args = [*self.data_args(arch, train=False), "--pretrained", pretrained,
                *width_args(arch, width or self.width_for(arch))]
        if self.smoke:
            args += ["--batch-size", "4", "--eval-images", "16", "--eval-batch-size", "16",
                     "--candidates", "2"]
        return Step(prune_script(arch), (*args, *extra), out)

    def train(self, arch: str, out: Path, *extra: str, resumable: bool = True) -> Step:
        """A fine-tune / re-train / dense training step; the script's defaults are the paper's
        fine-tuning recipe, ``extra`` overrides them (with --smoke: batch 32 unless given)."""
        args = self.data_args(arch, train=True)
        if self.smoke and "--batch-size" not in extra:
            args += ["--batch-size", "32"]
        return Step(train_script(arch), (*args, *extra), out, resumable)

    def finetune(self, arch: str, prune: Step, out: Path, epochs: int | None,
                 *extra: str) -> Step:
        """Fine-tune the network pruned by ``prune`` (``epochs`` None: the paper's 150)."""
        if epochs is None and self.smoke:
            epochs = 1
        more = ["--epochs", str(epochs)] if epochs is not None else []
        return self.train(arch, out, "--pruned", str(prune.out / "pruned.pth"), *more, *extra)

    def evaluate(self, arch: str, pretrained: str, out: Path, width: float | None = None) -> Step:
        """The dense pretrained network's validation accuracy (a table's "Full model" row)."""
        extra = width_args(arch, width or self.width_for(arch))
        return self.train(arch, out, "--pretrained", pretrained, *extra, "--evaluate-only",
                          resumable=False)

    def dense(self, arch: str, given: str | None, width: float | None = None) -> str:
        """The weights to prune: ``given``, torchvision's ImageNet weights, or with --smoke a
        short dense training on the synthetic data (so that pruning acts on a trained model),
        shared by all launchers under ``<runs-dir>/dense/``."""
        width = width or self.width_for(arch)
        if given:
            return given
        if not self.smoke:
            family = models.get(arch)
            if family.torchvision_weights is None and self.dry_run:  # commands for later
                placeholder = f"{arch.upper()}_WEIGHTS"
                self.note(f"{family.title}: torchvision has no weights; the commands show "
                          f"{placeholder} for {arch_flag(arch, 'pretrained')}")
                return placeholder
            if family.torchvision_weights is None:
                raise UsageError(f"give the pretrained {family.title} weights "
                                 "(torchvision has none)")
            if family.has_width and width != 1.0:
                raise UsageError(f"give the pretrained {family.title} x{width} weights "
                                 "(torchvision has width 1.0 only)")
            return "IMAGENET1K_V1"
        step = smoke_dense_step(self, arch, width)
        self.run([step])
        return str(step.out / "last.pth")

    # -- running --------------------------------------------------------------------------------

    def command(self, step: Step) -> list[str]:
        if self.nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.nproc}", step.script, *step.argv]
        return [sys.executable, step.script, *step.argv]

    def run(self, steps: Iterable[Step]) -> None:
        """Print each step's command; run it unless it is done or this is a dry run."""
        for step in steps:
            line = shlex.join(self.command(step))
            if step.done():
                print(f"# done, skipped: {line}", flush=True)
                continue
            print(f"$ {line}", flush=True)
            if self.dry_run:
                continue
            step.out.mkdir(parents=True, exist_ok=True)
            record_launcher(self.dir)
            (step.out / RECORD).write_text(json.dumps(step.record(), indent=1) + "\n")
            if self.in_process:
                run_in_process(step)
            else:
                code = subprocess.run(self.command(step), cwd=ROOT).returncode
                if code:
                    raise StepFailed(f"{step.script} exited with status {code}")
            if not (step.out / SUMMARY).exists():
                raise StepFailed(f"{step.script} wrote no {step.out / SUMMARY}")

    def note(self, text: str) -> None:
        """A line in the command log about steps that cannot be listed yet."""
        print(f"# {text}", flush=True)

    def write_table(self, sections: Sequence[tuple[str, str]]) -> Path | None:
        """Write ``<runs-dir>/<table>/table.md`` from (title, markdown) sections and print it;
        nothing with --dry-run."""
        if self.dry_run:
            return None
        text = "\n".join(f"## {title}\n\n{body}\n" for title, body in sections)
        path = self.dir / "table.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"\n{text}\nwrote {path}", flush=True)
        return path


def run_in_process(step: Step) -> None:
    """Run the script as ``python script argv`` would, inside this process."""
    saved = sys.argv
    sys.argv = [step.script, *step.argv]
    try:
        runpy.run_path(str(ROOT / step.script), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise StepFailed(f"{step.script} failed: {exit_.code}") from None
    finally:
        sys.argv = saved


def record_launcher(folder: Path) -> None:
    """Mark a launcher's folder (``runs/<table>``) as one (``scripts.runner.rundir``): a prune or
    fine-tune run pointed at it is refused rather than mixed into it."""
    from scripts.runner.rundir import RECORD as KIND_RECORD, write_record

    if not (folder / KIND_RECORD).exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_record(folder, "launcher", None)


def smoke_dense_step(ctx: Context, arch: str, width: float) -> Step:
    """A short dense training on the synthetic data: the smoke runs' "pretrained" network, so
    that their pruning starts from trained weights (a few epochs: only a little above chance)."""
    extra = width_args(arch, width)
    name = f"{arch}-w{width}" if extra else arch
    name += "".join(f"-{layout}" for layout in ctx.layout_args(arch)[1:])
    return ctx.train(arch, ctx.runs / "dense" / name, *extra, "--epochs", "3", "--lr", "0.01",
                     "--lr-schedule", "cosine")


def check_data_path(path: str | None, dry_run: bool) -> None:
    """``--data-path``, where given, is a folder (it may be missing in a dry run: the commands
    may be meant for another machine)."""
    if path is None:
        return
    if not path.strip():
        raise UsageError(f"--data-path {path!r}: an empty path (an unset shell variable?)")
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"--data-path {path}: a file, not a folder")
    if not dry_run and not Path(path).exists():
        raise UsageError(f"--data-path {path}: no such folder")


def main(build: Any) -> None:
    """Run a launcher's ``build()``; a failed step ends it with the step's message (status 1),
    bad input with one line and status 2."""
    try:
        build()
    except StepFailed as error:
        sys.exit(f"error: {error}")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


# -- the epsilon sweep shared by Tables 1, 2 and 5 -------------------------------------------------


def sweep_row(ctx: Context, arch: str, epsilon: float) -> Path:
    return ctx.runs / "table1" / f"{arch}-greedy-eps{epsilon:g}"


def sweep(ctx: Context, arch: str, epsilons: Sequence[float], pretrained: str) -> list[Step]:
    """Prune ``arch`` by greedy forward selection at every epsilon (Table 1's sweep); runs the
    missing ones and returns the prune steps."""
    steps = [ctx.prune(arch, sweep_row(ctx, arch, e) / "prune", pretrained, "--epsilon", f"{e:g}")
             for e in epsilons]
    ctx.run(steps)
    return steps


def nearest(steps: Sequence[Step], fraction: float) -> Step | None:
    """The finished prune step whose MACs, as a fraction of its dense MACs, are nearest."""
    done = [(s, s.summary()) for s in steps]
    done = [(s, m) for s, m in done if m is not None]
    if not done:
        return None
    return min(done, key=lambda sm: abs(sm[1]["macs"] / sm[1]["dense_macs"] - fraction))[0]


def epsilon_list(text: str) -> tuple[float, ...]:
    """``--<arch>-epsilons 0.01,0.02``: finite numbers > 0 (nan and inf are refused)."""
    return positive_floats(text)


# -- table cells ---------------------------------------------------------------------------------


def macs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def params(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.2f}M"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def row_name(step: Step | None) -> str:
    """The row directory a step writes into (``runs/<table>/<row>/<step>``, or the row itself)."""
    if step is None:
        return "—"
    return step.out.parent.name if step.out.name in ("prune", "finetune", "scratch") \
        else step.out.name


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sweep_table(steps: Sequence[tuple[str, str, Step]]) -> str:
    """(arch, setting, prune step) -> the setting-to-MACs map, e.g. epsilon -> MACs."""
    rows = []
    for arch, setting, step in steps:
        s = step.summary() or {}
        frac = f"{s['macs'] / s['dense_macs']:.3f}" if s else "—"
        kept = f"{s['kept_channels']}/{s['total_channels']}" if s else "—"
        rows.append([arch, setting, macs(s.get("macs")), frac, params(s.get("params")),
                     kept, pct(s.get("top1_pruned")), row_name(step)])
    return markdown(["arch", "selection", "MACs", "of dense", "params", "kept channels",
                     "top-1 after pruning (train subset)", "run"], rows)
