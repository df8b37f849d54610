"""Greedy selection shared by the ranks of a torch.distributed job (Wolfe et al., 2023, App. E).

Algorithm 3 partitions the candidate neurons disjointly across compute nodes; every node finds
its local best and the global best is the best of those. Here every rank holds the whole model
and draws the same mini-batch, scores a contiguous share of each step's candidates, and the
per-candidate losses are all-gathered. Gathering the losses (a few thousand numbers) rather than
only each rank's (loss, index) costs nothing measurable and gives every rank the exact vector a
single process would compute, so ``argmin`` -- ties included -- and the logged loss are the same
on every rank and the same as without distribution.

Anything a rank computes redundantly and decides on (the shortlist's linear scores, the stop
rule's verdict) is taken from rank 0, so floating-point nondeterminism on one GPU can never make
the ranks disagree about a selection or about when a unit ends.

The stop rule's measurement of the fixed subset, the one other per-step cost, is split too
(``ShardedMeasure``): each rank measures its share of every subset batch, and one all-reduce of
three numbers gives every rank the loss and top-1 of the whole subset. Measured on the whole
subset by every rank it would be the part of a step that does not shrink with more ranks.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from pruning.evaluators import CandidateEvaluator, supports
from pruning.metrics import Batch, SubsetMeasure
from pruning.stop import StopRule
from pruning.units import Splitter, Unit


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def candidate_share(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous share of ``n`` candidates (Algorithm 3's
    disjoint blocks): ceil(n / world) each in rank order, so the last ranks may get fewer or
    none. In rank order, the first of the ranks' first minima is the first minimum overall."""
    size = -(-n // world)  # ceil
    return min(rank * size, n), min((rank + 1) * size, n)


def _from_rank0(values: torch.Tensor) -> torch.Tensor:
    buffer = values.to(_comm_device(), torch.float64)
    dist.broadcast(buffer, src=0)
    return buffer.cpu()


class CandidatePartition:
    """Each rank evaluates its share of the candidates; every rank gets all the losses.

    Needs an initialized default process group and the same ``batch`` on every rank. Has
    ``removal_losses`` and ``linear_scores`` exactly when ``inner`` has them
    (``pruning.evaluators.supports``).
    """

    def __init__(self, inner: CandidateEvaluator):
        self.inner = inner
        if supports(inner, "removal_losses"):
            self.removal_losses = self._removal_losses
        if supports(inner, "linear_scores"):
            self.linear_scores = self._linear_scores

    def losses(self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor,
               batch: Batch) -> torch.Tensor:
        return self._partitioned(self.inner.losses, unit, counts, candidates, batch)

    def _removal_losses(self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor,
                        batch: Batch) -> torch.Tensor:
        """The same partition for greedy backward elimination."""
        return self._partitioned(self.inner.removal_losses, unit, counts, candidates, batch)

    @staticmethod
    def _partitioned(score: Callable[..., torch.Tensor], unit: Unit, counts: torch.Tensor,
                     candidates: torch.Tensor, batch: Batch) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        share = -(-len(candidates) // world)  # ceil: every rank's gathered length
        start, stop = candidate_share(len(candidates), world, rank)
        mine = candidates[start:stop]
        local = torch.full((share,), float("inf"), dtype=torch.float64)
        if len(mine):
            local[:len(mine)] = score(unit, counts, mine, batch)
        device = _comm_device()
        gathered = [torch.empty(share, dtype=torch.float64, device=device) for _ in range(world)]
        dist.all_gather(gathered, local.to(device))
        return torch.cat(gathered).cpu()[:len(candidates)]

    def _linear_scores(self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor,
                       batch: Batch) -> torch.Tensor:
        """Rank 0's scores on every rank: one backward pass, not worth splitting."""
        return _from_rank0(self.inner.linear_scores(unit, counts, candidates, batch))


def sync_model(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (after training steps between units).

    Selection assumes every rank holds the same network; SGD steps on several GPUs agree only
    up to rounding. A no-op without a process group.
    """
    if not dist.is_initialized():
        return
    device = _comm_device()
    for tensor in model.state_dict().values():
        buffer = tensor.to(device)
        dist.broadcast(buffer, src=0)
        tensor.copy_(buffer)


class RankZeroStop(StopRule):
    """A stop rule whose verdict (and measured loss) every rank takes from rank 0."""

    def __init__(self, inner: StopRule):
        self.inner = inner

    def start(self, unit: Unit) -> None:
        self.inner.start(unit)

    def target(self, unit: Unit) -> int | None:
        """The inner rule's size: data-free, so the same on every rank."""
        return self.inner.target(unit)

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        finished = self.inner.done(unit, counts)
        loss = self.inner.last_loss
        verdict = _from_rank0(torch.tensor([float(finished),
                                            float("nan") if loss is None else loss]))
        self.last_loss = None if torch.isnan(verdict[1]) else float(verdict[1])
        return bool(verdict[0])


def shard(batches: list[Batch]) -> list[Batch]:
    """This rank's contiguous share of every batch; a share that comes out empty is dropped."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = []
    for x, y in batches:
        x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        if len(y):
            mine.append((x, y))
    return mine


class ShardedMeasure:
    """``SubsetMeasure`` of the whole subset, each rank measuring its ``shard`` of it.

    Every rank gets the same (loss, top-1): the sums of the shards, all-reduced in float64. They
    differ from one process's measurement of the whole subset only by the order of the float64
    sums (and on a GPU by what the smaller batches change in the convolutions' rounding). A rank
    whose share is empty (a subset of fewer images than ranks) adds zeros.
    """

    def __init__(self, model: nn.Module, batches: list[Batch], splits: Splitter | None = None):
        mine = shard(batches)
        self.images = sum(len(y) for _, y in mine)
        self.inner = SubsetMeasure(model, mine, splits) if mine else None

    def forget(self) -> None:
        if self.inner is not None:
            self.inner.forget()

    def __call__(self, unit: Unit | None = None) -> tuple[float, float]:
        sums = torch.zeros(3, dtype=torch.float64)
        if self.inner is not None:
            loss, top1 = self.inner(unit)
            sums = torch.tensor([loss * self.images, top1 * self.images, self.images],
                                dtype=torch.float64)
        buffer = sums.to(_comm_device())
        dist.all_reduce(buffer)
        loss_sum, correct, images = buffer.tolist()
        return loss_sum / images, correct / images
