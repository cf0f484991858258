"""mtlkit against TorchJD, an independent implementation of many of the same methods.

For every method both libraries have, ``strategy.combine(J)`` is compared with TorchJD's
aggregator on the same float64 J: generic matrices (K = 2..8), row norms spread over
1e-6..1e6, and linearly dependent rows (duplicated, opposite, combinations, zero rows),
sampled with :mod:`mtlkit.testing`. Where the two agree, agreement is asserted relative
to the update's scale ``Σ_i |w_i| ‖g_i‖``; each deliberate difference is a named
``test_convention_*`` asserting the relation that holds instead.

Pairs: Sum/Sum, Mean/Mean, Weighted/Constant, MGDA/MGDA, UPGrad/UPGrad,
DualProj/DualProj, PCGrad/PCGrad, GradVac/GradVac, GradDrop/GradDrop, IMTL-G/IMTLG,
CAGrad/CAGrad, Nash-MTL/NashMTL, Aligned-MTL/AlignedMTL, ConFIG/ConFIG, RLW/Random.
TorchJD-only aggregators (Krum, TrimmedMean, PCD, FairGrad, ExcessMTL, MoDo, SDMGrad,
CR-MOGM) and mtlkit-only strategies (GradNorm, uncertainty, DWA, FAMO) have no partner.
TorchJD aggregators whose optional solvers are not installed (cvxpy for CAGrad and
NashMTL, quadprog for the default dual-cone projector) are skipped with the reason.

At the end, the pairwise losses of :mod:`mtlkit.losses` against sentence-transformers
(skipped when it is not installed).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from torch import Tensor

import mtlkit
from mtlkit.strategies import (
    IMTLG,
    MGDA,
    RLW,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    GradDrop,
    GradVac,
    Mean,
    NashMTL,
    PCGrad,
    Sum,
    UPGrad,
    Weighted,
)
from mtlkit.testing import jacobians, random_jacobians, rank_deficient_jacobians, update_scale

torchjd = pytest.importorskip("torchjd")
tja = pytest.importorskip("torchjd.aggregation")

FEW = settings(max_examples=15, deadline=None)
F64 = torch.float64


# ----------------------------------------------------------------------------- samples

#: generic rows, K = 2..8, norms 1e-1..1e1
generic = random_jacobians((2, 8), (1, 6), log_scale=(-1.0, 1.0))
#: generic rows with norms over 1e-6..1e6
extreme = random_jacobians((2, 8), (1, 6), log_scale=(-6.0, 6.0))
#: every awkward row kind (zero, duplicate, opposite, combination), norms 1e-3..1e3
awkward = jacobians((2, 8), (1, 10), dtype=F64, log_scale=(-3.0, 3.0))
#: at least one row a combination of earlier ones
dependent = rank_deficient_jacobians((2, 8), (1, 10), dtype=F64, log_scale=(-1.0, 1.0))


def scale_of(matrix: Tensor, strategy: mtlkit.Strategy) -> float:
    """``Σ_i |w_i| ‖g_i‖`` with mtlkit's weights: the size of the update's rounding."""
    stats = strategy.last_stats
    weights = stats.weights if stats is not None else torch.ones(matrix.shape[0], dtype=F64)
    return max(update_scale(matrix, weights), float(matrix.norm(dim=1).max()) * 1e-300)


def assert_agree(ours: Tensor, theirs: Tensor, scale: float, rtol: float, what: str) -> None:
    err = float((ours.double() - theirs.double()).norm())
    assert err <= rtol * scale + 1e-300, f"{what}: differ by {err:.3g} (scale {scale:.3g})"


def needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"TorchJD's aggregator needs {', '.join(missing)} (not installed)"
    )


@contextmanager
def fixed_order() -> Iterator[None]:
    """TorchJD draws visiting orders with the global ``torch.randperm``: make it the
    identity for the block, so each task visits the others in ascending order."""
    with mock.patch.object(torch, "randperm", lambda n, *a, **kw: torch.arange(n)):
        yield


def ascending_orders(k: int) -> Tensor:
    return torch.tensor([[j for j in range(k) if j != i] for i in range(k)], dtype=torch.long)


class AscendingPCGrad(PCGrad):
    """PCGrad visiting the other tasks in ascending order (no random draw)."""

    def draw_orders(self, k: int) -> Tensor:
        return ascending_orders(k)


class AscendingGradVac(GradVac):
    """GradVac visiting the other tasks in ascending order (no random draw)."""

    def draw_orders(self, k: int) -> Tensor:
        return ascending_orders(k)


# ----------------------------------------------------------------------------- exact agreement


@FEW
@given(matrix=st.one_of(generic, extreme, awkward))
def test_sum_mean_weighted(matrix: Tensor) -> None:
    k = matrix.shape[0]
    w = torch.linspace(0.5, 2.0, k, dtype=F64)
    scale = float(matrix.norm(dim=1).sum()) * 2.0
    assert_agree(Sum().combine(matrix), tja.Sum()(matrix), scale, 1e-14, "sum")
    assert_agree(Mean().combine(matrix), tja.Mean()(matrix), scale, 1e-14, "mean")
    assert_agree(Weighted(w).combine(matrix), tja.Constant(w)(matrix), scale, 1e-14, "weighted")


@FEW
@given(matrix=st.one_of(generic, extreme, awkward))
def test_config(matrix: Tensor) -> None:
    """Equal, except where g_v = Ĵ⁺1 = 0 (see :func:`test_convention_config_zero_direction`)."""
    d = ConFIG().combine(matrix)
    theirs = tja.ConFIG()(matrix)
    scale = float(matrix.norm(dim=1).sum())
    if not bool(d.any()):
        assert float(theirs.norm()) <= 1e-6 * scale
    else:
        assert_agree(d, theirs, scale, 1e-9, "config")


def test_convention_config_zero_direction() -> None:
    """When 1 is orthogonal to the range of C (e.g. two exactly opposite gradients),
    g_v = Ĵ⁺1 = 0 and the direction is undefined: mtlkit returns 0; TorchJD normalises
    the rounding noise of g_v with ``F.normalize`` (eps 1e-12) and returns a tiny update
    along it."""
    for rows in ([[1.0], [-10.0]], [[1.0, 2.0], [-3.0, -6.0]], [[1.0, 0.0], [-2.0, 0.0]]):
        matrix = torch.tensor(rows, dtype=F64)
        assert torch.equal(ConFIG().combine(matrix), torch.zeros(matrix.shape[1], dtype=F64))
        theirs = tja.ConFIG()(matrix)
        assert float(theirs.norm()) <= 1e-6 * float(matrix.norm(dim=1).sum())


@FEW
@given(matrix=st.one_of(generic, dependent))
def test_aligned_mtl_with_unit_preferences(matrix: Tensor) -> None:
    """Where TorchJD's rank decision on G keeps every task (norms within 1e±1 here).
    Scale: the aligned gradients have norm σ_min each, so K σ_min bounds the update."""
    k = matrix.shape[0]
    d = AlignedMTL().combine(matrix)
    theirs = tja.AlignedMTL(pref_vector=torch.ones(k, dtype=F64))(matrix)
    sigma = torch.linalg.svdvals(matrix)
    sigma_min = float(sigma[sigma > 1e-8 * sigma.max()].min())
    assert_agree(d, theirs, k * sigma_min, 1e-8, "aligned-mtl")


@FEW
@given(matrix=generic)
def test_imtlg(matrix: Tensor) -> None:
    ours = IMTLG()
    d = ours.combine(matrix)
    assert_agree(d, tja.IMTLG()(matrix), scale_of(matrix, ours), 1e-9, "imtl-g")


@FEW
@given(matrix=st.one_of(generic, awkward), seed=st.integers(0, 2**31))
def test_rlw_is_random(matrix: Tensor, seed: int) -> None:
    """TorchJD's Random draws softmax(N(0, I)) from the global generator, mtlkit's RLW
    from its own: seeded alike, the draws and so the updates are equal."""
    k = matrix.shape[0]
    ours = RLW(seed=seed).combine(matrix, torch.ones(k))
    torch.manual_seed(seed)
    theirs = tja.Random()(matrix)
    assert_agree(ours, theirs, float(matrix.norm(dim=1).sum()), 1e-14, "rlw")


@FEW
@given(matrix=st.one_of(generic, extreme, awkward))
def test_pcgrad_with_a_fixed_order(matrix: Tensor) -> None:
    ours = AscendingPCGrad()
    d = ours.combine(matrix)
    with fixed_order():
        theirs = tja.PCGrad()(matrix)
    assert_agree(d, theirs, scale_of(matrix, ours), 1e-12, "pcgrad")


@FEW
@given(matrix=st.one_of(generic, extreme))
def test_pcgrad_two_tasks_needs_no_order(matrix: Tensor) -> None:
    two = matrix[:2]
    ours = PCGrad(seed=123)
    assert_agree(ours.combine(two), tja.PCGrad()(two), scale_of(two, ours), 1e-12, "pcgrad")


@FEW
@given(
    steps=st.lists(random_jacobians(4, 3, log_scale=(-1.0, 1.0)), min_size=4, max_size=4),
    beta=st.sampled_from([0.01, 0.5, 1.0]),
)
def test_gradvac_with_a_fixed_order_over_steps(steps: list[Tensor], beta: float) -> None:
    """Same targets carried over four calls; TorchJD's ``eps`` (added to denominators)
    set to 0, see :func:`test_convention_gradvac_defaults`."""
    ours = AscendingGradVac(beta=beta)
    theirs = tja.GradVac(beta=beta, eps=0.0)
    for matrix in steps:
        d = ours.combine(matrix)
        with fixed_order():
            other = theirs(matrix)
        assert_agree(d, other, scale_of(matrix, ours) * 4, 1e-10, "gradvac")


class FixedDrawGradDrop(GradDrop):
    """GradDrop with given uniform draws."""

    def __init__(self, u: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.u = u

    def draw_uniform(self, p: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return self.u.to(device=device, dtype=dtype)


@FEW
@given(matrix=st.one_of(generic, extreme, awkward), seed=st.integers(0, 2**31), leaky=st.booleans())
def test_graddrop_with_the_same_draws(matrix: Tensor, seed: int, leaky: bool) -> None:
    """TorchJD draws U with the global ``torch.rand``; both get the same U here."""
    k, p = matrix.shape
    u = torch.rand(p, generator=torch.Generator().manual_seed(seed), dtype=F64)
    leak = torch.linspace(0.1, 0.9, k, dtype=F64) if leaky else None
    ours = FixedDrawGradDrop(u, leak=0.0 if leak is None else leak.tolist())
    with mock.patch.object(torch, "rand", lambda *a, **kw: u.clone()):
        theirs = tja.GradDrop(leak=leak)(matrix)
    scale = float(matrix.abs().sum())
    assert_agree(ours.combine(matrix), theirs, scale, 1e-14, "graddrop")


# ----------------------------------------------------------------------------- projections


class ExactProjector(torchjd.linalg.DualConeProjector):  # type: ignore[misc]
    """The dual-cone projection QP ``min_{v >= u} vᵀGv`` solved exactly (test reference).

    On the cosine matrix (``y = D v``, ``D = diag(‖g_i‖)``), with the bounded variable
    ``z = y - D u >= 0``: ``min_z ‖Rᵀ(z + D u)‖`` with ``C = R Rᵀ``, a non-negative least
    squares problem (scipy's ``nnls``). Zero rows keep ``v_i = u_i``.
    """

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:  # noqa: N803 (TorchJD's names)
        g = G.detach().cpu().double().numpy()
        n = np.sqrt(np.clip(np.diag(g), 0.0, None))
        live = n > 0
        c = g[np.ix_(live, live)] / np.outer(n[live], n[live])
        evals, evecs = np.linalg.eigh(0.5 * (c + c.T))
        r_t = (evecs * np.sqrt(np.clip(evals, 0.0, None))).T  # C = RRᵀ, R = Q√Λ
        u_all = U.detach().cpu().double().numpy().reshape(-1, g.shape[0])
        out = u_all.copy()
        if not live.any():  # nothing to project on (and scipy's nnls fails on empty input)
            return torch.from_numpy(out.reshape(U.shape)).to(G.dtype)
        for row, u in zip(out, u_all, strict=True):
            lower = n[live] * u[live]
            z, _ = nnls(r_t, -(r_t @ lower), maxiter=50 * g.shape[0])
            row[live] = (lower + z) / n[live]
        return torch.from_numpy(out.reshape(U.shape)).to(G.dtype)


@FEW
@given(matrix=st.one_of(generic, extreme, awkward))
def test_upgrad_and_dualproj_with_an_exact_projector(matrix: Tensor) -> None:
    """TorchJD's UPGrad / DualProj logic (mean preferences, one projection per row or of
    the mean) with an exact projector: equal to mtlkit's."""
    for ours, theirs in (
        (UPGrad(), tja.UPGrad(projector=ExactProjector())),
        (DualProj(), tja.DualProj(projector=ExactProjector())),
    ):
        d = ours.combine(matrix)
        assert_agree(d, theirs(matrix), scale_of(matrix, ours), 1e-8, type(ours).__name__)


@needs("quadprog", "qpsolvers")
@FEW
@given(matrix=st.one_of(generic, awkward))
def test_convention_upgrad_dualproj_regularised_projection(matrix: Tensor) -> None:
    """TorchJD's default projector solves the QP on the trace-normalised Gramian plus
    1e-4·I (``reg_eps``), an approximation; mtlkit solves it exactly (ridge 1e-15 on the
    cosine matrix). mtlkit's update is in the dual cone and no farther from the projected
    vector than TorchJD's."""
    j = matrix.double()
    for ours, theirs, target in (
        (DualProj(), tja.DualProj(), j.mean(dim=0)),
        (UPGrad(), tja.UPGrad(), None),
    ):
        d = ours.combine(matrix)
        scale = scale_of(matrix, ours)
        assert float((j @ d).min()) >= -1e-9 * scale * float(j.norm(dim=1).max())
        if target is not None:
            assert (
                float((d - target).norm()) <= float((theirs(matrix) - target).norm()) + 1e-9 * scale
            )


# ----------------------------------------------------------------------------- conventions


def test_convention_aligned_mtl_default_preferences() -> None:
    """TorchJD's default preference vector is the mean (1/K each); mtlkit's default task
    weights are all 1 (the sum of the aligned gradients, Algorithm 1 of the paper): with
    the defaults, mtlkit's update is K times TorchJD's."""
    gen = torch.Generator().manual_seed(0)
    for k in range(2, 9):
        matrix = torch.randn(k, k + 3, generator=gen, dtype=F64)
        ours = AlignedMTL()
        d = ours.combine(matrix)
        assert_agree(d, k * tja.AlignedMTL()(matrix), scale_of(matrix, ours), 1e-9, "aligned")


@pytest.mark.parametrize("log_r", range(-12, 13, 2))
def test_convention_aligned_mtl_rank_of_small_tasks(log_r: int) -> None:
    """TorchJD decides the rank on G (eigenvalues above K·eps·λ_max): a task whose
    gradient is more than ~1/sqrt(K eps) ≈ 5e7 times smaller than the largest is dropped.
    mtlkit decides it on the cosine matrix, where rounding is the same for every task:
    for orthogonal rows it returns the paper's σ_min Σ g_i/‖g_i‖ at any ratio. Where
    TorchJD keeps both tasks the two agree."""
    r = 10.0**log_r
    for matrix in (
        torch.tensor([[r, 0.0], [0.0, 1.0]], dtype=F64),
        torch.tensor([[1.0, 0.0], [0.0, r]], dtype=F64),
    ):
        ours = AlignedMTL().combine(matrix)
        paper = min(r, 1.0) * torch.ones(2, dtype=F64)
        torch.testing.assert_close(ours, paper, rtol=1e-12, atol=0)
        theirs = tja.AlignedMTL(pref_vector=torch.ones(2, dtype=F64))(matrix)
        ratio = min(r, 1.0 / r)
        if ratio**2 > 2 * 2 * torch.finfo(F64).eps:
            torch.testing.assert_close(theirs, paper, rtol=1e-12, atol=0)
        else:
            assert float(theirs.min()) == 0.0  # the small task is gone
            assert float((theirs - paper).norm()) > 0.5 * float(paper.norm())


@FEW
@given(matrix=st.one_of(generic, extreme, awkward))
def test_convention_mgda_exact_vs_frank_wolfe(matrix: Tensor) -> None:
    """TorchJD runs Frank-Wolfe (Sener & Koltun, Algorithm 2) until the step is below
    1e-3 or for 100 iterations; mtlkit solves the min-norm problem exactly. mtlkit's
    update satisfies the optimality conditions (weights on the simplex, d·g_i ≥ ‖d‖²)
    and is never longer than TorchJD's."""
    ours = MGDA()
    d = ours.combine(matrix)
    assert ours.last_stats is not None
    w = ours.last_stats.weights
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) < 1e-12
    scale = scale_of(matrix, ours)
    dots = matrix @ d
    assert bool((dots - d @ d >= -1e-9 * matrix.norm(dim=1) * scale).all())
    theirs = tja.MGDA()(matrix)
    assert float(d.norm()) <= float(theirs.norm()) * (1 + 1e-12) + 1e-12 * scale


@FEW
@given(matrix=random_jacobians(2, (1, 6), log_scale=(-3.0, 3.0)))
def test_mgda_two_tasks_agree(matrix: Tensor) -> None:
    """For K = 2 one Frank-Wolfe step with exact line search is exact: the two agree."""
    ours = MGDA()
    d = ours.combine(matrix)
    assert_agree(d, tja.MGDA()(matrix), scale_of(matrix, ours), 1e-9, "mgda")


def test_convention_gradvac_defaults() -> None:
    """TorchJD's GradVac defaults to beta = 0.5 and adds eps = 1e-8 to the denominators of
    the cosines and of the correction; mtlkit's defaults to beta = 0.01 (the paper's
    choice) with no eps (zero gradients are skipped, the target is clamped to
    |φ̂| ≤ 1 - 1e-8 in the correction). With beta and eps = 0 set alike they agree
    (:func:`test_gradvac_with_a_fixed_order_over_steps`); with TorchJD's eps the
    difference is of order eps / ‖g‖²."""
    assert tja.GradVac().beta == 0.5 and tja.GradVac().eps == 1e-8
    assert GradVac().beta == 0.01


@FEW
@given(matrix=dependent)
def test_convention_imtlg_dependent_rows(matrix: Tensor) -> None:
    """With linearly dependent rows the IMTL-G conditions (equal projections d·u_i,
    Σα_i = 1) have many solutions. TorchJD takes the minimum-norm α = G⁺‖g‖ (normalised);
    mtlkit β = α ⊙ ‖g‖ ∝ C⁺1 on the cosine matrix (d = 0 when 1 is not in C's range). Every
    solution's update is a multiple of Û⁺1, so the two updates are parallel; mtlkit's
    satisfies the conditions."""
    ours = IMTLG()
    d = ours.combine(matrix)
    assert ours.last_stats is not None
    alpha = ours.last_stats.weights
    norms = matrix.norm(dim=1)
    live = norms > 0
    scale = scale_of(matrix, ours)
    if abs(float(alpha.sum()) - 1.0) > 1e-9:  # mtlkit's documented fallback to the mean
        return
    proj = (matrix[live] @ d) / norms[live]
    assert float(proj.max() - proj.min()) <= 1e-8 * scale
    theirs = tja.IMTLG()(matrix)
    cross = float(d.norm() * theirs.norm())
    if cross > 1e-6 * scale**2:
        cos = abs(float(d @ theirs)) / cross
        assert cos >= 1 - 1e-6


@FEW
@given(matrix=extreme)
def test_convention_imtlg_extreme_norms(matrix: Tensor) -> None:
    """TorchJD computes pinv(G), whose conditioning is that of the norms squared (up to
    1e24 here); mtlkit solves on the cosine matrix. mtlkit's update meets the paper's
    conditions (d·u_i equal, weights summing to 1) to 1e-9 of the update's scale, and
    TorchJD's is no closer to them."""
    ours = IMTLG()
    d = ours.combine(matrix)
    assert ours.last_stats is not None
    units = matrix / matrix.norm(dim=1, keepdim=True)
    scale = scale_of(matrix, ours)

    def spread(update: Tensor) -> float:
        proj = units @ update
        return float(proj.max() - proj.min())

    assert abs(float(ours.last_stats.weights.sum()) - 1.0) <= 1e-9
    assert spread(d) <= 1e-9 * scale
    theirs = tja.IMTLG()(matrix)
    assert spread(d) <= spread(theirs) + 1e-9 * scale


# ----------------------------------------------------------------------------- cvxpy-based


def primal_value(matrix: Tensor, d: Tensor) -> float:
    """CAGrad's primal objective min_i g_i·d."""
    return float((matrix @ d).min())


def make_or_skip(factory: Callable[[], Any]) -> Any:
    try:
        return factory()
    except ImportError as exc:
        pytest.skip(f"TorchJD's aggregator needs an optional solver: {exc}")


@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
def test_convention_cagrad_exact_primal(c: float) -> None:
    """TorchJD solves the dual with cvxpy (CLARABEL) on the trace-normalised Gramian and
    returns a zero update when ‖g_w‖ < 1e-4 (0 nearly in the hull); mtlkit solves the
    dual exactly and, when g_w = 0, returns the primal maximiser closest to g_0. mtlkit's
    update is feasible (‖d - g_0‖ ≤ c‖g_0‖) and TorchJD's is no better on the paper's
    objective min_i g_i·d."""
    theirs = make_or_skip(lambda: tja.CAGrad(c=c))
    gen = torch.Generator().manual_seed(1)
    for k in (2, 3, 5, 8):
        matrix = torch.randn(k, 4, generator=gen, dtype=F64)
        d = CAGrad(c=c).combine(matrix)
        g0 = matrix.mean(dim=0)
        scale = float(matrix.norm(dim=1).max() * g0.norm()) * (1 + c)
        assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9)
        other = theirs(matrix)
        assert primal_value(matrix, d) >= primal_value(matrix, other) - 1e-7 * scale


def test_convention_nash_mtl_exact_bargaining() -> None:
    """TorchJD follows the paper's code: a sequence of convex approximations (cvxpy, ECOS)
    and an update clipped to norm 1 (``max_norm``); mtlkit solves Gα = 1/α exactly
    (update norm √K). The bargaining direction maximises Σ_i log(g_i·u) over unit u:
    mtlkit's is no worse than TorchJD's."""
    gen = torch.Generator().manual_seed(2)
    for k in (2, 3, 5):
        theirs = make_or_skip(lambda k=k: tja.NashMTL(n_tasks=k))
        matrix = torch.randn(k, k + 4, generator=gen, dtype=F64)
        d = NashMTL().combine(matrix)

        def value(update: Tensor, matrix: Tensor = matrix) -> float:
            dots = matrix @ (update / update.norm())
            return float(torch.log(dots).sum()) if bool((dots > 0).all()) else -math.inf

        assert value(d) >= value(theirs(matrix)) - 1e-9


# ----------------------------------------------------------------------------- losses

SENTENCE_TRANSFORMERS = importlib.util.find_spec("sentence_transformers") is not None


@pytest.fixture(scope="module")
def st_losses() -> Any:
    if not SENTENCE_TRANSFORMERS:
        pytest.skip("sentence-transformers is not installed")
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # older layout
        from sentence_transformers import losses
    return losses


def embeddings(n: int, d: int, seed: int, count: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=F64) for _ in range(count)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_against_sentence_transformers(st_losses: Any, seed: int) -> None:
    """Same values for the same embeddings. Conventions: sentence-transformers'
    ContrastiveLoss has the paper's factor 1/2 (mtlkit's does not: ×0.5) and defaults to
    the cosine distance with margin 0.5; its TripletLoss defaults to the Euclidean
    distance with margin 5 (mtlkit: margin 1), and its Euclidean distance is the plain
    ‖a - b‖ where mtlkit's (like :class:`torch.nn.TripletMarginLoss`) is ‖a - b + 1e-6‖:
    the triplet losses agree to ~1e-6, the others to rounding."""
    from mtlkit import losses as ml

    a, p, n = embeddings(8, 16, seed, 3)
    labels = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0], dtype=F64)
    scores = torch.rand(8, generator=torch.Generator().manual_seed(seed), dtype=F64)

    def close(ours: Tensor, theirs: Tensor) -> None:
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-12, atol=1e-12)

    mnrl = st_losses.MultipleNegativesRankingLoss(None)
    close(ml.multiple_negatives_ranking_loss(a, p), mnrl.compute_loss_from_embeddings([a, p], None))
    close(
        ml.multiple_negatives_ranking_loss(a, p, n),
        mnrl.compute_loss_from_embeddings([a, p, n], None),
    )
    for scale in (20.0, 7.0):
        ours_mnrl = ml.multiple_negatives_ranking_loss(a, p, scale=scale)
        theirs_mnrl = st_losses.MultipleNegativesRankingLoss(None, scale=scale)
        close(ours_mnrl, theirs_mnrl.compute_loss_from_embeddings([a, p], None))
        cosent = st_losses.CoSENTLoss(None, scale=scale)
        close(
            ml.cosent_loss(a, p, scores, scale=scale),
            cosent.compute_loss_from_embeddings([a, p], scores),
        )
    contrastive = st_losses.ContrastiveLoss(None)  # cosine distance, margin 0.5
    close(
        0.5 * ml.contrastive_loss(a, p, labels, margin=0.5, distance="cosine"),
        contrastive.compute_loss_from_embeddings([a, p], labels),
    )
    triplet = st_losses.TripletLoss(None)  # Euclidean (no eps), margin 5
    torch.testing.assert_close(
        ml.triplet_loss(a, p, n, margin=5.0),
        triplet.compute_loss_from_embeddings([a, p, n], None),
        rtol=0,
        atol=1e-5,
    )
