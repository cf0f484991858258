"""RLW: random loss weighting."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from mtlkit.strategies._draws import SeededDraws, drawer
from mtlkit.strategies.base import LossWeighting, register

__all__ = ["RLW"]

Distribution = Literal["normal", "uniform", "dirichlet"]


# Under torch.compile the draws are these opaque ops (see mtlkit.strategies._draws): the
# peek reads the step's draw, the advance moves the generator past it; both mutate the
# strategy's counter tensor, so they keep their order.
@torch.library.custom_op("mtlkit::rlw_peek", mutates_args=("draws",), device_types="cpu")
def _peek_op(draws: Tensor, handle: int, k: int) -> Tensor:
    draws.add_(0)
    return drawer(handle).peek(k)  # type: ignore[no-any-return]


@_peek_op.register_fake
def _(draws: Tensor, handle: int, k: int) -> Tensor:
    return torch.empty(k, dtype=torch.float64)


@torch.library.custom_op("mtlkit::rlw_advance", mutates_args=("draws",), device_types="cpu")
def _advance_op(draws: Tensor, handle: int, k: int) -> None:
    draws.add_(1)
    drawer(handle).advance(k)


@_advance_op.register_fake
def _(draws: Tensor, handle: int, k: int) -> None:
    return None


@register("rlw")
class RLW(LossWeighting, SeededDraws):
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

    No host sync: the draw reads no device value, and its K weights go to the losses'
    device by a non-blocking copy. Under ``torch.compile`` the draws are the opaque custom
    ops ``mtlkit::rlw_peek`` and ``mtlkit::rlw_advance`` (no graph break; they draw at
    run time exactly what eager mode draws). ``combine`` on non-finite gradients or
    losses gives a NaN update; the generator has then moved past the step's draw, which
    :meth:`discard_step` undoes.

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
        self._init_draws(seed)

    def draw(self, k: int) -> Tensor:
        """Draw K weights on the simplex (float64, CPU), moving the generator on."""
        gen = self.generator
        if self.distribution == "normal":
            return torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), dim=0)
        u = torch.rand(k, generator=gen, dtype=torch.float64)
        if self.distribution == "dirichlet":
            u = -torch.log1p(-u)  # Exp(1) draws; their normalisation is Dir(1, ..., 1)
        total = u.sum()
        return torch.where(total > 0, u / total, 1.0 / k)  # no host read of the total

    def peek(self, k: int) -> Tensor:
        """This step's draw (float64, CPU), leaving the generator where it was."""
        saved = self.generator.get_state()
        try:
            return self.draw(k)
        finally:
            self.generator.set_state(saved)

    def advance(self, k: int) -> None:
        """Move the generator past this step's draw (its state before is kept for
        :meth:`discard_step`)."""
        self._remember_draw()
        self.draw(k)

    def loss_weights(self, losses: Tensor) -> Tensor:
        """This step's draw, without advancing the generator (:meth:`accept` does)."""
        k = losses.shape[0]
        if torch.compiler.is_compiling():
            w: Tensor = _peek_op(self._draws, self._handle, k)
        else:
            w = self.peek(k)
        return w.to(losses.device, non_blocking=True)  # a fresh CPU tensor: safe

    def accept(self, losses: Tensor) -> None:
        """Advance the generator past this step's draw."""
        k = losses.shape[0]
        if torch.compiler.is_compiling():
            _advance_op(self._draws, self._handle, k)
        else:
            self.advance(k)

    def discard_step(self) -> None:
        """Put the generator back to before the last :meth:`accept` (a rejected step
        draws nothing)."""
        self._restore_draw()
        super().discard_step()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._state_before_draw = None

    def __repr__(self) -> str:
        return f"RLW(distribution={self.distribution!r})"
