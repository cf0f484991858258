"""FAMO: fast adaptive multitask optimization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit._checks import check_int, check_real
from mtlkit.strategies.base import LossWeighting, register

__all__ = ["FAMO"]


@register("famo")
class FAMO(LossWeighting):
    r"""Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, 2023, *FAMO: Fast
    Adaptive Multitask Optimization*, NeurIPS, Algorithm 1).

    FAMO keeps task logits :math:`\xi \in \mathbb R^K` (0 at the start), with
    :math:`z = \operatorname{softmax}(\xi)`, and steps along

    .. math:: d = c \sum_i \frac{z_i}{\ell_i} \nabla \ell_i, \qquad
              c = \Big(\sum_i \frac{z_i}{\ell_i}\Big)^{-1},

    the gradient of :math:`c\sum_i z_i \log \ell_i`, so the weights are
    :math:`w_i = c z_i/\ell_i` (positive, summing to 1). Here
    :math:`\ell_i = \max(L_i - L_i^\ast, 0) + \epsilon` with the known lower bounds
    :math:`L^\ast` (``min_losses``, 0 by default). It needs only the losses: one backward
    per step. After the step the logits move towards the tasks whose log-loss decreased
    least:

    .. math:: \delta = \big(\operatorname{diag}(z) - z z^\top\big)\,
              \big(\log \ell(\theta_t) - \log \ell(\theta_{t+1})\big), \qquad
              \xi \leftarrow \xi - \beta(\delta + \gamma\xi),

    with learning rate :math:`\beta` and decay :math:`\gamma` (plain gradient steps on
    :math:`\xi`).

    Two ways to supply :math:`\ell(\theta_{t+1})`:

    * ``auto_update=True`` (default, the cheap variant): each step's weights come from
      the logits updated with the previous step's losses and the current ones;
      :meth:`accept` (called once the step is taken) keeps those logits. The "after"
      losses are then measured on the *next* batch rather
      than on the same batch as in the paper: no extra forward pass, noisier
      :math:`\delta`.
    * ``auto_update=False``: call :meth:`update` with the losses re-evaluated on the same
      batch after the optimizer step (the paper's rule; one extra forward pass).

    Properties: weights positive, summing to 1; K = 1 gives weight 1; at the start
    (:math:`z` uniform) the weights are :math:`\propto 1/\ell_i`; ``combine`` is
    positively homogeneous in J; equivariant under permutations of the tasks (with the
    losses permuted alike).

    State: the logits and the last losses (``state_dict``).

    No host sync: the logits, the last losses and the lower bounds live on the losses'
    device (the bounds are moved there once). ``combine`` on non-finite gradients or
    losses gives a NaN update and keeps the logits and last losses (a device-side flag);
    at the very first call, which sets the last losses, :meth:`discard_step` undoes it.

    Args:
        num_tasks: K, if known in advance (otherwise taken from the first call).
        lr: :math:`\beta`.
        weight_decay: :math:`\gamma`.
        min_losses: :math:`L^\ast`, one value or one per task.
        eps: :math:`\epsilon`.
        auto_update: see above.
    """

    step_state = ("logits", "last_losses")

    def __init__(
        self,
        num_tasks: int | None = None,
        lr: float = 0.025,
        weight_decay: float = 0.001,
        min_losses: float | Sequence[float] | Tensor = 0.0,
        eps: float = 1e-8,
        auto_update: bool = True,
    ) -> None:
        self.lr = check_real("lr", lr, low=0.0, open_low=True)
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self.min_losses = torch.as_tensor(min_losses, dtype=torch.float64).flatten().clone()
        if not bool(torch.isfinite(self.min_losses).all()):
            raise ValueError(f"min_losses must be finite, got {self.min_losses.tolist()}")
        self.eps = check_real("eps", eps, low=0.0, open_low=True)
        if num_tasks is not None:
            check_int("num_tasks", num_tasks, 1)
        self.auto_update = auto_update
        self.logits: Tensor | None = (
            torch.zeros(num_tasks, dtype=torch.float64) if num_tasks else None
        )
        self.last_losses: Tensor | None = None

    def _shifted(self, losses: Tensor) -> Tensor:
        values = losses.detach().to(torch.float64)
        if self.min_losses.device != values.device:  # once: no copy per step
            self.min_losses = self.min_losses.to(values.device)
        lower = self.min_losses
        if lower.numel() not in (1, values.numel()):
            raise ValueError(f"FAMO has {lower.numel()} min_losses, got {values.numel()} losses")
        return (values - lower).clamp(min=0) + self.eps

    def _logits(self, k: int, device: torch.device) -> Tensor:
        if self.logits is None:
            self.logits = torch.zeros(k, dtype=torch.float64, device=device)
        if self.logits.numel() != k:
            raise ValueError(f"FAMO was set up for {self.logits.numel()} tasks, got {k}")
        self.logits = self.logits.to(device)
        return self.logits

    def _stepped_logits(self, before: Tensor, after: Tensor) -> Tensor:
        """The logits after one step on the log-loss drop from ``before`` to ``after``."""
        xi = self._logits(after.numel(), after.device)
        z = torch.softmax(xi, dim=0)
        drop = torch.log(before.to(after)) - torch.log(after)
        delta = z * (drop - (z * drop).sum())
        return xi - self.lr * (delta + self.weight_decay * xi)

    def _current_logits(self, ell: Tensor) -> Tensor:
        """The logits the weights of losses ``ell`` are read from (auto: stepped first)."""
        if self.auto_update and self.last_losses is not None:
            return self._stepped_logits(self.last_losses, ell)
        return self._logits(ell.numel(), ell.device)

    def loss_weights(self, losses: Tensor) -> Tensor:
        ell = self._shifted(losses)
        z = torch.softmax(self._current_logits(ell), dim=0)
        inv = z / ell
        return inv / inv.sum()

    def accept(self, losses: Tensor) -> None:
        """Keep the logits the step used and its losses (the next step's "before")."""
        ell = self._shifted(losses)
        self.logits = self._current_logits(ell)
        self.last_losses = ell

    def update(self, new_losses: Tensor) -> None:
        """Update the logits with the losses after the step, on the batch of the last call.

        For ``auto_update=False``; the losses of the last :meth:`loss_weights` call are the
        "before" values. Does nothing if there was no call since the last update.
        """
        if self.last_losses is None:
            return
        self.logits = self._stepped_logits(self.last_losses, self._shifted(new_losses))
        self.last_losses = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": None if self.logits is None else self.logits.cpu().clone(),
            "last_losses": None if self.last_losses is None else self.last_losses.cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lg, ll = state["logits"], state["last_losses"]
        self.logits = None if lg is None else torch.as_tensor(lg, dtype=torch.float64).clone()
        self.last_losses = None if ll is None else torch.as_tensor(ll, dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return f"FAMO(lr={self.lr}, weight_decay={self.weight_decay}, auto={self.auto_update})"
