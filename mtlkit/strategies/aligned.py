"""Aligned-MTL: align the principal components of the gradient system."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from mtlkit._checks import check_real
from mtlkit.strategies._kspace import ZERO_ROW, Array, as_weights
from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["AlignedMTL", "PrecisionAware", "cosine_noise_floor"]

#: Safety factor of :func:`cosine_noise_floor` over the rounding bound ``K·ε_G``.
NOISE_FACTOR = 32.0


def cosine_noise_floor(k: int, dtype: torch.dtype = torch.float64) -> float:
    r"""Eigenvalues of the cosine matrix C below which a direction is rounding noise.

    ``dtype`` is the dtype of J that G was formed from (:func:`mtlkit._linalg.gramian`).
    Two sources of noise, both relative to the row norms (so they are noise in C, the
    Gramian of the unit rows, whatever the norms are):

    * forming G: each entry is off by about :math:`\varepsilon_G \lVert g_i\rVert
      \lVert g_j\rVert`, with :math:`\varepsilon_G` the unit roundoff of the products
      (float64 for a float64 J; float32 blocks for float32, float16 and bfloat16), so
      every entry of C is off by about :math:`\varepsilon_G` and its eigenvalues by up to
      :math:`K\varepsilon_G`;
    * the data itself: rows stored with relative precision :math:`\varepsilon_J` (J's
      dtype) are only known up to singular values of the unit rows of about
      :math:`\sqrt K \varepsilon_J`, i.e. eigenvalues of C of :math:`K\varepsilon_J^2`.

    The floor is :math:`K \max(32\,\varepsilon_G, \varepsilon_J^2)`: about 7e-15·K for
    float64 J (singular values of the unit rows down to ~1e-7 are kept), 3.8e-6·K for
    float32 J (~2e-3), 6e-5·K for bfloat16. Measured noise is ~15x below it for float64
    (P up to 3e6) and ~100x below for float32.
    """
    data_eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0
    gram_eps = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps)
    return max(k, 1) * max(NOISE_FACTOR * gram_eps, data_eps**2)


class PrecisionAware(GramianStrategy):
    """A Gramian strategy whose rank decisions depend on the precision of J.

    :meth:`combine` (through :meth:`combine_gramian`, also the engine's entry for sharded
    J) records J's dtype in ``source_dtype`` while :meth:`weights` runs (G is float64
    whatever J was, but its rounding errors are those of J's dtype); a direct call of
    :meth:`weights` assumes a float64 J.
    """

    source_dtype: torch.dtype = torch.float64

    def combine_gramian(
        self,
        matrix: Tensor,
        gram: Tensor,
        losses: Tensor | None = None,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        saved = self.source_dtype
        self.source_dtype = matrix.dtype if isinstance(matrix, Tensor) else torch.float64
        try:
            return super().combine_gramian(matrix, gram, losses, out=out)
        finally:
            self.source_dtype = saved

    def noise_floor(self, k: int) -> float:
        """:func:`cosine_noise_floor` for K live rows of a J of ``source_dtype``."""
        return cosine_noise_floor(k, self.source_dtype)


@register("aligned-mtl")
class AlignedMTL(PrecisionAware):
    r"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, 2023, *Independent Component
    Alignment for Multi-Task Learning*, CVPR, Algorithm 1).

    Writing the thin SVD :math:`J = V \Sigma W^\top` (V: K x R, from the eigendecomposition
    :math:`G = V \Sigma^2 V^\top`), Aligned-MTL replaces the gradient system by the one
    with all its singular values set to the smallest non-zero one, :math:`\sigma_{\min}`
    (the matrix of condition number 1 closest to J):

    .. math:: \hat J = \sigma_{\min} V W^\top = B J, \qquad
              B = \sigma_{\min} V_R \Sigma_R^{-1} V_R^\top,

    with R the rank of J, and updates with :math:`d = \hat J^\top \omega = (B\omega)^\top J`
    for fixed task weights :math:`\omega` (all 1 by default: the sum of the aligned
    gradients).

    **The rank.** The paper truncates the eigenvalues of G that are numerically zero.
    Deciding that on G itself (eigenvalues below a fixed fraction of the largest) drops
    real tasks: a task whose gradient is 1e5 times smaller than the largest has an
    eigenvalue 1e-10 of the largest, so ``J = [[1e5, 0], [0, 1]]`` lost its second task.
    But the rounding errors of G are relative to the *row norms* (entry ij is off by
    about :math:`\varepsilon_G\lVert g_i\rVert\lVert g_j\rVert`), so the rank is decided on
    the cosine matrix :math:`C = D^{-1} G D^{-1}`, :math:`D = \operatorname{diag}
    (\lVert g_i\rVert)`, whose noise is the same for every task: eigenvalues of C below
    ``rcond`` are zero. By default ``rcond`` follows the precision of J's dtype
    (:func:`cosine_noise_floor`: about 7e-15·K for float64 J, 3.8e-6·K for float32 J),
    so a direction is kept when the *unit* rows have a singular value above ~1e-7
    (float64) or ~2e-3 (float32) — however small the task's gradient. Duplicated,
    opposite, linearly dependent and zero rows are still rank-deficient in C.

    **The decomposition.** Rows with the same direction (duplicated or opposite tasks,
    ``1 - |cos| <= rcond / 32``, the rounding level) are merged first, which is exact: m
    directions with norms :math:`\nu_g = (\sum_{i \in g}\lVert g_i\rVert^2)^{1/2}`. The
    kept part of their cosine matrix is factored, :math:`C_m \approx A A^\top` (A: m x R,
    from its eigenvectors), so that the SVD of J is that of the small m x R matrix
    :math:`\operatorname{diag}(\nu) A`. Its rows are graded by the norms; when they span
    more than 1e3 its SVD is computed by one-sided Jacobi, which keeps every singular
    value and the update to ~1e-12 relative accuracy for row norms spread over
    1e-15..1e15 (an eigendecomposition of G, or LAPACK's SVD of the graded factor, has
    errors of eps·σ_max, i.e. a relative error of 1e-4 on a singular value 1e-12 of the
    largest, and nothing left below 1e-16). Cost: K x K work only, a few tenths of a ms,
    up to ~2 ms at K = 8 and ~5 ms at K = 16 when the norms span many orders of
    magnitude. With linearly dependent rows that are not parallel (combinations of
    several others) and norms spread over more than ~1e8, the small singular values are
    intrinsically sensitive to the rounding of the large rows and the update is less
    accurate.

    Properties: positively homogeneous, Aligned(cJ) = c·Aligned(J) for c > 0;
    equivariant under permutations of the tasks (with ``task_weights`` permuted alike);
    the aligned gradients are orthogonal with equal norms :math:`\sigma_{\min}`, so the
    update has inner product :math:`\sigma_{\min}^2\omega_i \ge 0` with each *aligned*
    gradient (not with the original ones in general). For orthogonal gradients it is
    :math:`\sigma_{\min}\sum_i \omega_i g_i / \lVert g_i\rVert` at any ratio of norms
    (``[[r, 0], [0, 1]]`` gives :math:`\min(r, 1)\,(1, 1)` for r in 1e-15..1e15). Zero
    rows get weight 0.

    Args:
        task_weights: :math:`\omega`, one finite non-negative weight per task (default
            all 1).
        rcond: threshold on the eigenvalues of the cosine matrix (unit diagonal, so
            absolute) below which a direction counts as zero, in [0, 1); ``None``
            (default): :func:`cosine_noise_floor` of J's dtype and K.
    """

    def __init__(
        self, task_weights: Sequence[float] | Tensor | None = None, rcond: float | None = None
    ) -> None:
        if task_weights is None:
            self.task_weights: Tensor | None = None
        else:
            tw = torch.as_tensor(task_weights, dtype=torch.float64).flatten().clone()
            if tw.numel() == 0 or not bool((torch.isfinite(tw) & (tw >= 0)).all()):
                raise ValueError(
                    "task_weights must be a non-empty sequence of finite numbers in [0, inf), "
                    f"got {task_weights!r}"
                )
            self.task_weights = tw
        self.rcond = (
            None if rcond is None else check_real("rcond", rcond, low=0.0, high=1.0, open_high=True)
        )

    def threshold(self, k: int) -> float:
        """The eigenvalue threshold on the cosine matrix for K live rows."""
        if self.rcond is not None:
            return self.rcond
        return self.noise_floor(k)

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """The weights :math:`B\\omega` for a float64 Gramian (of a float64 J unless called
        through :meth:`combine`, which passes J's dtype on)."""
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
        diag = np.diag(g)
        live = diag > ZERO_ROW
        w = np.zeros(k)
        if not live.any():
            return as_weights(w, gram)
        # the cosine matrix of the live rows (no PSD repair: its slightly negative
        # eigenvalues, if any, are below the threshold and dropped like the zero ones)
        n = np.sqrt(diag[live])
        cos = np.clip(g[np.ix_(live, live)] / n[:, None] / n[None, :], -1.0, 1.0)
        cos = 0.5 * (cos + cos.T)
        np.fill_diagonal(cos, 1.0)
        w[live] = aligned_weights(cos, n, omega[live], self.threshold(n.shape[0]))
        return as_weights(w, gram)

    def __repr__(self) -> str:
        tw = None if self.task_weights is None else self.task_weights.tolist()
        return f"AlignedMTL(task_weights={tw}, rcond={self.rcond})"


#: Row-norm spread up to which LAPACK's SVD of the graded factor is used directly: its
#: errors are ~eps·σ_max, i.e. ~eps·spread relative to the smallest singular value.
LAPACK_SPREAD = 1e3


def aligned_weights(cos: Array, norms: Array, omega: Array, tol: float) -> Array:
    r""":math:`B\omega` for rows of norms ``norms`` (all positive) and cosines ``cos``.

    1. Rows whose unit vectors coincide up to sign (``1 - |C_ij| <= tol / 32``: the
       rounding level, without the safety factor of the rank decision; transitively)
       are merged: m directions of norms ``ν_g = sqrt(Σ_{i∈g} ‖g_i‖²)``. For exactly
       parallel rows this is exact (J = N J_m with N's columns orthogonal), and it keeps
       duplicated or opposite large rows from drowning small tasks in their rounding.
    2. The rank r is the number of eigenvalues of the merged cosine matrix above ``tol``;
       ``C_m ≈ A Aᵀ`` (A: m x r from the eigenvectors).
    3. The SVD of the graded m x r factor ``diag(ν) A``: LAPACK's when the norms are
       within :data:`LAPACK_SPREAD`, otherwise one-sided Jacobi on its transpose, which
       keeps every singular value to relative accuracy whatever the grading.
    """
    groups, signs = _parallel_groups(cos, tol / NOISE_FACTOR)
    k = norms.shape[0]
    m = len(groups)
    reps = [g[0] for g in groups]
    nu = np.empty(m)
    incidence = np.zeros((k, m))  # column g: the unit vector (s_i ‖g_i‖ / ν_g)_{i ∈ g}
    for col, members in enumerate(groups):
        n = norms[members]
        top = float(n.max())
        nu[col] = top * float(np.sqrt(np.sum((n / top) ** 2)))
        incidence[members, col] = signs[members] * (n / nu[col])
    evals, evecs = np.linalg.eigh(cos[np.ix_(reps, reps)])
    keep = evals > max(tol, 0.0)
    if not keep.any():  # pragma: no cover - C has unit diagonal, so λ_max ≥ 1 > tol
        keep = evals >= evals.max()
    factor = nu[:, None] * (evecs[:, keep] * np.sqrt(evals[keep]))
    u_m, sigma = graded_svd(factor)
    v = incidence @ u_m
    ratio = float(sigma.min()) / sigma  # σ_min / σ_r ∈ (0, 1]: no overflow
    return np.asarray((v * ratio) @ (v.T @ omega), dtype=np.float64)


def _parallel_groups(cos: Array, tol: float) -> tuple[list[list[int]], Array]:
    """Groups of rows with the same direction up to sign, and each row's sign relative to
    the first row of its group."""
    k = cos.shape[0]
    close = np.argwhere(np.triu(1.0 - np.abs(cos) <= tol, 1))
    if close.shape[0] == 0:
        return [[i] for i in range(k)], np.ones(k)
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in close:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(k):
        members.setdefault(root(i), []).append(i)
    groups = list(members.values())
    signs = np.ones(k)
    for g in groups:
        signs[g] = np.where(cos[g[0], g] < 0, -1.0, 1.0)
    return groups, signs


def _round_robin(m: int) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """The rounds of a cyclic Jacobi sweep over m columns: each round is a set of disjoint
    pairs (p, q), p < q, and every pair appears once per sweep (the circle method)."""
    players = list(range(m)) + ([-1] if m % 2 else [])
    n = len(players)
    rounds = []
    for _ in range(n - 1):
        pairs = [
            (min(players[i], players[n - 1 - i]), max(players[i], players[n - 1 - i]))
            for i in range(n // 2)
            if players[i] >= 0 and players[n - 1 - i] >= 0
        ]
        if pairs:
            p, q = zip(*pairs, strict=True)
            rounds.append((np.array(p, dtype=np.intp), np.array(q, dtype=np.intp)))
        players = [players[0], players[-1], *players[1:-1]]
    return rounds


def graded_svd(factor: Array, max_sweeps: int = 40) -> tuple[Array, Array]:
    """Left singular vectors (m x r) and singular values (r,) of an m x r matrix of full
    column rank whose rows may differ by many orders of magnitude.

    Rows within :data:`LAPACK_SPREAD` of each other: LAPACK. Otherwise one-sided
    (Hestenes) Jacobi on the columns of ``factorᵀ`` (its rows, scaled by the largest row
    norm): the rotations that make them orthogonal are the left singular vectors, and
    each singular value keeps a relative accuracy of ~eps·cond(A) (Demmel & Veselić,
    1992, *Jacobi's method is more accurate than QR*) instead of eps·σ_max. The r largest
    of the m column norms are the singular values (m > r when merged rows are still
    linearly dependent).
    """
    m, r = factor.shape
    row_norms = np.linalg.norm(factor, axis=1)
    top = float(row_norms.max())
    if float(row_norms.min()) * LAPACK_SPREAD >= top:
        u, sigma, _ = np.linalg.svd(factor, full_matrices=False)
        return u, sigma
    x = np.ascontiguousarray((factor / top).T)  # r x m, column j = row j of the factor
    rot = np.eye(m)
    tol = m * float(np.finfo(np.float64).eps)
    rounds = _round_robin(m)
    with np.errstate(over="ignore", divide="ignore"):
        _sweeps(x, rot, rounds, tol, max_sweeps)
    sigma = np.linalg.norm(x, axis=0)
    order = np.argsort(-sigma, kind="stable")[:r]
    return rot[:, order], top * sigma[order]


def _sweeps(
    x: Array,
    rot: Array,
    rounds: list[tuple[NDArray[np.intp], NDArray[np.intp]]],
    tol: float,
    max_sweeps: int,
) -> None:
    """Jacobi sweeps on the columns of ``x`` (in place), accumulating the rotations in
    ``rot``, until no pair's cosine exceeds ``tol``."""
    for _ in range(max_sweeps):
        turned = False
        for p, q in rounds:  # disjoint pairs: rotated together
            xp, xq = x[:, p], x[:, q]
            a = np.einsum("ij,ij->j", xp, xp)
            b = np.einsum("ij,ij->j", xq, xq)
            g = np.einsum("ij,ij->j", xp, xq)
            act = (g != 0.0) & (np.abs(g) > tol * np.sqrt(a * b))
            if not act.any():
                continue
            turned = True
            zeta = np.where(act, (b - a) / np.where(act, 2.0 * g, 1.0), 0.0)
            big = np.abs(zeta) > 1e150  # tan of the angle without overflow
            safe = np.where(big, 0.0, zeta)
            t = np.where(
                big,
                0.5 / np.where(big, zeta, 1.0),
                np.copysign(1.0, safe) / (np.abs(safe) + np.hypot(1.0, safe)),
            )
            t = np.where(act, t, 0.0)
            c = 1.0 / np.hypot(1.0, t)
            sn = c * t
            x[:, p], x[:, q] = c * xp - sn * xq, sn * xp + c * xq
            rp, rq = rot[:, p], rot[:, q]
            rot[:, p], rot[:, q] = c * rp - sn * rq, sn * rp + c * rq
        if not turned:
            break
