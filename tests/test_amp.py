"""Mixed precision: bfloat16 autocast end to end, float16 with ``torch.amp.GradScaler``.

With a scaler the engine receives the *scaled* losses (``scaler.scale(loss)``); the
strategy must see the true per-task gradients and losses, and a step the scaler skips
(overflow) must leave the parameters, the optimizer and the strategy untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit
from mtlkit import GradNorm, PCGrad, TaskGradients
from tests.state_utils import clone_state, same_state

K = 3
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Net(nn.Module):
    def __init__(self, d: int = 6, h: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(h, 3), nn.Linear(h, 1), nn.Linear(h, 1)])

    def task_loss(self, task: int, x: Tensor, y: Tensor) -> Tensor:
        out = self.heads[task](self.trunk(x)).float()
        if task == 0:
            return F.cross_entropy(out, y.long())
        return F.mse_loss(out.squeeze(-1), y)


def make_data(device: str = "cpu", n: int = 32) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    data = [(x, (x[:, 0] > 0).float() + (x[:, 1] > 0).float())]
    data += [(x, x[:, t] - 0.5 * x[:, 2 + t]) for t in (1, 2)]
    return [(a.to(device), b.to(device)) for a, b in data]


# ----------------------------------------------------------------------------- bfloat16
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bf16_autocast_trains_with_pcgrad(device: str) -> None:
    torch.manual_seed(0)
    model = Net().to(device)
    data = make_data(device)
    engine = TaskGradients(model.trunk.parameters(), PCGrad(), num_tasks=K)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(25):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for t, (x, y) in enumerate(data):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model.task_loss(t, x, y)
            assert loss.dtype == torch.float32
            engine.backward(t, loss)
            losses.append(float(loss.detach()))
        assert engine.write_grad()
        optimizer.step()
        history.append(losses)
    log = torch.tensor(history)
    assert torch.isfinite(log).all()
    assert (log[-3:].mean(0) < 0.8 * log[:3].mean(0)).all(), log
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert engine.stats is not None and torch.isfinite(engine.stats.norms).all()


# ----------------------------------------------------------------------------- float16
def _run(
    strategy: mtlkit.Strategy,
    *,
    scaler: torch.amp.GradScaler | None,
    steps: int,
    bad_step: int | None = None,
) -> tuple[Net, list[Tensor], list[bool]]:
    """Train with (scaler) or without (``nonfinite="skip"``) loss scaling, float32 math.

    At ``bad_step`` task 2's loss is inf. Returns the model, J after each combine (as
    the strategy saw it) and whether each step was applied.
    """
    torch.manual_seed(0)
    model = Net()
    data = make_data()
    engine = TaskGradients(
        model.trunk.parameters(), strategy, num_tasks=K, nonfinite="skip", scaler=scaler
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    jacs, applied = [], []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for t, (x, y) in enumerate(data):
            loss = model.task_loss(t, x, y)
            if step == bad_step and t == 2:
                loss = loss * float("inf")
            engine.backward(t, scaler.scale(loss) if scaler is not None else loss)
        ok = engine.write_grad()
        if strategy.needs_jacobian:
            assert engine.jacobian is not None
            jacs.append(engine.jacobian.clone())
        if scaler is not None:
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            applied.append(scaler.get_scale() >= before)
        else:
            if ok:
                optimizer.step()
            applied.append(ok)
    return model, jacs, applied


@pytest.mark.parametrize("name", ["gradnorm", "pcgrad", "dwa"])
def test_grad_scaler_strategy_sees_unscaled_gradients_and_losses(name: str) -> None:
    """A scaled run (scale 2^16, then halved by an overflow) equals an unscaled one.

    Scaling by powers of two is exact, so J, the strategy's state (GradNorm's initial
    losses and weights, DWA's loss averages) and the parameters must be *equal*.
    """
    options: dict[str, Any] = {"alpha": 1.0, "lr": 0.1} if name == "gradnorm" else {}
    plain_strategy = mtlkit.get_strategy(name, **options)
    scaled_strategy = mtlkit.get_strategy(name, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    plain, plain_j, plain_ok = _run(plain_strategy, scaler=None, steps=5, bad_step=2)
    scaled, scaled_j, scaled_ok = _run(scaled_strategy, scaler=scaler, steps=5, bad_step=2)
    assert plain_ok == scaled_ok == [True, True, False, True, True]
    assert scaler.get_scale() == 2.0**15
    for i, (a, b) in enumerate(zip(plain_j, scaled_j, strict=True)):
        if i != 2:
            assert torch.equal(a, b), i
    assert same_state(plain_strategy.state_dict(), scaled_strategy.state_dict())
    if name == "gradnorm":
        assert isinstance(scaled_strategy, GradNorm)
        assert scaled_strategy.initial_losses is not None
        assert float(scaled_strategy.initial_losses.max()) < 10  # true losses, not x 2^16
        assert plain_strategy.last_stats is not None and scaled_strategy.last_stats is not None
        assert torch.equal(plain_strategy.last_stats.norms, scaled_strategy.last_stats.norms)
    for (n, p), q in zip(plain.named_parameters(), scaled.parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_grad_scaler_skips_overflow_step(name: str, device: str) -> None:
    """An inf in one task's *gradient* (finite loss): the scaler skips the step."""
    torch.manual_seed(0)
    model = Net().to(device)
    data = make_data(device)
    strategy = mtlkit.get_strategy(name)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K, scaler=scaler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(overflow: bool) -> bool:
        optimizer.zero_grad(set_to_none=True)
        for t, (x, y) in enumerate(data):
            feats = model.trunk(x)
            if overflow and t == 1:  # the gradient flowing into the trunk overflows
                feats.register_hook(lambda g: g.index_fill(0, g.new_zeros(1).long(), float("inf")))
            loss = F.mse_loss(model.heads[t](feats).squeeze(-1), y) if t else None
            if loss is None:
                loss = F.cross_entropy(model.heads[0](feats), y.long())
            assert torch.isfinite(loss)
            engine.backward(t, scaler.scale(loss))
        ok = engine.write_grad()
        scaler.step(optimizer)
        scaler.update()
        return ok

    assert step(False)
    params = clone_state(dict(model.named_parameters()))
    opt_state = clone_state(optimizer.state_dict())
    strat_state = clone_state(strategy.state_dict())
    scale = scaler.get_scale()
    assert step(True) is False
    assert scaler.get_scale() == scale / 2
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert same_state(optimizer.state_dict(), opt_state)
    assert same_state(strategy.state_dict(), strat_state)
    assert step(False)  # training goes on
    assert not torch.equal(model.trunk[0].weight, params["trunk.0.weight"])


def _fp16_autocast_training(device: str) -> list[list[float]]:
    torch.manual_seed(0)
    model = Net().to(device)
    data = make_data(device)
    scaler = torch.amp.GradScaler(device)
    engine = TaskGradients(model.trunk.parameters(), GradNorm(), num_tasks=K, scaler=scaler)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(25):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for t, (x, y) in enumerate(data):
            with torch.autocast(device, dtype=torch.float16):
                loss = model.task_loss(t, x, y)
            engine.backward(t, scaler.scale(loss))
            losses.append(float(loss.detach()))
        engine.write_grad()
        scaler.step(optimizer)
        scaler.update()
        history.append(losses)
    return history


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_fp16_autocast_with_grad_scaler_trains(device: str) -> None:
    log = torch.tensor(_fp16_autocast_training(device))
    assert torch.isfinite(log).all()
    assert (log[-3:].mean(0) < 0.8 * log[:3].mean(0)).all(), log
