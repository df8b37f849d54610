"""The precision policy: TF32 off inside the exact parts and restored after, the run record,
the float64 reference of the slim-vs-masked verification, the prune script's --precision."""

import pytest
import torch
from torch import nn

from scripts.runner import prune_cli
from pruning.precision import exact, exact_float32, set_tf32
from scripts.runner.machine import runtime_record
from pruning.verify import float64_logits, slim_verification


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_allowed():
    saved = flags()
    set_tf32(True)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_exact_parts_switch_tf32_off_and_restore_it_even_after_an_error(tf32_allowed):
    with exact_float32():
        assert flags() == (False, False)
    assert flags() == (True, True)

    @exact
    def failing():
        assert flags() == (False, False)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert flags() == (True, True)


def test_the_run_record_names_the_machine_and_the_precisions():
    record = runtime_record(torch.device("cpu"), "fp32")
    assert record["torch_version"] == str(torch.__version__)
    assert record["cuda_version"] == torch.version.cuda and record["tf32"] is False
    assert record["candidate_precision"] == "fp32" and record["device_name"]
    assert "candidate_precision" not in runtime_record(torch.device("cpu"))


def test_the_float64_reference_leaves_the_model_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    before = model(x)
    reference = float64_logits(model, x)
    assert reference.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    assert torch.equal(model(x), before)  # float32 -> float64 -> float32 is lossless
    check = slim_verification(before + 1e-3, before, reference)
    assert check["max_abs_diff_slim_vs_masked"] == pytest.approx(1e-3, rel=1e-3)
    assert check["masked_error_vs_float64"] < 1e-6 < check["slim_error_vs_float64"]


@pytest.mark.parametrize("argv, expected", [
    ([], "fp32"),
    (["--precision", "bf16"], "bf16"),
    (["--evaluator", "plain"], "fp32"),
])
def test_precision_defaults_and_choices(argv, expected):
    args = prune_cli.build_parser("resnet34").parse_args(["--device", "cpu", *argv])
    prune_cli.check_args(args)
    assert args.precision == expected


def test_bf16_candidates_need_the_fast_evaluator():
    args = prune_cli.build_parser("resnet34").parse_args(
        ["--device", "cpu", "--evaluator", "plain", "--precision", "bf16"])
    with pytest.raises(ValueError, match="--precision bf16 needs --evaluator fast"):
        prune_cli.check_args(args)
