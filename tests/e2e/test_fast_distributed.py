"""Selection shared by two gloo processes picks exactly what one process picks on the same data.

Candidates are partitioned across the ranks (Algorithm 3 of Wolfe et al., 2023, App. E); the
per-candidate losses are all-gathered, so every rank must end every step with the selection the
single-process run makes, for exact greedy and for the shortlist, and must stop each unit when
rank 0's stop rule says so even if its own rule disagrees. The stop rule's measurement, split
across the ranks (``ShardedMeasure``), gives every rank the single process's loss and top-1.
"""

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.support.nets import Batches, batch, make_model, select_some

import models
from models import splitter
from pruning.distributed_select import CandidatePartition, RankZeroStop, ShardedMeasure
from pruning.fast_evaluators import FastEvaluator
from pruning.masks import Masks
from pruning.metrics import SubsetMeasure
from pruning.selection import SelectionSettings, greedy_forward_selection
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import StopRule

EXACT_UNITS = ("features.2.output", "features.3.hidden")
SHORTLIST_UNITS = ("features.4.hidden",)


class AfterSteps(StopRule):
    """Stops a unit after ``steps`` selections and reports a made-up measured loss."""

    def __init__(self, steps: int):
        self.steps = steps

    def done(self, unit, counts):
        self.last_loss = 10.0 * self.steps + int(counts.sum())
        return int(counts.sum()) >= self.steps


def select(rank: int | None) -> dict:
    """Both selections, in one process (rank None) or as one rank of the distributed job."""
    torch.set_num_threads(1)
    model = make_model("mobilenet_v2")
    units = models.prunable_units("mobilenet_v2", model, "hidden+outputs")
    masks = Masks(model, units)
    select_some(units, masks)
    fast = FastEvaluator(model, splitter("mobilenet_v2", model), 32)
    inner = fast if rank is None else CandidatePartition(fast)
    result = {}
    for names, evaluator in ((EXACT_UNITS, inner), (SHORTLIST_UNITS, ShortlistEvaluator(inner, 4))):
        stop = AfterSteps(5)
        if rank is not None:
            # rank 1 disagrees: alone, it would stop every unit after one step
            stop = RankZeroStop(stop if rank == 0 else AfterSteps(1))
        picks: list[tuple] = []
        counts = greedy_forward_selection(
            [u for u in units if u.name in names], masks, evaluator, Batches(3, 8), stop,
            SelectionSettings(replacement=True),
            log_step=lambda *step, picks=picks: picks.append(step),
        )
        result[names] = (counts, [(unit.name, best, loss, e) for unit, _, best, loss, e in picks])
    return result


def measurements(rank: int | None) -> list[tuple[float, float]]:
    """(loss, top-1) of a subset of batches of 5, 3 and 1 images (rank 1's share of the last is
    empty) for two units, after changing a unit's weights, and with no unit (a full forward)."""
    torch.set_num_threads(1)
    model = make_model("mobilenet_v2")
    units = models.prunable_units("mobilenet_v2", model, "hidden+outputs")
    masks = Masks(model, units)
    select_some(units, masks)
    subset = [batch(7, 5), batch(8, 3), batch(9, 1)]
    splits = splitter("mobilenet_v2", model)
    measure = (SubsetMeasure(model, subset, splits) if rank is None
               else ShardedMeasure(model, subset, splits))
    results = [measure(units[2]), measure(units[5])]
    masks.set_counts(units[5].name, torch.ones(units[5].size, dtype=torch.long))
    measure.forget()
    return [*results, measure(units[5]), measure()]


def worker(rank: int, world: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))  # fail, not hang
    try:
        torch.save(select(rank), out / f"rank{rank}.pt")
        torch.save(measurements(rank), out / f"measure{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder of what both gloo ranks selected and measured (one spawn for the tests)."""
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    return out


def test_two_gloo_ranks_select_what_one_process_selects(two_ranks):
    single = select(None)
    for rank in (0, 1):
        shared = torch.load(two_ranks / f"rank{rank}.pt")
        for names, (counts, picks) in single.items():
            got_counts, got_picks = shared[names]
            assert len(picks) == 5 * len(names)
            assert [p[:2] for p in got_picks] == [p[:2] for p in picks]
            assert all(torch.equal(got_counts[n], counts[n]) for n in counts)
            for got, want in zip(got_picks, picks):
                assert abs(got[2] - want[2]) <= 1e-5 * abs(want[2])
                assert got[3] == want[3]  # rank 0's measured loss


def test_the_measurement_split_across_ranks_is_the_single_process_measurement(two_ranks):
    single = measurements(None)
    assert single[1] != single[2]  # the changed weights were measured, not a stale cache
    for rank in (0, 1):
        for (loss, top1), (want_loss, want_top1) in zip(torch.load(
                two_ranks / f"measure{rank}.pt"), single, strict=True):
            assert abs(loss - want_loss) <= 1e-5 * want_loss
            assert abs(top1 - want_top1) < 1e-9
