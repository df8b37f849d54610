"""First-order shortlist: exact losses for the K candidates with the best Frank-Wolfe score.

The proof of Lemma 1 (Wolfe et al., 2023; after Ye et al., 2020) compares the greedy pick q_k
with one particular vertex, the Frank-Wolfe vertex q'_k = argmin_q <grad loss(u_{k-1}), q>, and
uses only l(u_k) <= l(u'_k): the chosen channel must be at least as good as the Frank-Wolfe
vertex. Any rule that evaluates the Frank-Wolfe vertex exactly and picks the best of what it
evaluated keeps that inequality, hence the bound (12).

So each step ranks all candidates by their linear score (one backward pass, the evaluator's
``linear_scores``; see ``pruning.evaluators``), evaluates exactly only the first K of that
ranking -- the Frank-Wolfe vertex is always first -- and reports +inf for the others, so the
selector's argmin is the exact best of the shortlist. With K >= the number of candidates no
score is computed and the step is plain exact greedy.

``exact_steps=E`` is the hybrid: while the unit holds fewer than E selections (|S| < E, i.e.
its first E steps without replacement) every candidate is evaluated exactly, the shortlist only
after. The linear ranking is poorest while |S| is small -- adding a channel then moves the
unit's output by 1/(|S|+1) of its size -- and that is where the shortlist's misses concentrate.
The guarantee holds either way: an exact step evaluates the Frank-Wolfe vertex too.
"""

import torch

from pruning.evaluators import CandidateEvaluator, require
from pruning.metrics import Batch
from pruning.units import Unit


def shortlist(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k lowest scores, lowest first; position 0 is ``argmin(scores)``.

    A stable sort breaks ties by position, as ``argmin`` does, so the Frank-Wolfe vertex is
    always in the shortlist even among equal scores.
    """
    return torch.argsort(scores, stable=True)[:k]


class ShortlistEvaluator:
    """Exact losses for the top-K of the linear ranking, +inf for every other candidate (all
    candidates exact during a unit's first ``exact_steps`` steps, see the module docstring).

    ``inner`` must have ``linear_scores`` (checked here, before any work). The shortlist has
    ``linear_scores`` too (``inner``'s, unchanged) but not ``removal_losses``: it shortlists
    forward steps only, and passing exact removal losses through would let backward elimination
    run silently without it.
    """

    def __init__(self, inner: CandidateEvaluator, k: int, exact_steps: int = 0):
        if k < 1:
            raise ValueError(f"shortlist must be >= 1, got {k}")
        if exact_steps < 0:
            raise ValueError(f"exact_steps must be >= 0, got {exact_steps}")
        require(inner, "linear_scores", "a shortlist (its first-order ranking)")
        self.inner, self.k, self.exact_steps = inner, k, exact_steps

    def exact(self, counts: torch.Tensor, candidates: torch.Tensor) -> bool:
        """Whether this step evaluates every candidate exactly: too few candidates to cut, or
        fewer than ``exact_steps`` selections so far (``counts`` is on the CPU: no device read).
        """
        return len(candidates) <= self.k or int(counts.sum()) < self.exact_steps

    def losses(self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor,
               batch: Batch) -> torch.Tensor:
        if self.exact(counts, candidates):
            return self.inner.losses(unit, counts, candidates, batch)
        scores = self.inner.linear_scores(unit, counts, candidates, batch)
        positions = shortlist(scores, self.k)
        result = torch.full((len(candidates),), float("inf"), dtype=torch.float64)
        result[positions] = self.inner.losses(unit, counts, candidates[positions], batch)
        return result

    def linear_scores(self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor,
                      batch: Batch) -> torch.Tensor:
        """``inner``'s linear scores: the ranking the shortlist is cut from."""
        return self.inner.linear_scores(unit, counts, candidates, batch)
