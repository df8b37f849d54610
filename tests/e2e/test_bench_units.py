"""scripts/bench_units.py runs end to end at its tiny sizes (``--quick``), writes both unit
kinds with finite numbers, and fast and plain agreed; its Spearman helper is right on ties.

Nothing here asserts a speed or a ranking quality: those belong to the benchmark's output.
"""

import importlib.util
import json
import math
import sys

import torch

from tests.support import ROOT
from tests.support.cli import run_script

SCRIPT = ROOT / "scripts" / "bench_units.py"


def bench_units():
    """scripts/bench_units.py as a module, with its sibling bench_common importable."""
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_units", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_quick_run_writes_both_unit_kinds_with_finite_numbers_and_fast_equals_plain(tmp_path):
    out = tmp_path / "units.json"
    result = run_script(SCRIPT, "--quick", "--out", out,
                        env={"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"})
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Gated vs additive units: MobileNetV3-Small w1.0")
    assert "precision: IEEE float32" in lines[1] and f"torch {torch.__version__}" in lines[1]
    assert lines[2].startswith("command: ") and "bench_units.py --quick --out" in lines[2]
    got = json.loads(out.read_text())
    assert got["agreement"]["held"] is True
    assert got["agreement"]["max_rel_diff"] <= got["agreement"]["tolerance"] == 1e-5
    assert got["threads"] == 1 and got["device"] and got["torch"] == str(torch.__version__)
    assert {r["kind"] for r in got["speed"]} == {"gated", "additive"}
    for r in got["speed"]:
        assert r["candidates"] > 0 and r["selected"] > 0
        assert finite(r["plain_s_per_candidate"], r["fast_s_per_candidate"], r["ratio"],
                      r["max_rel_diff"])
        assert r["plain_s_per_candidate"] > 0 and r["fast_s_per_candidate"] > 0
        assert len(r["rounds_plain_s"]) == len(r["rounds_fast_s"]) == got["rounds"] >= 2
    kinds = got["ranking"]["kinds"]
    assert set(kinds) == {"gated", "additive"}
    for kind in kinds.values():
        assert kind["steps_count"] >= 1
        assert finite(kind["spearman_mean"], kind["mean_rank"], kind["fw_excess_mean"])
        assert -1 <= kind["spearman_mean"] <= 1 and kind["mean_rank"] >= 1
        assert kind["fw_excess_mean"] >= 0  # the exact minimum is the minimum
        assert set(kind["top_fraction"]) == {"4", "8", "16"}
        assert all(0 <= f <= 1 for f in kind["top_fraction"].values())
    for unit in got["ranking"]["units"]:
        picks = [s["best"] for s in unit["steps"]]
        assert len(set(picks)) == len(picks)  # exact greedy without replacement
        assert [s["selected"] for s in unit["steps"]] == list(range(len(picks)))


def test_spearman_ranks_ties_by_their_average_and_is_nan_for_a_constant():
    bench = bench_units()
    a = torch.tensor([3.0, 1.0, 2.0, 2.0])
    assert bench.average_ranks(a).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert math.isclose(bench.spearman(a, a * 10 + 1), 1.0)
    assert math.isclose(bench.spearman(a, -a), -1.0)
    # rho of [1, 2, 3, 4] and [1, 3, 2, 4] is 1 - 6 * 2 / (4 * 15) = 0.8
    assert math.isclose(bench.spearman(torch.arange(4.0), torch.tensor([0.0, 2, 1, 3])), 0.8)
    assert math.isnan(bench.spearman(a, torch.ones(4)))


def test_default_units_spread_each_kind_and_skip_units_no_larger_than_the_largest_k():
    import models

    bench = bench_units()
    with torch.device("meta"):
        units = models.prunable_units("mobilenet_v3_small", models.build("mobilenet_v3_small"))
    assert [u.name for u in bench.default_units(units, 1)] == ["features.4.hidden",
                                                               "features.2.hidden"]
    assert [u.name for u in bench.default_units(units, 4)] == [
        "features.4.hidden", "features.6.hidden", "features.9.hidden", "features.11.hidden",
        "features.2.hidden", "features.3.hidden"]
