"""Aligned-MTL: align the principal components of the gradient system."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtlkit.strategies._kspace import as_weights
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["AlignedMTL"]


@register("aligned-mtl")
class AlignedMTL(GramianStrategy):
    r"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, 2023, *Independent Component
    Alignment for Multi-Task Learning*, CVPR, Algorithm 1).

    Writing the thin SVD :math:`J = V \Sigma W^\top` (V: K x K, from the eigendecomposition
    :math:`G = V \Sigma^2 V^\top`), Aligned-MTL replaces the gradient system by the one
    with all its singular values set to the smallest non-zero one, :math:`\sigma_{\min}`
    (the matrix of condition number 1 closest to J):

    .. math:: \hat J = \sigma_{\min} V W^\top = B J, \qquad
              B = \sigma_{\min} V_R \Sigma_R^{-1} V_R^\top,

    with R the rank of G (eigenvalues below ``rcond`` times the largest are treated as
    zero, like the paper's rank truncation), and updates with :math:`d = \hat J^\top
    \omega = (B\omega)^\top J` for fixed task weights :math:`\omega` (all 1 by default: the
    sum of the aligned gradients). The weights :math:`B\omega` are computed from the
    eigendecomposition of G (normalised by its largest diagonal entry) only.

    Properties: positively homogeneous, Aligned(cJ) = c·Aligned(J) for c > 0;
    equivariant under permutations of the tasks (with ``task_weights`` permuted alike);
    the aligned gradients are orthogonal with equal norms :math:`\sigma_{\min}`, so the
    update has inner product :math:`\sigma_{\min}^2\omega_i \ge 0` with each *aligned*
    gradient (not with the original ones in general). For orthogonal gradients it is
    :math:`\sigma_{\min}\sum_i \omega_i g_i / \lVert g_i\rVert`. Zero rows get weight 0.
    Eigenvalues more than ~1e16 apart cannot be resolved in float64, so with gradients
    of wildly different scales the small ones fall under ``rcond`` and are dropped.

    Args:
        task_weights: :math:`\omega`, one per task (default all 1).
        rcond: relative threshold on the eigenvalues of G defining the rank. The
            smallest kept eigenvalue, hence :math:`\sigma_{\min}` and the update, has a
            relative rounding error of about eps/rcond (~1e-6 by default).
    """

    def __init__(
        self, task_weights: Sequence[float] | Tensor | None = None, rcond: float = 1e-10
    ) -> None:
        self.task_weights = (
            None
            if task_weights is None
            else torch.as_tensor(task_weights, dtype=torch.float64).flatten().clone()
        )
        self.rcond = rcond

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        if self.task_weights is None:
            omega = np.ones(k)
        else:
            if self.task_weights.numel() != k:
                raise ValueError(
                    f"AlignedMTL has {self.task_weights.numel()} task weights, J has {k} rows"
                )
            omega = self.task_weights.numpy()
        g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        g = 0.5 * (g + g.T)
        top = float(np.diag(g).max())
        if not top > 0:
            return as_weights(np.zeros(k), gram)
        evals, evecs = np.linalg.eigh(g / top)
        keep = evals > self.rcond * float(evals.max())
        sigma = np.sqrt(evals[keep])
        v = evecs[:, keep]
        b = float(sigma.min()) * (v / sigma) @ v.T
        return as_weights(b @ omega, gram)

    def __repr__(self) -> str:
        tw = None if self.task_weights is None else self.task_weights.tolist()
        return f"AlignedMTL(task_weights={tw}, rcond={self.rcond})"
