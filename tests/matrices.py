"""Hypothesis samplers of per-task gradient matrices with the awkward cases."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st


@st.composite
def jacobians(
    draw: st.DrawFn,
    k_min: int = 1,
    k_max: int = 8,
    p_max: int = 300,
    log_scale: tuple[float, float] = (-6.0, 6.0),
) -> torch.Tensor:
    """A float32 (K, P) matrix: random rows of scales 10^a..10^b, with zero,
    duplicated (rescaled) and exactly opposite rows mixed in."""
    k = draw(st.integers(k_min, k_max))
    p = draw(st.integers(1, p_max))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((k, p))
    for i in range(k):
        kind = draw(st.sampled_from(["random", "random", "zero", "duplicate", "opposite"]))
        if i > 0 and kind == "duplicate":
            rows[i] = rows[draw(st.integers(0, i - 1))] * rng.uniform(0.1, 10.0)
        elif i > 0 and kind == "opposite":
            rows[i] = -rows[draw(st.integers(0, i - 1))]
        elif kind == "zero":
            rows[i] = 0.0
        else:
            rows[i] *= 10.0 ** draw(st.floats(*log_scale))
    return torch.from_numpy(rows).to(torch.float32)
