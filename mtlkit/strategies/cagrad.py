"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from mtlkit._checks import check_int, check_real
from mtlkit.strategies._kspace import RIDGE, as_weights, dual_cone_weights, normalise, solve_qp
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["CAGrad"]

Array = NDArray[np.float64]


class _Dual:
    """The CAGrad dual in scale-free variables.

    With :math:`y_i = w_i \\lVert g_i\\rVert / n_{\\min}` (live rows only), the dual
    objective divided by :math:`n_{\\min}\\lVert g_0\\rVert` is
    :math:`f(y) = a^\\top y + c\\sqrt{y^\\top C y}` with :math:`a_i = \\cos(g_i, g_0)` and C the
    cosine matrix, over :math:`\\{y \\ge 0,\\ e^\\top y = 1\\}`, :math:`e_i = n_{\\min} /
    \\lVert g_i\\rVert \\in (0, 1]`; and :math:`w = e \\odot y`. Every coefficient is O(1)
    however different the gradients' norms are, so the solver's tolerances mean the same
    thing for every task.
    """

    def __init__(self, cos: Array, norms: Array, c: float) -> None:
        self.cos = cos
        self.c = c
        k = norms.shape[0]
        self.e = float(norms.min()) / norms
        g0_dir = cos @ norms  # (u_i · Σ_j g_j), proportional to cos(g_i, g0)
        g0_norm = float(np.sqrt(max(float(norms @ g0_dir), 0.0)))
        self.a = g0_dir / g0_norm if g0_norm > 0 else np.zeros(k)

    def value(self, y: Array) -> float:
        quad = max(float(y @ self.cos @ y), 0.0)
        return float(self.a @ y) + self.c * float(np.sqrt(quad))


def _qp_path(dual: _Dual, max_iter: int) -> Array:
    """Solve the dual through the quadratic programs QP(λ): min aᵀy + (λ/2) yᵀCy on S.

    The KKT conditions of f at a minimiser with ``x = Ûᵀy ≠ 0`` are those of QP(λ) for
    ``λ = c/‖x‖``. So y* = y(λ*) where ``ψ(λ) = λ‖x(y(λ))‖ - c`` vanishes; each QP(λ)
    is solved exactly (active set), and λ is found by the Illinois variant of regula
    falsi on log λ, bracketed decade by decade from λ = 1 within [1e-14, 1e14] (ψ < 0 near
    0, ψ > 0 for large λ unless 0 is in the hull). If ψ stays negative, the optimum is
    x = 0 and the last y (≈ the minimum-norm point) is returned.
    """
    k = dual.e.shape[0]
    ridged = dual.cos + RIDGE * np.eye(k)

    def solve(log_lam: float) -> tuple[Array, float]:
        lam = 10.0**log_lam
        y = solve_qp(ridged, dual.a / lam, eq=dual.e)  # the same argmin, A well-scaled
        x_norm = float(np.sqrt(max(float(y @ dual.cos @ y), 0.0)))
        return y, lam * x_norm - dual.c

    # Bracket the root one decade at a time from λ = 1 (far out, ψ is rounding noise).
    lo = hi = 0.0
    y_lo, f_lo = y_hi, f_hi = solve(0.0)
    if f_hi > 0:
        while f_lo > 0:
            if lo <= -14.0:
                return y_lo
            hi, y_hi, f_hi = lo, y_lo, f_lo
            lo -= 1.0
            y_lo, f_lo = solve(lo)
    else:
        while f_hi <= 0:
            if f_hi == 0:
                return y_hi
            if hi >= 14.0:
                return y_hi  # g_w → 0: the optimum is at 0 in the hull
            lo, y_lo, f_lo = hi, y_hi, f_hi
            hi += 1.0
            y_hi, f_hi = solve(hi)
    side = 0
    for _ in range(max_iter):
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        y_mid, f_mid = solve(mid)
        if abs(f_mid) <= 1e-14 * dual.c or hi - lo <= 1e-13:
            return y_mid
        if f_mid > 0:
            hi, f_hi, y_hi = mid, f_mid, y_mid
            if side == 1:
                f_lo *= 0.5
            side = 1
        else:
            lo, f_lo, y_lo = mid, f_mid, y_mid
            if side == -1:
                f_hi *= 0.5
            side = -1
    return y_hi if abs(f_hi) < abs(f_lo) else y_lo


def _polish(dual: _Dual, y: Array, max_iter: int = 30) -> Array:
    """Newton steps on the face of the feasible set that ``y`` lies on (its support).

    Cleans up the small errors of the path search (the root in λ and the ridge of the
    QPs): on the right face the optimum solves the smooth problem min f(y) s.t.
    eᵀy = 1, where Newton's method converges fast. Returns ``y`` unchanged if the steps
    leave the face or do not improve f.
    """
    idx = np.flatnonzero(y > 1e-10 * float(y.max()))
    m = idx.shape[0]
    if m <= 1:
        return y
    cos = dual.cos[np.ix_(idx, idx)]
    a = dual.a[idx]
    e = dual.e[idx]
    proj = np.eye(m) - np.outer(e, e) / float(e @ e)  # onto {x : eᵀx = 0}

    def value(x: Array) -> float:
        return float(a @ x) + dual.c * float(np.sqrt(max(float(x @ cos @ x), 0.0)))

    x = y[idx].copy()
    current = value(x)
    for _ in range(max_iter):
        cx = cos @ x
        root = float(np.sqrt(max(float(x @ cx), 0.0)))
        if not root > 0:
            return y
        grad = proj @ (a + dual.c * cx / root)
        hess = proj @ (dual.c * (cos / root - np.outer(cx, cx) / root**3)) @ proj
        step = -proj @ np.linalg.lstsq(hess + np.outer(e, e), grad, rcond=None)[0]
        decrement = -float(grad @ step)
        if not decrement > 1e-30:
            break
        if float((x + step).min()) < 0:
            return y  # the optimum is not on this face
        new = value(x + step)
        if not new <= current + 1e-15 * abs(current):
            break
        x, current = x + step, new
    out = np.zeros_like(y)
    out[idx] = x
    return out if dual.value(out) <= dual.value(y) else y


@register("cagrad")
class CAGrad(GramianStrategy):
    r"""Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, 2021, *Conflict-Averse
    Gradient Descent for Multi-task Learning*, NeurIPS, the dual problem and Algorithm 1).

    With :math:`g_0 = \frac1K \sum_i g_i` the average gradient and
    :math:`\phi = c^2 \lVert g_0\rVert^2`, CAGrad looks for the update that maximises the
    worst task's improvement within a ball around :math:`g_0`. Its dual is a problem over
    the simplex,

    .. math:: w^\star = \operatorname*{argmin}_{w \in \Delta_K}\;
              g_w^\top g_0 + \sqrt{\phi}\,\lVert g_w\rVert, \qquad g_w = w^\top J,

    and the update is :math:`d = g_0 + \frac{\sqrt\phi}{\lVert g_{w^\star}\rVert}
    g_{w^\star}`, i.e. the weights :math:`\frac1K \mathbf 1 + c\,\lVert g_0\rVert /
    \lVert g_{w^\star}\rVert\, w^\star`. All of it is read off G: :math:`g_w^\top g_0 =
    w^\top G\mathbf 1/K`, :math:`\lVert g_w\rVert^2 = w^\top G w`, :math:`\lVert
    g_0\rVert^2 = \mathbf 1^\top G \mathbf 1/K^2`.

    The dual (convex, K variables) is solved in the scale-free variables
    :math:`y_i \propto w_i\lVert g_i\rVert` on the cosine matrix, so tasks whose
    gradients differ by many orders of magnitude are resolved alike. A minimiser with
    :math:`g_w \ne 0` is also the minimiser of the quadratic program
    :math:`\min_w g_w^\top g_0 + \frac\lambda2\lVert g_w\rVert^2` over the simplex for
    :math:`\lambda = \sqrt\phi/\lVert g_w\rVert` (same KKT conditions), so the solver
    searches the scalar :math:`\lambda` (regula falsi on :math:`\log\lambda`) with each
    quadratic program solved exactly by an active-set method, then refines the result
    with Newton steps on the face of the simplex it found; the result is never worse
    than the mean weights or a vertex. (A general-purpose solver such as SLSQP
    stalls at ~1e-4 relative accuracy when the gradients nearly cancel.)
    No scipy needed. When the gradients' norms span more than ~1e6 *and* nearly cancel,
    the dual is numerically degenerate: the update stays finite but is only as accurate
    as that degenerate problem allows.

    Properties: for c = 0 it is the mean; positively homogeneous, CAGrad(cJ) =
    c·CAGrad(J) for c > 0; equivariant under permutations of the tasks (up to the
    solver's tolerance); the paper proves convergence to a stationary point of the
    *average* loss for 0 ≤ c < 1. It is not non-conflicting in general.

    When the dual's minimiser has :math:`g_{w^\star} = 0` (0 in the convex hull of the
    rows, or a zero row) the formula above is undefined, and :math:`g_0` is not a solution
    in general. The primal problem, :math:`\max_d \min_i g_i^\top d` subject to
    :math:`\lVert d - g_0\rVert \le c\lVert g_0\rVert`, then has the value 0 (strong
    duality; and :math:`\min_i g_i^\top d \le \sum_i w^\star_i g_i^\top d = 0` for every
    d), and its maximisers are the points of the ball in the dual cone
    :math:`\{d : g_i^\top d \ge 0\ \forall i\}`. The update is the one closest to
    :math:`g_0`: the projection of :math:`g_0` onto the dual cone (a K x K quadratic
    program, that of :class:`~mtlkit.strategies.dualproj.DualProj`).
    E.g. ``J = [[1, 0], [-1, 0], [0.5, 1]]``, c = 0.9: :math:`g_0 = (1/6, 1/3)` conflicts
    with task 1, the update is :math:`(0, 1/3)`. This branch is taken when
    :math:`\lVert g_{w^\star}\rVert \le 10^{-5}\sum_i w^\star_i\lVert g_i\rVert` (below
    that the direction of :math:`g_{w^\star}` is below the solver's precision); there
    both the formula (if :math:`g_{w^\star} \ne 0`) and the projection (pulled back into
    the ball if rounding left it outside) are evaluated on the primal objective and the
    better one is kept, the projection on a tie.

    Edge cases (not in the paper): if :math:`g_0 = 0` the ball is a point and the update
    is :math:`g_0 = 0`; with K = 1 the weight is 1 (the paper's formula would give
    :math:`(1 + c)g`).

    Args:
        c: the radius factor, finite, :math:`c \ge 0`.
        rescale: divide the update by :math:`1 + c`. Since
            :math:`\lVert d\rVert \le (1 + c)\lVert g_0\rVert`, the rescaled update is never
            longer than the mean gradient, so the learning rate keeps its meaning across c.
            The paper's Algorithm 1 does not rescale (default).
        max_iter: iteration cap of the search for λ (>= 1).
    """

    def __init__(self, c: float = 0.5, rescale: bool = False, max_iter: int = 100) -> None:
        self.c = check_real("c", c, low=0.0)
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be True or False, got {rescale!r}")
        self.rescale = rescale
        self.max_iter = check_int("max_iter", max_iter, 1)

    def solve_dual(self, gram: Array) -> Array:
        """Return :math:`w^\\star` (on the simplex) for a float64 Gramian.

        Weight 1 on a zero row means :math:`g_{w^\\star} = 0`.
        """
        k = gram.shape[0]
        norm = normalise(torch.from_numpy(np.ascontiguousarray(gram, dtype=np.float64)))
        live = norm.live
        w = np.zeros(k)
        if not live.any():
            w[0] = 1.0
            return w
        dual = _Dual(norm.cos, norm.norms[live], self.c)
        y = _polish(dual, _qp_path(dual, self.max_iter))
        # Safeguard for numerically degenerate duals: never worse than the simple points.
        m = dual.e.shape[0]
        for cand in (np.full(m, 1.0 / m) / dual.e, *np.diag(1.0 / dual.e)):
            if dual.value(cand) < dual.value(y):
                y = cand
        if not live.all() and not dual.value(y) < 0:
            w[int(np.flatnonzero(~live)[0])] = 1.0  # g_w = 0 is at least as good
            return w
        w[live] = dual.e * y
        return np.asarray(w / w.sum(), dtype=np.float64)

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        if k == 1:
            return torch.ones(1, dtype=torch.float64, device=gram.device)
        mean_w = np.full(k, 1.0 / k)
        if self.c == 0:
            return as_weights(mean_w, gram)
        norm = normalise(gram)
        full_cos = np.zeros((k, k))
        full_cos[np.ix_(norm.live, norm.live)] = norm.cos
        n = norm.norms * norm.live
        g0_norm = float(np.sqrt(max(float(n @ full_cos @ n), 0.0))) / k
        if not g0_norm > 0:
            return as_weights(mean_w, gram)
        g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        w = self.solve_dual(0.5 * (g + g.T))
        y = w * n  # w_i ‖g_i‖: ‖g_w‖² = yᵀCy, with no overflow or underflow
        gw_norm = float(np.sqrt(max(float(y @ full_cos @ y), 0.0)))
        formula = mean_w + self.c * g0_norm / gw_norm * w if gw_norm > 0 else None
        if formula is not None and gw_norm > 1e-5 * float(y.sum()):
            out = formula
        else:
            out = _zero_in_hull(full_cos, n, norm.live, g0_norm, self.c, formula)
        if self.rescale:
            out = out / (1.0 + self.c)
        return as_weights(out, gram)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c}, rescale={self.rescale})"


def _primal_value(cos: Array, norms: Array, v: Array) -> float:
    r""":math:`\min_i g_i^\top d` for :math:`d = v^\top J` (from the norms and cosines)."""
    return float((norms * (cos @ (v * norms))).min())


def _zero_in_hull(
    cos: Array,
    norms: Array,
    live: NDArray[np.bool_],
    g0_norm: float,
    c: float,
    formula: Array | None,
) -> Array:
    r"""Weights of a primal maximiser when the dual's :math:`g_{w^\star}` is (nearly) 0.

    The projection of :math:`g_0` onto the dual cone (pulled back into the ball of radius
    :math:`c\lVert g_0\rVert` around :math:`g_0` if rounding left it outside), unless the
    dual formula's weights ``formula`` reach a better primal value (by more than 1e-12 of
    the largest possible :math:`|g_i^\top d|`).
    """
    radius = c * g0_norm
    k = norms.shape[0]
    mean_w = np.full(k, 1.0 / k)
    proj: Array = mean_w.copy()
    n = norms[live]
    proj[live] = dual_cone_weights(cos[np.ix_(live, live)], n / k) / n
    z = (proj - mean_w) * norms
    dist = float(np.sqrt(max(float(z @ cos @ z), 0.0)))
    if dist > radius:
        proj = np.asarray(mean_w + radius / dist * (proj - mean_w), dtype=np.float64)
    if formula is None:
        return proj
    scale = float(norms.max()) * (g0_norm + radius)
    if _primal_value(cos, norms, formula) > _primal_value(cos, norms, proj) + 1e-12 * scale:
        return formula
    return proj
