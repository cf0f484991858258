"""mtlkit.testing: the property suite passes on every registered strategy, catches broken
ones, samples what it says; and the regressions of Aligned-MTL, ConFIG and CAGrad found
by comparing with independent implementations."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from torch import Tensor

import mtlkit
from mtlkit import Context, Strategy
from mtlkit.strategies import STRATEGIES, AlignedMTL, CAGrad, ConFIG, Sum, register
from mtlkit.testing import (
    BUILTIN_CLAIMS,
    PROPERTIES,
    Claims,
    PropertyFailure,
    check_strategy,
    claims_for,
    duplicated_jacobians,
    extreme_jacobians,
    jacobians,
    opposite_jacobians,
    random_jacobians,
    rank_deficient_jacobians,
    zero_row_jacobians,
)

F64 = torch.float64
FEW = settings(max_examples=15, deadline=None)


# ----------------------------------------------------------------------------- user strategies


class UnitSum(Strategy):
    """The sum of the unit gradients (zero rows skipped): scale-invariant, not
    homogeneous; K = 1 gives the unit row."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        norms = matrix.norm(dim=1, keepdim=True)
        units = torch.where(norms > 0, matrix / norms.clamp(min=1e-300), 0.0)
        return units.sum(dim=0)


UNIT_SUM_CLAIMS = Claims(homogeneous=False, scale_invariant=True, single_task="parallel")


class NaNOnZeroRows(UnitSum):
    """Divides by the norms without a guard: NaN for a zero row."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        return (matrix / matrix.norm(dim=1, keepdim=True)).sum(dim=0)


class IndexWeighted(Strategy):
    """Weights the rows 1, 2, ..., K: depends on the task order."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        w = torch.arange(1, matrix.shape[0] + 1, dtype=matrix.dtype)
        return w @ matrix


class GlobalRandom(Strategy):
    """Random weights from torch's global generator: not reproducible from a fresh start."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        return torch.rand(matrix.shape[0], dtype=matrix.dtype) @ matrix


class ForgetfulCounter(Strategy):
    """Scales by the number of calls but forgets to save it."""

    def __init__(self) -> None:
        self.calls = 0

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        self.calls += 1
        return matrix.sum(dim=0) * self.calls


class SquaredNorm(Strategy):
    """Sum times the largest norm: degree 2, not 1."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        return matrix.sum(dim=0) * matrix.norm(dim=1).max()


class Halved(Strategy):
    """Half the sum: K = 1 gives half the row (parallel, not exact)."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        return 0.5 * matrix.sum(dim=0)


@pytest.fixture
def registered_unit_sum() -> Iterator[str]:
    register("unit-sum-test")(UnitSum)
    yield "unit-sum-test"
    STRATEGIES._classes.pop("unit-sum-test")


# ----------------------------------------------------------------------------- the suite


@pytest.mark.parametrize("name", mtlkit.list_strategies())
def test_every_registered_strategy_passes(name: str) -> None:
    def factory(k: int) -> Strategy:
        options: dict[str, Any] = (
            {"weights": [1.0 + i for i in range(k)]} if name == "weighted" else {}
        )
        return mtlkit.get_strategy(name, context=Context(num_tasks=k, seed=0), **options)

    checked = check_strategy(factory, claims=claims_for(name), max_examples=6)
    assert {"finite", "zero_rows", "deterministic", "state"} <= set(checked)


def test_every_registered_strategy_has_claims() -> None:
    assert set(mtlkit.list_strategies()) <= set(BUILTIN_CLAIMS)


def test_user_strategy_registered_in_the_test(registered_unit_sum: str) -> None:
    assert registered_unit_sum in mtlkit.list_strategies()
    checked = check_strategy(registered_unit_sum, claims=UNIT_SUM_CLAIMS, max_examples=10)
    assert checked == [p for p in PROPERTIES if p != "non_conflicting"]
    # an instance works too (deep-copied for every call)
    check_strategy(UnitSum(), claims=UNIT_SUM_CLAIMS, max_examples=5)


@pytest.mark.parametrize(
    ("strategy", "claims", "prop"),
    [
        (NaNOnZeroRows(), UNIT_SUM_CLAIMS, "finite"),
        (NaNOnZeroRows(), UNIT_SUM_CLAIMS, "zero_rows"),
        (Sum(), Claims(non_conflicting=True), "non_conflicting"),
        (UnitSum(), Claims(), "scaling"),  # claims homogeneity, is scale-invariant
        (SquaredNorm(), Claims(), "scaling"),
        (IndexWeighted(), Claims(), "permutation"),
        (GlobalRandom(), Claims(permutation_invariant=False), "deterministic"),
        (ForgetfulCounter(), Claims(), "state"),
        (Halved(), Claims(single_task="exact"), "single_task"),
        (UnitSum(), Claims(homogeneous=False, single_task="exact"), "single_task"),
    ],
)
def test_broken_strategies_fail(strategy: Strategy, claims: Claims, prop: str) -> None:
    with pytest.raises(PropertyFailure) as info:
        check_strategy(strategy, claims=claims, properties=[prop], max_examples=50)
    assert info.value.property == prop
    assert isinstance(info.value, AssertionError)


def test_broken_strategy_fails_the_whole_suite() -> None:
    with pytest.raises(PropertyFailure, match="non-finite"):
        check_strategy(lambda k: NaNOnZeroRows(), claims=UNIT_SUM_CLAIMS, max_examples=50)


def test_claims_and_options_are_validated() -> None:
    with pytest.raises(ValueError, match="homogeneous"):
        Claims(homogeneous=True, scale_invariant=True)
    with pytest.raises(ValueError, match="rtol"):
        Claims(rtol=0.0)
    with pytest.raises(ValueError, match="unknown properties"):
        check_strategy("sum", properties=["speed"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        check_strategy(42)  # type: ignore[arg-type]
    assert Claims().degree == 1 and Claims.minimal().degree is None
    assert claims_for("Nash_MTL").degree == 0
    assert claims_for("not-registered") == Claims.minimal()


def test_import_without_hypothesis_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "mtlkit.testing")
    with pytest.raises(ImportError, match="pip install hypothesis"):
        importlib.import_module("mtlkit.testing")


def test_mtlkit_does_not_import_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import mtlkit, mtlkit.strategies, mtlkit.losses, mtlkit.schedulers\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ----------------------------------------------------------------------------- samplers


@FEW
@given(matrix=jacobians(k=(1, 8), p=(1, 12)))
def test_jacobians_shapes_and_norms(matrix: Tensor) -> None:
    assert matrix.dim() == 2 and 1 <= matrix.shape[0] <= 8 and 1 <= matrix.shape[1] <= 12
    assert matrix.dtype in (torch.float64, torch.float32)
    norms = matrix.double().norm(dim=1)
    live = norms[norms > 0]
    assert bool(((live > 1e-15 * 0.99) & (live < 1e15 * 1.01)).all())


@FEW
@given(matrix=extreme_jacobians(k=(2, 6), dtype=F64))
def test_extreme_jacobians(matrix: Tensor) -> None:
    assert bool((matrix.norm(dim=1) > 0).all())


@FEW
@given(matrix=zero_row_jacobians(dtype=F64))
def test_zero_row_jacobians(matrix: Tensor) -> None:
    assert not bool(matrix.any(dim=1).all())


@FEW
@given(matrix=duplicated_jacobians(dtype=F64))
def test_duplicated_jacobians(matrix: Tensor) -> None:
    units = matrix / matrix.norm(dim=1, keepdim=True)
    cos = units @ units.T - torch.eye(matrix.shape[0], dtype=F64)
    assert float(cos.max()) > 1 - 1e-12


@FEW
@given(matrix=opposite_jacobians(dtype=F64))
def test_opposite_jacobians(matrix: Tensor) -> None:
    k = matrix.shape[0]
    assert any(
        bool(matrix[i].any()) and torch.equal(matrix[i], -matrix[j])
        for i in range(k)
        for j in range(i)
    )


@FEW
@given(matrix=rank_deficient_jacobians(dtype=F64))
def test_rank_deficient_jacobians(matrix: Tensor) -> None:
    sigma = torch.linalg.svdvals(matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-300))
    assert sigma.numel() < matrix.shape[0] or float(sigma.min()) < 1e-10 * float(sigma.max())


@FEW
@given(matrix=random_jacobians(k=(2, 6)))
def test_random_jacobians_full_row_rank(matrix: Tensor) -> None:
    k, p = matrix.shape
    assert p >= k + 1 and int(torch.linalg.matrix_rank(matrix)) == k


# ----------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("log_r", range(-6, 7))
def test_aligned_keeps_small_tasks(log_r: int, dtype: torch.dtype) -> None:
    """Orthogonal rows: σ_min Σ g_i/‖g_i‖ = min(r, 1)(1, 1), the small task in either
    place (before the fix, r = 1e5 gave (1e5, 0) and r = 1e-6 gave (0, 1))."""
    r = 10.0**log_r
    expected = min(r, 1.0) * torch.ones(2, dtype=F64)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for rows in ([[r, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, r]]):
        d = AlignedMTL().combine(torch.tensor(rows, dtype=dtype))
        torch.testing.assert_close(d.double(), expected, rtol=rtol, atol=0)


def test_aligned_keeps_tiny_and_huge_tasks_in_float64() -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 4)))
    norms = np.array([1e-15, 1e-3, 1e5, 1e15])
    j = torch.from_numpy((q.T * norms[:, None]).copy())
    d = AlignedMTL().combine(j).numpy()
    np.testing.assert_allclose(d, 1e-15 * q.sum(axis=1), rtol=1e-10, atol=0)


def test_aligned_rank_deficient_rows() -> None:
    g = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    h = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    zero = torch.zeros(3, dtype=F64)
    for dtype in (torch.float64, torch.float32):
        # rank 1: Ĵ = J, the update is ωᵀJ
        dup = torch.stack([g, 3 * g]).to(dtype)
        torch.testing.assert_close(AlignedMTL().combine(dup).double(), 4 * g, rtol=1e-6, atol=0)
        # a zero row gets weight 0
        torch.testing.assert_close(
            AlignedMTL().combine(torch.stack([g, zero]).to(dtype)).double(), g, rtol=1e-6, atol=0
        )
        # duplicated, opposite, zero and independent rows: the SVD of J with rank 2
        j = torch.stack([g, 2 * g, zero, -g, h])
        v, s, wt = np.linalg.svd(j.numpy(), full_matrices=False)
        ref = np.ones(5) @ (s[1] * v[:, :2] @ wt[:2])
        d = AlignedMTL().combine(j.to(dtype)).double().numpy()
        np.testing.assert_allclose(d, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12)


@FEW
@given(matrix=rank_deficient_jacobians((2, 6), (2, 12), dtype=F64, log_scale=(-1.0, 1.0)))
def test_aligned_float32_sees_the_float64_rank(matrix: Tensor) -> None:
    """Float32 rounding of exactly dependent rows is below the float32 noise floor: the
    float32 update matches the float64 one, on problems well-conditioned enough for
    float32 (every non-zero eigenvalue of the cosine matrix above 1e-3, and no two rows
    nearly but not exactly parallel)."""
    live = matrix[matrix.norm(dim=1) > 0]
    units = live / live.norm(dim=1, keepdim=True)
    cos = units @ units.T
    evals = torch.linalg.eigvalsh(cos)
    gap = 1 - cos.abs()
    assume(not bool(((evals > 1e-10) & (evals < 1e-3)).any()))
    assume(not bool(((gap > 1e-12) & (gap < 1e-2)).any()))
    d64 = AlignedMTL().combine(matrix)
    d32 = AlignedMTL().combine(matrix.float()).double()
    scale = max(float(d64.norm()), 1e-3 * float(matrix.norm(dim=1).max()))
    assert float((d32 - d64).norm()) <= 1e-4 * scale


@FEW
@given(matrix=random_jacobians((2, 5), (1, 4), log_scale=(-12.0, 12.0)))
def test_aligned_accurate_for_graded_rows(matrix: Tensor) -> None:
    """Against the SVD of J in 60-digit arithmetic, norms spread over 1e-12..1e12."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    jm = mpmath.matrix(matrix.tolist())
    evals, evecs = mpmath.eigsy(jm * jm.T)
    k = matrix.shape[0]
    smin = min(mpmath.sqrt(e) for e in evals)
    w = [
        sum(
            smin / mpmath.sqrt(evals[t]) * evecs[i, t] * sum(evecs[j, t] for j in range(k))
            for t in range(k)
        )
        for i in range(k)
    ]
    ref = torch.tensor([float(x) for x in (mpmath.matrix([w]) * jm)], dtype=F64)
    d = AlignedMTL().combine(matrix)
    assert float((d - ref).norm()) <= 1e-9 * float(ref.norm())


def test_aligned_options_are_validated() -> None:
    for bad in (1.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rcond"):
            AlignedMTL(rcond=bad)
    for weights in ([1.0, float("nan")], [1.0, -1.0], []):
        with pytest.raises(ValueError, match="task_weights"):
            AlignedMTL(task_weights=weights)
    assert AlignedMTL(rcond=0.0).rcond == 0.0


# ----------------------------------------------------------------------------- ConFIG


def config_direction(matrix: Tensor) -> Tensor:
    d = ConFIG().combine(matrix)
    return d / d.norm()


@FEW
@given(
    matrix=random_jacobians((2, 6), (1, 5), log_scale=(-3.0, 3.0)),
    log_d=st.lists(st.floats(-6.0, 6.0), min_size=6, max_size=6),
)
def test_config_direction_invariant_for_independent_rows(
    matrix: Tensor, log_d: list[float]
) -> None:
    """Linearly independent rows: the direction depends on the unit vectors only."""
    diag = torch.tensor([10.0**x for x in log_d[: matrix.shape[0]]], dtype=F64)
    base = config_direction(matrix)
    scaled = config_direction(diag[:, None] * matrix)
    torch.testing.assert_close(scaled, base, rtol=0, atol=1e-9)


def test_config_direction_invariant_for_duplicated_directions() -> None:
    """1 in the range of C (here a duplicated direction): still invariant."""
    g, h = torch.tensor([1.0, 0.2, 0.0], dtype=F64), torch.tensor([-0.5, 1.0, 0.3], dtype=F64)
    j = torch.stack([g, 3 * g, h])
    scaled = torch.tensor([[10.0], [0.1], [5.0]], dtype=F64) * j
    torch.testing.assert_close(config_direction(scaled), config_direction(j), rtol=0, atol=1e-12)


def test_config_not_invariant_with_dependent_rows() -> None:
    """The documented counter-example: g_u is unchanged, but the sign of Σ g_i·g_u is
    not, so rescaling task 0 reverses the update."""
    j = torch.tensor([[1.0, -1.0], [-1.0, 2.0], [-2.0, 1.0]], dtype=F64)
    d = ConFIG().combine(j)
    torch.testing.assert_close(d, torch.tensor([-2.0, 2.0], dtype=F64), rtol=1e-12, atol=1e-12)
    scaled = j * torch.tensor([[10.0], [1.0], [1.0]], dtype=F64)
    d10 = ConFIG().combine(scaled)
    torch.testing.assert_close(d10, torch.tensor([7.0, -7.0], dtype=F64), rtol=1e-12, atol=1e-12)
    units = j / j.norm(dim=1, keepdim=True)
    proj = units @ (d / d.norm())
    assert float(proj.min()) < 0 < float(proj.max())  # a task with a negative projection


def test_config_float32_dependent_rows() -> None:
    """Dependent float32 rows are not inverted through their rounding noise."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 50)))
    j = torch.stack([x[0], 2 * x[0] + x[1], x[1], -x[0]])
    d64 = ConFIG().combine(j)
    d32 = ConFIG().combine(j.float()).double()
    assert float((d32 - d64).norm()) <= 1e-5 * float(d64.norm())


def test_config_options_are_validated() -> None:
    for bad in (1.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rcond"):
            ConFIG(rcond=bad)


# ----------------------------------------------------------------------------- CAGrad


def cagrad_primal(j: np.ndarray, c: float) -> float:
    """max_d min_i g_i·d s.t. ‖d - g0‖ ≤ c‖g0‖, by SLSQP from several starts (best kept)."""
    g0 = j.mean(axis=0)
    r = c * float(np.linalg.norm(g0))
    p = j.shape[1]
    best = -np.inf
    for start in (g0, *j):
        x0 = np.concatenate([start, [float((j @ start).min())]])
        res = minimize(
            lambda x: -x[-1],
            x0,
            jac=lambda x: np.concatenate([np.zeros(p), [-1.0]]),
            constraints=[
                {"type": "ineq", "fun": lambda x: j @ x[:-1] - x[-1]},
                {"type": "ineq", "fun": lambda x: r * r - float(np.sum((x[:-1] - g0) ** 2))},
            ],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        d = res.x[:-1]
        dist = float(np.linalg.norm(d - g0))
        if dist > r:
            d = g0 + (d - g0) * r / dist
        best = max(best, float((j @ d).min()))
    return best


def test_cagrad_zero_in_the_hull() -> None:
    """g_w* = 0: the primal maximiser closest to g0, not g0 (which conflicts with task 1)."""
    j = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.5, 1.0]], dtype=F64)
    g0 = j.mean(dim=0)
    assert float(j[1] @ g0) == pytest.approx(-1 / 6)
    d = CAGrad(c=0.9).combine(j)
    assert float((j @ d).min()) >= -1e-9
    assert float((d - g0).norm()) <= 0.9 * float(g0.norm()) + 1e-9
    torch.testing.assert_close(d, torch.tensor([0.0, 1 / 3], dtype=F64), rtol=0, atol=1e-12)
    # a zero row: the primal value is at most 0, reached in the dual cone
    jz = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-0.5, 1.0]], dtype=F64)
    dz = CAGrad(c=0.9).combine(jz)
    assert float((jz @ dz).min()) >= -1e-9
    assert float((dz - jz.mean(dim=0)).norm()) <= 0.9 * float(jz.mean(dim=0).norm()) + 1e-9


def test_cagrad_is_optimal_on_the_primal() -> None:
    """On random small problems, half of them with 0 in the hull of the rows."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        k, p = int(rng.integers(2, 6)), int(rng.integers(1, 5))
        j = rng.standard_normal((k, p))
        if trial % 2 and k > 2:  # put 0 in the convex hull: the last row cancels the rest
            w = rng.dirichlet(np.ones(k - 1))
            j[-1] = -(w[:-1] @ j[:-2]) / w[-1]
        c = float(rng.choice([0.1, 0.5, 0.9, 2.0]))
        d = CAGrad(c=c).combine(torch.from_numpy(j)).numpy()
        g0 = j.mean(axis=0)
        scale = float(np.abs(j).max() * np.linalg.norm(g0)) * (1 + c) * p
        assert float(np.linalg.norm(d - g0)) <= c * float(np.linalg.norm(g0)) * (1 + 1e-9) + 1e-12
        assert float((j @ d).min()) >= cagrad_primal(j, c) - 1e-7 * scale


def test_cagrad_options_are_validated() -> None:
    for bad in (float("inf"), -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"c must be a finite number in \[0, inf\)"):
            CAGrad(c=bad)
    with pytest.raises(ValueError, match="max_iter"):
        CAGrad(max_iter=0)
    with pytest.raises(TypeError, match="rescale"):
        CAGrad(rescale="yes")  # type: ignore[arg-type]
