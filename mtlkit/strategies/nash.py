"""Nash-MTL: the Nash bargaining solution between the tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from mtlkit._checks import check_int, check_real
from mtlkit.strategies._kspace import as_weights, min_norm_simplex, normalise
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["NashMTL"]

Array = NDArray[np.float64]


def _nash_point(cos: Array, tol: float, max_iter: int) -> Array | None:
    """Solve ``max_x Σ log(a_i·x) - ½‖x‖²`` for unit rows ``a_i`` with Gram matrix ``cos``.

    Returns ``β_i = 1 / (a_i·x*)`` (the weights of the unit gradients), or ``None`` when no
    ``x`` has ``a_i·x > 0`` for every i (0 is in the hull of the unit gradients).
    """
    k = cos.shape[0]
    evals, evecs = np.linalg.eigh(cos)
    keep = evals > 1e-13 * max(float(evals.max()), 1.0)
    a_mat = evecs[:, keep] * np.sqrt(evals[keep])  # rows a_i, a_i·a_j = cos_ij
    # Strictly feasible start: the minimum-norm point of the hull of the a_i, for which
    # a_i·x ≥ ‖x‖²; scaled to the norm sqrt(K) that the solution always has.
    w = min_norm_simplex(cos, np.ones(k))
    x = a_mat.T @ w
    sq = float(x @ x)
    if not sq > 1e-10 or not float((a_mat @ x).min()) > 0:
        return None
    x *= np.sqrt(k / sq)

    def value(x: Array) -> float:
        return float(np.log(a_mat @ x).sum() - 0.5 * (x @ x))

    current = value(x)
    for _ in range(max_iter):
        s = a_mat @ x
        inv = 1.0 / s
        grad = a_mat.T @ inv - x
        hess = (a_mat.T * inv**2) @ a_mat + np.eye(a_mat.shape[1])
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement <= tol:
            break
        t = 1.0
        while t > 1e-12:
            x_new = x + t * step
            if float((a_mat @ x_new).min()) > 0:
                new = value(x_new)
                # Armijo test; near the optimum the change of the value is below its own
                # rounding and the full Newton step is taken as is.
                if new >= current + 0.25 * t * decrement or decrement < 1e-18:
                    break
            t *= 0.5
        else:
            break
        x, current = x_new, new
    s = a_mat @ x
    return np.asarray(1.0 / s, dtype=np.float64)


@register("nash-mtl")
class NashMTL(GramianStrategy):
    r"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, 2022,
    *Multi-Task Learning as a Bargaining Game*, ICML, Algorithm 1).

    The update is the Nash bargaining solution between the tasks, the direction that
    maximises :math:`\sum_i \log(g_i^\top d)` in a ball. Its weights solve

    .. math:: G\alpha = 1 / \alpha \quad (\alpha > 0,\ \text{elementwise}),
              \qquad d = \alpha^\top J,

    i.e. :math:`g_i^\top d = 1/\alpha_i` for every task. Instead of the paper's sequence of
    convex approximations (solved with cvxpy), the equivalent strictly concave problem
    :math:`\max_x \sum_i \log(a_i^\top x) - \tfrac12\lVert x\rVert^2` (whose stationarity
    condition is exactly the one above) is solved by damped Newton iterations in K-space,
    with :math:`a_i` the unit gradients written in an orthonormal basis of their span
    (from the eigendecomposition of the cosine matrix) and :math:`\alpha_i =
    1 / (\lVert g_i\rVert\, a_i^\top x^\star)`. It starts from the (scaled) minimum-norm
    point of the unit gradients, which is strictly feasible whenever a solution exists.

    Properties (the paper's; tested): non-conflicting, :math:`g_i^\top d = 1/\alpha_i > 0`;
    invariant to rescaling each task, Nash(DJ) = Nash(J) for any positive diagonal D
    (and so to the global scale: the update does not grow with the gradients); the update
    always has norm :math:`\sqrt K` (``max_norm`` clips it); equivariant under
    permutations of the tasks; Pareto-optimal among updates of that norm. For two
    orthogonal gradients :math:`\alpha_i = 1/\lVert g_i\rVert`.

    Edge cases (not in the paper): when no update improves every task (0 is in the hull
    of the gradient directions, e.g. two exactly opposite gradients) the bargaining
    problem has no solution and the update is the disagreement point, 0 (all weights 0);
    zero rows are left out of the bargaining (weight 0) so that a task that has converged
    does not stop the others; with K = 1 the weight is 1 (the paper would normalise the
    gradient).

    Args:
        update_weights_every: solve for new weights every this many calls and reuse the
            last ones in between (the paper's cheaper variant; 1 = every call).
        max_norm: if given, scale the weights so that :math:`\lVert d\rVert \le`
            ``max_norm`` (the paper clips the update norm in its experiments).
        tol: Newton decrement at which the solver stops.
        max_iter: Newton iteration cap.
    """

    def __init__(
        self,
        update_weights_every: int = 1,
        max_norm: float | None = None,
        tol: float = 1e-24,
        max_iter: int = 100,
    ) -> None:
        self.update_weights_every = check_int("update_weights_every", update_weights_every, 1)
        self.max_norm = (
            None if max_norm is None else check_real("max_norm", max_norm, low=0.0, open_low=True)
        )
        self.tol = check_real("tol", tol, low=0.0)
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.step = 0
        self.last_weights: Tensor | None = None

    def solve(self, gram: Tensor) -> Tensor:
        """Return the Nash-MTL weights for a float64 Gramian (no reuse, no state)."""
        k = gram.shape[0]
        if k == 1:
            return torch.ones(1, dtype=torch.float64, device=gram.device)
        norm = normalise(gram)
        w = np.zeros(k)
        n = norm.norms[norm.live]
        if n.shape[0] == 0:
            return as_weights(w, gram)
        beta = _nash_point(norm.cos, self.tol, self.max_iter)
        if beta is None:
            return as_weights(w, gram)
        if self.max_norm is not None:
            d_norm = float(np.sqrt(max(float(beta @ norm.cos @ beta), 0.0)))
            if d_norm > self.max_norm:
                beta = beta * (self.max_norm / d_norm)
        w[norm.live] = beta / n
        return as_weights(w, gram)

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        reuse = (
            self.step % self.update_weights_every != 0
            and self.last_weights is not None
            and self.last_weights.numel() == k
        )
        self.step += 1
        if reuse and self.last_weights is not None:
            return self.last_weights.to(gram.device)
        w = self.solve(gram)
        self.last_weights = w.detach().cpu().clone()
        return w

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "last_weights": None if self.last_weights is None else self.last_weights.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        lw = state["last_weights"]
        self.last_weights = None if lw is None else lw.detach().to(torch.float64).cpu().clone()

    def __repr__(self) -> str:
        return (
            f"NashMTL(update_weights_every={self.update_weights_every}, max_norm={self.max_norm})"
        )
