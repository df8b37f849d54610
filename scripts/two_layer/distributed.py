"""Distributed greedy forward selection on the two-layer network (Wolfe et al. 2023, Algorithm 3).

Why it is here: Wolfe et al. split the N neurons among V workers so that each step of greedy
selection (Ye et al. 2020, eq. 2) moves only O(V + m) numbers, and they rely on it yielding the
iterates of the central algorithm, which their Lemma 1 and Figure 1 are about. This module runs
it with real processes (gloo over TCP on 127.0.0.1) so the experiments and tests can check that
claim bit for bit against `theory.two_layer_greedy_selection`. It is kept apart from `theory`
because only it needs torch.distributed and forked worker processes. The neurons are split as
the engine splits a step's candidates (`pruning.distributed_select.candidate_share`), but the
communication is Algorithm 3's own: the engine's `CandidatePartition` all-gathers every
candidate's loss (O(N) a step), where Algorithm 3 moves O(V + m), which is the point here.
"""

from __future__ import annotations

import math
import socket
from multiprocessing.queues import SimpleQueue

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pruning.distributed_select import candidate_share
from scripts.two_layer.theory import SELECT_DTYPE, greedy_scores, loss


def two_layer_distributed_greedy(
    Phi_local: torch.Tensor, start: int, y: torch.Tensor, n: int
) -> tuple[list[int], np.ndarray]:
    """Algorithm 3 on an initialized torch.distributed process group; Phi_local holds this
    worker's neurons, global indices start, start+1, ...

    Step I: each worker finds its local best candidate and broadcasts its loss L^(i).
    Step II: the worker with the smallest loss broadcasts its iterate z_k. Step III: everyone
    sets u_k = z_k / k. Only O(V + m) numbers move per step, and z_k is bitwise the central z_k.
    A worker without neurons (the last blocks of `candidate_share`) reports +inf: it never wins.
    """
    y = y.to(SELECT_DTYPE)
    V = dist.get_world_size()
    z = torch.zeros_like(y)
    selected, losses = [], np.empty(n)
    for k in range(1, n + 1):
        i, best = 0, math.inf
        if len(Phi_local):
            scores = greedy_scores(z, k, Phi_local, y)
            i = int(torch.argmin(scores))
            best = float(scores[i])
        local = torch.tensor([best, float(start + i)], dtype=SELECT_DTYPE)
        gathered = [torch.empty(2, dtype=SELECT_DTYPE) for _ in range(V)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered)
        winner = int(torch.argmin(table[:, 0]))
        z_k = z + Phi_local[i] if dist.get_rank() == winner else torch.empty_like(z)
        dist.broadcast(z_k, src=winner)
        z = z_k
        selected.append(int(table[winner, 1]))
        losses[k - 1] = float(loss(z / k, y))
    return selected, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _distributed_worker(
    rank: int, V: int, port: int, Phi: torch.Tensor, y: torch.Tensor, n: int,
    results: SimpleQueue,
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=V
    )
    try:
        start, stop = candidate_share(Phi.shape[0], V, rank)
        selected, losses = two_layer_distributed_greedy(Phi[start:stop], start, y, n)
        if rank == 0:
            results.put((selected, losses.tolist()))
    finally:
        dist.destroy_process_group()


def run_distributed_greedy(
    Phi: torch.Tensor, y: torch.Tensor, n: int, workers: int
) -> tuple[list[int], np.ndarray]:
    """Run Algorithm 3 with `workers` real processes (gloo over TCP on 127.0.0.1).

    The processes are forked: they inherit the imported torch and Phi, so a run takes about a
    second, where spawning fresh interpreters costs ~10 s of imports on a loaded 2-core machine.
    """
    if workers > Phi.shape[0]:
        raise ValueError(f"workers={workers} exceeds the number of neurons {Phi.shape[0]}")
    results = mp.get_context("fork").SimpleQueue()
    mp.start_processes(
        _distributed_worker,
        args=(workers, _free_port(), Phi, y.to(SELECT_DTYPE), n, results),
        nprocs=workers,
        join=True,
        start_method="fork",
    )
    selected, losses = results.get()
    return selected, np.asarray(losses)
