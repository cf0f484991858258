"""IMTL-G: the update with equal projections onto every task's gradient direction."""

from __future__ import annotations

import numpy as np

from mtlkit.strategies._kspace import Array, CosineStrategy, Normalised
from mtlkit.strategies.base import register

__all__ = ["IMTLG"]


@register("imtl-g")
class IMTLG(CosineStrategy):
    r"""Impartial MTL, gradient part (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, 2021,
    *Towards Impartial Multi-task Learning*, ICLR, the IMTL-G closed form).

    IMTL-G picks weights :math:`\alpha` with :math:`\sum_i \alpha_i = 1` such that the
    update :math:`d = \sum_i \alpha_i g_i` has the same projection onto every unit
    gradient :math:`u_i = g_i / \lVert g_i\rVert`:
    :math:`d^\top u_1 = d^\top u_t` for all t. The paper's closed form is
    :math:`\alpha_{2:K} = g_1 U^\top (D U^\top)^{-1}`, :math:`\alpha_1 = 1 - \sum_{t\ge 2}
    \alpha_t`, with rows :math:`D_t = g_1 - g_t`, :math:`U_t = u_1 - u_t`.

    Here the same conditions are solved symmetrically in K-space. With
    :math:`\beta = \alpha \odot \lVert g\rVert` and C the cosine matrix,
    :math:`d^\top u_t = (C\beta)_t`, so the conditions read

    .. math:: C\beta = \lambda \mathbf 1, \qquad \sum_i \beta_i / \lVert g_i\rVert = 1,

    a (K+1) x (K+1) linear system solved by least squares (minimum-norm solution when
    the gradients are linearly dependent: duplicated rows share the weight; for two
    exactly opposite rows it gives the :math:`\alpha` that cancels them, d = 0, which is
    the only update with equal projections). When G is invertible this is exactly the
    paper's closed form (tested against it in P-space).

    Properties: positively homogeneous, IMTL-G(cJ) = c·IMTL-G(J) for c > 0; equivariant
    under permutations of the tasks (the paper's formula singles out task 1, the
    solution does not); :math:`d^\top u_i` equal for all i; weights sum to 1 (may be
    negative). Not non-conflicting in general (the common projection can be negative).

    Edge cases (not in the paper): zero rows get weight 0 and the others sum to 1; when
    no weights summing to 1 satisfy the conditions (the equal-projection direction
    has :math:`\sum_i \alpha_i = 0`), the weights fall back to the mean, 1/K.
    """

    def solve(self, norm: Normalised) -> Array:
        k = norm.norms.shape[0]
        n = norm.live_norms
        m = n.shape[0]
        w = np.zeros(k)
        if m == 0:
            return np.full(k, 1.0 / k)
        if m == 1:
            w[norm.live] = 1.0
            return w
        # Σ β_i / n_i = 1 is rescaled by the smallest norm: e = n_min / n ∈ (0, 1].
        e = n.min() / n
        system = np.zeros((m + 1, m + 1))
        system[:m, :m] = norm.cos
        system[:m, m] = -1.0
        system[m, :m] = e
        rhs = np.zeros(m + 1)
        rhs[m] = 1.0
        sol = np.linalg.lstsq(system, rhs, rcond=None)[0]
        residual = float(np.abs(system @ sol - rhs).max())
        alpha = e * sol[:m]  # = β / n with Σ alpha = 1
        if not (residual <= 1e-8 and np.isfinite(alpha).all()):
            return np.full(k, 1.0 / k)
        w[norm.live] = alpha
        return w

    def __repr__(self) -> str:
        return "IMTLG()"
