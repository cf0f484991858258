"""Gradient Vaccine: raise pairwise gradient similarities towards their running targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit._checks import check_real
from mtlkit.strategies.base import GramianStrategy, register
from mtlkit.strategies.pcgrad import draw_task_orders

__all__ = ["GradVac"]


@register("gradvac")
class GradVac(GramianStrategy):
    r"""Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, 2021, *Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively Multilingual
    Models*, ICLR, Algorithm 1).

    Each task pair keeps a target cosine :math:`\hat\phi_{ij}`, an exponential moving
    average (rate :math:`\beta`) of the observed cosines, starting at 0. For each task
    :math:`i`, start from :math:`g_i^{GV} = g_i` and visit the other tasks :math:`j` in a
    fresh random order; with :math:`\phi_{ij} = \cos(g_i^{GV}, g_j)`, whenever
    :math:`\phi_{ij} < \hat\phi_{ij}` add the multiple of :math:`g_j` that brings the cosine
    up to the target exactly:

    .. math:: g_i^{GV} \leftarrow g_i^{GV} + \frac{\lVert g_i^{GV}\rVert
              \big(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2} - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2}\big)}
              {\lVert g_j\rVert \sqrt{1-\hat\phi_{ij}^2}}\; g_j,

    then (whether or not it adjusted) update :math:`\hat\phi_{ij} \leftarrow (1-\beta)
    \hat\phi_{ij} + \beta\phi_{ij}`. The update is :math:`d = \sum_i g_i^{GV}`.

    As in :class:`~mtlkit.strategies.pcgrad.PCGrad`, every :math:`g_i^{GV}` is a
    combination :math:`c_i^\top J` of the rows and all the work is done on the
    coefficient vectors with the Gramian; the tasks :math:`i` advance in parallel, one
    position of their orders at a time. The random orders follow PCGrad's documented
    scheme: for i = 0..K-1, ``others_i[torch.randperm(K - 1, generator=g)]``.

    Properties: with all targets 0 (a fresh instance) it is exactly PCGrad (same seed,
    same orders); positively homogeneous, GradVac(cJ) = c·GradVac(J) for c > 0 given
    the same state; K = 1 gives the gradient. The targets are not symmetric
    (:math:`\hat\phi_{ij}` is the average seen from task i). Not permutation-equivariant
    (random orders).

    Deviations: the paper may apply the method per layer; here the whole vector of
    shared parameters is one block. Pairs with a zero gradient are skipped (no
    adjustment, no target update). In the formula the target is clamped to
    :math:`|\hat\phi_{ij}| \le 1 - 10^{-8}` so the adjustment stays finite when the
    target approaches 1 (the stored average is not clamped).

    State: the (K, K) targets and the generator (``state_dict``).

    Args:
        beta: EMA rate :math:`\beta` of the targets (0.01 by default).
        seed: seed of the strategy's own generator (``None``: drawn from torch's global RNG).
    """

    def __init__(self, beta: float = 0.01, seed: int | None = 0) -> None:
        self.beta = check_real("beta", beta, low=0.0, high=1.0)
        self.generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator.manual_seed(seed)
        self.targets: Tensor | None = None

    def draw_orders(self, k: int) -> Tensor:
        """Draw the (K, K-1) matrix of visiting orders (row i: the other tasks of i)."""
        return draw_task_orders(k, self.generator)

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        dev = gram.device
        if self.targets is None:
            self.targets = torch.zeros((k, k), dtype=torch.float64)
        if self.targets.shape != (k, k):
            raise ValueError(f"GradVac was set up for {self.targets.shape[0]} tasks, got {k}")
        targets = self.targets.to(dev)
        orders = self.draw_orders(k).to(dev)
        coef = torch.eye(k, dtype=torch.float64, device=dev)
        norms = gram.diagonal().clamp(min=0).sqrt()
        rows = torch.arange(k, device=dev)
        lim = 1.0 - 1e-8
        for step in range(k - 1):
            j = orders[:, step]
            gc = coef @ gram  # row i: (g_i^GV · g_m) for every m
            dots = gc[rows, j]
            own = (gc * coef).sum(dim=1).clamp(min=0).sqrt()  # ‖g_i^GV‖
            nj = norms[j]
            valid = (own > 0) & (nj > 0)
            safe = (own * nj).clamp(min=torch.finfo(torch.float64).tiny)
            phi = torch.where(valid, dots / safe, 0.0).clamp(-1.0, 1.0)
            target = targets[rows, j]
            t = target.clamp(-lim, lim)
            root_t = (1 - t * t).sqrt()
            amount = own * (t * (1 - phi * phi).sqrt() - phi * root_t)
            amount = amount / (nj.clamp(min=torch.finfo(torch.float64).tiny) * root_t)
            adjust = valid & (phi < target)
            coef[rows, j] += torch.where(adjust, amount, 0.0)
            targets[rows, j] = torch.where(
                valid, (1 - self.beta) * target + self.beta * phi, target
            )
        self.targets = targets.cpu()
        return coef.sum(dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "targets": None if self.targets is None else self.targets.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        t = state["targets"]
        self.targets = None if t is None else t.detach().to(torch.float64).cpu().clone()

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta})"
