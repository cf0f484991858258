"""DWA: dynamic weight average."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit._checks import check_int, check_real
from mtlkit.strategies.base import LossWeighting, register

__all__ = ["DWA"]


@register("dwa")
class DWA(LossWeighting):
    r"""Dynamic Weight Average (Liu, Johns & Davison, 2019, *End-to-End Multi-Task Learning
    with Attention*, CVPR, the Dynamic Weight Average rule).

    The weight of a task follows the rate at which its loss has recently been falling:

    .. math:: \lambda_i(t) = K\,\frac{\exp(r_i(t-1)/T)}{\sum_j \exp(r_j(t-1)/T)}, \qquad
              r_i(t-1) = \frac{\bar L_i(t-1)}{\bar L_i(t-2)},

    with temperature T (2 in the paper) and :math:`\lambda_i = 1` for the first two
    periods, where :math:`\bar L_i(n)` is the average loss of task i over period n. In the
    paper a period is an epoch. Here a period is ``period`` accepted steps (calls of
    :meth:`accept`, which the engine makes once per step taken, and ``combine`` once per
    call), 1 by default
    (the step-wise variant, noisier); set ``period`` to the number of steps per epoch
    for the paper's rule, or ``period=None`` and call :meth:`end_period` at the end of
    each epoch.

    Within a step the weights are those of the current period; :meth:`accept` then
    records the step's losses (the only change of state).

    Properties: weights positive, summing to K; all 1 for the first two periods (so the
    first steps are the plain sum); K = 1 gives weight 1; ``combine`` positively
    homogeneous in J; equivariant under permutations of the tasks (with the losses
    permuted alike). Ratios are computed in float64 with the previous average clamped
    away from 0.

    State: the last two period averages, the running sum of the current period and the
    current weights (``state_dict``).

    No host sync: the weights, the running sums and the ratios stay on the losses'
    device; only the step count within a period is a Python number. ``combine`` on
    non-finite gradients or losses gives a NaN update and keeps the state's values
    (a device-side flag); within a period of more than one step it still counts the
    step, which :meth:`discard_step` undoes.

    Args:
        temperature: T > 0.
        period: number of calls per period, or ``None`` for :meth:`end_period` only.
    """

    step_state = ("history", "running", "count", "current")

    def __init__(self, temperature: float = 2.0, period: int | None = 1) -> None:
        if period is not None:
            check_int("period", period, 1)
        self.temperature = check_real("temperature", temperature, low=0.0, open_low=True)
        self.period = period
        self.history: list[Tensor] = []
        self.running: Tensor | None = None
        self.count = 0
        self.current: Tensor | None = None

    def loss_weights(self, losses: Tensor) -> Tensor:
        k = losses.shape[0]
        if self.running is not None and self.running.numel() != k:
            raise ValueError(f"DWA was set up for {self.running.numel()} tasks, got {k}")
        if self.current is None:
            return torch.ones(k, dtype=torch.float64, device=losses.device)
        if self.current.device != losses.device:  # once (e.g. after load_state_dict)
            self.current = self.current.to(losses.device)
        return self.current

    def accept(self, losses: Tensor) -> None:
        """Add the step's losses to the current period (closing it after ``period``
        steps)."""
        values = losses.detach().to(torch.float64)
        self.running = values.clone() if self.running is None else self.running.to(values) + values
        self.count += 1
        if self.period is not None and self.count >= self.period:
            self.end_period()

    def end_period(self) -> None:
        """Close the current period: record its mean losses and recompute the weights."""
        if self.running is None or self.count == 0:
            return
        self.history = [*self.history, self.running / self.count][-2:]
        self.running = torch.zeros_like(self.running)
        self.count = 0
        if len(self.history) == 2:
            prev, last = self.history
            tiny = torch.finfo(torch.float64).tiny
            ratio = last / prev.to(last).clamp(min=tiny)
            ratio = torch.nan_to_num(ratio, nan=1.0, posinf=1e300, neginf=-1e300)
            k = ratio.numel()
            self.current = k * torch.softmax(ratio / self.temperature, dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [h.cpu().clone() for h in self.history],
            "running": None if self.running is None else self.running.cpu().clone(),
            "count": self.count,
            "current": None if self.current is None else self.current.cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [torch.as_tensor(h, dtype=torch.float64).clone() for h in state["history"]]
        r = state["running"]
        self.running = None if r is None else torch.as_tensor(r, dtype=torch.float64).clone()
        self.count = int(state["count"])
        c = state["current"]
        self.current = None if c is None else torch.as_tensor(c, dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return f"DWA(temperature={self.temperature}, period={self.period})"
