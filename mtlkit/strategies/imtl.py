"""IMTL-G: the update with equal projections onto every task's gradient direction."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlkit.strategies._kspace import ZERO_ROW
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["IMTLG"]

#: Newton-Schulz steps of :func:`psd_pinv`: with them every eigenvalue of C above ~1e-6
#: of the largest is inverted to float64 accuracy.
PINV_STEPS = 48
#: Largest residual of the IMTL-G conditions (relative to the common projection, at least
#: 1) that a solution may leave; above it the weights fall back to the mean.
RESIDUAL_TOL = 1e-8


def psd_pinv(c: Tensor, steps: int = PINV_STEPS) -> Tensor:
    """A generalized inverse X of a small symmetric positive semi-definite matrix C, equal
    to the Moore-Penrose pseudo-inverse on C's range, with no host read (no sync on a GPU)
    and a fixed number of kernel launches.

    Newton-Schulz iterations ``X_0 = C / ‖C‖∞²``, ``X ← X (2I - C X)`` (Ben-Israel &
    Cohen, 1966, *On iterative computation of generalized inverses and associated
    projections*, SIAM J. Numer. Anal. 3). Every iterate is a polynomial in C: on an
    eigenvalue λ the iterate ``x`` follows ``λx ← λx (2 - λx)`` from ``λ²/‖C‖∞²``,
    doubling while small and then converging quadratically to 1, so a fixed number of
    steps inverts every eigenvalue above a relative cut-off (:data:`PINV_STEPS`). What is
    exact on C's range: ``C X C = C`` and ``X C = C X = C⁺C`` (the projector onto the
    range). What is not: on C's null space (exact dependence, eigenvalues at rounding
    level) rounding doubles at every step, so X's null-space block is not 0 (5.6e-3 after
    48 steps on a rank-1 5 x 5 C with unit-size entries); ``X v`` is ``C⁺v`` for v in C's
    range, and ``C X v``
    is ``C C⁺ v`` for any v, which is all IMTL-G uses.
    """
    k = c.shape[0]
    eye = torch.eye(k, dtype=c.dtype, device=c.device)
    scale = c.abs().sum(dim=1).max()
    x = c / (scale * scale).clamp(min=torch.finfo(c.dtype).tiny)
    two = 2.0 * eye
    for _ in range(steps):
        x = x @ torch.addmm(two, c, x, alpha=-1.0)
    return 0.5 * (x + x.T)


@register("imtl-g")
class IMTLG(GramianStrategy):
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

    .. math:: C\beta = \lambda \mathbf 1, \qquad \sum_i \beta_i / \lVert g_i\rVert = 1.

    The rule takes :math:`\beta \propto C^{+}\mathbf 1` (the minimum-norm solution of
    :math:`C\beta = \mathbf 1`), rescaled so that the weights sum to 1. When G is
    invertible this is exactly the paper's closed form (tested against it in P-space);
    with linearly dependent rows :math:`C^{+}` depends only on the directions: parallel
    rows get equal :math:`\beta_i`, i.e. contribute equal parts :math:`\alpha_i g_i` of
    d (TorchJD's :math:`\alpha \propto G^{+}\lVert g\rVert` weights them differently,
    with a parallel update). When :math:`\mathbf 1` is not in the range of C (more tasks than
    independent directions, e.g. two exactly opposite rows), only :math:`\lambda = 0`
    can be met: the update is d = 0, with :math:`\beta` the null-space part of
    :math:`(\lVert g\rVert_{\min}/\lVert g_i\rVert)_i`, the minimum-norm solution of the
    conditions.

    Properties: positively homogeneous, IMTL-G(cJ) = c·IMTL-G(J) for c > 0; equivariant
    under permutations of the tasks (the paper's formula singles out task 1, the
    solution does not); :math:`d^\top u_i` equal for all i; weights sum to 1 (may be
    negative). Not non-conflicting in general (the common projection can be negative).

    Edge cases (not in the paper): zero rows get weight 0 and the others sum to 1; when
    no weights summing to 1 satisfy the conditions (the equal-projection direction
    has :math:`\sum_i \alpha_i = 0`), the weights fall back to the mean, 1/K.

    The rule runs on J's device without a host sync (``host_rule = False``): the
    pseudo-inverse is a fixed number of Newton-Schulz steps (:func:`psd_pinv`;
    eigenvalues of C below ~1e-6 of the largest are treated as zero), and the cases above
    are chosen with ``torch.where``.
    """

    host_rule: ClassVar[bool] = False

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        g = 0.5 * (gram + gram.T)
        diag = g.diagonal().clamp(min=0)
        live = diag > ZERO_ROW
        ones = live.to(g.dtype)  # 1 on the live rows: the right-hand side of Cβ = λ1
        n = torch.where(live, diag.sqrt(), 1.0)
        cos = (g / n[:, None] / n[None, :]).clamp(-1.0, 1.0) * (ones[:, None] * ones[None, :])
        cos = cos - torch.diag_embed(cos.diagonal()) + torch.diag_embed(ones)
        # Σ β_i / n_i = 1, rescaled by the smallest live norm: e = n_min / n ∈ (0, 1].
        n_min = torch.where(live, n, torch.inf).min()
        e = torch.where(live, n_min / n, 0.0)
        pinv = psd_pinv(cos)
        beta_range = pinv @ ones
        # The part of e in C's null space, projected twice: e can be mostly in C's range
        # (a small-norm task beside two opposite ones), and the second pass removes what
        # the cancellation of the first left there.
        beta_null = e - cos @ (pinv @ e)
        beta_null = beta_null - cos @ (pinv @ beta_null)
        in_range = (ones - cos @ beta_range).abs().max() <= RESIDUAL_TOL
        beta = torch.where(in_range, beta_range, beta_null)
        beta = beta / (e @ beta)  # Σ e_i β_i = 1, i.e. Σ α_i = 1
        proj = cos @ beta  # (Cβ)_i = dᵀu_i (up to the scale n_min)
        common = (proj * ones).sum() / ones.sum().clamp(min=1.0)
        residual = ((proj - common) * ones).abs().max()
        alpha = e * beta
        ok = torch.isfinite(alpha).all() & (residual <= RESIDUAL_TOL * common.abs().clamp(min=1))
        return torch.where(ok, alpha, 1.0 / k)

    def __repr__(self) -> str:
        return "IMTLG()"
