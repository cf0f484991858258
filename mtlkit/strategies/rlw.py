"""RLW: random loss weighting."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from mtlkit.strategies.base import LossWeighting, register

__all__ = ["RLW"]

Distribution = Literal["normal", "uniform", "dirichlet"]


@register("rlw")
class RLW(LossWeighting):
    r"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, 2022, *Reasonable Effectiveness of
    Random Weighting: A Litmus Test for Multi-Task Learning*, TMLR).

    Every step draws fresh task weights :math:`\lambda` on the simplex and minimises
    :math:`\sum_i \lambda_i L_i`:

    * ``"normal"`` (default, the paper's main choice):
      :math:`\lambda = \operatorname{softmax}(\xi)`, :math:`\xi \sim \mathcal N(0, I_K)`;
    * ``"uniform"``: :math:`\lambda = \xi / \sum_j \xi_j`, :math:`\xi_i \sim \mathcal U(0, 1)`;
    * ``"dirichlet"``: :math:`\lambda \sim \operatorname{Dir}(\mathbf 1)` (normalised
      exponential draws).

    Needs no per-task gradients: the engine backpropagates :meth:`weighted_loss` once.
    Each step draws new weights from the strategy's own CPU generator (``K`` numbers per
    step): :meth:`loss_weights` reads the step's draw, :meth:`accept` (called once the
    step is taken) moves the generator on, so a skipped step repeats its draw.

    Properties: weights positive and summing to 1, equal to 1/K in expectation for every
    distribution; K = 1 gives weight 1; ``combine`` is positively homogeneous in J (the
    weights do not depend on it). Not permutation-equivariant (random).

    Args:
        distribution: ``"normal"``, ``"uniform"`` or ``"dirichlet"``.
        seed: seed of the strategy's own generator (``None``: drawn from torch's global RNG).
    """

    def __init__(self, distribution: Distribution = "normal", seed: int | None = 0) -> None:
        if distribution not in ("normal", "uniform", "dirichlet"):
            raise ValueError(
                f"distribution must be 'normal', 'uniform' or 'dirichlet', got {distribution!r}"
            )
        self.distribution = distribution
        self.generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator.manual_seed(seed)

    def draw(self, k: int) -> Tensor:
        """Draw K weights on the simplex (float64, CPU)."""
        gen = self.generator
        if self.distribution == "normal":
            return torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), dim=0)
        u = torch.rand(k, generator=gen, dtype=torch.float64)
        if self.distribution == "dirichlet":
            u = -torch.log1p(-u)  # Exp(1) draws; their normalisation is Dir(1, ..., 1)
        total = u.sum()
        if not bool(total > 0):
            return torch.full((k,), 1.0 / k, dtype=torch.float64)
        return u / total

    def loss_weights(self, losses: Tensor) -> Tensor:
        """This step's draw, without advancing the generator (:meth:`accept` does)."""
        saved = self.generator.get_state()
        try:
            return self.draw(losses.shape[0]).to(losses.device)
        finally:
            self.generator.set_state(saved)

    def accept(self, losses: Tensor) -> None:
        """Advance the generator past this step's draw."""
        self.draw(losses.shape[0])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"RLW(distribution={self.distribution!r})"
