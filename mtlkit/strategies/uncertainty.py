"""Uncertainty weighting: learned homoscedastic task variances."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.strategies.base import LossWeighting, register

__all__ = ["UncertaintyWeighting"]


@register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    r"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, 2018, *Multi-Task
    Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics*, CVPR,
    Section 3).

    Each task has a learned log-variance :math:`s_i = \log\sigma_i^2` (an
    ``nn.Parameter``), trained jointly with the model on

    .. math:: \mathcal L = \sum_i e^{-s_i} L_i + s_i .

    Convention: the paper's regression likelihood gives
    :math:`\frac{1}{2\sigma_i^2} L_i + \log\sigma_i = \tfrac12(e^{-s_i}L_i + s_i)`; we use
    twice that (the widespread form): the same minimisers in :math:`s` and in the
    model, all gradients doubled, so the model's task weights are :math:`e^{-s_i}` (1 at the start:
    the first steps are the plain sum). For fixed losses the optimum is
    :math:`s_i = \log L_i`.

    Pass :meth:`parameters` to the optimizer (e.g. ``torch.optim.Adam([*model.parameters(),
    *strategy.parameters()])``). :meth:`weighted_loss` returns the loss above, which
    carries the gradient of :math:`s`; ``combine(J, losses)`` on a given J uses the
    weights :math:`e^{-s_i}` (and no gradient reaches :math:`s` that way).

    Properties: weights positive; ``combine`` positively homogeneous in J; equivariant
    under permutations of the tasks when the initial :math:`s` are equal. With K = 1 the
    weight is :math:`e^{-s_1}` (1 at initialisation).

    State: :math:`s` (``state_dict``; :meth:`load_state_dict` copies in place, so an
    optimizer holding the parameter keeps working).

    No host sync once :math:`s` lives on the losses' device (:meth:`to`; otherwise each
    step copies it there and its gradient back, a blocking copy each way). ``combine``
    on non-finite gradients or losses gives a NaN update (a device-side flag); it changes
    no state.

    Args:
        num_tasks: K.
        init: initial :math:`s_i` (one value, or one per task).
    """

    def __init__(self, num_tasks: int, init: float | Sequence[float] = 0.0) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        values = torch.as_tensor(init, dtype=torch.float32).flatten()
        if values.numel() == 1:
            values = values.expand(num_tasks)
        if values.numel() != num_tasks:
            raise ValueError(f"init has {values.numel()} values for {num_tasks} tasks")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"init must be finite, got {values.tolist()}")
        self.log_vars = nn.Parameter(values.clone())

    @property
    def num_tasks(self) -> int:
        return int(self.log_vars.numel())

    def parameters(self) -> Iterator[nn.Parameter]:
        """The learned log-variances, for the optimizer."""
        yield self.log_vars

    def to(self, device: torch.device | str) -> UncertaintyWeighting:
        """Move the parameter's data to ``device`` in place (keeps the Parameter object)."""
        self.log_vars.data = self.log_vars.data.to(device)
        return self

    def _check(self, losses: Tensor) -> None:
        if losses.dim() != 1 or losses.shape[0] != self.num_tasks:
            raise ValueError(
                f"UncertaintyWeighting has {self.num_tasks} tasks, got losses of shape "
                f"{tuple(losses.shape)}"
            )

    def loss_weights(self, losses: Tensor) -> Tensor:
        self._check(losses)
        s = self.log_vars.detach().to(device=losses.device, dtype=torch.float64)
        return torch.exp(-s)

    def weighted_loss(self, losses: Tensor) -> Tensor:
        self._check(losses)
        s = self.log_vars.to(device=losses.device, dtype=losses.dtype)
        return (torch.exp(-s) * losses + s).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = torch.as_tensor(state["log_vars"])
        if values.shape != self.log_vars.shape:
            raise ValueError(f"log_vars of shape {tuple(values.shape)} for {self.num_tasks} tasks")
        with torch.no_grad():
            self.log_vars.copy_(values)

    def __repr__(self) -> str:
        return f"UncertaintyWeighting(num_tasks={self.num_tasks})"
