"""The benchmark of issue 6 runs end to end (tiny sizes) and prints a complete, consistent table.

Nothing here asserts a speed: timings belong to the benchmark's output, not to tests. The tests
of the two library changes issue 16 measures with it (the hybrid shortlist and BatchStream's
prefetch) are here too, next to the modes that measure them.
"""

import importlib.util
import math
import re
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import data
import models
from models import splitter
from pruning.fast_evaluators import FastEvaluator
from pruning.masks import Masks
from pruning.selection import BatchStream, SelectionSettings, greedy_forward_selection
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import MaxFraction
from tests.support.device_audit import META, DeviceAudit
from tests.support import ROOT
from tests.support.cli import run_script
from tests.support.nets import Batches, batch, make_model

TINY = ["--device", "cpu", "--quick"]
UNITS = {"mobilenet_v2": ("features.2.hidden", "features.9.hidden", "features.17.hidden"),
         "resnet34": ("layer1.0.inner", "layer3.0.inner", "layer4.2.inner")}
RUNGS = ("plain", "+prefix", "+additive", "+batched", "shortlist K=4")


def parse_row(line: str) -> tuple:
    """(arch, unit, rung, step seconds, speed-up, FLOP bound or None) of one table row."""
    t = line.split()
    if t[3] == "shortlist":
        return t[0], t[1], " ".join(t[3:5]), float(t[5]), float(t[7].rstrip("x")), None
    return t[0], t[1], t[3], float(t[4]), float(t[6].rstrip("x")), float(t[7].rstrip("x"))


def test_bench_select_prints_every_rung_of_every_unit_and_the_summary_lines():
    lines = run_bench()
    assert lines[0].startswith("Greedy step time, 16 px, batch 2, device: cpu")
    rows = [parse_row(line) for line in lines[2:-2]]
    assert [r[:3] for r in rows] == [(arch, unit, rung) for arch, units in UNITS.items()
                                     for unit in units for rung in RUNGS]
    for _, _, rung, step, speedup, bound in rows:
        assert step > 0 and speedup > 0
        if rung == "plain":
            assert speedup == 1.0
        if bound is not None:
            assert bound >= 1.0  # a full forward has at least the FLOPs of the unit's tail
    agree, steps = map(int, re.search(r"exact argmin in (\d+)/(\d+) steps", lines[-2]).groups())
    assert 0 <= agree <= steps and steps > 0
    assert re.search(r"exact greedy [\d.]+x, shortlist K=4 [\d.]+x faster than plain", lines[-1])
    assert "device cpu, 1 thread, fp32" in lines[-1]


# ----------------------------------------------------------------------------------------------
# --whole and --quality (issue 16), and the two library changes they measure: the hybrid
# shortlist (ShortlistEvaluator(exact_steps=E)) and BatchStream's prefetch
# ----------------------------------------------------------------------------------------------

MOBILENET_HIDDEN = (16, 48, 96, 96, 96, 96, 96, 192, 192, 192, 192, 288, 288, 288, 480, 480, 480)


def bench_whole():
    """scripts/bench_whole.py, with its sibling bench_common importable."""
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_whole", ROOT / "scripts" /
                                                  "bench_whole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*flags: str) -> list[str]:
    return run_script("scripts/bench_select.py", *TINY, *flags).stdout.strip().splitlines()


def test_whole_estimates_every_unit_through_the_prune_script_and_prints_the_totals():
    lines = run_bench("--whole")
    assert lines[0].startswith("Whole MobileNetV2 selection through the prune script's code "
                               "path: width 0.5, 16 px, batch 2")
    assert "device: cpu, 1 thread, fp32" in lines[0] and "time: process CPU time" in lines[0]
    fraction = float(re.search(r"keeps ceil\(([\d.]+) N\)", lines[0]).group(1))
    assert lines[1].split()[-4:] == ["K=4", "s", "E=1", "s"]
    rows = [line.split() for line in lines[2:-2]]
    assert [int(r[1]) for r in rows] == list(MOBILENET_HIDDEN)
    for r in rows:
        n, size = int(r[2]), int(r[1])
        assert n == math.ceil(fraction * size)
        checked = r[0] in UNITS["mobilenet_v2"]  # the |S| check: the table's three units only
        assert (r[8] == "-") != checked
        assert all(float(v) > 0 for v in r[3:8] + r[9:])  # every part timed, estimates > 0
        assert len(r) == 14  # ... data, measure, log, eval first/last, |S|, steps/s, 4 estimates
        assert not checked or float(r[8]) > 0
    total = re.search(r"total 17 units, (\d+) steps, (\d+) candidate evaluations: exact greedy "
                      r"\(fast\) .+, plain .+ \(([\d.]+)x slower\), shortlist K=4 .+hybrid E=1",
                      lines[-2])
    assert total, lines[-2]
    n = [math.ceil(fraction * size) for size in MOBILENET_HIDDEN]
    assert int(total.group(1)) == sum(n)
    assert int(total.group(2)) == sum(k * size - k * (k - 1) // 2
                                      for k, size in zip(n, MOBILENET_HIDDEN))
    assert lines[-1].startswith("without the stop-rule measurement (--stop fraction)")


def test_the_default_kept_fraction_gives_220m_macs_at_224_px():
    bench = bench_whole()
    assert bench.fraction_for_macs() == bench.MACS_FRACTION
    assert bench.uniform_macs(bench.MACS_FRACTION) <= 220e6 < bench.uniform_macs(
        bench.MACS_FRACTION + 1e-4)


def test_quality_compares_shortlist_and_hybrid_with_exact_greedy_per_seed():
    lines = run_bench("--quality", "--variants", "shortlist,hybrid,exact-other")
    assert lines[0].startswith("Shortlist quality: MobileNetV2 w0.5, 32 px")
    rows = [line.rsplit(None, 6) for line in lines[2:-3]]
    assert [r[0] for r in rows] == ["dense", "exact", "exact, other batches", "shortlist K=4",
                                    "hybrid K=4 E=1"]
    for name, seed, loss, top1, *ratios in rows[1:]:
        assert int(seed) == 0 and float(loss) > 0 and 0 <= float(top1) <= 100
        if name == "exact":
            assert ratios[0] == "1.0000" and ratios[2] == "1.0000"
    assert lines[-3].startswith("summary exact, other batches: held-out loss / exact greedy's")
    assert lines[-2].startswith("summary shortlist K=4: held-out loss / exact greedy's")
    assert lines[-1].startswith("summary hybrid K=4 E=1:")


def hidden_units(model):
    return models.prunable_units("mobilenet_v2", model, "hidden")


@pytest.mark.parametrize("exact_steps", [0, 3])
def test_the_hybrid_scores_every_candidate_for_its_first_steps_and_the_top_k_after(exact_steps):
    model = make_model("mobilenet_v2")
    units = hidden_units(model)
    Masks(model, units)
    fast = FastEvaluator(model, splitter("mobilenet_v2", model))
    hybrid = ShortlistEvaluator(fast, 4, exact_steps)
    unit = units[3]
    candidates = torch.arange(unit.size)
    for selected in range(6):
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[:selected] = 1
        got = hybrid.losses(unit, counts, candidates, batch(selected))
        if selected < exact_steps:
            torch.testing.assert_close(got, fast.losses(unit, counts, candidates,
                                                        batch(selected)), rtol=1e-5, atol=0)
        else:
            assert int(torch.isfinite(got).sum()) == 4


def test_a_hybrid_that_is_exact_for_every_step_selects_what_exact_greedy_selects():
    model = make_model("mobilenet_v2")
    units = [u for u in hidden_units(model) if u.name in ("features.3.hidden",
                                                          "features.6.hidden")]
    masks = Masks(model, units)
    fast = FastEvaluator(model, splitter("mobilenet_v2", model))
    runs = []
    for evaluator in (fast, ShortlistEvaluator(fast, 2, exact_steps=1000),
                      ShortlistEvaluator(fast, 2, exact_steps=3)):
        for unit in units:
            masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
        picks = []
        greedy_forward_selection(units, masks, evaluator, Batches(3), MaxFraction(0.1),
                                 SelectionSettings(), log_step=lambda u, s, best, *_, picks=picks:
                                 picks.append((u.name, s, best)))
        runs.append(picks)
    assert runs[1] == runs[0]
    # E=3: the first unit's first three steps are exact greedy's (later units start from the
    # first unit's selection, which the shortlisted steps may have changed)
    assert runs[2][:3] == runs[0][:3] and [p[:2] for p in runs[2][:3]] == [
        ("features.3.hidden", 0), ("features.3.hidden", 1), ("features.3.hidden", 2)]
    with pytest.raises(ValueError, match="exact_steps"):
        ShortlistEvaluator(fast, 2, exact_steps=-1)


def test_the_hybrid_reads_the_host_once_while_exact_and_twice_after():
    model = models.build("mobilenet_v2", 0.5, 10).to(META).eval()
    units = hidden_units(model)
    Masks(model, units)
    hybrid = ShortlistEvaluator(FastEvaluator(model, splitter("mobilenet_v2", model), 8), 2, 3)
    unit = units[4]
    x = (torch.randn(4, 3, 16, 16, device=META), torch.randint(0, 10, (4,), device=META))
    for selected, reads in ((0, 1), (2, 1), (3, 2), (5, 2)):
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[:selected] = 1
        with DeviceAudit() as audit:
            hybrid.losses(unit, counts, torch.arange(selected, selected + 6), x)  # > K
        assert len(audit.reads) == reads, selected


def stream_loader(start: int = 0) -> DataLoader:
    images = TensorDataset(torch.arange(40.0).view(40, 1), torch.arange(40))
    return data.make_infinite_loader(images, 4, seed=5, start_batch=start)


def labels(stream: BatchStream, count: int) -> list[list[int]]:
    return [next(stream)[1].tolist() for _ in range(count)]


def test_a_prefetching_batch_stream_hands_out_the_same_batches_and_counts_only_those():
    plain = BatchStream(stream_loader(), torch.device("cpu"))
    assert not plain.prefetch  # the default on a CPU device
    ahead = BatchStream(stream_loader(), torch.device("cpu"), prefetch=True)
    assert labels(ahead, 7) == labels(plain, 7)
    assert ahead.drawn == plain.drawn == 7  # the batch in flight is not counted
    resumed = BatchStream(stream_loader(ahead.drawn), torch.device("cpu"), ahead.drawn,
                          prefetch=True)
    assert labels(resumed, 5) == labels(ahead, 5) and resumed.drawn == ahead.drawn == 12


def test_a_prefetching_batch_stream_over_a_finite_loader_ends_after_its_last_batch():
    finite = DataLoader(TensorDataset(torch.arange(10.0), torch.arange(10)), batch_size=4)
    stream = BatchStream(finite, torch.device("cpu"), prefetch=True)
    assert [len(y) for _, y in stream] == [4, 4, 2] and stream.drawn == 3
    with pytest.raises(StopIteration):
        next(stream)


class Failing:
    """Batches of one sample; drawing batch ``bad`` raises (a corrupt image, say)."""

    def __init__(self, bad: int):
        self.bad, self.drawn = bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.bad:
            raise ValueError(f"batch {self.bad} is broken")
        return torch.zeros(1, 1), torch.full((1,), self.drawn)


def test_a_prefetching_batch_stream_raises_a_loader_error_where_an_unprefetched_one_does():
    for prefetch in (False, True):
        stream = BatchStream(Failing(3), torch.device("cpu"), prefetch=prefetch)
        assert labels(stream, 2) == [[1], [2]] and stream.drawn == 2
        with pytest.raises(ValueError, match="batch 3 is broken"):
            next(stream)
        assert stream.drawn == 2
