"""The catalogue tests' view of :mod:`mtlkit.testing`: matrix samplers, per-strategy specs.

The logic lives in :mod:`mtlkit.testing` (public); this module keeps the names the
catalogue tests import. Every registered strategy gets a :class:`Spec` built from its
:class:`mtlkit.testing.Claims` (:data:`mtlkit.testing.BUILTIN_CLAIMS`); :func:`spec_for`
falls back to a finiteness-only spec for a strategy added without claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

from mtlkit.strategies import Strategy
from mtlkit.testing import (
    BUILTIN_CLAIMS,
    Claims,
    claims_for,
    conflict_slack,
    jacobians,
    losses_for,
    random_jacobians,
    run_strategy,
    strategy_factory,
    update_scale,
)

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
        claims: the :class:`mtlkit.testing.Claims` the fields below are read from.
    """

    factory: Callable[[int], Strategy]
    claims: Claims

    @property
    def needs_losses(self) -> bool:
        """``combine`` must get ``losses=``."""
        return self.claims.needs_losses

    @property
    def degree(self) -> int | None:
        """``1``: f(cJ) = c f(J); ``0``: f(cJ) = f(J) (K ≥ 2); ``None``: no claim."""
        return self.claims.degree

    @property
    def non_conflicting(self) -> bool:
        """``f(J) · g_i ≥ 0`` for every task (up to rounding)."""
        return self.claims.non_conflicting

    @property
    def permutation(self) -> bool:
        """Permuting J's rows (and the losses) leaves the update unchanged."""
        return self.claims.permutation_invariant

    @property
    def stateful(self) -> bool:
        """``state_dict`` carries state that changes across calls."""
        return self.claims.stateful

    @property
    def rtol(self) -> float:
        """Relative tolerance of the equality tests (solver accuracy)."""
        return self.claims.rtol

    @property
    def log_scale(self) -> float:
        """Row norms of the equality tests span 10^-log_scale..10^log_scale."""
        return self.claims.log_scale


SPECS: dict[str, Spec] = {
    name: Spec(strategy_factory(name), claims) for name, claims in BUILTIN_CLAIMS.items()
}


def spec_for(name: str) -> Spec:
    """The spec of a registered strategy (a finiteness-only default for unknown ones)."""
    return SPECS.get(name, Spec(strategy_factory(name), claims_for(name)))


def build(name: str, k: int) -> Strategy:
    """A fresh instance of ``name`` for K tasks."""
    return spec_for(name).factory(k)


def run(name: str, matrix: Tensor, losses: Tensor | None = None) -> tuple[Tensor, Strategy]:
    """Build a fresh ``name`` for J's K and return ``(update, strategy)``."""
    spec = spec_for(name)
    return run_strategy(spec.factory, matrix, spec.claims, losses)


def extreme_matrices(
    k_min: int = 1,
    k_max: int = 16,
    p_max: int = 64,
    log_scale: tuple[float, float] = (-15.0, 15.0),
    dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32),
) -> st.SearchStrategy[Tensor]:
    """:func:`mtlkit.testing.jacobians`: every awkward row kind, norms in 10^log_scale."""
    return jacobians((k_min, k_max), (1, p_max), dtype=dtypes, log_scale=log_scale)


def generic_matrices(
    k_min: int = 2,
    k_max: int = 6,
    extra_p: int = 8,
    log_scale: tuple[float, float] = (-2.0, 2.0),
) -> st.SearchStrategy[Tensor]:
    """:func:`mtlkit.testing.random_jacobians`: float64, P ≥ K + 1, full row rank."""
    return random_jacobians((k_min, k_max), (1, extra_p), log_scale=log_scale)
