"""Property-based tests for strategies, your own included (needs ``pip install hypothesis``).

Two parts:

* **Hypothesis strategies for per-task gradient matrices J** (K x P tensors):
  :func:`jacobians` mixes every awkward case — random rows with norms anywhere in
  1e-15..1e15, zero rows, duplicated directions (rescaled), exactly opposite rows, and
  linear combinations of earlier rows (rank-deficient G) — and each case is also
  available alone: :func:`extreme_jacobians`, :func:`zero_row_jacobians`,
  :func:`duplicated_jacobians`, :func:`opposite_jacobians`,
  :func:`rank_deficient_jacobians`, and :func:`random_jacobians` (generic full row rank,
  for reference comparisons). The structure (K, P, the kind and the norm of each row) is
  drawn by hypothesis, so failing examples shrink to few tasks, few columns and plain
  rows; the entries come from a seeded generator.
* **:func:`check_strategy`**: asserts the properties a strategy claims
  (:class:`Claims`) on many such matrices: finite output of the right shape and dtype,
  K = 1 returns the row (up to scale), zero rows handled, positive homogeneity (or scale
  invariance), non-conflict, permutation invariance, determinism, and an exact
  ``state_dict`` / ``load_state_dict`` round trip. A failure raises
  :class:`PropertyFailure` (an ``AssertionError``) on the shrunk example, which
  hypothesis prints.

Example::

    import torch
    from mtlkit import Strategy
    from mtlkit.testing import Claims, check_strategy

    class UnitSum(Strategy):
        def combine(self, matrix, losses=None, *, out=None):
            norms = matrix.norm(dim=1, keepdim=True)
            units = torch.where(norms > 0, matrix / norms.clamp(min=1e-300), 0.0)
            return units.sum(dim=0)

    def test_unit_sum() -> None:
        check_strategy(
            lambda k: UnitSum(),
            claims=Claims(homogeneous=False, scale_invariant=True, single_task="parallel",
                          zero_matrix_gives_zero=True),
        )

:func:`check_strategy` runs hypothesis itself: call it from a plain test function, not
from one decorated with ``@given``. The built-in strategies' claims are
:data:`BUILTIN_CLAIMS` (``check_strategy("pcgrad")`` uses them).

mtlkit itself never imports this module, so hypothesis stays an optional dependency.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

try:
    from hypothesis import HealthCheck, given
    from hypothesis import settings as Settings
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised in a subprocess-free test
    raise ImportError(
        "mtlkit.testing needs hypothesis, an optional dependency of mtlkit: pip install hypothesis"
    ) from exc

from mtlkit._registry import Context, normalize_name
from mtlkit.strategies.base import Strategy, get_strategy

__all__ = [
    "BUILTIN_CLAIMS",
    "PROPERTIES",
    "ROW_KINDS",
    "Claims",
    "Property",
    "PropertyFailure",
    "RowKind",
    "StrategyFactory",
    "check_strategy",
    "claims_for",
    "conflict_slack",
    "duplicated_jacobians",
    "extreme_jacobians",
    "jacobians",
    "losses_for",
    "opposite_jacobians",
    "random_jacobians",
    "rank_deficient_jacobians",
    "run_strategy",
    "strategy_factory",
    "update_scale",
    "weights_of",
    "zero_row_jacobians",
]

Array = NDArray[np.float64]

#: Builds a fresh strategy for K tasks.
StrategyFactory: TypeAlias = Callable[[int], Strategy]

#: How one row of a sampled J is made.
RowKind: TypeAlias = Literal["random", "zero", "duplicate", "opposite", "combination"]
#: Every row kind (``"random"`` twice in :func:`jacobians`' default mix).
ROW_KINDS: tuple[RowKind, ...] = get_args(RowKind)

#: A property :func:`check_strategy` can check.
Property: TypeAlias = Literal[
    "finite",
    "single_task",
    "zero_rows",
    "scaling",
    "non_conflicting",
    "permutation",
    "deterministic",
    "state",
]
#: Every property, in the order :func:`check_strategy` runs them.
PROPERTIES: tuple[Property, ...] = get_args(Property)

_DEPENDENT: frozenset[str] = frozenset({"duplicate", "opposite", "combination"})
_DEFAULT_MIX: tuple[RowKind, ...] = (
    "random",
    "random",
    "random",
    "zero",
    "duplicate",
    "opposite",
    "combination",
)

Dtypes: TypeAlias = "torch.dtype | Sequence[torch.dtype]"


# ----------------------------------------------------------------------------- matrices


def _span(value: int | tuple[int, int], what: str, low: int) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else value
    if not low <= lo <= hi:
        raise ValueError(f"{what} must be an int or a (min, max) range with {low} <= min <= max")
    return int(lo), int(hi)


def _dtypes(dtype: Dtypes) -> tuple[torch.dtype, ...]:
    out = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    if not out or not all(d.is_floating_point for d in out):
        raise ValueError(f"dtype must be floating point dtypes, got {dtype}")
    return out


def _unit(row: Array) -> Array:
    norm = float(np.linalg.norm(row))
    return row / norm if norm > 0 else row


@st.composite
def _matrices(
    draw: st.DrawFn,
    k: tuple[int, int],
    p: tuple[int, int],
    dtypes: tuple[torch.dtype, ...],
    log_scale: tuple[float, float],
    kinds: tuple[RowKind, ...],
    require: RowKind | None,
) -> Tensor:
    n_rows = draw(st.integers(*k))
    n_cols = draw(st.integers(*p))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    row_kinds: list[RowKind] = [draw(st.sampled_from(kinds)) for _ in range(n_rows)]
    forced = -1
    if require is not None:  # one row of that kind for sure (on row 0 when dependent)
        forced = draw(st.integers(1 if require in _DEPENDENT else 0, n_rows - 1))
        row_kinds[forced] = require
        if require in _DEPENDENT:
            row_kinds[0] = "random"
    directions = rng.standard_normal((n_rows, n_cols))
    rows = np.zeros((n_rows, n_cols))
    for i, kind in enumerate(row_kinds):
        scale = 10.0 ** draw(st.floats(*log_scale))
        if kind in _DEPENDENT and i > 0:
            ref = 0 if i == forced else draw(st.integers(0, i - 1))
            if kind == "duplicate":
                rows[i] = _unit(rows[ref]) * scale
            elif kind == "opposite":
                rows[i] = -rows[ref]
            else:  # a random combination of the earlier rows (row 0 is not zero if forced)
                rows[i] = _unit(rng.standard_normal(i) @ rows[:i]) * scale
        elif kind == "zero":
            rows[i] = 0.0
        else:
            rows[i] = _unit(directions[i]) * scale
    return torch.from_numpy(rows).to(dtype)


def jacobians(
    k: int | tuple[int, int] = (1, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-15.0, 15.0),
    kinds: Sequence[RowKind] = _DEFAULT_MIX,
) -> st.SearchStrategy[Tensor]:
    """K x P matrices whose rows mix the awkward cases.

    Each row is, at random among ``kinds``: ``"random"`` (a random direction),
    ``"zero"``, ``"duplicate"`` (the direction of an earlier row, with a new norm),
    ``"opposite"`` (exactly minus an earlier row) or ``"combination"`` (a random linear
    combination of the earlier rows: G is rank-deficient). Every non-zero norm is
    ``10**a`` with ``a`` in ``log_scale`` (the default 1e-15..1e15 keeps float32 Gramians
    finite). K may exceed P (rank-deficient too). A dependent kind drawn for the first row
    gives a random row.

    Args:
        k: number of rows, or a (min, max) range (min >= 1).
        p: number of columns, or a (min, max) range (min >= 1).
        dtype: one dtype or several to draw from.
        log_scale: range of the base-10 logarithm of the row norms.
        kinds: the row kinds to draw from (repeat one to make it more likely).
    """
    lo, hi = log_scale
    if not -300.0 < lo <= hi < 300.0:
        raise ValueError(
            f"log_scale must be (low, high) with -300 < low <= high < 300, got {log_scale}"
        )
    kind_list = tuple(kinds)
    if not kind_list or not set(kind_list) <= set(ROW_KINDS):
        raise ValueError(f"kinds must be a non-empty sequence of {ROW_KINDS}, got {kinds}")
    return _matrices(_span(k, "k", 1), _span(p, "p", 1), _dtypes(dtype), (lo, hi), kind_list, None)


def _with_kind(
    require: RowKind,
    k: int | tuple[int, int],
    p: int | tuple[int, int],
    dtype: Dtypes,
    log_scale: tuple[float, float],
    others: tuple[RowKind, ...],
) -> st.SearchStrategy[Tensor]:
    low = 2 if require in _DEPENDENT else 1
    k_span = _span(k, "k", low)
    jacobians(k_span, p, dtype=dtype, log_scale=log_scale, kinds=others)  # validates
    return _matrices(k_span, _span(p, "p", 1), _dtypes(dtype), log_scale, others, require)


def extreme_jacobians(
    k: int | tuple[int, int] = (1, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-15.0, 15.0),
) -> st.SearchStrategy[Tensor]:
    """Random rows whose norms span ``10**log_scale`` (1e-15..1e15 by default)."""
    return jacobians(k, p, dtype=dtype, log_scale=log_scale, kinds=("random",))


def zero_row_jacobians(
    k: int | tuple[int, int] = (1, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> st.SearchStrategy[Tensor]:
    """Matrices with at least one zero row (possibly all)."""
    return _with_kind("zero", k, p, dtype, log_scale, ("random", "zero"))


def duplicated_jacobians(
    k: int | tuple[int, int] = (2, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> st.SearchStrategy[Tensor]:
    """Matrices with at least one row in the direction of an earlier one, rescaled."""
    return _with_kind("duplicate", k, p, dtype, log_scale, ("random", "duplicate"))


def opposite_jacobians(
    k: int | tuple[int, int] = (2, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> st.SearchStrategy[Tensor]:
    """Matrices with at least one row exactly opposite to an earlier one."""
    return _with_kind("opposite", k, p, dtype, log_scale, ("random", "opposite"))


def rank_deficient_jacobians(
    k: int | tuple[int, int] = (2, 8),
    p: int | tuple[int, int] = (1, 32),
    *,
    dtype: Dtypes = (torch.float64, torch.float32),
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> st.SearchStrategy[Tensor]:
    """Matrices with at least one row a linear combination of earlier ones (and maybe
    duplicated or opposite rows): G is singular."""
    return _with_kind(
        "combination",
        k,
        p,
        dtype,
        log_scale,
        ("random", "combination", "duplicate", "opposite"),
    )


@st.composite
def _generic(
    draw: st.DrawFn,
    k: tuple[int, int],
    extra_p: tuple[int, int],
    dtypes: tuple[torch.dtype, ...],
    log_scale: tuple[float, float],
) -> Tensor:
    n_rows = draw(st.integers(*k))
    n_cols = n_rows + draw(st.integers(*extra_p))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scales = np.array([10.0 ** draw(st.floats(*log_scale)) for _ in range(n_rows)])
    rows = rng.standard_normal((n_rows, n_cols)) * scales[:, None]
    return torch.from_numpy(rows).to(dtype)


def random_jacobians(
    k: int | tuple[int, int] = (2, 6),
    extra_p: int | tuple[int, int] = (1, 8),
    *,
    dtype: Dtypes = torch.float64,
    log_scale: tuple[float, float] = (-2.0, 2.0),
) -> st.SearchStrategy[Tensor]:
    """Generic matrices: K Gaussian rows in P >= K + 1 dimensions (full row rank), each
    scaled by ``10**a``, ``a`` in ``log_scale``. For comparisons with references that
    assume linearly independent gradients.

    Args:
        k: number of rows, or a (min, max) range.
        extra_p: P - K, or a (min, max) range (min >= 1).
    """
    return _generic(_span(k, "k", 1), _span(extra_p, "extra_p", 1), _dtypes(dtype), log_scale)


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claims:
    """The properties a strategy claims, for :func:`check_strategy`.

    Attributes:
        homogeneous: positively homogeneous of degree 1, ``f(cJ) = c f(J)`` for c > 0.
        scale_invariant: degree 0, ``f(cJ) = f(J)`` for c > 0 (K >= 2, or K = 1 unless
            ``single_task="exact"``). At most one of the two.
        non_conflicting: ``f(J) · g_i >= 0`` for every task (up to rounding).
        permutation_invariant: permuting J's rows (and the losses alike) leaves the
            update unchanged. Claim it only if the randomness, if any, does not depend
            on the task order.
        single_task: with K = 1, ``"exact"``: the update is the row; ``"parallel"``: a
            positive multiple of it (0 for a zero row); ``None``: no claim.
        zero_matrix_gives_zero: an all-zero J gives an exactly zero update.
        deterministic: two fresh instances give bit-identical updates (no global RNG).
        needs_losses: ``combine`` must get ``losses=`` (they are passed only then).
        stateful: ``state_dict`` carries state that changes across calls (the round
            trip is checked either way).
        rtol: relative tolerance of the equality checks (scaling, permutation), relative
            to ``Σ_j |w_j| ‖g_j‖`` (the size of the update's rounding, :func:`update_scale`).
        log_scale: the row norms of the matrices of the equality checks span
            ``10**-log_scale .. 10**log_scale``.
    """

    homogeneous: bool = True
    scale_invariant: bool = False
    non_conflicting: bool = False
    permutation_invariant: bool = True
    single_task: Literal["exact", "parallel"] | None = "parallel"
    zero_matrix_gives_zero: bool = True
    deterministic: bool = True
    needs_losses: bool = False
    stateful: bool = False
    rtol: float = 1e-7
    log_scale: float = 6.0

    def __post_init__(self) -> None:
        if self.homogeneous and self.scale_invariant:
            raise ValueError("a strategy cannot be both homogeneous and scale_invariant")
        if self.single_task not in ("exact", "parallel", None):
            raise ValueError(
                f"single_task must be 'exact', 'parallel' or None, got {self.single_task!r}"
            )
        if not (np.isfinite(self.rtol) and 0 < self.rtol < 1):
            raise ValueError(f"rtol must be a finite number in (0, 1), got {self.rtol!r}")
        if not (np.isfinite(self.log_scale) and 0 <= self.log_scale <= 15):
            raise ValueError(
                f"log_scale must be a finite number in [0, 15], got {self.log_scale!r}"
            )

    @classmethod
    def minimal(cls) -> Claims:
        """No claims beyond finite output, determinism and the state round trip (losses
        passed): the default for a strategy nothing is known about."""
        return cls(
            homogeneous=False,
            permutation_invariant=False,
            single_task=None,
            zero_matrix_gives_zero=False,
            needs_losses=True,
        )

    @property
    def degree(self) -> int | None:
        """1 (homogeneous), 0 (scale invariant) or None (no claim)."""
        if self.homogeneous:
            return 1
        if self.scale_invariant:
            return 0
        return None


_EXACT: Literal["exact"] = "exact"

#: The claims of the built-in strategies (as documented in their docstrings and in
#: docs/strategies.md); ``rtol`` reflects each solver's accuracy, ``log_scale`` the
#: spread of norms over which it holds.
BUILTIN_CLAIMS: dict[str, Claims] = {
    "sum": Claims(single_task=_EXACT),
    "mean": Claims(single_task=_EXACT),
    "weighted": Claims(single_task=_EXACT, permutation_invariant=False),
    "pcgrad": Claims(single_task=_EXACT, permutation_invariant=False, stateful=True),
    "gradnorm": Claims(single_task=_EXACT, needs_losses=True, stateful=True),
    "mgda": Claims(single_task=_EXACT, non_conflicting=True, rtol=1e-6),
    "upgrad": Claims(single_task=_EXACT, non_conflicting=True, rtol=1e-6),
    "dualproj": Claims(single_task=_EXACT, non_conflicting=True, rtol=1e-6),
    # beyond a ~1e6 spread of norms the CAGrad dual is numerically degenerate
    "cagrad": Claims(single_task=_EXACT, rtol=1e-6, log_scale=3.0),
    "imtl-g": Claims(single_task=_EXACT, rtol=1e-6),
    "nash-mtl": Claims(
        single_task=_EXACT,
        homogeneous=False,
        scale_invariant=True,
        non_conflicting=True,
        rtol=1e-6,
    ),
    "aligned-mtl": Claims(single_task=_EXACT, rtol=1e-8),
    "gradvac": Claims(single_task=_EXACT, permutation_invariant=False, stateful=True),
    "config": Claims(single_task=_EXACT, rtol=1e-6),
    "graddrop": Claims(single_task=_EXACT, stateful=True),
    "rlw": Claims(
        single_task=_EXACT, needs_losses=True, permutation_invariant=False, stateful=True
    ),
    "uncertainty": Claims(single_task=_EXACT, needs_losses=True, stateful=True),
    "dwa": Claims(single_task=_EXACT, needs_losses=True, stateful=True),
    "famo": Claims(single_task=_EXACT, needs_losses=True, stateful=True),
}

#: Constructor options a built-in needs beyond the :class:`~mtlkit.Context` (per K).
_BUILD_OPTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "weighted": lambda k: {"weights": [1.0 + i for i in range(k)]},
}


def claims_for(name: str) -> Claims:
    """The claims of a registered strategy: :data:`BUILTIN_CLAIMS`, or
    :meth:`Claims.minimal` for a name it does not know."""
    return BUILTIN_CLAIMS.get(normalize_name(name), Claims.minimal())


def strategy_factory(name: str, *, seed: int = 0, **options: Any) -> StrategyFactory:
    """A factory of fresh ``get_strategy(name, context=Context(num_tasks=K, seed=seed),
    **options)`` instances (the built-in ``weighted`` gets weights 1..K unless given)."""
    key = normalize_name(name)

    def build(k: int) -> Strategy:
        extra = dict(_BUILD_OPTIONS[key](k)) if key in _BUILD_OPTIONS else {}
        extra.update(options)
        return get_strategy(name, context=Context(num_tasks=k, seed=seed), **extra)

    return build


# ----------------------------------------------------------------------------- helpers


def losses_for(k: int, seed: int = 0) -> Tensor:
    """K positive float32 losses in [0.1, 5), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0.1, 5.0, k)).to(torch.float32)


def run_strategy(
    factory: StrategyFactory, matrix: Tensor, claims: Claims, losses: Tensor | None = None
) -> tuple[Tensor, Strategy]:
    """Build a fresh strategy for J's K and return ``(update, strategy)``; losses are
    passed when given or when ``claims.needs_losses`` (then :func:`losses_for`)."""
    k = matrix.shape[0]
    strategy = factory(k)
    if losses is None and claims.needs_losses:
        losses = losses_for(k)
    update = strategy.combine(matrix) if losses is None else strategy.combine(matrix, losses)
    return update, strategy


def weights_of(strategy: Strategy, k: int) -> Tensor:
    """The weights the strategy's last call recorded (``last_stats``), else all 1."""
    stats = getattr(strategy, "last_stats", None)
    if stats is None:
        return torch.ones(k, dtype=torch.float64)
    weights: Tensor = stats.weights
    return weights


def update_scale(matrix: Tensor, weights: Tensor) -> float:
    """``Σ_j |w_j| ‖g_j‖``: the size of the rounding errors of the update ``wᵀJ``."""
    norms = matrix.double().norm(dim=1)
    return float((weights.double().abs().cpu() * norms.cpu()).sum())


def conflict_slack(matrix: Tensor, update: Tensor, weights: Tensor) -> Tensor:
    """``d · g_i`` divided by ``‖g_i‖ Σ_j |w_j| ‖g_j‖`` (>= -rounding when
    non-conflicting; 0 for zero rows)."""
    j64 = matrix.double()
    dots = j64 @ update.double()
    scale = j64.norm(dim=1) * max(update_scale(matrix, weights), 1e-300)
    return torch.where(scale > 0, dots / scale.clamp(min=1e-300), torch.zeros_like(dots))


def _weight_rounding(matrix: Tensor, rtol: float) -> float:
    """Absolute slack for K-space solves, whose errors scale with the largest gradient."""
    return rtol * 1e-4 * float(matrix.double().norm(dim=1).max())


# ----------------------------------------------------------------------------- checks


class PropertyFailure(AssertionError):
    """A strategy broke a property it claims (raised on hypothesis' shrunk example).

    Attributes:
        property: the property that failed (one of :data:`PROPERTIES`).
    """

    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"{prop}: {message}")
        self.property = prop


def _fail_unless(ok: bool, prop: str, message: str) -> None:
    if not ok:
        raise PropertyFailure(prop, message)


def _close(ours: Tensor, ref: Tensor, bound: float) -> tuple[bool, float]:
    err = float((ours.double() - ref.double()).norm())
    return err <= bound, err


@dataclass(frozen=True)
class _Job:
    factory: StrategyFactory
    claims: Claims
    label: str
    k: tuple[int, int]
    dtypes: tuple[torch.dtype, ...]
    settings: Settings

    def run(self, matrix: Tensor, losses: Tensor | None = None) -> tuple[Tensor, Strategy]:
        return run_strategy(self.factory, matrix, self.claims, losses)

    def equality_matrices(self) -> st.SearchStrategy[Tensor]:
        s = self.claims.log_scale
        return jacobians(self.k, (1, 16), dtype=torch.float64, log_scale=(-s, s))


def _check_finite(job: _Job) -> None:
    @job.settings
    @given(matrix=jacobians(job.k, (1, 32), dtype=job.dtypes))
    def finite(matrix: Tensor) -> None:
        update, strategy = job.run(matrix)
        p = matrix.shape[1]
        _fail_unless(
            isinstance(update, Tensor) and tuple(update.shape) == (p,),
            "finite",
            f"{job.label} returned shape {getattr(update, 'shape', type(update))}, expected ({p},)",
        )
        _fail_unless(
            update.dtype == matrix.dtype,
            "finite",
            f"{job.label} returned {update.dtype} for a {matrix.dtype} J",
        )
        _fail_unless(
            bool(torch.isfinite(update).all()), "finite", f"{job.label}: non-finite update"
        )
        stats = getattr(strategy, "last_stats", None)
        if stats is not None:
            w = stats.weights
            _fail_unless(
                tuple(w.shape) == (matrix.shape[0],) and bool(torch.isfinite(w).all()),
                "finite",
                f"{job.label}: last_stats.weights {w} not finite of shape (K,)",
            )

    finite()


def _check_single_task(job: _Job) -> None:
    mode = job.claims.single_task
    if mode is None:
        return

    @job.settings
    @given(matrix=jacobians(1, (1, 32), dtype=job.dtypes, log_scale=(-8.0, 8.0), kinds=("random",)))
    def single_task(matrix: Tensor) -> None:
        update, _ = job.run(matrix)
        g = matrix[0].double()
        d = update.double()
        tol = 1e-12 if matrix.dtype == torch.float64 else 1e-6
        if mode == "exact":
            ok, err = _close(d, g, tol * float(g.norm()))
            _fail_unless(
                ok, "single_task", f"{job.label}: K = 1 update is off the row by {err:.3g}"
            )
            return
        sq = float(g @ g)
        alpha = float(d @ g) / sq if sq > 0 else 0.0
        ok, err = _close(d, alpha * g, tol * max(float(d.norm()), 1e-300))
        _fail_unless(
            ok and alpha >= 0 and (alpha > 0 or sq == 0),
            "single_task",
            f"{job.label}: K = 1 update is not a positive multiple of the row "
            f"(multiple {alpha:.3g}, residual {err:.3g})",
        )

    single_task()


def _check_zero_rows(job: _Job) -> None:
    @job.settings
    @given(
        matrix=zero_row_jacobians(job.k, (1, 32), dtype=job.dtypes, log_scale=(-15.0, 15.0)),
        all_zero=st.booleans(),
    )
    def zero_rows(matrix: Tensor, all_zero: bool) -> None:
        if all_zero:
            matrix = torch.zeros_like(matrix)
        update, _ = job.run(matrix)
        _fail_unless(
            bool(torch.isfinite(update).all()), "zero_rows", f"{job.label}: non-finite update"
        )
        if all_zero and job.claims.zero_matrix_gives_zero:
            _fail_unless(
                not bool(update.any()),
                "zero_rows",
                f"{job.label}: an all-zero J gave a non-zero update",
            )

    zero_rows()


def _check_scaling(job: _Job) -> None:
    claims = job.claims
    if claims.degree is None:
        return

    @job.settings
    @given(
        matrix=job.equality_matrices(),
        c=st.sampled_from([2.0**-10, 0.37, 7.5, 2.0**14]),
    )
    def scaling(matrix: Tensor, c: float) -> None:
        base, strategy = job.run(matrix)
        scaled, _ = job.run(c * matrix)
        scale = update_scale(matrix, weights_of(strategy, matrix.shape[0]))
        atol = _weight_rounding(matrix, claims.rtol)
        degree = 1 if matrix.shape[0] == 1 and claims.single_task == _EXACT else claims.degree
        if degree == 1:
            ok, err = _close(scaled, c * base, c * (claims.rtol * scale + atol) + 1e-300)
        else:
            ok, err = _close(scaled, base, claims.rtol * scale + atol + 1e-300)
        _fail_unless(
            ok,
            "scaling",
            f"{job.label}: f({c:g}·J) differs from {'c·' if degree == 1 else ''}f(J) by "
            f"{err:.3g} (scale {scale:.3g}, rtol {claims.rtol:g})",
        )

    scaling()


def _check_non_conflicting(job: _Job) -> None:
    if not job.claims.non_conflicting:
        return

    @job.settings
    @given(matrix=jacobians(job.k, (1, 32), dtype=job.dtypes))
    def non_conflicting(matrix: Tensor) -> None:
        update, strategy = job.run(matrix)
        slack = conflict_slack(matrix, update, weights_of(strategy, matrix.shape[0]))
        tol = 1e-9 if matrix.dtype == torch.float64 else 1e-5
        worst = float(slack.min()) if slack.numel() else 0.0
        _fail_unless(
            worst >= -tol,
            "non_conflicting",
            f"{job.label}: d·g_i / (‖g_i‖ Σ|w_j|‖g_j‖) = {worst:.3g} < -{tol:g}",
        )

    non_conflicting()


def _check_permutation(job: _Job) -> None:
    claims = job.claims
    if not claims.permutation_invariant:
        return

    @job.settings
    @given(matrix=job.equality_matrices(), seed=st.integers(0, 2**32 - 1))
    def permutation(matrix: Tensor, seed: int) -> None:
        k = matrix.shape[0]
        losses = losses_for(k, seed=seed % 1000) if claims.needs_losses else None
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(k))
        base, strategy = job.run(matrix, losses)
        permuted, _ = job.run(matrix[perm], None if losses is None else losses[perm])
        scale = update_scale(matrix, weights_of(strategy, k))
        atol = _weight_rounding(matrix, claims.rtol)
        ok, err = _close(permuted, base, claims.rtol * scale + atol + 1e-300)
        _fail_unless(
            ok,
            "permutation",
            f"{job.label}: permuting the tasks by {perm.tolist()} moved the update by {err:.3g} "
            f"(scale {scale:.3g})",
        )

    permutation()


def _check_deterministic(job: _Job) -> None:
    if not job.claims.deterministic:
        return

    @job.settings
    @given(matrix=jacobians(job.k, (1, 32), dtype=job.dtypes, log_scale=(-6.0, 6.0)))
    def deterministic(matrix: Tensor) -> None:
        first, _ = job.run(matrix)
        second, _ = job.run(matrix)
        _fail_unless(
            torch.equal(first, second),
            "deterministic",
            f"{job.label}: two fresh instances gave different updates",
        )

    deterministic()


def _check_state(job: _Job) -> None:
    claims = job.claims

    @job.settings
    @given(k=st.integers(*job.k), p=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
    def state(k: int, p: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        steps = [
            (
                torch.randn(k, p, generator=gen, dtype=torch.float64),
                losses_for(k, seed=(seed + s) % 1000) if claims.needs_losses else None,
            )
            for s in range(7)
        ]
        first = job.factory(k)

        def call(strategy: Strategy, matrix: Tensor, losses: Tensor | None) -> Tensor:
            return strategy.combine(matrix) if losses is None else strategy.combine(matrix, losses)

        for matrix, losses in steps[:3]:
            call(first, matrix, losses)
        saved = copy.deepcopy(first.state_dict())
        if claims.stateful:
            _fail_unless(
                bool(saved), "state", f"{job.label} claims state but state_dict() is empty"
            )
        rest = [call(first, matrix, losses) for matrix, losses in steps[3:]]
        resumed = job.factory(k)
        resumed.load_state_dict(saved)
        again = [call(resumed, matrix, losses) for matrix, losses in steps[3:]]
        for i, (a, b) in enumerate(zip(rest, again, strict=True)):
            _fail_unless(
                torch.equal(a, b),
                "state",
                f"{job.label}: step {i + 4} after load_state_dict differs from the original run",
            )

    state()


_CHECKS: dict[str, Callable[[_Job], None]] = {
    "finite": _check_finite,
    "single_task": _check_single_task,
    "zero_rows": _check_zero_rows,
    "scaling": _check_scaling,
    "non_conflicting": _check_non_conflicting,
    "permutation": _check_permutation,
    "deterministic": _check_deterministic,
    "state": _check_state,
}


def _as_factory(strategy: Strategy | StrategyFactory | str) -> tuple[StrategyFactory, str]:
    if isinstance(strategy, str):
        return strategy_factory(strategy), normalize_name(strategy)
    if isinstance(strategy, Strategy):
        template = copy.deepcopy(strategy)
        return (lambda k: copy.deepcopy(template)), repr(strategy)
    if callable(strategy):
        try:
            label = repr(strategy(1))
        except Exception:  # a factory that needs more tasks: name the factory instead
            label = getattr(strategy, "__qualname__", repr(strategy))
        return strategy, label
    raise TypeError(
        f"expected a Strategy, a factory K -> Strategy or a registered name, got {strategy!r}"
    )


def check_strategy(
    strategy: Strategy | StrategyFactory | str,
    *,
    claims: Claims | None = None,
    properties: Iterable[Property] | None = None,
    k: int | tuple[int, int] = (1, 6),
    dtype: Dtypes = (torch.float64, torch.float32),
    max_examples: int = 20,
    settings: Settings | None = None,
) -> list[Property]:
    """Assert the properties a strategy claims on hypothesis-generated matrices.

    Args:
        strategy: a factory ``K -> Strategy`` (a fresh instance per call; preferred), a
            :class:`~mtlkit.Strategy` instance (deep-copied for every call, so it must
            accept every K in ``k``), or a registered name (built by
            :func:`strategy_factory`, claims from :func:`claims_for` unless given).
        claims: what the strategy claims (default :class:`Claims`, or the registered
            strategy's claims for a name).
        properties: the properties to check (default: all of :data:`PROPERTIES`; those
            the claims do not make are skipped).
        k: the numbers of tasks to try, one or a (min, max) range.
        dtype: the dtypes of J for the finiteness, zero-row, single-task and
            non-conflict checks (the equality checks use float64).
        max_examples: hypothesis examples per property.
        settings: hypothesis settings to use instead (``max_examples`` is then ignored).

    Returns:
        The properties that were checked.

    Raises:
        PropertyFailure: a property failed (on hypothesis' shrunk example).
    """
    factory, label = _as_factory(strategy)
    if claims is None:
        claims = claims_for(strategy) if isinstance(strategy, str) else Claims()
    chosen = tuple(PROPERTIES if properties is None else properties)
    unknown = [p for p in chosen if p not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {PROPERTIES}")
    if settings is None:
        settings = Settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            report_multiple_bugs=False,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        )
    job = _Job(factory, claims, label, _span(k, "k", 1), _dtypes(dtype), settings)
    checked: list[Property] = []
    for prop in PROPERTIES:
        if prop in chosen and _applies(prop, claims):
            _CHECKS[prop](job)
            checked.append(prop)
    return checked


def _applies(prop: Property, claims: Claims) -> bool:
    if prop == "single_task":
        return claims.single_task is not None
    if prop == "scaling":
        return claims.degree is not None
    if prop == "non_conflicting":
        return claims.non_conflicting
    if prop == "permutation":
        return claims.permutation_invariant
    if prop == "deterministic":
        return claims.deterministic
    return True
