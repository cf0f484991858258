"""Faults: non-finite losses and gradients, skipped steps, empty batches.

(Loading untrusted checkpoint files is the example's: tests/minbert/test_train.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit
from mtlkit import NonFiniteError, TaskGradients
from tests.state_utils import clone_state, same_state

K = 3


class Net(nn.Module):
    def __init__(self, d: int = 6, h: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(h, 3), nn.Linear(h, 1), nn.Linear(h, 1)])

    def task_loss(
        self, task: int, x: Tensor, y: Tensor, hook: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        feats = self.trunk(x)
        if hook is not None:
            feats.register_hook(hook)
        out = self.heads[task](feats)
        if task == 0:
            return F.cross_entropy(out, y.long())
        return F.mse_loss(out.squeeze(-1), y)


def make_data(n: int = 16) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    data = [(x, (x[:, 0] > 0).float() + (x[:, 1] > 0).float())]
    return data + [(x, x[:, t] - 0.5 * x[:, 2 + t]) for t in (1, 2)]


def strategy_options(name: str) -> dict[str, Any]:
    if name == "weighted":
        return {"weights": [1.0, 0.5, 2.0]}
    if name == "uncertainty":
        return {"num_tasks": K}
    return {}


def _inf_grad(g: Tensor) -> Tensor:
    return g.index_fill(0, torch.tensor([1]), float("inf"))


def _backward_step(
    engine: TaskGradients, model: Net, data: list[tuple[Tensor, Tensor]], fault: str | None
) -> None:
    """One step's per-task backward; ``fault`` breaks task 1 (loss NaN/inf or gradient inf)."""
    for t, (x, y) in enumerate(data):
        hook = _inf_grad if (fault == "inf-gradient" and t == 1) else None
        loss = model.task_loss(t, x, y, hook)
        if t == 1 and fault == "nan-loss":
            loss = loss * float("nan")
        elif t == 1 and fault == "inf-loss":
            loss = loss + float("inf")
        engine.backward(t, loss)


# ----------------------------------------------------------------------------- raise
@pytest.mark.parametrize("fault", ["nan-loss", "inf-loss", "inf-gradient"])
@pytest.mark.parametrize("name", ["pcgrad", "gradnorm", "mean", "dwa"])
def test_nonfinite_raises_naming_task_and_step(name: str, fault: str) -> None:
    strategy = mtlkit.get_strategy(name, **strategy_options(name))
    torch.manual_seed(0)
    model, data = Net(), make_data()
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        _backward_step(engine, model, data, None)
        assert engine.write_grad()
        optimizer.step()
    _backward_step(engine, model, data, fault)
    kind = "gradient" if fault == "inf-gradient" else "loss"
    with pytest.raises(NonFiniteError, match=r"step 2") as info:
        engine.write_grad()
    message = str(info.value)
    if fault == "inf-gradient" and not strategy.needs_jacobian:
        # a loss weighting backpropagates the weighted sum once: no per-task gradient to
        # blame, but the shared gradient is checked before it reaches .grad
        assert "non-finite shared gradient" in message, message
        return
    assert ("task 1" in message or "tasks [1]" in message) and kind in message, message
    assert "task 0" not in message and "task 2" not in message, message


# ----------------------------------------------------------------------------- skip
@pytest.mark.parametrize("fault", ["nan-loss", "inf-loss", "inf-gradient"])
@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_skip_leaves_optimizer_and_strategy_untouched(name: str, fault: str) -> None:
    torch.manual_seed(0)
    model, data = Net(), make_data()
    strategy = mtlkit.get_strategy(name)
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K, nonfinite="skip")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(f: str | None) -> bool:
        optimizer.zero_grad(set_to_none=True)
        _backward_step(engine, model, data, f)
        ok = engine.write_grad()
        if ok:  # the documented protocol: no optimizer step for a skipped step
            optimizer.step()
        return ok

    assert step(None) and step(None)
    params = clone_state(dict(model.named_parameters()))
    opt_state = clone_state(optimizer.state_dict())
    strat_state = clone_state(strategy.state_dict())
    if name == "pcgrad":
        assert isinstance(strategy, mtlkit.PCGrad)
        generator = strategy.generator.get_state().clone()
    else:
        assert isinstance(strategy, mtlkit.GradNorm) and strategy.task_weights is not None
        weights = strategy.task_weights.clone()
        assert not torch.equal(weights, torch.ones(K))  # the weights have moved
    stats = strategy.last_stats

    assert step(fault) is False
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert same_state(optimizer.state_dict(), opt_state)
    assert same_state(strategy.state_dict(), strat_state)
    assert strategy.last_stats is stats
    if name == "pcgrad":
        assert torch.equal(strategy.generator.get_state(), generator)  # type: ignore[attr-defined]
    else:
        assert torch.equal(strategy.task_weights, weights)  # type: ignore[attr-defined]
    # The next good step is the one an uninterrupted run would take now.
    assert step(None)
    assert not torch.equal(model.trunk[0].weight, params["trunk.0.weight"])


@pytest.mark.parametrize("fault", ["nan-loss", "inf-gradient"])
@pytest.mark.parametrize("name", mtlkit.list_strategies())
def test_skip_leaves_every_strategy_state_untouched(name: str, fault: str) -> None:
    """Also for loss weightings, whose state moves when they weigh the losses, before the
    shared gradient is known to be finite (an inf gradient with finite losses)."""
    torch.manual_seed(0)
    model, data = Net(), make_data()
    strategy = mtlkit.get_strategy(name, **strategy_options(name))
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K, nonfinite="skip")
    for _ in range(2):
        _backward_step(engine, model, data, None)
        assert engine.write_grad()
    state = clone_state(strategy.state_dict())
    grads = [p.grad.clone() for p in model.trunk.parameters()]  # type: ignore[union-attr]
    _backward_step(engine, model, data, fault)
    assert engine.write_grad() is False
    assert same_state(strategy.state_dict(), state)
    for p, g in zip(model.trunk.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- empty tasks
def _empty(t: int, step: int) -> str | None:
    """Which tasks have no examples (zero leaf loss) or a zero gradient at each step."""
    plan = {0: {1: "empty"}, 1: {1: "empty", 2: "zero"}, 3: {2: "empty"}, 4: {0: "zero"}}
    return plan.get(step, {}).get(t)


@pytest.mark.parametrize("name", mtlkit.list_strategies())
def test_empty_batches_and_zero_gradients_give_finite_updates(name: str) -> None:
    """A task with an empty batch (``torch.zeros((), requires_grad=True)`` as its loss,
    as the miniBERT loop does) or an all-zero gradient, from the very first step on."""
    torch.manual_seed(0)
    model, data = Net(), make_data()
    strategy = mtlkit.get_strategy(name, **strategy_options(name))
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K)
    extra = list(getattr(strategy, "parameters", lambda: [])())
    optimizer = torch.optim.SGD([*model.parameters(), *extra], lr=0.05)
    for step in range(6):
        optimizer.zero_grad(set_to_none=True)
        for t, (x, y) in enumerate(data):
            kind = _empty(t, step)
            if kind == "empty":
                loss = torch.zeros((), requires_grad=True)
            elif kind == "zero":
                loss = 0.0 * model.task_loss(t, x, y)
            else:
                loss = model.task_loss(t, x, y)
            engine.backward(t, loss)
        assert engine.write_grad() is True, step
        for p in model.trunk.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (step, p.grad)
        optimizer.step()
        for n, p in model.named_parameters():
            assert torch.isfinite(p).all(), (step, n)
    # and the strategy's state stays finite for the steps after
    for value in strategy.state_dict().values():
        if isinstance(value, Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), (name, strategy.state_dict())


def test_all_tasks_empty_is_a_zero_update() -> None:
    model = Net()
    engine = TaskGradients(model.trunk.parameters(), mtlkit.PCGrad(), num_tasks=K)
    for t in range(K):
        engine.backward(t, torch.zeros((), requires_grad=True))
    assert engine.write_grad()
    for p in model.trunk.parameters():
        assert p.grad is None or not p.grad.any()
