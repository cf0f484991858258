"""Small dense solvers in K-space shared by the Gramian strategies (float64 numpy).

Every problem here is posed on the *normalised* Gramian ``C = D⁻¹ G D⁻¹`` with
``D = diag(‖g_i‖)`` (the cosine matrix of the task gradients, unit diagonal), so its
conditioning does not depend on how differently the tasks' gradients are scaled: a
matrix whose rows have norms 1e-15 and 1e15 gives the same well-scaled ``C`` as one
whose rows have norm 1. Zero rows are taken out of the problem and handled by each
caller. Rounding can leave ``C`` slightly indefinite; it is projected back onto the
positive semi-definite matrices (:func:`nearest_psd`).

The quadratic programs are solved by an active-set method (Lawson-Hanson style, exact
up to rounding in a finite number of steps; the equality-constrained sub-problems by
least squares) on ``C + εI``. The tiny ridge ``ε = 1e-15`` (:data:`RIDGE`, relative to
the unit diagonal, a few float64 epsilons) keeps the sub-problems strictly convex when
the gradients are linearly dependent (duplicated or opposite rows, K > P), which the
active-set method needs to make progress. Its effect on the answer is bounded: the KKT
conditions of the ridged problem give ``(C y)_i ≥ -ε y_i`` instead of ``≥ 0``. (A
larger ridge, e.g. 1e-12, was measurably wrong when nearly opposite rows of very
different norms make ``y`` ~1e5.) Cycling, which only rounding can cause, is detected
and stops the iterations.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from mtlkit.strategies.base import GramianStrategy

__all__ = [
    "RIDGE",
    "CosineStrategy",
    "Normalised",
    "as_weights",
    "dual_cone_weights",
    "min_norm_simplex",
    "nearest_psd",
    "normalise",
    "solve_qp",
]

Array = NDArray[np.float64]

#: Ridge added to the unit-diagonal cosine matrix before solving a quadratic program.
RIDGE = 1e-15

#: A row whose squared norm ``G_ii`` is below this is treated as a zero row (its entries
#: in G would be float64 subnormals, with too few significant digits to give cosines).
ZERO_ROW = 1e-290


@dataclass(frozen=True)
class Normalised:
    """The Gramian split into row norms and cosines.

    Attributes:
        norms: (K,) ``‖g_i‖``.
        live: (K,) bool, rows with a positive norm.
        cos: (k, k) cosine matrix of the live rows (unit diagonal, symmetric).
    """

    norms: Array
    live: NDArray[np.bool_]
    cos: Array

    @property
    def live_norms(self) -> Array:
        """(k,) the norms of the live rows, in the order of ``cos``."""
        return self.norms[self.live]


def normalise(gram: Tensor) -> Normalised:
    """Split a float64 Gramian into row norms and the cosine matrix of the non-zero rows."""
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    g = 0.5 * (g + g.T)
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    live = np.diag(g) > ZERO_ROW
    n = norms[live]
    cos = g[np.ix_(live, live)] / n[:, None] / n[None, :]
    cos = np.clip(cos, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return Normalised(norms=norms, live=live, cos=nearest_psd(cos))


def nearest_psd(cos: Array) -> Array:
    """Clip the negative eigenvalues of a unit-diagonal matrix and restore the unit diagonal.

    A Gramian accumulated in float32 (or with cancellation in float64) can have slightly
    negative eigenvalues (-1e-8 relative is common when rows are linearly dependent);
    a quadratic program on it would then be non-convex. The projection moves entries by
    about the size of those eigenvalues, the accuracy G had anyway.
    """
    if cos.shape[0] == 0:
        return cos
    evals, evecs = np.linalg.eigh(cos)
    if float(evals.min()) >= 0:
        return cos
    fixed = (evecs * np.clip(evals, 0.0, None)) @ evecs.T
    diag = np.sqrt(np.clip(np.diag(fixed), np.finfo(np.float64).tiny, None))
    fixed = fixed / diag[:, None] / diag[None, :]
    fixed = 0.5 * (fixed + fixed.T)
    np.fill_diagonal(fixed, 1.0)
    return np.asarray(np.clip(fixed, -1.0, 1.0), dtype=np.float64)


def as_weights(w: Array, like: Tensor) -> Tensor:
    """Turn a numpy weight vector into a float64 tensor on ``like``'s device."""
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64)).to(like.device)


def _solve_free(a_mat: Array, q: Array, free: NDArray[np.bool_], eq: Array | None) -> Array:
    """Minimise ½xᵀAx + qᵀx over the free variables (others 0), with ``eqᵀx = 1`` if given."""
    k = q.shape[0]
    x = np.zeros(k)
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return x
    sub = a_mat[np.ix_(idx, idx)]
    if eq is None:
        system, rhs = sub, -q[idx]
    else:
        e = eq[idx]
        m = idx.size
        system = np.zeros((m + 1, m + 1))
        system[:m, :m] = sub
        system[:m, m] = e
        system[m, :m] = e
        rhs = np.concatenate([-q[idx], [1.0]])
    # A direct solve honours the ridge (a least-squares solve would cut it off as noise
    # and lose the strict convexity the active-set steps rely on).
    try:
        sol = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:  # pragma: no cover - exactly singular
        sol = np.linalg.lstsq(system, rhs, rcond=None)[0]
    x[idx] = sol[: idx.size]
    return x


def solve_qp(
    a_mat: Array,
    q: Array,
    eq: Array | None = None,
    x0: Array | None = None,
    tol: float = 1e-11,
    max_iter: int | None = None,
) -> Array:
    """Minimise ``½xᵀAx + qᵀx`` subject to ``x ≥ 0`` (and ``eqᵀx = 1`` when ``eq`` is given).

    ``A`` must be symmetric positive definite (callers add :data:`RIDGE`); ``eq`` must be
    positive. Lawson-Hanson active-set iterations: grow the set of free variables by the
    one with the most negative multiplier, re-solve the equality-constrained problem on
    it, and step back to the boundary whenever a free variable would turn negative.

    ``x0`` (feasible, and optimal for its own support) warm-starts the iterations; by
    default they start at 0 (or at the best vertex ``e_j / eq_j`` with ``eq``).
    """
    k = q.shape[0]
    if k == 0:
        return np.zeros(0)
    if max_iter is None:
        max_iter = 20 * k + 50
    scale = max(float(np.abs(np.diag(a_mat)).max()), float(np.abs(q).max()), 1e-300)
    if x0 is not None:
        x = np.array(x0, dtype=np.float64)
    elif eq is None:
        x = np.zeros(k)
    else:
        j = int(np.argmin(0.5 * np.diag(a_mat) / eq**2 + q / eq))
        x = np.zeros(k)
        x[j] = 1.0 / eq[j]
    free = x > 0
    seen: set[bytes] = set()
    for _ in range(max_iter):
        if eq is not None and not free.any():  # pragma: no cover - rounding guard
            break
        key = np.packbits(free).tobytes()
        if key in seen:  # cycling, which only rounding can cause: stop at this point
            break
        seen.add(key)
        grad = a_mat @ x + q
        if eq is None:
            mult = grad
        else:
            e_free = eq[free]
            nu = -float(e_free @ grad[free]) / float(e_free @ e_free)
            mult = grad + nu * eq
        mult = np.where(free, np.inf, mult)
        t = int(np.argmin(mult))
        if not mult[t] < -tol * scale:
            break
        free[t] = True
        for _inner in range(k + 1):
            z = _solve_free(a_mat, q, free, eq)
            bad = free & (z <= 0)
            if not bad.any():
                x = z
                break
            gap = x[bad] - z[bad]  # ≥ 0; 0 only where x_i = z_i = 0
            steps = np.where(gap > 0, x[bad] / np.where(gap > 0, gap, 1.0), 0.0)
            alpha = float(np.clip(steps.min(), 0.0, 1.0))
            x = x + alpha * (z - x)
            x[~free] = 0.0
            gone = free & (x <= 1e-300)
            gone[np.flatnonzero(bad)[int(np.argmin(steps))]] = True
            free &= ~gone
            x[~free] = 0.0
            x = np.clip(x, 0.0, None)
        else:  # pragma: no cover - cycling guard
            break
    return x


def min_norm_simplex(cos: Array, norms: Array) -> Array:
    """Weights ``w`` (on the simplex) of the minimum-norm point of the hull of the rows.

    Solved on the cosine matrix with ``y = w ⊙ ‖g‖``: minimise ``½yᵀ(C + εI)y`` subject to
    ``y ≥ 0`` and ``Σ_i y_i / ‖g_i‖ = 1`` (the constraint row is rescaled by the smallest
    norm, which leaves the argmin unchanged and keeps its entries in (0, 1]).
    All ``norms`` must be positive.
    """
    k = norms.shape[0]
    if k == 1:
        return np.ones(1)
    nmin = float(norms.min())
    eq = nmin / norms
    a_mat = cos + RIDGE * np.eye(k)
    y = solve_qp(a_mat, np.zeros(k), eq=eq)
    # Σ eq_i y_i = 1 means Σ y_i / n_i = 1 / nmin, so w_i = nmin * y_i / n_i sums to 1.
    w = nmin * y / norms
    total = w.sum()
    return w / total if total > 0 else np.full(k, 1.0 / k)


def dual_cone_weights(cos: Array, lower: Array, x0: Array | None = None) -> Array:
    """Solve ``min ½yᵀ(C + εI)y`` subject to ``y ≥ lower`` (``lower ≥ 0``) and return ``y``.

    With ``y = v ⊙ ‖g‖`` and ``lower = u ⊙ ‖g‖`` this is the projection of ``uᵀJ`` onto the
    dual cone ``{x : Jx ≥ 0}`` written in K-space: the projection is ``vᵀJ``.
    """
    k = lower.shape[0]
    top = float(lower.max()) if k else 0.0
    if not top > 0:
        return np.zeros(k)
    # The problem is homogeneous in ``lower``: solve it for lower / max(lower), so that the
    # solver's absolute tolerances are relative to the problem's size.
    unit = lower / top
    a_mat = cos + RIDGE * np.eye(k)
    z = solve_qp(a_mat, a_mat @ unit, x0=None if x0 is None else x0 / top)
    return top * (unit + z)


class CosineStrategy(GramianStrategy):
    """A Gramian strategy whose weights are a function of the row norms and cosines.

    :meth:`weights` returns ``[1]`` for a single task, otherwise splits G with
    :func:`normalise` and hands it to :meth:`solve`; subclasses implement only that.
    """

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        if gram.shape[0] == 1:
            return torch.ones(1, dtype=torch.float64, device=gram.device)
        return as_weights(self.solve(normalise(gram)), gram)

    @abstractmethod
    def solve(self, norm: Normalised) -> Array:
        """The (K,) weights, as float64 numpy, for K >= 2 tasks."""
