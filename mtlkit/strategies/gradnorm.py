"""GradNorm: adaptive task weights that balance gradient magnitudes."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit._checks import check_int, check_real
from mtlkit._guard import finite_flag
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["GradNorm"]


@register("gradnorm")
class GradNorm(GramianStrategy):
    r"""GradNorm (Chen et al., 2018, *GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks*, ICML), as a combination strategy.

    The update is :math:`d = \sum_i w_i g_i` with task weights :math:`w` that move so that
    each weighted gradient norm :math:`n_i = w_i \lVert g_i \rVert` tracks a common target

    .. math:: t_i = \bar n \; r_i^{\alpha}, \qquad \bar n = \tfrac1K \sum_k n_k, \qquad
              r_i = \tilde L_i / \operatorname{mean}_k \tilde L_k, \quad
              \tilde L_i = L_i / L_i^{(0)}

    where :math:`L^{(0)}` are the first (positive) losses seen (the relative inverse training rate
    :math:`r_i` is large for tasks that train slowly). After each combination the weights
    take one gradient step on :math:`\sum_i |n_i - t_i|` (targets held constant, as in
    the paper): :math:`w_i \leftarrow w_i - \eta\, \operatorname{sign}(n_i - t_i)
    \lVert g_i\rVert / \bar n`, are clamped to stay positive, and renormalised to sum to K.

    Differences from the paper, on purpose: the norms are those of the gradients of all
    shared parameters (the paper picks the last shared layer; pass only that layer's
    parameters to the engine to get the paper's choice), and the step on the weights is
    divided by :math:`\bar n`, so ``lr`` does not depend on the scale of the gradients.

    The norms come from the Gramian's diagonal: no extra pass over P.

    Args:
        alpha: asymmetry :math:`\alpha` (0: equal norms; the paper uses 0.12..1.5).
        lr: step size :math:`\eta` of the weights.
        num_tasks: K, if known in advance (otherwise taken from the first call).
        min_weight: floor of a weight before renormalisation.

    The rule runs on J's device without a host sync (``host_rule = False``). A step whose
    gradients or losses are not finite moves no state: the new weights and initial losses
    are selected with ``torch.where`` on a device-side finiteness flag.
    """

    host_rule: ClassVar[bool] = False

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        num_tasks: int | None = None,
        min_weight: float = 1e-3,
    ) -> None:
        self.alpha = check_real("alpha", alpha, low=0.0)
        self.lr = check_real("lr", lr, low=0.0, open_low=True)
        self.min_weight = check_real("min_weight", min_weight, low=0.0, open_low=True)
        if num_tasks is not None:
            check_int("num_tasks", num_tasks, 1)
        self.task_weights: Tensor | None = (
            torch.ones(num_tasks, dtype=torch.float64) if num_tasks else None
        )
        self.initial_losses: Tensor | None = None

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        if losses is None:
            raise ValueError("GradNorm needs the task losses: call combine(J, losses=...)")
        k = gram.shape[0]
        losses = losses.detach().to(device=gram.device, dtype=torch.float64)
        if self.task_weights is None:
            self.task_weights = torch.ones(k, dtype=torch.float64, device=gram.device)
        if self.task_weights.numel() != k:
            raise ValueError(f"GradNorm was set up for {self.task_weights.numel()} tasks, got {k}")
        self.task_weights = self.task_weights.to(gram.device)
        tiny = torch.finfo(torch.float64).tiny
        # State moves only on a finite step (a device flag, no sync): a skipped step keeps it.
        finite = finite_flag(gram, losses)
        if self.initial_losses is None:  # 0 marks "not set yet" (taken at the next step)
            self.initial_losses = torch.where(finite, losses, 0.0)
        else:  # a task whose first loss was 0 (an empty batch) takes its first positive one
            self.initial_losses = self.initial_losses.to(gram.device)
            unset = (self.initial_losses <= tiny) & finite
            self.initial_losses = torch.where(unset, losses, self.initial_losses)
        w = self.task_weights
        grad_norms = gram.diagonal().clamp(min=0).sqrt()
        weighted = w * grad_norms
        mean_norm = weighted.mean()
        started = self.initial_losses > tiny  # tasks without a positive first loss: rate 1
        ratio = torch.where(started, losses / self.initial_losses.clamp(min=tiny), 1.0)
        rate = ratio / ratio.mean().clamp(min=tiny)
        target = mean_norm * rate.clamp(min=0) ** self.alpha
        step = torch.sign(weighted - target) * grad_norms / mean_norm.clamp(min=tiny)
        new_w = (w - self.lr * step).clamp(min=self.min_weight)
        self.task_weights = torch.where(finite, new_w * (k / new_w.sum()), w)
        return w

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_weights": None if self.task_weights is None else self.task_weights.cpu(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_weights = state["task_weights"]
        self.initial_losses = state["initial_losses"]

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.alpha}, lr={self.lr})"
