"""GradNorm: weights balance gradient norms; state checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit import GradNorm, TaskGradients


def _toy(alpha: float, steps: int) -> tuple[list[float], list[float]]:
    """Two regression tasks on a shared layer; task 1's loss is scaled x100."""
    torch.manual_seed(0)
    trunk = nn.Linear(8, 8)
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
    strategy = GradNorm(alpha=alpha, lr=0.05)
    engine = TaskGradients(list(trunk.parameters()), strategy, num_tasks=2)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters()), lr=1e-4)
    x = torch.randn(64, 8)
    targets = [x @ torch.randn(8, 1), x @ torch.randn(8, 1)]
    ratios = []
    for _ in range(steps):
        opt.zero_grad()
        h = trunk(x)
        losses = [((heads[t](h) - targets[t]) ** 2).mean() for t in range(2)]
        engine.backward_all([losses[0], losses[1] * 100.0])
        engine.write_grad()
        stats = engine.stats
        assert stats is not None
        weighted = (stats.weights * stats.norms).tolist()
        ratios.append(max(weighted) / min(weighted))
        opt.step()
    assert strategy.task_weights is not None
    return ratios, strategy.task_weights.tolist()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_weighted_norms_converge(alpha: float) -> None:
    ratios, weights = _toy(alpha, 300)
    assert ratios[0] > 20  # task 1's gradient is ~100x larger at the start
    assert ratios[-1] < 2.0  # after balancing the weighted norms are close
    assert sum(weights) == pytest.approx(2.0)
    assert weights[0] > weights[1]


def test_state_roundtrip_continues_identically() -> None:
    matrix = torch.randn(3, 40)
    losses = torch.tensor([1.0, 2.0, 3.0])
    a = GradNorm()
    outs_a = [a.combine(matrix, losses * (0.9**i)) for i in range(5)]
    b = GradNorm()
    outs_b = [b.combine(matrix, losses * (0.9**i)) for i in range(2)]
    c = GradNorm()
    c.load_state_dict(b.state_dict())
    outs_b += [c.combine(matrix, losses * (0.9**i)) for i in range(2, 5)]
    for x, y in zip(outs_a, outs_b, strict=True):
        assert torch.equal(x, y)


def test_needs_losses_and_valid_args() -> None:
    with pytest.raises(ValueError, match="losses"):
        GradNorm().combine(torch.randn(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(alpha=-1)
    g = GradNorm(num_tasks=3)
    with pytest.raises(ValueError, match="3 tasks"):
        g.combine(torch.randn(2, 3), torch.ones(2))


def test_zero_gradient_row_is_finite() -> None:
    matrix = torch.zeros(2, 5)
    matrix[0] = 1.0
    out = GradNorm().combine(matrix, torch.tensor([1.0, 1.0]))
    assert torch.isfinite(out).all()


def test_task_with_empty_first_batch_starts_its_rate_later() -> None:
    matrix = torch.randn(2, 6)
    g = GradNorm(alpha=1.0)
    g.combine(matrix, torch.tensor([1.0, 0.0]))  # task 1 had no examples at step 0
    g.combine(matrix, torch.tensor([1.0, 2.0]))
    assert g.initial_losses is not None
    assert g.initial_losses.tolist() == [1.0, 2.0]
