"""The method working end to end on a CPU: train, prune, compare, fine-tune, re-train, time.

    make pipeline                              # = .venv/bin/python scripts/pipeline.py
    python scripts/pipeline.py --quick --out /tmp/p   # tiny sizes (the test)

For MobileNetV2 and ResNet34 on the synthetic dataset (``data/synthetic.py``) it runs the real
scripts, in this order, under ``<out>/<arch>/``:

1. ``dense/``: dense training from a random initialization (``*_finetune.py``), until the
   network is well trained (held-out top-1 of 90% or more at the full size);
2. ``prune-greedy/``: greedy forward selection with the paper's loss-gap rule
   (``*_prune.py --stop loss_gap --epsilon E``);
3. ``prune-magnitude/``, ``prune-random/``, ``prune-uniform/``: the baselines at exactly the greedy
   run's kept channel counts (``--method M --match-kept prune-greedy/pruned.pth``);
4. ``eval-<method>/``: each pruned network on the held-out images before any fine-tuning
   (``*_finetune.py --pruned ... --evaluate-only``);
5. ``finetune-<method>/``: a short fine-tune of each;
6. ``scratch-greedy/``: the greedy architecture re-trained from a new random initialization for
   Liu et al.'s Scratch-B budget (``--from-scratch --scratch-max-factor 2``, the paper's
   Table 2);

then writes ``<out>/table.md``, ``<out>/table.json`` and ``<out>/pipeline.png`` (MACs vs
held-out top-1, before and after fine-tuning, one marker per method) from the runs'
``summary.json`` files (``pipeline_table.py``). Every prune run also times the dense and the
slim network's forward pass (``summary.json``'s ``latency``, ``runner/latency.py``); the table
shows the speed-ups.

Why it is built this way:

* **Two processes, one thread each.** The two networks' pipelines are independent; each runs in
  its own process with one intra-op thread (``--jobs``, ``--threads``), which uses both cores of
  the 2-core machine it was sized for. One thread per process is also what keeps CPU times
  stable on a shared machine (``ENVIRONMENT.md``): with two threads, a quick MobileNetV2 epoch
  took 72 s instead of 2 s while another process used a core. Inside a process the steps run
  in-process (``runpy``, as ``scripts/launch.py`` runs ``--smoke`` steps) to save the Python and
  torch start-up: torch is imported once per network, and a prune step is the prune script
  itself (``prune_cli.main``, which calls ``pruning.prune.prune``, as the benchmarks and the
  README's example do), its exit status and one-line errors included.
* **Re-runnable.** A step is done when its ``summary.json`` exists and is skipped on a re-run;
  every step gets ``--resume``, so an interrupted prune or training continues where it stopped
  (``scripts/launch.py``'s ``Step``). ``<out>`` holding an earlier run is refused unless
  ``--resume`` (continue it) or ``--overwrite`` (delete it and start again) is given; a finished
  step made with other sizes is refused rather than reused. ``<out>`` follows the run-folder
  rules of ``runner/rundir.py`` (a lock, its kind recorded), and ``--overwrite`` deletes only
  what a pipeline writes: a folder that holds anything else is refused, naming a file.
* **The sizes** (``SIZES``) were chosen so that the whole pipeline takes under 15 minutes on the
  2-core machine of ``ENVIRONMENT.md`` while the dense networks are well trained; they are
  printed, and stored in ``table.json``. ``--quick`` uses tiny ones (the test).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import launch  # noqa: E402
from launch import Step, StepFailed  # noqa: E402
from pipeline_table import plot, table_markdown  # noqa: E402
from scripts.runner.arguments import (  # noqa: E402
    ArgumentParser,
    UsageError,
    output_folder,
    positive_int,
    seed,
)
from scripts.runner.rundir import BOOKKEEPING, RunDir, first_file, foreign_file  # noqa: E402

ARCHS = ("mobilenet_v2", "resnet34")
METHODS = ("greedy", "magnitude", "random", "uniform")
TITLES = {"mobilenet_v2": "MobileNetV2", "resnet34": "ResNet34"}
#: Environment of the worker processes: glibc keeps freed activation buffers instead of handing
#: them back to the OS after every forward (ENVIRONMENT.md: 3.7x on a MobileNetV2 forward).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


@dataclass(frozen=True)
class Sizes:
    """Everything that sets the size of one network's pipeline."""

    width: float | None  # None: the family has no width multiplier
    layout: str
    image_size: int
    train_images: int
    val_images: int
    batch_size: int  # training batch (dense, fine-tune, scratch)
    dense_epochs: int
    dense_lr: float
    epsilon: float  # the loss-gap rule
    candidates: int  # candidates scored per greedy step (a random subset)
    select_batch: int  # mini-batch per greedy step
    eval_images: int  # the stop rule's fixed subset of training images
    finetune_epochs: int
    finetune_lr: float
    scratch_lr: float
    scratch_max_factor: float = 2.0

    def describe(self) -> str:
        width = f"width {self.width}, " if self.width is not None else ""
        return (f"{width}{self.layout} layout, {self.image_size} px; {self.train_images} training"
                f" / {self.val_images} held-out images; dense {self.dense_epochs} epochs (batch "
                f"{self.batch_size}, lr {self.dense_lr} cosine); greedy: epsilon {self.epsilon}, "
                f"{self.candidates} candidates per step, batch {self.select_batch}, "
                f"{self.eval_images} images for the stop rule; fine-tune {self.finetune_epochs} "
                f"epochs (lr {self.finetune_lr} cosine); scratch: {self.finetune_epochs} x "
                f"min(dense/pruned MACs, {self.scratch_max_factor:g}) epochs (lr "
                f"{self.scratch_lr} cosine)")


#: The full sizes (``make pipeline``). Why these:
#: * MobileNetV2 x0.5 in the CIFAR layout at 16 px (feature maps 16, 16, 8, 4, 2): 7.7M MACs, so
#:   a greedy step (candidates and the stop rule's measurement) costs tens of milliseconds.
#: * ResNet34 in the same layout and size costs 38x more (291M MACs): its greedy selection alone
#:   took 14 minutes on a busy machine. The ImageNet layout at 32 px (75M MACs, maps 8, 4, 2, 1
#:   after the stride-4 stem) costs a quarter, and learned far better than the CIFAR layout at
#:   8 px at the same cost (85% vs 54% held-out after 6 epochs).
#: * Fine-tuning starts from trained weights at lr 0.005, below the dense training's 0.02 / 0.01;
#:   re-training from scratch uses the dense training's lr (Liu et al. re-train with the dense
#:   recipe; a fine-tuning lr is too small for a random initialization).
#: * Greedy selection keeps about half the channels whatever epsilon is, one step per kept
#:   channel, so its cost is set by the candidates, batch and stop-rule images per step.
SIZES = {
    "mobilenet_v2": Sizes(width=0.5, layout="cifar", image_size=16, train_images=2000,
                          val_images=1000, batch_size=32, dense_epochs=15, dense_lr=0.02,
                          epsilon=0.1, candidates=8, select_batch=32, eval_images=128,
                          finetune_epochs=3, finetune_lr=0.005, scratch_lr=0.02),
    "resnet34": Sizes(width=None, layout="imagenet", image_size=32, train_images=2000,
                      val_images=1000, batch_size=32, dense_epochs=8, dense_lr=0.01,
                      epsilon=0.1, candidates=4, select_batch=32, eval_images=128,
                      finetune_epochs=2, finetune_lr=0.005, scratch_lr=0.01),
}
#: ``--quick``: the same pipeline in miniature, for the test (82 s on the quiet 2-core machine).
QUICK = {
    "mobilenet_v2": Sizes(width=0.5, layout="cifar", image_size=16, train_images=800,
                          val_images=400, batch_size=16, dense_epochs=12, dense_lr=0.02,
                          epsilon=0.3, candidates=2, select_batch=8, eval_images=32,
                          finetune_epochs=1, finetune_lr=0.005, scratch_lr=0.02),
    "resnet34": Sizes(width=None, layout="imagenet", image_size=16, train_images=400,
                      val_images=200, batch_size=16, dense_epochs=3, dense_lr=0.01,
                      epsilon=0.3, candidates=2, select_batch=4, eval_images=8,
                      finetune_epochs=1, finetune_lr=0.005, scratch_lr=0.01),
}


def sizes_of(quick: bool) -> dict[str, Sizes]:
    return QUICK if quick else SIZES


# -- the steps -------------------------------------------------------------------------------------


def data_args(s: Sizes, train: bool, seed: int) -> list[str]:
    args = ["--dataset", "synthetic", "--synthetic-images", str(s.train_images),
            "--image-size", str(s.image_size), "--layout", s.layout, "--workers", "0",
            "--device", "cpu", "--no-progress", *(["--seed", str(seed)] if seed else [])]
    return [*args, "--synthetic-val-images", str(s.val_images)] if train else args


def width_args(s: Sizes) -> list[str]:
    return ["--width", str(s.width)] if s.width is not None else []


def steps(arch: str, s: Sizes, out: Path, seed: int = 0) -> dict[str, Step]:
    """Every step of one network's pipeline, by name, in the order they run; ``seed`` is every
    step's ``--seed`` (initialization, data order, candidate draws; not the images)."""
    prune, train = launch.prune_script(arch), launch.train_script(arch)
    d = out / arch
    training = ["--batch-size", str(s.batch_size), "--lr-schedule", "cosine"]
    held_out = data_args(s, True, seed)  # training steps: also the held-out images
    result = {"dense": Step(train, (*held_out, *width_args(s), *training, "--epochs",
                                    str(s.dense_epochs), "--lr", str(s.dense_lr)), d / "dense")}
    selection = [*data_args(s, False, seed), *width_args(s), "--pretrained",
                 str(d / "dense" / "last.pth"), "--batch-size", str(s.select_batch),
                 "--eval-images", str(s.eval_images), "--eval-batch-size", str(s.eval_images),
                 "--candidates", str(s.candidates)]
    greedy = d / "prune-greedy"
    for method in METHODS:
        rule = (["--stop", "loss_gap", "--epsilon", str(s.epsilon)] if method == "greedy" else
                ["--method", method, "--match-kept", str(greedy / "pruned.pth")])
        result[f"prune-{method}"] = Step(prune, (*selection, *rule), d / f"prune-{method}")
    for method in METHODS:
        pruned = ["--pruned", str(d / f"prune-{method}" / "pruned.pth")]
        result[f"eval-{method}"] = Step(train, (*held_out, *pruned, "--evaluate-only"),
                                        d / f"eval-{method}", resumable=False)
    for method in METHODS:
        pruned = ["--pruned", str(d / f"prune-{method}" / "pruned.pth")]
        result[f"finetune-{method}"] = Step(
            train, (*held_out, *pruned, *training, "--epochs", str(s.finetune_epochs), "--lr",
                    str(s.finetune_lr)), d / f"finetune-{method}")
    result["scratch-greedy"] = Step(
        train, (*held_out, "--pruned", str(greedy / "pruned.pth"), "--from-scratch",
                "--scratch-max-factor", f"{s.scratch_max_factor:g}", *training, "--epochs",
                str(s.finetune_epochs), "--lr", str(s.scratch_lr)), d / "scratch-greedy")
    return result


def run_worker(arch: str, args: argparse.Namespace) -> None:
    """One network's pipeline, every step in this process; step times to ``timings.json``."""
    import torch  # here, so that the parent process never pays for it

    import torchvision_compat  # noqa: F401

    sizes = sizes_of(args.quick)[arch]
    print(f"{arch}: {sizes.describe()}; {torch.get_num_threads()} thread(s)", flush=True)
    path = args.out / arch / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    for name, step in steps(arch, sizes, args.out, args.seed).items():
        if step.done():
            print(f"# done, skipped: {name}", flush=True)
            continue
        print(f"$ python {step.script} {' '.join(step.argv)}", flush=True)
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / launch.RECORD).write_text(json.dumps(step.record(), indent=1) + "\n")
        start = time.perf_counter()
        launch.run_in_process(step)
        if not (step.out / launch.SUMMARY).exists():
            raise StepFailed(f"{step.script} wrote no {step.out / launch.SUMMARY}")
        timings[name] = time.perf_counter() - start
        path.write_text(json.dumps(timings, indent=1) + "\n")
        print(f"# {name}: {timings[name]:.1f} s", flush=True)


# -- the parent: run the workers, then the table and the figure --------------------------------


#: What the pipeline writes in ``<out>`` and in ``<out>/<arch>`` besides the steps' folders.
OWN_FILES = ("invocations.json", "table.md", "table.json", "pipeline.png")
ARCH_FILES = ("log.txt", "timings.json")


def start_out(out: Path, resume: bool, overwrite: bool) -> None:
    """The run-folder rules of the other scripts (``runner.rundir``): ``<out>`` is locked while
    the pipeline runs and records that it is a pipeline's; an earlier run is refused unless
    --resume (continue it) or --overwrite (delete it). --overwrite deletes only what the
    pipeline wrote, and refuses, naming a file, a folder that holds anything else."""
    folder = RunDir(out, "pipeline", None, "--out")
    try:
        folder.lock()
        folder.check_kind(overwrite)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    held = [p for p in out.iterdir() if p.name not in BOOKKEEPING]
    if held and not resume:
        stranger = foreign(out)
        if stranger is not None:
            what = ("--overwrite deletes only the pipeline's own files: move it away" if overwrite
                    else "it is not a pipeline run:")
            raise SystemExit(f"error: --out {out} holds {stranger}, which the pipeline did not "
                             f"write; {what} or choose another --out")
        if not overwrite:
            raise SystemExit(f"error: {out} holds an earlier pipeline run; pass --resume to "
                             "continue it (finished steps are skipped) or --overwrite to delete "
                             "it and start again")
        for entry in held:  # all of it the pipeline's: checked above
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    folder.begin()  # the record; the lock is held until this process ends


def foreign(out: Path) -> Path | None:
    """A file in ``out`` that no pipeline wrote (its own files, its networks' folders, their
    steps' run folders), or None."""
    step_names = {name for arch in ARCHS for name in steps(arch, SIZES[arch], out)}
    for entry in sorted(out.iterdir()):
        if entry.name in (*BOOKKEEPING, *OWN_FILES):
            continue
        if entry.name not in ARCHS or not entry.is_dir():
            return first_file(entry)
        for sub in sorted(entry.iterdir()):
            if sub.name in (*BOOKKEEPING, *ARCH_FILES):
                continue
            found = (foreign_file(sub) if sub.name in step_names and sub.is_dir()
                     else first_file(sub))
            if found is not None:
                return found
    return None


def run_workers(args: argparse.Namespace) -> dict[str, float]:
    """Each network's pipeline in its own process (``--jobs`` at a time), its output in
    ``<out>/<arch>/log.txt``; returns each one's wall time. A failed worker, or Ctrl-C, stops
    the others (their finished steps stay; ``--resume`` continues)."""
    out, jobs = args.out, args.jobs
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(args.threads)}
    pending, running, walls = list(args.archs), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                arch = pending.pop(0)
                (out / arch).mkdir(parents=True, exist_ok=True)
                log = (out / arch / "log.txt").open("a")
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", arch,
                           "--out", str(out), "--seed", str(args.seed),
                           *(["--quick"] if args.quick else [])]
                print(f"{arch}: started, log in {out / arch / 'log.txt'}", flush=True)
                running[arch] = (subprocess.Popen(command, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT), log, time.time())
            time.sleep(0.5)
            for arch, (process, log, started) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[arch]
                walls[arch] = time.time() - started
                if process.returncode:
                    tail = (out / arch / "log.txt").read_text().splitlines()[-15:]
                    raise StepFailed(f"the {arch} pipeline failed (exit {process.returncode}); "
                                     f"the end of {out / arch / 'log.txt'}:\n" + "\n".join(tail))
                print(f"{arch}: finished in {walls[arch]:.0f} s", flush=True)
    finally:
        for process, log, _ in running.values():
            process.terminate()
            process.wait()
            log.close()
    return walls


def cpu_name() -> str:
    """The CPU's model name, as the prune runs' latency records give it."""
    import torch  # here: the parent imports torch only once the workers are done

    from scripts.runner.machine import device_name

    return device_name(torch.device("cpu"))


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def collect(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """One network's results from its runs' summary.json files."""
    s, out = sizes_of(args.quick)[arch], args.out
    st = steps(arch, s, out, args.seed)
    dense = st["dense"].summary()
    rows = {}
    for method in METHODS:
        prune = st[f"prune-{method}"].summary()
        before = st[f"eval-{method}"].summary()
        after = st[f"finetune-{method}"].summary()
        latency = prune["latency"]
        rows[method] = {
            "macs": prune["macs"], "params": prune["params"],
            "kept_channels": prune["kept_channels"], "total_channels": prune["total_channels"],
            "top1_before": before["top1"], "top1_after": after["top1"],
            "best_top1_after": after["best_top1"],
            "loss_gap_train_subset": prune["loss_pruned"] - prune["loss_dense"],
            "select_seconds": prune["seconds"], "latency": latency,
        }
    scratch = st["scratch-greedy"].summary()
    timings_path = out / arch / "timings.json"
    return {
        "arch": arch, "title": TITLES.get(arch, arch), "sizes": asdict(s),
        "description": s.describe(),
        "dense": {"macs": dense["macs"], "params": dense["params"], "top1": dense["top1"],
                  "best_top1": dense["best_top1"], "epochs": dense["epochs"]},
        "methods": rows,
        "scratch": {"top1": scratch["top1"], "best_top1": scratch["best_top1"],
                    "epochs": scratch["epochs"], "macs": scratch["macs"]},
        "step_seconds": json.loads(timings_path.read_text()) if timings_path.exists() else {},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=launch.HelpFormatter)
    p.add_argument("--out", type=output_folder, default="runs/pipeline",
                   help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test; a minute or two)")
    p.add_argument("--resume", action="store_true",
                   help="continue an earlier run in --out (finished steps are skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in --out and start again")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS),
                   help="which networks")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="networks run at once, each in its own process (default: all of them)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads per process: one is the fastest use of a shared "
                        "2-core machine (a second thread made an epoch 30x slower under load)")
    p.add_argument("--seed", type=seed, default=0,
                   help="every step's --seed (initializations, data order, candidate draws)")
    p.add_argument("--worker", choices=ARCHS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if args.jobs is None:
        args.jobs = len(args.archs)
    for name in ("jobs", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args)
        return {}
    start_out(args.out, args.resume, args.overwrite)
    command = "python scripts/pipeline.py" + " --quick" * args.quick + (
        f" --seed {args.seed}" if args.seed else "")
    load_before, start = load_average(), time.time()
    for arch in args.archs:
        print(f"{arch}: {sizes_of(args.quick)[arch].describe()}", flush=True)
    walls = run_workers(args)
    wall = time.time() - start
    this = {"command": command, "wall_seconds": wall, "worker_seconds": walls,
            "load_before": load_before, "load_after": load_average(), "cpu": cpu_name(),
            "cpus": os.cpu_count(), "jobs": args.jobs, "threads": args.threads,
            "torch": importlib.metadata.version("torch"), "quick": args.quick, "seed": args.seed}
    # a re-run with --resume adds its time to the earlier calls' (invocations.json)
    history = args.out / "invocations.json"
    calls = [*(json.loads(history.read_text()) if history.exists() else []), this]
    history.write_text(json.dumps(calls, indent=1) + "\n")
    meta = {**this, "wall_seconds": sum(c["wall_seconds"] for c in calls),
            "load_before": calls[0]["load_before"], "invocations": len(calls)}
    results = [collect(arch, args) for arch in args.archs]
    text = "# Greedy forward selection end to end (synthetic data, CPU)\n\n" + \
        table_markdown(results, meta)
    (args.out / "table.md").write_text(text)
    table = {"meta": meta, "results": results}
    (args.out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    plot(results, args.out / "pipeline.png")
    print(f"\n{text}\nwrote {args.out / 'table.md'}, {args.out / 'table.json'}, "
          f"{args.out / 'pipeline.png'} in {wall:.0f} s", flush=True)
    return table


if __name__ == "__main__":
    try:
        main()
    except StepFailed as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the finished steps are kept; continue with --resume")
