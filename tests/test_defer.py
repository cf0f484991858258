"""``nonfinite="defer"``: a whole engine step with no host read; non-finite steps are
counted on the device and reported by ``check_nonfinite``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtlkit
from mtlkit.integrations._common import refuse_defer
from tests.test_capture import DEVICE_RULE, LOSS_WEIGHTINGS, no_host_reads

K = 3


def model_and_batches(seed: int = 0) -> tuple[nn.Module, nn.ModuleList, list[tuple]]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))
    batches = [(torch.randn(5, 6), torch.randn(5, 1)) for _ in range(K)]
    return trunk, heads, batches


def make(name: str) -> mtlkit.Strategy:
    if name == "weighted":
        return mtlkit.get_strategy(name, weights=[1.0, 0.5, 2.0])
    if name == "uncertainty":
        return mtlkit.UncertaintyWeighting(num_tasks=K)
    return mtlkit.get_strategy(name, context=mtlkit.Context(num_tasks=K, seed=0))


def step(
    engine: mtlkit.TaskGradients, trunk: nn.Module, heads: nn.ModuleList, batches: list, bad: bool
) -> None:
    losses = []
    for t, (x, y) in enumerate(batches):
        loss = nn.functional.mse_loss(heads[t](trunk(x)), y)
        if bad and t == 1:
            loss = loss * float("nan")
        losses.append(loss)
    if isinstance(engine.strategy, mtlkit.strategies.LossWeighting):
        engine.backward_all(losses)
    else:
        for t, loss in enumerate(losses):
            engine.backward(t, loss)
    engine.write_grad()


@pytest.mark.parametrize("name", DEVICE_RULE + LOSS_WEIGHTINGS)
def test_deferred_step_reads_nothing_to_the_host_and_equals_raise(name: str) -> None:
    trunk, heads, batches = model_and_batches()
    ref_trunk, ref_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    engine = mtlkit.TaskGradients(trunk, make(name), num_tasks=K, nonfinite="defer")
    reference = mtlkit.TaskGradients(ref_trunk, make(name), num_tasks=K)
    for _ in range(2):  # the first step allocates J and the strategy's state
        for m in (trunk, heads, ref_trunk, ref_heads):
            m.zero_grad(set_to_none=True)
        with no_host_reads():
            step(engine, trunk, heads, batches, bad=False)
        step(reference, ref_trunk, ref_heads, batches, bad=False)
        for p, q in zip(trunk.parameters(), ref_trunk.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
    engine.check_nonfinite()  # nothing to report
    assert int(engine.nonfinite_steps) == 0


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm", "mgda", "dwa"])
def test_deferred_nonfinite_steps_are_counted_then_raised(name: str) -> None:
    trunk, heads, batches = model_and_batches(1)
    strategy = make(name)
    engine = mtlkit.TaskGradients(trunk, strategy, num_tasks=K, nonfinite="defer")
    step(engine, trunk, heads, batches, bad=False)
    state = copy.deepcopy(strategy.state_dict())
    for bad in (True, False, True):
        trunk.zero_grad(set_to_none=True)
        step(engine, trunk, heads, batches, bad=bad)  # written, not raised
        if bad:
            assert any(torch.isnan(p.grad).any() for p in trunk.parameters())
    assert int(engine.nonfinite_steps) == 2
    with pytest.raises(mtlkit.NonFiniteError, match="2 step"):
        engine.check_nonfinite()
    engine.check_nonfinite()  # counting starts again
    if name in ("gradnorm", "dwa"):  # their state tensors ignored the NaN steps
        for v in strategy.state_dict().values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert bool(torch.isfinite(v).all())
    if name == "mgda":  # a solver strategy found it on the host: NaN written, counted
        assert strategy.state_dict() == state


def test_the_checking_policies_do_read_the_host() -> None:
    """The control of the test above: ``"raise"`` reads one value per step."""
    trunk, heads, batches = model_and_batches()
    engine = mtlkit.TaskGradients(trunk, make("sum"), num_tasks=K, nonfinite="raise")
    step(engine, trunk, heads, batches, bad=False)
    with pytest.raises(AssertionError, match="read a value to the host"), no_host_reads():
        step(engine, trunk, heads, batches, bad=False)


def test_defer_is_refused_where_no_one_would_read_the_count() -> None:
    trunk, heads, batches = model_and_batches()
    losses = [nn.functional.mse_loss(heads[t](trunk(x)), y) for t, (x, y) in enumerate(batches)]
    with pytest.raises(ValueError, match="check_nonfinite"):
        mtlkit.backward(losses, list(trunk.parameters()), make("sum"), nonfinite="defer")
    with pytest.raises(ValueError, match="check_nonfinite"):
        refuse_defer("defer")
    refuse_defer("skip")
    with pytest.raises(ValueError, match="'defer'"):
        mtlkit.TaskGradients(trunk, make("sum"), nonfinite="later")  # type: ignore[arg-type]
