"""PCGrad against a plain float64 reference, and its documented properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtlkit import PCGrad, Sum
from tests.matrices import jacobians


def reference_orders(k: int, seed: int) -> list[list[int]]:
    """The task orders PCGrad documents: others_i[randperm(K-1)] drawn for i = 0..K-1."""
    gen = torch.Generator().manual_seed(seed)
    orders = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        perm = torch.randperm(k - 1, generator=gen).tolist()
        orders.append([others[t] for t in perm])
    return orders


def pcgrad_reference(matrix: torch.Tensor, seed: int, reduction: str = "sum") -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1, written plainly in P-space float64."""
    j64 = matrix.double()
    k = j64.shape[0]
    projected = []
    for i, order in enumerate(reference_orders(k, seed)):
        g = j64[i].clone()
        for j in order:
            dot = g @ j64[j]
            if dot < 0:
                g = g - dot / (j64[j] @ j64[j]) * j64[j]
        projected.append(g)
    total = torch.stack(projected).sum(dim=0)
    return total / k if reduction == "mean" else total


def _close(ours: torch.Tensor, ref: torch.Tensor, matrix: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = matrix.double().norm(dim=1).sum().item()
    err = (ours.double() - ref).norm().item()
    assert err <= rtol * scale + 1e-30, f"error {err:.3g} vs scale {scale:.3g}"


@given(jacobians(), st.integers(0, 1000), st.sampled_from(["sum", "mean"]))
def test_matches_reference(matrix: torch.Tensor, seed: int, reduction: str) -> None:
    ours = PCGrad(reduction=reduction, seed=seed).combine(matrix)  # type: ignore[arg-type]
    assert ours.dtype == matrix.dtype and ours.shape == (matrix.shape[1],)
    assert torch.isfinite(ours).all()
    _close(ours, pcgrad_reference(matrix, seed, reduction), matrix)


@given(jacobians(k_max=8, log_scale=(-2, 2)), st.integers(0, 100))
def test_equals_sum_without_conflict(matrix: torch.Tensor, seed: int) -> None:
    matrix = matrix.abs()  # all pairwise inner products >= 0
    ours = PCGrad(seed=seed).combine(matrix)
    torch.testing.assert_close(ours, Sum().combine(matrix), rtol=1e-5, atol=1e-6)


@given(jacobians(k_min=2, k_max=2), st.integers(0, 100))
def test_two_tasks_non_conflicting(matrix: torch.Tensor, seed: int) -> None:
    update = PCGrad(seed=seed).combine(matrix).double()
    j64 = matrix.double()
    scale = j64.norm(dim=1).sum()
    for g in j64:
        assert update @ g >= -1e-5 * scale * g.norm()


@given(jacobians(), st.floats(1e-3, 1e3), st.integers(0, 100))
def test_positively_homogeneous(matrix: torch.Tensor, c: float, seed: int) -> None:
    a = PCGrad(seed=seed).combine(matrix * c).double()
    b = PCGrad(seed=seed).combine(matrix).double() * c
    _close(a.float(), b, matrix * c)


@given(jacobians(), st.integers(0, 100))
def test_mean_is_sum_over_k(matrix: torch.Tensor, seed: int) -> None:
    s = PCGrad(reduction="sum", seed=seed).combine(matrix)
    m = PCGrad(reduction="mean", seed=seed).combine(matrix)
    assert torch.equal(m, s / matrix.shape[0])


def test_same_seed_same_output_and_state_resume() -> None:
    matrix = torch.randn(5, 50)
    matrix[1] = -matrix[0]
    matrix[3] = -matrix[2] + 0.1 * torch.randn(50)
    a, b = PCGrad(seed=3), PCGrad(seed=3)
    outs_a = [a.combine(matrix) for _ in range(4)]
    outs_b = [b.combine(matrix) for _ in range(2)]
    c = PCGrad(seed=99)
    c.load_state_dict(b.state_dict())
    outs_b += [c.combine(matrix) for _ in range(2)]
    for x, y in zip(outs_a, outs_b, strict=True):
        assert torch.equal(x, y)


def test_orders_change_between_calls() -> None:
    s = PCGrad(seed=0)
    draws = {tuple(s.draw_orders(4).flatten().tolist()) for _ in range(20)}
    assert len(draws) > 1


def test_k1_returns_gradient_unchanged() -> None:
    g = torch.randn(1, 17)
    torch.testing.assert_close(PCGrad().combine(g), g[0])


def test_zero_rows_give_no_nan() -> None:
    matrix = torch.zeros(3, 10)
    matrix[0] = torch.randn(10)
    out = PCGrad().combine(matrix)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, matrix[0])


def test_opposite_pair_cancels() -> None:
    g = torch.randn(1, 20)
    out = PCGrad().combine(torch.cat([g, -g]))
    assert out.abs().max() <= 1e-6 * g.abs().max()


def test_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(reduction="max")  # type: ignore[arg-type]


def test_stats_are_recorded() -> None:
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 2.0]])
    s = PCGrad()
    s.combine(matrix)
    assert s.last_stats is not None
    stats = s.last_stats.as_dict()
    assert stats["conflicts"] == 1
    assert stats["norms"] == pytest.approx([1.0, 2.0**0.5, 2.0])
    assert stats["cosines"][0][1] == pytest.approx(-(2.0**-0.5))
