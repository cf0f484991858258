"""UPGrad: the mean of the projections of every task gradient onto the dual cone."""

from __future__ import annotations

import numpy as np

from mtlkit.strategies._kspace import Array, CosineStrategy, Normalised, dual_cone_weights
from mtlkit.strategies.base import register

__all__ = ["UPGrad"]


@register("upgrad")
class UPGrad(CosineStrategy):
    r"""Unconflicting Projection of Gradients (Quinton & Rey, 2024, *Jacobian Descent for
    Multi-Objective Optimization*, arXiv:2406.16232, the UPGrad aggregator).

    Each task gradient :math:`g_i` is projected onto the dual cone of the rows of J,
    :math:`\mathcal C = \{x : Jx \ge 0\}` (the directions that conflict with no task), and
    the projections are averaged:

    .. math:: d = \frac1K \sum_{i=1}^K \pi_{\mathcal C}(g_i).

    For :math:`x = u^\top J` the projection is :math:`\pi_{\mathcal C}(x) = v^\top J` with
    :math:`v \in \operatorname*{argmin}_{v \ge u} v^\top G v` (the paper's Proposition on
    the dual of the projection), a K x K quadratic program. So the weights are
    :math:`w = \frac1K \sum_i v^{(i)}` with :math:`v^{(i)}` solving it for
    :math:`u = e_i`. Each program is solved exactly (active set) in the variables
    :math:`y = v \odot \lVert g\rVert` on the cosine matrix plus a ridge of 1e-15 (see
    :mod:`mtlkit.strategies._kspace`), so it is insensitive to the scale of the rows and
    robust when G is singular.

    Properties (the paper's, all tested): non-conflicting, :math:`d \cdot g_i \ge 0`
    for every task; equal to the mean of the gradients when no pair conflicts (every
    :math:`g_i` is then in :math:`\mathcal C`); positively homogeneous,
    UPGrad(cJ) = c·UPGrad(J) for c > 0; equivariant under permutations of the tasks;
    weights :math:`w_i \ge 1/K`. Not invariant to rescaling single tasks.

    A zero row keeps the weight 1/K (its projection is 0).
    """

    def solve(self, norm: Normalised) -> Array:
        k = norm.norms.shape[0]
        n = norm.live_norms
        m = n.shape[0]
        total = np.zeros(m)
        for i in range(m):
            lower = np.zeros(m)
            lower[i] = n[i]
            total += dual_cone_weights(norm.cos, lower) / n
        w = np.full(k, 1.0 / k)
        w[norm.live] = total / k
        return w

    def __repr__(self) -> str:
        return "UPGrad()"
