"""torch.distributed helpers shared by the training scripts (and, later, the prune scripts).

The paper fine-tunes with a global batch of 512 on 4 GPUs (Section 4.1). The scripts are
launched either plainly (one process) or by ``torchrun --nproc_per_node=N``, which sets the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables; everything here reads those,
so one code path serves both. NCCL is used for CUDA tensors and gloo for CPU tensors (the CPU
tests launch two gloo processes). Without a process group every helper is a cheap no-op, so
callers never branch on "distributed or not".
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "World",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "init",
    "resolve_device",
    "say",
    "is_main",
    "on_main",
    "peer_stopped",
    "world_from_env",
]


@dataclass(frozen=True)
class World:
    """This process's place in the job: global rank, number of processes, rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files; the other ranks only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The rank layout torchrun announced, read without creating a process group.

    Reading it first lets a script check e.g. batch-size divisibility before any setup.
    """

    def read(name: str, default: int) -> int:
        text = os.environ.get(name, str(default))
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None

    world = World(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank}, WORLD_SIZE={world.size}: inconsistent")
    return world


def say(text: str) -> None:
    """Print on rank 0 only: the other ranks compute the same thing. Reads the rank torchrun
    announced, so it is right before and after ``init``."""
    if world_from_env().is_main:
        print(text, flush=True)


def resolve_device(text: str, world: World) -> torch.device:
    """``--device`` checked before any work; under torchrun each rank takes cuda:LOCAL_RANK."""
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise ValueError(f"--device: unknown device {text!r} ({error})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text}: expected cpu or cuda[:index]")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine")
        if world.distributed:
            device = torch.device("cuda", world.local_rank)
    return device


def init(device_type: str) -> World:
    """Join the process group torchrun set up (NCCL for ``cuda``, gloo otherwise).

    A single process (``WORLD_SIZE`` unset or 1) gets no process group. On CUDA each process
    binds to GPU ``LOCAL_RANK``, so collectives and the model share that device.
    """
    world = world_from_env()
    if world.distributed and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return world


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (e.g. correct counts and image counts).

    Summing counts rather than averaging per-rank accuracies keeps the result exact when ranks
    hold different numbers of images. ``device`` must suit the backend (CUDA for NCCL).
    """
    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


T = TypeVar("T")


def on_main(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 only (claim the run folder, write a checkpoint) and give every
    rank its result, or its error: the other ranks raise the same exception, so a refusal or a
    full disk ends every rank with one line instead of leaving the others waiting in the next
    collective. Every rank must call it at the same point (it is a collective)."""
    result, error = None, None
    if is_main():
        try:
            result = action()
        except Exception as raised:  # noqa: BLE001 - re-raised below, on every rank
            error = raised
    if dist.is_initialized():
        wire = (result, error)
        try:
            pickle.dumps(wire)
        except Exception:  # noqa: BLE001 - an unpicklable error still ends every rank
            wire = (None, RuntimeError(f"rank 0: {type(error).__name__}: {error}"))
        shared = all_gather_objects(wire)[0]
        if not is_main():
            result, error = shared
    if error is not None:
        raise error
    return result


#: What the collective backends say when another rank of the job has died (gloo, NCCL).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker",
              "remote process exited", "Broken pipe")


def peer_stopped(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank of the job has exited
    (rank 0 stopped with its own message): the other ranks then end with one line, not a
    traceback from the backend."""
    return (isinstance(error, RuntimeError) and world_from_env().distributed
            and any(text in str(error) for text in _PEER_GONE))


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP synchronises gradients, not buffers, and re-broadcasts buffers only at the start of
    the next forward; after an epoch's last step each rank's running statistics still reflect
    its own last batch. Broadcasting before evaluation and saving makes all ranks hold the model
    that rank 0 evaluates and saves.
    """
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src)
