"""The benchmark of issue 6 runs end to end (tiny sizes) and prints a complete, consistent table.

Nothing here asserts a speed: timings belong to the benchmark's output, not to tests.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_select.py"), *TINY],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
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
