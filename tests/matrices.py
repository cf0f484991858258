"""Hypothesis samplers of per-task gradient matrices (thin wrappers of mtlkit.testing)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from mtlkit.testing import jacobians as _jacobians


def jacobians(
    k_min: int = 1,
    k_max: int = 8,
    p_max: int = 300,
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> st.SearchStrategy[torch.Tensor]:
    """A float32 (K, P) matrix: random rows of norms 10^a..10^b, with zero, duplicated
    (rescaled) and exactly opposite rows mixed in."""
    return _jacobians(
        (k_min, k_max),
        (1, p_max),
        dtype=torch.float32,
        log_scale=log_scale,
        kinds=("random", "random", "zero", "duplicate", "opposite"),
    )
