"""ConFIG: the conflict-free direction with equal cosines to every task gradient."""

from __future__ import annotations

import numpy as np

from mtlkit._checks import check_real
from mtlkit.strategies._kspace import Array, CosineStrategy, Normalised
from mtlkit.strategies.aligned import PrecisionAware
from mtlkit.strategies.base import register

__all__ = ["ConFIG"]


@register("config")
class ConFIG(PrecisionAware, CosineStrategy):
    r"""Conflict-Free Inverse Gradients (Liu, Chu, Thuerey, 2024, *ConFIG: Towards
    Conflict-free Training of Physics Informed Neural Networks*, arXiv:2408.11104, ICLR
    2025, the ConFIG update rule).

    With :math:`\hat J` the matrix of unit gradients :math:`u_i = g_i/\lVert g_i\rVert`,
    ConFIG takes the direction that has the same cosine with every gradient and scales
    it by the sum of the gradients' projections on it:

    .. math:: g_v = \hat J^{+}\mathbf 1, \qquad g_u = g_v/\lVert g_v\rVert, \qquad
              d = \Big(\sum_i g_i^\top g_u\Big)\, g_u .

    In K-space :math:`g_v = \hat J^\top\beta` with :math:`\beta = C^{+}\mathbf 1` (C the
    cosine matrix), :math:`\lVert g_v\rVert^2 = \beta^\top C\beta` and
    :math:`g_i^\top g_v = \lVert g_i\rVert (C\beta)_i`, so the weights are
    :math:`\alpha_j = \frac{\sum_i \lVert g_i\rVert (C\beta)_i}{\beta^\top C \beta}\,
    \frac{\beta_j}{\lVert g_j\rVert}`. The pseudo-inverse drops the eigenvalues of C below
    ``rcond``; by default that is the rounding noise of C for J's dtype
    (:func:`mtlkit.strategies.aligned.cosine_noise_floor`: ~7e-15·K for float64 J,
    ~3.8e-6·K for float32 J), so that linearly dependent float32 gradients are not
    inverted through their rounding noise.

    Properties: positively homogeneous, ConFIG(cJ) = c·ConFIG(J) for c > 0; equivariant
    under permutations of the tasks; non-conflicting (:math:`u_i^\top g_u` equal and
    positive for every task) whenever :math:`\mathbf 1` is in the range of C, in
    particular when the gradients are linearly independent (K ≤ P generic); with linearly
    dependent gradients the pseudo-inverse gives a least-squares direction that may
    conflict. For K = 1 it returns the gradient. The momentum variant (M-ConFIG) is not
    included.

    Rescaling single tasks: :math:`g_u` depends on the unit vectors :math:`u_i` only, so
    it never changes, but :math:`d = (\sum_i \lVert g_i\rVert u_i^\top g_u)\, g_u` is
    :math:`\pm g_u` with the sign of a sum that does depend on the norms. The
    *direction* of d is invariant to rescaling single tasks exactly when no task has a
    negative projection, :math:`u_i^\top g_u \ge 0` for all i: always when
    :math:`\mathbf 1` is in the range of C (then all projections are equal and positive),
    in particular for linearly independent gradients. Otherwise (linearly dependent
    gradients whose least-squares direction conflicts with a task) rescaling a task can
    reverse d: ``J = [[1, -1], [-1, 2], [-2, 1]]`` gives :math:`d = (-2, 2)`, and with
    task 0 scaled by 10, :math:`d = (7, -7)` (:math:`u^\top g_u = (-1, 0.95, 0.95)`).

    Edge cases (not in the paper): zero rows get weight 0; if :math:`g_v = 0` (e.g. two
    exactly opposite gradients: :math:`\mathbf 1` is orthogonal to the range of C, taken
    as :math:`\max_i |(C\beta)_i| \le 10^{-8}`) the update is 0.

    Args:
        rcond: threshold on the eigenvalues of the cosine matrix (unit diagonal, so
            absolute) below which they count as zero, in [0, 1); ``None`` (default): the
            noise floor of J's dtype and K.
    """

    def __init__(self, rcond: float | None = None) -> None:
        self.rcond = (
            None if rcond is None else check_real("rcond", rcond, low=0.0, high=1.0, open_high=True)
        )

    def solve(self, norm: Normalised) -> Array:
        k = norm.norms.shape[0]
        n = norm.live_norms
        w = np.zeros(k)
        if n.shape[0] == 0:
            return w
        evals, evecs = np.linalg.eigh(norm.cos)
        tol = self.noise_floor(n.shape[0]) if self.rcond is None else self.rcond
        keep = evals > tol
        v = evecs[:, keep]
        beta = (v / evals[keep]) @ (v.T @ np.ones(n.shape[0]))
        c_beta = norm.cos @ beta  # the projection of 1 onto the range of C
        sq = float(beta @ c_beta)
        # 1 (numerically) orthogonal to the range of C: g_v = 0, the direction is undefined.
        if not (float(np.abs(c_beta).max()) > 1e-8 and sq > 0):
            return w
        total = float(n @ c_beta)
        w[norm.live] = total / sq * beta / n
        return w

    def __repr__(self) -> str:
        return f"ConFIG(rcond={self.rcond})"
