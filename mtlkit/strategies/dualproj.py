"""DualProj: the projection of the mean gradient onto the dual cone."""

from __future__ import annotations

import numpy as np

from mtlkit.strategies._kspace import Array, CosineStrategy, Normalised, dual_cone_weights
from mtlkit.strategies.base import register

__all__ = ["DualProj"]


@register("dualproj")
class DualProj(CosineStrategy):
    r"""Dual projection (Quinton & Rey, 2024, *Jacobian Descent for Multi-Objective
    Optimization*, arXiv:2406.16232, the DualProj aggregator).

    The mean gradient is projected onto the dual cone of the rows of J,
    :math:`\mathcal C = \{x : Jx \ge 0\}`:

    .. math:: d = \pi_{\mathcal C}\Big(\frac1K \sum_i g_i\Big) = v^\top J, \qquad
              v \in \operatorname*{argmin}_{v \ge \mathbf 1/K} v^\top G v,

    a K x K quadratic program solved exactly (active set) on the cosine matrix with a
    ridge of 1e-15, like :class:`~mtlkit.strategies.upgrad.UPGrad` (one program instead of
    K).

    Properties (tested): non-conflicting, :math:`d \cdot g_i \ge 0` for every task;
    equal to the mean of the gradients whenever the mean conflicts with no task (in
    particular when no pair conflicts); positively homogeneous, DualProj(cJ) =
    c·DualProj(J) for c > 0; equivariant under permutations of the tasks; weights
    :math:`w_i \ge 1/K`. Not invariant to rescaling single tasks. The update can be 0
    while the mean is not (two exactly opposite gradients of different norms: the cone
    is then their orthogonal complement, onto which the mean projects to 0).

    A zero row keeps the weight 1/K.
    """

    def solve(self, norm: Normalised) -> Array:
        k = norm.norms.shape[0]
        n = norm.live_norms
        w = np.full(k, 1.0 / k)
        w[norm.live] = dual_cone_weights(norm.cos, n / k) / n
        return w

    def __repr__(self) -> str:
        return "DualProj()"
