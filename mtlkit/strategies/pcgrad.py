"""PCGrad: projecting conflicting gradients (gradient surgery)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from mtlkit.strategies._draws import SeededDraws, drawer
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["PCGrad", "draw_task_orders"]


def draw_task_orders(k: int, generator: torch.Generator) -> Tensor:
    """A (K, K-1) matrix whose row i is a random order of the tasks other than i.

    Row i is ``others_i[torch.randperm(K - 1, generator=generator)]``, rows drawn for
    i = 0..K-1 in turn (``others_i``: the other task indices, ascending). Shared by the
    strategies that visit task pairs in random order (PCGrad, GradVac).
    """
    orders = torch.empty((k, max(k - 1, 0)), dtype=torch.long)
    for i in range(k):  # K draws in turn, each into its row: a permutation of 0..K-2
        torch.randperm(k - 1, generator=generator, out=orders[i])
    # position r of others_i is task r, or r + 1 from i on (task i itself is left out)
    orders += orders >= torch.arange(k)[:, None]
    return orders


# Under torch.compile the draw is this opaque op (see mtlkit.strategies._draws).
@torch.library.custom_op("mtlkit::pcgrad_draw_orders", mutates_args=("draws",), device_types="cpu")
def _draw_orders_op(draws: Tensor, handle: int, k: int) -> Tensor:
    draws.add_(1)
    return drawer(handle).draw_orders(k)  # type: ignore[no-any-return]


@_draw_orders_op.register_fake
def _(draws: Tensor, handle: int, k: int) -> Tensor:
    return torch.empty((k, max(k - 1, 0)), dtype=torch.long)


@register("pcgrad")
class PCGrad(GramianStrategy, SeededDraws):
    r"""Projecting Conflicting Gradients (Yu et al., 2020, *Gradient Surgery for Multi-Task
    Learning*, NeurIPS, Algorithm 1).

    For each task :math:`i`, start from :math:`g_i^{PC} = g_i` and visit the other tasks
    :math:`j` in a fresh random order; whenever :math:`g_i^{PC} \cdot g_j < 0`, remove the
    conflicting component against the *original* :math:`g_j`:

    .. math:: g_i^{PC} \leftarrow g_i^{PC} - \frac{g_i^{PC} \cdot g_j}{\lVert g_j \rVert^2} g_j

    The update is :math:`d = \sum_i g_i^{PC}` (``reduction="sum"``, the paper) or its
    mean over tasks (``reduction="mean"``).

    Every :math:`g_i^{PC}` stays in the span of the original rows, :math:`g_i^{PC} = c_iᵀJ`,
    so the projections are done on the coefficient vectors :math:`c_i` with the Gramian
    (:math:`g_i^{PC} \cdot g_j = c_iᵀ G_{:,j}`): O(K²P) for G, O(K³) for the surgery, one
    pass to apply. All :math:`i` are projected in parallel, one step of their orders at a
    time.

    Properties: equal to Sum when no pair conflicts; positively homogeneous
    (PCGrad(cJ) = c·PCGrad(J), c > 0); with K = 2 the update has a non-negative inner
    product with both gradients. A zero gradient is never projected against.

    Random orders: for task i = 0..K-1 in turn, the order of the other tasks is
    ``others_i[torch.randperm(K - 1, generator=g)]`` with ``others_i`` the other task
    indices ascending and ``g`` this strategy's CPU generator (seeded by ``seed``).

    Device and capture: the K x K rule runs on J's device without a host sync
    (``host_rule = False``); the orders are drawn on the CPU and sent to the device as a
    small index tensor. Under ``torch.compile`` the draw is an opaque custom op
    (``mtlkit::pcgrad_draw_orders``) that runs the same draw at run time, so
    ``combine`` compiles with ``fullgraph=True`` and draws what eager mode would. A step
    the engine rejects as non-finite puts the generator back (:meth:`discard_step`).

    Args:
        reduction: ``"sum"`` or ``"mean"`` of the projected gradients.
        seed: seed of the strategy's own generator (``None``: drawn from torch's global RNG).
    """

    host_rule: ClassVar[bool] = False

    def __init__(self, reduction: Literal["sum", "mean"] = "sum", seed: int | None = 0) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self._init_draws(seed)

    def draw_orders(self, k: int) -> Tensor:
        """Draw the (K, K-1) matrix of projection orders (row i: the other tasks of i)."""
        self._remember_draw()
        return draw_task_orders(k, self.generator)

    def _orders(self, k: int) -> Tensor:
        if torch.compiler.is_compiling():
            orders: Tensor = _draw_orders_op(self._draws, self._handle, k)
            return orders
        return self.draw_orders(k)

    def discard_step(self) -> None:
        """Put the generator back to before the last draw (a rejected step draws nothing)."""
        self._restore_draw()

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        # step s of the surgery projects each i against task orders[i, s]; everything a
        # step reads is gathered once, so a step is four operations for all K tasks at once
        against = self._orders(k).to(gram.device, non_blocking=True).T  # (K-1, K)
        eye = torch.eye(k, dtype=torch.float64, device=gram.device)
        columns = gram.T[against]  # [s, i] = G[:, j], the Gramian's column of that task
        hits = eye[against]  # [s, i] = e_j: where c_i changes
        sq_norms = gram.diagonal()[against]
        tiny = torch.finfo(torch.float64).tiny
        # ‖g_j‖² (at least the smallest normal number); a zero g_j is never projected
        # against: its infinite "norm" makes the factor 0
        denom = torch.where(sq_norms > 0, sq_norms.clamp(min=tiny), torch.inf)
        coef = eye.clone()  # row i: g_i^PC = c_iᵀJ
        for step in range(k - 1):
            dots = torch.linalg.vecdot(coef, columns[step])  # (g_i^PC · g_j) for every i
            factor = dots.clamp(max=0) / denom[step]  # only conflicting pairs
            coef.addcmul_(factor[:, None], hits[step], value=-1)
        return coef.sum(dim=0)

    def combine_gramian(
        self,
        matrix: Tensor,
        gram: Tensor,
        losses: Tensor | None = None,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        update = super().combine_gramian(matrix, gram, losses, out=out)
        if self.reduction == "mean":  # divide the output, so "mean" is exactly "sum" / K
            k = matrix.shape[0]
            update.div_(k)
            if self.last_stats is not None:
                self.last_stats = self.last_stats.with_weights(self.last_stats.weights / k)
        return update

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._state_before_draw = None

    def __repr__(self) -> str:
        return f"PCGrad(reduction={self.reduction!r})"
