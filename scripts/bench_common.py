"""What the three modes of ``bench_select.py`` share: the networks they time, the glibc
settings of a CPU run, progress lines on stderr, and how a table names its device.

The modes live in their own modules: the evaluator ladder in ``bench_select.py`` (the entry point),
``--whole`` in ``bench_whole.py``, the shortlist's fidelity and ``--quality`` in
``bench_shortlist.py``.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torchvision_compat  # noqa: E402, F401
import torch  # noqa: E402

#: glibc keeps freed activation buffers instead of returning them to the OS after every forward
#: (ENVIRONMENT.md); a CPU run restarts itself with these if they are not set.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
#: The networks of the ladder's table, and their early, middle and late units.
TABLE_UNITS = {"mobilenet_v2": ("features.2.hidden", "features.9.hidden", "features.17.hidden"),
               "resnet34": ("layer1.0.inner", "layer3.0.inner", "layer4.2.inner")}
#: The network of the whole-selection estimate and of the shortlist's fidelity and quality runs.
WHOLE = "mobilenet_v2"
SLOW_CANDIDATES = 4  # candidates timed for the one-forward-per-candidate rungs
NUM_CLASSES = 1000


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def device_name(args: argparse.Namespace) -> str:
    if args.device.type == "cuda":
        batched = "bf16 autocast, channels_last" if args.precision == "bf16" else "IEEE float32"
        return (f"{torch.cuda.get_device_name(args.device)} (+batched and shortlist: {batched}; "
                "plain, +prefix, +additive: IEEE float32)")
    batched = "" if args.precision == "fp32" else " (+batched and shortlist: bf16 autocast)"
    return f"cpu, {torch.get_num_threads()} thread, fp32{batched}"
