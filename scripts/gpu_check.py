"""One command that shows a GPU node runs every path of this repository, and runs it right.

    python scripts/gpu_check.py                 # CUDA; about 2.5 minutes on one H200
    python scripts/gpu_check.py --device cpu    # the same checks at tiny sizes (in `make test`)

Every check runs a repository script as a user would, in its own process, on the synthetic
dataset at small sizes, and checks what it wrote, not only that it ran: its exit code, finite
losses in its summary.json, the machine and precision record there, slim-vs-masked logits
within 1e-4 of the largest logit for every pruned network (or, where its activations dwarf its
logits, as close to float64 as the masked network's own float32 rounding), a run resumed after a
SIGKILL equal to an uninterrupted one; every prune run's ``slim_exact`` (slim = masked in
float64). The MobileNetV2 and ResNet34 prune scripts run with each evaluator, --shortlist, each
unit kind, each method and --finetune-between; the MobileNetV3-Small and ProxylessNAS-Mobile
ones with each evaluator on the same candidate subsets, which must select the same channels;
the fine-tune scripts with --pruned (all four families), --from-scratch, dense training, --amp
bfloat16 and float16, --channels-last, --compile, --optimizer grda, --evaluate-only and
--resume; one launcher's --smoke (Table 2: MobileNetV2 and MobileNetV3-Small) and the selection
benchmark's --quick run on the same device. Four checks run the engine in this process, the
middle two on the briefly trained MobileNetV2 of the first check, the last on MobileNetV3-Small:

* the exact parts compute in IEEE float32 on this device (a convolution against float64, with
  the error TF32 would have made beside it);
* the fast evaluator's float32 picks equal the plain evaluator's, step by step;
* how often bf16 candidate losses (``--precision bf16``) pick another channel than float32 over
  a short selection, and the mean excess of the bf16 pick's float32 loss over the best one;
* on MobileNetV3-Small's squeeze-excitation (gated) units, the fast evaluator's float32 losses
  equal the plain evaluator's (``LOSS_RTOL``) and pick the same channel, step by step.

Independent checks run side by side (``--jobs``). It prints one PASS/FAIL table and exits 1 on
any FAIL; the files stay in ``--workdir`` (a temporary folder unless given).
"""

# Why this module is longer than 400 lines: it is one script a user copies to a GPU node and runs
# as it is, so its 40 checks (each a few lines), their pass criteria and the table stay together.

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torchvision_compat  # noqa: E402, F401
import torch  # noqa: E402

import models  # noqa: E402
from launch import prune_script, train_script  # noqa: E402
from scripts.runner.arguments import ArgumentParser, output_folder, positive_int  # noqa: E402
from pruning.checkpoint import Checkpoint, read  # noqa: E402

#: Slim vs masked logits: within SLIM_RTOL of the largest logit, or (networks whose activations
#: dwarf their logits) no further from the masked network in float64 than ROUNDING_FACTOR times
#: the masked network's own float32 error (``pruning.verify.slim_verification``).
SLIM_RTOL = 1e-4
ROUNDING_FACTOR = 10
RUNTIME_KEYS = ("device_name", "torch_version", "cuda_version", "tf32", "exact_parts")


@dataclass(frozen=True)
class Sizes:
    """How big every check is on one kind of device."""

    images: int  # synthetic training images
    val_images: int
    pixels: int
    batch: int  # training and selection mini-batch
    eval_images: int  # the stop rule's subset
    dense_epochs: int
    prune: tuple[str, ...]  # what every prune run adds (candidate subsets on a CPU)
    keep: str  # --keep-fraction of the fixed-size runs
    pick_units: tuple[str, ...]  # units of the in-process pick comparison
    pick_steps: int  # greedy steps per unit there
    plain_steps: int  # of which the plain evaluator also scores the first ones
    jobs: int
    timeout: int  # seconds per process


SIZES = {
    "cuda": Sizes(images=512, val_images=256, pixels=32, batch=64, eval_images=256,
                  dense_epochs=3, prune=(), keep="0.05",
                  pick_units=("features.2.hidden", "features.9.hidden", "features.17.hidden"),
                  pick_steps=24, plain_steps=3, jobs=8, timeout=180),
    "cpu": Sizes(images=128, val_images=32, pixels=16, batch=16, eval_images=32,
                 dense_epochs=3, prune=("--candidates", "3"), keep="0.05",
                 pick_units=("features.2.hidden", "features.6.hidden"),
                 pick_steps=4, plain_steps=2, jobs=2, timeout=600),
}


class CheckFailed(Exception):
    """A check ran and found something wrong (the message is the table's detail)."""


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], str]  # returns the table's detail; raises CheckFailed
    needs: tuple[str, ...] = ()


class Context:
    """The device, sizes and working folder that every check shares."""

    def __init__(self, device: torch.device, sizes: Sizes, workdir: Path, jobs: int):
        self.device, self.sizes, self.workdir = device, sizes, workdir
        # the jobs share the cores: each process's CPU work (data, Python) gets its share
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def data(self, train: bool) -> list[str]:
        s = self.sizes
        args = ["--dataset", "synthetic", "--synthetic-images", str(s.images), "--image-size",
                str(s.pixels), "--workers", "0", "--no-progress", "--device", self.device.type]
        return [*args, "--synthetic-val-images", str(s.val_images)] if train else args

    def dense(self, arch: str) -> Path:
        """The dense check's weights: last.pth, or its ``calibrate_batchnorm`` copy."""
        folder = self.workdir / f"dense-{arch}"
        return folder / CALIBRATED if (folder / CALIBRATED).exists() else folder / "last.pth"

    def prune_argv(self, arch: str, out: str, *extra: str) -> list[str]:
        s = self.sizes
        return [*self.data(train=False), *half_width(arch), "--pretrained", str(self.dense(arch)),
                "--batch-size", str(s.batch), "--eval-images", str(s.eval_images),
                "--eval-batch-size", str(s.eval_images), *s.prune, *extra,
                "--output-dir", str(self.workdir / out)]

    def train_argv(self, out: str, *extra: str) -> list[str]:
        return [*self.data(train=True), "--batch-size", str(self.sizes.batch), *extra,
                "--output-dir", str(self.workdir / out)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads)}

    def popen(self, script: str, argv: Sequence[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, str(ROOT / script), *argv], cwd=ROOT,
                                env=self.env(), stdout=log.open("w"), stderr=subprocess.STDOUT)

    def script(self, script: str, argv: Sequence[str], log: Path) -> None:
        """Run a script to the end; a non-zero exit fails the check with the log's last line."""
        process = self.popen(script, argv, log)
        try:
            code = process.wait(timeout=self.sizes.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise CheckFailed(f"no exit within {self.sizes.timeout} s (log: {log})") from None
        if code:
            raise CheckFailed(f"exit {code}: {last_line(log)} (log: {log})")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-200:] if lines else "(no output)"


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckFailed(f"no {path}")
    return json.loads(path.read_text())


def finite(summary: dict, *keys: str) -> None:
    bad = [k for k in keys if not math.isfinite(float(summary[k]))]
    if bad:
        raise CheckFailed(f"not finite: {', '.join(f'{k}={summary[k]}' for k in bad)}")


def runtime_recorded(summary: dict, device: torch.device) -> None:
    missing = [k for k in RUNTIME_KEYS if k not in summary]
    if missing:
        raise CheckFailed(f"summary.json lacks {', '.join(missing)}")
    if device.type == "cuda" and summary["device_name"] != torch.cuda.get_device_name(device):
        raise CheckFailed(f"summary.json names device {summary['device_name']!r}")


# ----------------------------------------------------------------------------------------------
# The scripts (``launch.prune_script`` / ``train_script``: named by the registry)
# ----------------------------------------------------------------------------------------------


def half_width(arch: str) -> list[str]:
    """The family's smallest ``--width`` (the checks' small network: MobileNetV2 0.5,
    MobileNetV3-Small 0.75) for a family with a width multiplier."""
    family = models.get(arch)
    return ["--width", f"{min(family.widths):g}"] if family.has_width else []


def prune(arch: str, out: str, *extra: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        ctx.script(prune_script(arch), ctx.prune_argv(arch, out, *extra),
                   ctx.workdir / f"{out}.log")
        return pruned_ok(ctx, out)

    return run


def pruned_ok(ctx: Context, out: str) -> str:
    """What every prune run must have written, and the table's detail about it."""
    summary = read_json(ctx.workdir / out / "summary.json")
    finite(summary, "loss_dense", "loss_pruned", "loss_pruned_masked")
    runtime_recorded(summary, ctx.device)
    if "candidate_precision" not in summary:
        raise CheckFailed("summary.json lacks candidate_precision")
    if "slim_exact" not in summary:
        raise CheckFailed("summary.json lacks slim_exact")
    if not summary["slim_exact"]:  # the script exits 1 first; a summary saying so is a FAIL too
        raise CheckFailed(f"slim != masked in float64: {summary['slim_vs_masked_float64']:.0e} "
                          f"(tolerance {summary['slim_tolerance']:.0e})")
    rel = summary["max_rel_diff_slim_vs_masked"]
    slim, masked = summary["slim_error_vs_float64"], summary["masked_error_vs_float64"]
    detail = f"slim vs masked {rel:.0e} (float64 {summary['slim_vs_masked_float64']:.0e})"
    if rel > SLIM_RTOL:  # large activations: compare with the masked network's own rounding
        detail += f" (vs float64: slim {slim:.0e}, masked {masked:.0e})"
        if not slim <= ROUNDING_FACTOR * masked:
            raise CheckFailed(detail)
    return (f"loss {summary['loss_pruned']:.3f} (dense {summary['loss_dense']:.3f}), "
            f"{summary['macs'] / 1e6:.1f}M/{summary['dense_macs'] / 1e6:.1f}M MACs, {detail}, "
            f"candidates {summary['candidate_precision']}")


def train(arch: str, out: str, *extra: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        ctx.script(train_script(arch), ctx.train_argv(out, *extra), ctx.workdir / f"{out}.log")
        return trained_ok(ctx, out)

    return run


def trained_ok(ctx: Context, out: str) -> str:
    summary = read_json(ctx.workdir / out / "summary.json")
    finite(summary, "val_loss", "top1")
    runtime_recorded(summary, ctx.device)
    detail = f"val loss {summary['val_loss']:.3f}, top-1 {summary['top1']:.1f}%"
    metrics = ctx.workdir / out / "metrics.jsonl"
    if metrics.exists():
        last = json.loads(metrics.read_text().splitlines()[-1])
        finite(last, "train_loss")
        detail = f"train loss {last['train_loss']:.3f}, {detail}"
    return f"{detail}, TF32 {'on' if summary['tf32'] else 'off'}"


def dense(arch: str, *extra: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        detail = train(arch, f"dense-{arch}", *half_width(arch),
                       "--epochs", str(ctx.sizes.dense_epochs), "--lr", "0.05",
                       "--lr-schedule", "cosine", *extra)(ctx)
        return detail + calibrate_batchnorm(ctx, arch)

    return run


CALIBRATED = "calibrated.pth"


def calibrate_batchnorm(ctx: Context, arch: str) -> str:
    """Where the family's BatchNorm momentum is below 0.1 (MobileNetV3-Small: torchvision's
    0.01), the dense check's few dozen steps leave the running statistics near their initial
    values, and the eval-mode network's logits are the same for every image (measured: a spread
    of 2e-10 over a batch): every candidate loss ties, and the checks would compare ties. So
    the statistics are re-estimated over the training images (cumulative averages, no
    gradients) and saved as a state_dict beside last.pth (``CALIBRATED``), which
    ``Context.dense`` then gives every check. Returns the detail it adds ('' where not needed)."""
    import data
    from models.weights import load_pretrained
    from torch import nn

    model = models.build(arch, min(models.get(arch).widths), 10)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = min(m.momentum for m in norms)
    if momentum >= 0.1:
        return ""
    load_pretrained(model, arch, str(ctx.dense(arch)))
    model.to(ctx.device).train()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    s = ctx.sizes
    dataset, _ = data.build_dataset("synthetic", None, "train", image_size=s.pixels,
                                    augment=False, num_images=s.images)
    with torch.no_grad():
        for start in range(0, len(dataset), s.batch):
            idx = range(start, min(start + s.batch, len(dataset)))
            model(torch.stack([dataset[i][0] for i in idx]).to(ctx.device))
    for m, value in zip(norms, saved, strict=True):
        m.momentum = value
    path = ctx.workdir / f"dense-{arch}" / CALIBRATED
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return f"; BatchNorm statistics (momentum {momentum:g}) re-estimated over the training images"


def finetune_pruned(arch: str, source: str, out: str, *extra: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        pruned = str(ctx.workdir / source / "pruned.pth")
        return train(arch, out, "--pruned", pruned, "--epochs", "1", *extra)(ctx)

    return run


def evaluate_only(ctx: Context) -> str:
    return train("mobilenet_v2", "evaluate-only", *half_width("mobilenet_v2"), "--pretrained",
                 str(ctx.dense("mobilenet_v2")), "--evaluate-only")(ctx)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """SIGKILL ``process`` as soon as ``ready()``; fails if it ends first or never gets there."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None:
            raise CheckFailed(f"ended (exit {process.returncode}) before it could be killed")
        if time.time() > deadline:
            process.kill()
            raise CheckFailed("never reached the point to kill it")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        raise CheckFailed(f"ended with exit {process.returncode} before the SIGKILL")


def loadable(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None while it does not exist yet (written atomically)."""
    return read(path, "gpu_check") if path.exists() else None


def prune_resume(ctx: Context) -> str:
    """A prune run SIGKILLed after its second unit, resumed, equals an uninterrupted run."""
    from scripts.runner.prune_cli import STATE_FILE

    script = prune_script("mobilenet_v2")
    extra = ("--stop", "fraction", "--keep-fraction", ctx.sizes.keep)
    straight = prune("mobilenet_v2", "resume-prune-straight", *extra)(ctx)
    argv = ctx.prune_argv("mobilenet_v2", "resume-prune-killed", *extra)
    state = ctx.workdir / "resume-prune-killed" / STATE_FILE
    log = ctx.workdir / "resume-prune-killed.log"
    kill_when(ctx.popen(script, argv, log),
              lambda: (s := loadable(state)) is not None and len(s.state["completed"]) >= 2,
              ctx.sizes.timeout)
    if (state.parent / "pruned.pth").exists():
        raise CheckFailed("the killed run wrote pruned.pth")
    ctx.script(script, [*argv, "--resume"], ctx.workdir / "resume-prune-again.log")
    a = read(ctx.workdir / "resume-prune-straight" / "pruned.pth", "gpu_check", ("pruned",))
    b = read(state.parent / "pruned.pth", "gpu_check", ("pruned",))
    if a.cfg != b.cfg:
        raise CheckFailed("the resumed run selected other channels than the uninterrupted one")
    pruned_ok(ctx, "resume-prune-killed")
    return f"killed after 2 of 17 units, resumed: the same selection; straight run: {straight}"


def finetune_resume(ctx: Context) -> str:
    """A fine-tune SIGKILLed after its first epoch, resumed, equals an uninterrupted run as
    closely as two uninterrupted runs equal each other (exactly on a CPU; on a GPU, cuDNN's
    backward kernels, e.g. of adaptive average pooling, are not bitwise deterministic)."""
    script = train_script("mobilenet_v2")
    source = str(ctx.workdir / "mobilenet_v2-fast" / "pruned.pth")
    extra = ("--pruned", source, "--epochs", "3")
    twins = [ctx.popen(script, ctx.train_argv(f"resume-ft-straight{i}", *extra),
                       ctx.workdir / f"resume-ft-straight{i}.log") for i in (1, 2)]
    argv = ctx.train_argv("resume-ft-killed", *extra)
    last = ctx.workdir / "resume-ft-killed" / "last.pth"
    log = ctx.workdir / "resume-ft-killed.log"
    kill_when(ctx.popen(script, argv, log),
              lambda: (s := loadable(last)) is not None and s.state["epoch"] >= 1,
              ctx.sizes.timeout)
    if (last.parent / "summary.json").exists():
        raise CheckFailed("the killed run wrote summary.json")
    ctx.script(script, [*argv, "--resume"], ctx.workdir / "resume-ft-again.log")
    for twin in twins:
        if twin.wait(timeout=ctx.sizes.timeout):
            raise CheckFailed(f"an uninterrupted run failed: exit {twin.returncode}")
    for out in ("resume-ft-killed", "resume-ft-straight1", "resume-ft-straight2"):
        trained_ok(ctx, out)

    def metrics(out: str) -> list[dict]:
        lines = (ctx.workdir / out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def difference(a: list[dict], b: list[dict]) -> float:
        if [m["epoch"] for m in a] != [m["epoch"] for m in b]:
            raise CheckFailed(f"epochs {[m['epoch'] for m in b]}, uninterrupted {len(a)}")
        return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b, strict=True)
                   for k in ("train_loss", "val_loss"))

    straight = metrics("resume-ft-straight1")
    spread = difference(straight, metrics("resume-ft-straight2"))
    resumed = difference(straight, metrics("resume-ft-killed"))
    detail = (f"killed after epoch 1 of 3, resumed: losses within {resumed:.0e} of an "
              f"uninterrupted run; two uninterrupted runs: within {spread:.0e} (relative)")
    if resumed > 10 * spread:
        raise CheckFailed(detail)
    return detail


def launcher_smoke(ctx: Context) -> str:
    out = ctx.workdir / "launcher"
    argv = ["--smoke", "--device", ctx.device.type, "--runs-dir", str(out),
            "--mobilenet-v2-pretrained", str(ctx.dense("mobilenet_v2")),
            "--mobilenet-v2-epsilons", "1.0",
            "--mobilenet-v3-small-pretrained", str(ctx.dense("mobilenet_v3_small")),
            "--mobilenet-v3-small-epsilons", "1.0"]
    ctx.script("scripts/table2.py", argv, ctx.workdir / "launcher.log")
    table = out / "table2" / "table.md"
    if not table.exists():
        raise CheckFailed(f"no {table}")
    for path in out.rglob("summary.json"):
        runtime_recorded(read_json(path), ctx.device)
    return f"table2.py --smoke on {ctx.device.type}: wrote {table.relative_to(ctx.workdir)}"


def bench_quick(ctx: Context) -> str:
    log = ctx.workdir / "bench_select.log"
    ctx.script("scripts/bench_select.py", ["--quick", "--device", ctx.device.type], log)
    lines = log.read_text().splitlines()
    summary = [line for line in lines if line.startswith("whole MobileNetV2 selection")]
    if not summary:
        raise CheckFailed("no summary line")
    return summary[0].split(";")[0].replace("whole MobileNetV2 selection ", "")[:110]


def bench_whole_quick(ctx: Context) -> str:
    """The code path of the GPU target (a whole selection through the prune script), tiny."""
    log = ctx.workdir / "bench_whole.log"
    ctx.script("scripts/bench_select.py", ["--whole", "--quick", "--device", ctx.device.type],
               log)
    total = [line for line in log.read_text().splitlines() if line.startswith("total ")]
    if not total:
        raise CheckFailed("no total line")
    return total[0].split(":")[0]


# ----------------------------------------------------------------------------------------------
# The engine, in this process
# ----------------------------------------------------------------------------------------------


def exact_is_ieee(ctx: Context) -> str:
    """A convolution under ``exact_float32`` against float64; TF32's error beside it."""
    from pruning.precision import exact_float32, set_tf32

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 256, 16, 16, generator=generator).to(ctx.device)
    w = torch.randn(256, 256, 3, 3, generator=generator).to(ctx.device)
    reference = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)

    def error(y: torch.Tensor) -> float:
        return ((y.double() - reference).abs().max() / reference.abs().max()).item()

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    set_tf32(True)
    try:
        with exact_float32():
            exact = error(torch.nn.functional.conv2d(x, w, padding=1))
        loose = error(torch.nn.functional.conv2d(x, w, padding=1))
        restored = torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    if not restored:
        raise CheckFailed("exact_float32 did not restore the TF32 flags")
    if not exact < 1e-5:
        raise CheckFailed(f"float32 convolution off float64 by {exact:.1e}: not IEEE float32")
    return f"conv error vs float64: {exact:.1e} exact, {loose:.1e} with TF32 allowed"


class PickComparison:
    """A short greedy selection on the briefly trained MobileNetV2, following the float32 picks,
    with the plain evaluator and bf16 candidate losses scored at every step beside them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result: dict | None = None

    def measure(self, ctx: Context) -> dict:
        with self.lock:
            if self.result is None:
                self.result = self._measure(ctx)
            return self.result

    @staticmethod
    def _measure(ctx: Context) -> dict:
        import copy

        import data
        from models import splitter
        from models.weights import load_pretrained
        from pruning.evaluators import PlainEvaluator
        from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass
        from pruning.masks import Masks

        device, s = ctx.device, ctx.sizes
        model = models.build("mobilenet_v2", 0.5, 10)
        load_pretrained(model, "mobilenet_v2", str(ctx.dense("mobilenet_v2")))
        model.to(device).eval()
        twin = copy.deepcopy(model)  # channels_last for the bf16 losses, as the prune scripts
        units = models.prunable_units("mobilenet_v2", model)
        masks, twin_masks = Masks(model, units), Masks(twin, units)
        per_pass = default_samples_per_pass(device)
        fp32 = FastEvaluator(model, splitter("mobilenet_v2", model), per_pass)
        bf16 = FastEvaluator(twin, splitter("mobilenet_v2", twin), per_pass, amp=torch.bfloat16,
                             channels_last=device.type == "cuda")
        plain = PlainEvaluator(model, masks)
        dataset, _ = data.build_dataset("synthetic", None, "train", image_size=s.pixels,
                                        augment=False, num_images=s.images)
        generator = torch.Generator().manual_seed(0)
        by_name = {u.name: u for u in units}
        plain_same = plain_steps = flips = steps = 0
        plain_diff = excess = relative = fp32_seconds = bf16_seconds = 0.0
        for name in s.pick_units:
            unit = by_name[name]
            counts = torch.zeros(unit.size, dtype=torch.long)
            for step in range(s.pick_steps):
                idx = torch.randint(0, len(dataset), (s.batch,), generator=generator).tolist()
                x = torch.stack([dataset[i][0] for i in idx]).to(device)
                y = torch.tensor([dataset[i][1] for i in idx]).to(device)
                pool = torch.nonzero(counts == 0).flatten()
                start = time.perf_counter()  # the losses come back to the CPU: synchronized
                exact = fp32.losses(unit, counts, pool, (x, y))
                fp32_seconds += time.perf_counter() - start
                best = int(torch.argmin(exact))
                if step < s.plain_steps:
                    reference = plain.losses(unit, counts, pool, (x, y))
                    plain_steps += 1
                    plain_same += int(torch.argmin(reference)) == best
                    plain_diff = max(plain_diff, float(
                        ((exact - reference).abs() / reference.abs()).max()))
                start = time.perf_counter()
                rounded = bf16.losses(unit, counts, pool, (x, y))
                bf16_seconds += time.perf_counter() - start
                pick = int(torch.argmin(rounded))
                steps += 1
                flips += pick != best
                excess += float(exact[pick] - exact[best])
                relative += float((exact[pick] - exact[best]) / exact[best])
                counts[pool[best]] += 1
                masks.set_counts(name, counts)
                twin_masks.set_counts(name, counts)
            masks.set_counts(name, torch.ones(unit.size, dtype=torch.long))  # dense again
            twin_masks.set_counts(name, torch.ones(unit.size, dtype=torch.long))
        return {"plain_same": plain_same, "plain_steps": plain_steps, "plain_diff": plain_diff,
                "flips": flips, "steps": steps, "excess": excess / steps,
                "relative": relative / steps, "fp32_seconds": fp32_seconds,
                "bf16_seconds": bf16_seconds}


PICKS = PickComparison()


def fast_equals_plain(ctx: Context) -> str:
    r = PICKS.measure(ctx)
    detail = (f"same pick in {r['plain_same']}/{r['plain_steps']} steps, losses within "
              f"{r['plain_diff']:.0e} (relative)")
    if r["plain_same"] != r["plain_steps"]:
        raise CheckFailed(detail)
    return detail


def bf16_against_fp32(ctx: Context) -> str:
    r = PICKS.measure(ctx)
    if not math.isfinite(r["excess"]):
        raise CheckFailed("non-finite losses")
    return (f"bf16 pick differs in {r['flips']}/{r['steps']} steps "
            f"({r['flips'] / r['steps']:.0%}); mean loss excess of the bf16 pick "
            f"{r['excess']:.1e} ({r['relative']:.1e} relative); candidate losses took "
            f"{r['bf16_seconds']:.2f} s in bf16, {r['fp32_seconds']:.2f} s in fp32")


#: The units of the in-process fast-vs-plain loss comparison of a family with gated units
#: (MobileNetV2's additive units have ``PickComparison``): MobileNetV3-Small's SE blocks 1 (no
#: expansion: the stem produces its channels), 4 and 9 (the fast evaluator re-gates every
#: candidate). At most ``PICK_CANDIDATES`` candidates a step (a random subset, as
#: ``--candidates``): the plain evaluator runs a full forward for each.
PICK_UNITS = {"mobilenet_v3_small": ("features.1.hidden", "features.4.hidden",
                                     "features.9.hidden")}
PICK_CANDIDATES = 16
#: Fast vs plain float32 candidate losses: the same function in another order of summation. A
#: unit's first steps scale one channel by N (the mixing weight N/|S|), so activations and losses
#: are large (up to ~250 on the CPU sizes) and float32 rounding reaches 1e-4 of them; a gate left
#: out changes the losses by the order of their spread (tens).
LOSS_RTOL = 1e-3


def fast_equals_plain_losses(arch: str) -> Callable[[Context], str]:
    """The fast evaluator's float32 candidate losses against the plain evaluator's (one masked
    full forward per candidate) on the briefly trained network of ``arch``, following the fast
    picks for ``plain_steps`` steps on each of its ``PICK_UNITS``: the same pick at every step
    and every loss within ``LOSS_RTOL``."""
    def run(ctx: Context) -> str:
        import data
        from models import splitter
        from models.weights import load_pretrained
        from pruning.evaluators import PlainEvaluator
        from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass
        from pruning.masks import Masks

        device, s = ctx.device, ctx.sizes
        model = models.build(arch, min(models.get(arch).widths), 10)
        load_pretrained(model, arch, str(ctx.dense(arch)))
        model.to(device).eval()
        units = {u.name: u for u in models.prunable_units(arch, model)}
        masks = Masks(model, list(units.values()))
        fast = FastEvaluator(model, splitter(arch, model), default_samples_per_pass(device))
        plain = PlainEvaluator(model, masks)
        dataset, _ = data.build_dataset("synthetic", None, "train", image_size=s.pixels,
                                        augment=False, num_images=s.images)
        generator = torch.Generator().manual_seed(0)
        same = steps = 0
        diff, spread = 0.0, math.inf
        for name in PICK_UNITS[arch]:
            unit = units[name]
            counts = torch.zeros(unit.size, dtype=torch.long)
            for _ in range(s.plain_steps):
                idx = torch.randint(0, len(dataset), (s.batch,), generator=generator).tolist()
                x = torch.stack([dataset[i][0] for i in idx]).to(device)
                y = torch.tensor([dataset[i][1] for i in idx]).to(device)
                pool = torch.nonzero(counts == 0).flatten()
                pool = pool[torch.randperm(len(pool), generator=generator)[:PICK_CANDIDATES]]
                exact = fast.losses(unit, counts, pool, (x, y))
                reference = plain.losses(unit, counts, pool, (x, y))
                best = int(torch.argmin(exact))
                steps += 1
                same += int(torch.argmin(reference)) == best
                diff = max(diff, float(((exact - reference).abs() / reference.abs()).max()))
                spread = min(spread, float(reference.max() - reference.min()))
                counts[pool[best]] += 1
                masks.set_counts(name, counts)
            masks.set_counts(name, torch.ones(unit.size, dtype=torch.long))  # dense again
        gated = sum(bool(units[n].gates) for n in PICK_UNITS[arch])
        detail = (f"{len(PICK_UNITS[arch])} units ({gated} gated): same pick in {same}/{steps} "
                  f"steps, losses within {diff:.0e} (relative; candidate losses spread "
                  f">= {spread:.1e}: no ties)")
        if same != steps or not diff <= LOSS_RTOL or not spread > 0:
            raise CheckFailed(detail)
        return detail

    return run


def same_selection(fast_out: str, plain_out: str) -> Callable[[Context], str]:
    """The prune script with ``--evaluator fast`` and with ``--evaluator plain``, on the same
    candidate subsets and batches (same seed), kept the same channels."""
    def run(ctx: Context) -> str:
        a = read(ctx.workdir / fast_out / "pruned.pth", "gpu_check", ("pruned",))
        b = read(ctx.workdir / plain_out / "pruned.pth", "gpu_check", ("pruned",))
        units = a.cfg["units"]
        if a.cfg != b.cfg:
            differ = [n for n in units if units[n] != b.cfg["units"].get(n)]
            raise CheckFailed(f"the fast and plain runs selected otherwise in {len(differ)} of "
                              f"{len(units)} units, first {differ[:1]}")
        kept = sum(u["kept"] for u in units.values())
        return (f"the same selection in all {len(units)} units ({kept} channels kept, with "
                f"their counts)")

    return run


# ----------------------------------------------------------------------------------------------
# The list and the runner
# ----------------------------------------------------------------------------------------------


#: The dense checks' learning rate where 0.05 is too high (ProxylessNAS-Mobile: training loss 4.0
#: after 3 epochs, above chance, and its pruned network's fine-tune diverges to NaN).
DENSE_LR = {"proxylessnas_mobile": ("--lr", "0.01")}


def family_checks(arch: str, fraction: Sequence[str]) -> list[Check]:
    """A newer family's paths: dense training, its prune script with the fast and the plain
    evaluator on the same candidate subsets (which must select the same channels), for a family
    with gated units (``PICK_UNITS``: MobileNetV3-Small's SE units) the fast evaluator's losses
    against the plain one's in this process, and a fine-tune of the pruned network. Every prune
    run also passes ``pruned_ok``: ``slim_exact`` (slim = masked in float64), slim vs masked in
    float32."""
    need = f"dense: {arch}"
    subsets = ("--candidates", "3")  # both evaluators score the same few candidates per step
    fast, plain = f"prune {arch} --evaluator fast", f"prune {arch} --evaluator plain"
    return [
        Check(need, dense(arch, *DENSE_LR.get(arch, ()))),
        Check(fast, prune(arch, f"{arch}-fast", *subsets, *fraction), (need,)),
        Check(plain, prune(arch, f"{arch}-plain", "--evaluator", "plain", *subsets, *fraction),
              (need,)),
        Check(f"prune {arch}: fast selection = plain selection",
              same_selection(f"{arch}-fast", f"{arch}-plain"), (fast, plain)),
        *[Check(f"{arch} gated units: fast fp32 losses = plain losses",
                fast_equals_plain_losses(arch), (need,))] * (arch in PICK_UNITS),
        Check(f"finetune {arch} --pruned", finetune_pruned(arch, f"{arch}-fast", f"ft-{arch}"),
              (fast,)),
    ]


def checks(keep: str, device: torch.device) -> list[Check]:
    fraction = ("--stop", "fraction", "--keep-fraction", keep)
    # PyTorch 2.13 on a CPU: under bf16 autocast, a 3x3 stride-2 convolution on a 1x1 input
    # gets NaN weight gradients for some shapes (dense 64 -> 26 channels at batch 16; depthwise
    # with 13 channels, channels_last), which the fine-tune script refuses by name. At 16 px
    # ResNet34's layer4.0.conv1 and MobileNetV2's features.14 see 1x1 inputs; so on a CPU
    # ResNet34 trains without --amp and the MobileNetV2 --amp checks run at 32 px
    gpu = device.type == "cuda"
    rn_amp = ("--amp", "bfloat16") if gpu else ()
    rn_speed = (*rn_amp, "--channels-last")
    amp_pixels = () if gpu else ("--image-size", "32")
    plain = ("--candidates", "3")  # a full forward per candidate: a few candidates per step
    # on a CPU the newer families keep one channel per unit, one greedy step each (ProxylessNAS-
    # Mobile has 6968 channels in 20 units: 353 greedy steps at 5%)
    newer = ("--stop", "fraction", "--keep-fraction", keep if gpu else "0.001")
    mb, rn = "dense: mobilenet_v2", f"dense: resnet34 {' '.join(rn_speed)}"
    greedy = "prune mobilenet_v2 --evaluator fast (loss gap)"
    rn_fast = "prune resnet34 --evaluator fast"

    def mb_prune(tag: str, *extra: str) -> Callable[[Context], str]:
        return prune("mobilenet_v2", f"mobilenet_v2-{tag}", *extra)

    def mb_finetune(out: str, *extra: str) -> Callable[[Context], str]:
        return finetune_pruned("mobilenet_v2", "mobilenet_v2-fast", out, *extra)

    return [
        Check(mb, dense("mobilenet_v2")),
        Check(rn, dense("resnet34", *rn_speed)),
        Check("exact parts in IEEE float32", exact_is_ieee),
        Check(greedy, mb_prune("fast", "--epsilon", "0.5"), (mb,)),
        Check("prune mobilenet_v2 --precision bf16",
              mb_prune("bf16", "--precision", "bf16", *fraction), (mb,)),
        Check("prune mobilenet_v2 --evaluator plain",
              mb_prune("plain", "--evaluator", "plain", *plain, *fraction), (mb,)),
        Check("prune mobilenet_v2 --shortlist 2 --shortlist-exact-steps 1",
              mb_prune("shortlist", "--shortlist", "2", "--shortlist-exact-steps", "1",
                       *fraction), (mb,)),
        Check("prune mobilenet_v2 --units hidden+outputs",
              mb_prune("outputs", "--units", "hidden+outputs", *fraction), (mb,)),
        Check("prune mobilenet_v2 --units released",
              mb_prune("released", "--units", "released", *fraction), (mb,)),
        Check("prune mobilenet_v2 --method backward",
              mb_prune("backward", "--method", "backward", "--stop", "fraction",
                       "--keep-fraction", "0.97"), (mb,)),
        *[Check(f"prune mobilenet_v2 --method {m}",
                mb_prune(m, "--method", m, "--stop", "fraction", "--keep-fraction", "0.25"),
                (mb,)) for m in ("magnitude", "random", "uniform")],
        Check("prune mobilenet_v2 --finetune-between",
              mb_prune("between", "--finetune-between", "0.05", *fraction), (mb,)),
        Check(rn_fast, prune("resnet34", "resnet34-fast", *fraction), (rn,)),
        Check("prune resnet34 --evaluator plain",
              prune("resnet34", "resnet34-plain", "--evaluator", "plain", *plain, *fraction),
              (rn,)),
        Check("prune --resume after SIGKILL", prune_resume, (mb,)),
        Check("fast fp32 picks = plain picks", fast_equals_plain, (mb,)),
        Check("bf16 vs fp32 candidate picks", bf16_against_fp32, (mb,)),
        Check("finetune --pruned --amp bfloat16 --channels-last",
              mb_finetune("ft-bf16", "--amp", "bfloat16", "--channels-last", *amp_pixels),
              (greedy,)),
        Check("finetune --pruned --from-scratch",
              mb_finetune("ft-scratch", "--from-scratch", "--scratch-max-factor", "1"),
              (greedy,)),
        Check("finetune --pruned --amp float16 --compile",
              mb_finetune("ft-compile", "--amp", "float16", "--compile", *amp_pixels),
              (greedy,)),
        Check(f"finetune resnet34 --pruned {' '.join(rn_amp)}".strip(),
              finetune_pruned("resnet34", "resnet34-fast", "ft-resnet34", *rn_amp), (rn_fast,)),
        Check("finetune --pruned --optimizer grda",
              mb_finetune("ft-grda", "--optimizer", "grda"), (greedy,)),
        Check("finetune --evaluate-only", evaluate_only, (mb,)),
        Check("finetune --resume after SIGKILL", finetune_resume, (greedy,)),
        *family_checks("mobilenet_v3_small", newer),
        *family_checks("proxylessnas_mobile", newer),
        Check("launcher table2.py --smoke", launcher_smoke, (mb, "dense: mobilenet_v3_small")),
        Check("bench_select.py --quick", bench_quick),
        Check("bench_select.py --whole --quick", bench_whole_quick),
    ]


@dataclass
class Outcome:
    name: str
    passed: bool
    seconds: float
    detail: str


def run_checks(items: list[Check], ctx: Context, jobs: int,
               report: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Run every check once its needs have passed, ``jobs`` at a time; a check whose need
    failed fails without running. Returns the outcomes in the list's order."""
    outcomes: dict[str, Outcome] = {}
    pending = list(items)
    running: dict[Future, Check] = {}

    def timed(check: Check) -> Outcome:
        start = time.perf_counter()
        try:
            detail, passed = check.run(ctx), True
        except CheckFailed as error:
            detail, passed = str(error), False
        except Exception as error:  # a crash of the check itself is a FAIL, with its reason
            detail, passed = f"{type(error).__name__}: {error}"[:300], False
        return Outcome(check.name, passed, time.perf_counter() - start, detail)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for check in list(pending):
                failed = [n for n in check.needs if n in outcomes and not outcomes[n].passed]
                if failed:
                    pending.remove(check)
                    outcomes[check.name] = Outcome(check.name, False, 0.0,
                                                   f"not run: {failed[0]} failed")
                    report(outcomes[check.name])
                elif all(n in outcomes for n in check.needs) and len(running) < jobs:
                    pending.remove(check)
                    running[pool.submit(timed, check)] = check
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    outcomes[outcome.name] = outcome
                    running.pop(future)
                    report(outcome)
            elif pending:  # needs that are not in the list
                for check in pending:
                    outcomes[check.name] = Outcome(check.name, False, 0.0, "unknown need")
                pending.clear()
    return [outcomes[c.name] for c in items]


def table(outcomes: list[Outcome]) -> str:
    width = max(len(o.name) for o in outcomes)
    lines = [f"{'check':<{width}}  result  seconds  detail"]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}  {'PASS' if o.passed else 'FAIL':<6}  "
                     f"{o.seconds:>7.1f}  {o.detail}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=("cuda", "cpu"))
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="checks run side by side (default: 6 on a GPU, 2 on a CPU)")
    p.add_argument("--workdir", type=output_folder, default=None,
                   help="where the runs are written (default: a new temporary folder)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine (use --device cpu)")
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = SIZES[device.type]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from scripts.runner.machine import device_name

    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"gpu_check on {device_name(device)} (torch {torch.__version__}{cuda}); synthetic data "
          f"at {sizes.pixels} px, batch {sizes.batch}; runs in {workdir}", flush=True)
    start = time.perf_counter()

    def report(outcome: Outcome) -> None:
        print(f"  {'PASS' if outcome.passed else 'FAIL'}  {outcome.name} "
              f"({outcome.seconds:.0f} s)", file=sys.stderr, flush=True)

    jobs = args.jobs or sizes.jobs
    context = Context(device, sizes, workdir, jobs)
    torch.set_num_threads(context.threads)  # this process runs checks beside the others too
    outcomes = run_checks(checks(sizes.keep, device), context, jobs, report)
    print(table(outcomes))
    failed = sum(not o.passed for o in outcomes)
    print(f"gpu_check took {time.perf_counter() - start:.0f} s on {device_name(device)}")
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
