"""MGDA: the minimum-norm element of the convex hull of the task gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlkit.strategies._kspace import as_weights, min_norm_simplex, normalise
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["MGDA"]


@register("mgda")
class MGDA(GramianStrategy):
    r"""Multiple-Gradient Descent Algorithm (Désidéri, 2012, *Multiple-gradient descent
    algorithm (MGDA) for multiobjective optimization*, Comptes Rendus Mathématique 350;
    Sener & Koltun, 2018, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS,
    Algorithms 1 and 2).

    The update is the minimum-norm point of the convex hull of the task gradients:

    .. math:: w^\star = \operatorname*{argmin}_{w \in \Delta_K} \lVert w^\top J \rVert^2
              = \operatorname*{argmin}_{w \in \Delta_K} w^\top G w, \qquad d = w^{\star\top} J

    with :math:`\Delta_K` the probability simplex. For K = 2 the closed form of Sener &
    Koltun (Algorithm 1) is used, written so that both weights keep full relative
    precision however different the two norms are:
    :math:`w = (b, a) / (a + b)` with :math:`a = g_1\cdot(g_1-g_2)`,
    :math:`b = g_2\cdot(g_2-g_1)`, and :math:`w = e_1` if :math:`a \le 0`,
    :math:`e_2` if :math:`b \le 0` (this is :math:`\gamma = \operatorname{clip}((g_2-g_1)
    \cdot g_2/\lVert g_1-g_2\rVert^2, 0, 1)`). For K > 2 the quadratic program is solved
    exactly (active set, :func:`mtlkit.strategies._kspace.min_norm_simplex`) on the
    cosine matrix, instead of the paper's Frank-Wolfe iterations, which converge
    slowly near the solution.

    Properties: the update is non-conflicting, :math:`d \cdot g_i \ge \lVert d\rVert^2
    \ge 0` for every task (so it is a common descent direction unless it is 0, which
    happens exactly when 0 is in the hull, the Pareto-stationary case); positively
    homogeneous, MGDA(cJ) = c·MGDA(J) for c > 0; equivariant under permutations of the
    tasks; weights on the simplex. It is *not* invariant to rescaling single tasks: the
    update follows the smallest gradients, and it is 0 as soon as one task's gradient is 0.

    A zero row puts all the weight on itself (the update is then 0, the minimum norm).
    """

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        if k == 1:
            return torch.ones(1, dtype=torch.float64, device=gram.device)
        norm = normalise(gram)
        w = np.zeros(k)
        if not norm.live.all():
            w[int(np.flatnonzero(~norm.live)[0])] = 1.0
            return as_weights(w, gram)
        if k == 2:
            g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
            a = float(g[0, 0] - g[0, 1])
            b = float(g[1, 1] - g[0, 1])
            if a <= 0:
                w[0] = 1.0
            elif b <= 0:
                w[1] = 1.0
            else:
                w[:] = (b / (a + b), a / (a + b))
            return as_weights(w, gram)
        return as_weights(min_norm_simplex(norm.cos, norm.norms), gram)

    def __repr__(self) -> str:
        return "MGDA()"
