"""Selection shared by two gloo processes picks exactly what one process picks on the same data.

Candidates are partitioned across the ranks (Algorithm 3 of Wolfe et al., 2023, App. E); the
per-candidate losses are all-gathered, so every rank must end every step with the selection the
single-process run makes, for exact greedy and for the shortlist, and must stop each unit when
rank 0's stop rule says so even if its own rule disagrees.
"""

import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_fast_evaluators import Batches, make_model, select_some

import models
from models import splitter
from pruning.distributed_select import CandidatePartition, RankZeroStop
from pruning.fast_evaluators import FastEvaluator
from pruning.masks import Masks
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


def worker(rank: int, world: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))  # fail, not hang
    try:
        torch.save(select(rank), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_select_what_one_process_selects(tmp_path):
    mp.spawn(worker, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    single = select(None)
    for rank in (0, 1):
        shared = torch.load(tmp_path / f"rank{rank}.pt")
        for names, (counts, picks) in single.items():
            got_counts, got_picks = shared[names]
            assert len(picks) == 5 * len(names)
            assert [p[:2] for p in got_picks] == [p[:2] for p in picks]
            assert all(torch.equal(got_counts[n], counts[n]) for n in counts)
            for got, want in zip(got_picks, picks):
                assert abs(got[2] - want[2]) <= 1e-5 * abs(want[2])
                assert got[3] == want[3]  # rank 0's measured loss
