"""Shared helpers for the strategy catalogue tests: matrix samplers, per-strategy specs.

Every registered strategy gets a :class:`Spec` saying how to build it for K tasks and
which properties it claims; :func:`spec_for` falls back to a generic spec (build with no
arguments, check only finiteness and shapes) for a strategy added without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor

from mtlkit.strategies import Strategy, get_strategy

__all__ = [
    "SPECS",
    "Spec",
    "build",
    "conflict_slack",
    "extreme_matrices",
    "generic_matrices",
    "losses_for",
    "run",
    "spec_for",
    "update_scale",
]


@dataclass(frozen=True)
class Spec:
    """How to build a strategy for K tasks and which properties it claims.

    Attributes:
        factory: builds a fresh instance for K tasks (same seed every time).
        needs_losses: ``combine`` must get ``losses=``.
        degree: ``1``: f(cJ) = c f(J); ``0``: f(cJ) = f(J) (K ≥ 2); ``None``: no claim.
        non_conflicting: ``f(J) · g_i ≥ 0`` for every task (up to rounding).
        permutation: permuting J's rows (and the losses) leaves the update unchanged.
        stateful: ``state_dict`` carries state that changes across calls.
        rtol: relative tolerance of the equalities above (solver accuracy).
        log_scale: the row norms of the matrices of the equality tests (scaling,
            permutation) span 10^-log_scale..10^log_scale.
    """

    factory: Callable[[int], Strategy]
    needs_losses: bool = False
    degree: int | None = 1
    non_conflicting: bool = False
    permutation: bool = True
    stateful: bool = False
    rtol: float = 1e-7
    log_scale: float = 6.0


def _named(name: str, **kwargs: object) -> Callable[[int], Strategy]:
    return lambda k: get_strategy(name, **kwargs)


SPECS: dict[str, Spec] = {
    "sum": Spec(_named("sum")),
    "mean": Spec(_named("mean")),
    "weighted": Spec(
        lambda k: get_strategy("weighted", weights=[1.0 + i for i in range(k)]), permutation=False
    ),
    "pcgrad": Spec(_named("pcgrad", seed=3), permutation=False, stateful=True),
    "gradnorm": Spec(_named("gradnorm"), needs_losses=True, stateful=True),
    "mgda": Spec(_named("mgda"), non_conflicting=True, rtol=1e-6),
    "upgrad": Spec(_named("upgrad"), non_conflicting=True, rtol=1e-6),
    "dualproj": Spec(_named("dualproj"), non_conflicting=True, rtol=1e-6),
    # beyond a ~1e6 spread of norms the dual is numerically degenerate (CAGrad's docstring)
    "cagrad": Spec(_named("cagrad", c=0.5), rtol=1e-6, log_scale=3.0),
    "imtl-g": Spec(_named("imtl-g"), rtol=1e-6),
    "nash-mtl": Spec(_named("nash-mtl"), degree=0, non_conflicting=True, rtol=1e-6),
    # σ_min has a relative error ~ eps·λ_max/λ_min, up to ~1e-6 at the rcond cut-off
    "aligned-mtl": Spec(_named("aligned-mtl"), rtol=1e-4),
    "gradvac": Spec(_named("gradvac", seed=3), permutation=False, stateful=True),
    "config": Spec(_named("config"), rtol=1e-6),
    "graddrop": Spec(_named("graddrop", seed=3), stateful=True),
    "rlw": Spec(_named("rlw", seed=3), needs_losses=True, permutation=False, stateful=True),
    "uncertainty": Spec(
        lambda k: get_strategy("uncertainty", num_tasks=k), needs_losses=True, stateful=True
    ),
    "dwa": Spec(_named("dwa"), needs_losses=True, stateful=True),
    "famo": Spec(_named("famo"), needs_losses=True, stateful=True),
}


def spec_for(name: str) -> Spec:
    """The spec of a registered strategy (a finiteness-only default for unknown ones)."""
    return SPECS.get(
        name,
        Spec(_named(name), needs_losses=True, degree=None, permutation=False),
    )


def build(name: str, k: int) -> Strategy:
    """A fresh instance of ``name`` for K tasks."""
    return spec_for(name).factory(k)


def losses_for(k: int, seed: int = 0) -> Tensor:
    """Positive float32 losses, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0.1, 5.0, k)).to(torch.float32)


def run(name: str, matrix: Tensor, losses: Tensor | None = None) -> tuple[Tensor, Strategy]:
    """Build a fresh ``name`` for J's K and return ``(update, strategy)``."""
    k = matrix.shape[0]
    strategy = build(name, k)
    if losses is None and spec_for(name).needs_losses:
        losses = losses_for(k)
    return strategy.combine(matrix, losses), strategy


def update_scale(matrix: Tensor, weights: Tensor) -> float:
    """``Σ_j |w_j| ‖g_j‖``: the size of the rounding errors of the update ``wᵀJ``."""
    norms = matrix.double().norm(dim=1)
    return float((weights.double().abs().cpu() * norms.cpu()).sum())


def conflict_slack(matrix: Tensor, update: Tensor, weights: Tensor) -> Tensor:
    """``d · g_i`` divided by ``‖g_i‖ Σ_j |w_j| ‖g_j‖`` (≥ -rounding when non-conflicting)."""
    j64 = matrix.double()
    dots = j64 @ update.double()
    scale = j64.norm(dim=1) * max(update_scale(matrix, weights), 1e-300)
    return torch.where(scale > 0, dots / scale.clamp(min=1e-300), torch.zeros_like(dots))


def _unit(row: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(row))
    return row / norm if norm > 0 else row


ROW_KINDS = ["random", "random", "random", "zero", "duplicate", "opposite", "combination"]


@st.composite
def extreme_matrices(
    draw: st.DrawFn,
    k_min: int = 1,
    k_max: int = 16,
    p_max: int = 64,
    log_scale: tuple[float, float] = (-15.0, 15.0),
    dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32),
) -> Tensor:
    """A (K, P) matrix with the awkward cases mixed in.

    Rows are random with norms 10^a for a in ``log_scale``, zero, duplicated (with a new
    norm), exactly opposite to an earlier row, or random combinations of earlier rows (so
    G is rank-deficient); every non-zero norm is in the ``log_scale`` range (float32 G
    overflows past ~1e19); K may exceed P.
    """
    k = draw(st.integers(k_min, k_max))
    p = draw(st.integers(1, p_max))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = rng.standard_normal((k, p))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    for i in range(k):
        kind = draw(st.sampled_from(ROW_KINDS))
        scale = 10.0 ** draw(st.floats(*log_scale))
        if i > 0 and kind == "duplicate":
            rows[i] = _unit(rows[draw(st.integers(0, i - 1))]) * scale
        elif i > 0 and kind == "opposite":
            rows[i] = -rows[draw(st.integers(0, i - 1))]
        elif i > 1 and kind == "combination":
            rows[i] = _unit(rng.standard_normal(i) @ rows[:i]) * scale
        elif kind == "zero":
            rows[i] = 0.0
        else:
            rows[i] *= scale
    return torch.from_numpy(rows).to(dtype)


@st.composite
def generic_matrices(
    draw: st.DrawFn,
    k_min: int = 2,
    k_max: int = 6,
    extra_p: int = 8,
    log_scale: tuple[float, float] = (-2.0, 2.0),
) -> Tensor:
    """A float64 (K, P) matrix with P ≥ K + 1 random rows (full row rank, generic)."""
    k = draw(st.integers(k_min, k_max))
    p = k + draw(st.integers(1, extra_p))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = rng.standard_normal((k, p))
    scales = 10.0 ** rng.uniform(*log_scale, size=k)
    return torch.from_numpy(rows * scales[:, None])
