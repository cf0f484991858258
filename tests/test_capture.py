"""Device-rule strategies and loss weightings: no host read, and each call compiles whole.

Sum, Mean, Weighted, PCGrad and GradNorm run their K x K rule on J's device
(``host_rule = False``): no ``.item()``, ``bool()``, ``.tolist()`` in ``combine``, a
device-side finiteness flag instead of a raising check, and ``torch.compile`` with
``fullgraph=True`` captures the whole call (PCGrad's draw from its CPU generator is an
opaque custom op there).

The loss weightings (uncertainty, DWA, FAMO, RLW) read nothing back either, in what the
engine calls each step (``loss_weights``, ``weighted_loss``, ``accept``) and in
``combine`` (the same device-side flag; the state keeps its values on a non-finite step,
and ``discard_step`` puts back what the flag cannot mask); RLW's draws are opaque custom
ops under ``torch.compile``. (The GPU side, a whole step under
``torch.cuda.set_sync_debug_mode("error")`` and CUDA graphs: ``tests/test_cuda_step.py``.)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import mtlkit
from mtlkit.strategies.base import GramianStrategy, LossWeighting, Strategy, strategy_class
from tests.state_utils import clone_state, same_state

K, P = 3, 40
DEVICE_RULE = ["sum", "mean", "weighted", "pcgrad", "gradnorm", "imtl-g"]
LOSS_WEIGHTINGS = ["uncertainty", "dwa", "famo", "rlw"]


def make(name: str) -> Strategy:
    options: dict[str, Any] = {}
    if name == "weighted":
        options = {"weights": [1.0, 0.5, 2.0]}
    elif name == "uncertainty":
        options = {"num_tasks": K, "init": [0.0, 0.5, -0.25]}
    return mtlkit.get_strategy(name, **options)


def make_weighting(name: str) -> LossWeighting:
    strategy = make(name)
    assert isinstance(strategy, LossWeighting)
    return strategy


def inputs(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(K, P, generator=g)
    jac[1] -= 1.5 * jac[0]  # a conflicting pair, so PCGrad projects
    losses = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    return jac, losses


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Make every way of reading a tensor's value to the host raise inside the block."""

    def refuse(name: str) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"Tensor.{name} read a value to the host inside combine")

        return method

    names = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero"]
    saved = {n: getattr(Tensor, n) for n in names}
    try:
        for n in names:
            setattr(Tensor, n, refuse(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(Tensor, n, f)


@pytest.mark.parametrize("name", DEVICE_RULE)
def test_device_rule_strategies_are_marked(name: str) -> None:
    strategy = make(name)
    assert isinstance(strategy, GramianStrategy) and strategy.host_rule is False


def test_solver_strategies_keep_the_host_rule() -> None:
    for name in ["mgda", "upgrad", "cagrad", "nash-mtl", "gradvac"]:
        cls = strategy_class(name)
        assert issubclass(cls, GramianStrategy) and cls.host_rule is True


@pytest.mark.parametrize("name", DEVICE_RULE)
@pytest.mark.parametrize("finite", [True, False])
def test_combine_reads_nothing_to_the_host(name: str, finite: bool) -> None:
    strategy = make(name)
    jac, losses = inputs()
    strategy.combine(jac, losses)  # a first step (GradNorm's initial losses are set)
    if not finite:
        jac[1, 3] = float("inf")
    with no_host_reads():
        update = strategy.combine(jac, losses)
    assert bool(torch.isfinite(update).all()) is finite


@pytest.mark.parametrize("name", DEVICE_RULE)
def test_nonfinite_input_gives_nan_update_and_keeps_gradnorm_state(name: str) -> None:
    strategy = make(name)
    jac, losses = inputs()
    strategy.combine(jac, losses)
    before = copy.deepcopy(strategy.state_dict())
    bad = losses.clone()
    bad[2] = float("nan")
    update = strategy.combine(jac, bad)
    assert torch.isnan(update).all()
    if name == "gradnorm":
        for key, value in strategy.state_dict().items():
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", DEVICE_RULE)
def test_no_graph_break(name: str) -> None:
    torch._dynamo.reset()
    strategy = make(name)
    jac, losses = inputs()
    strategy.combine(jac, losses)
    explained = torch._dynamo.explain(lambda j, l: strategy.combine(j, l))(jac, losses)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", DEVICE_RULE)
def test_fullgraph_compile_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    eager, compiled = make(name), make(name)
    fn = torch.compile(lambda j, l: compiled.combine(j, l), fullgraph=True)
    for step in range(3):  # stateful strategies: the states must move alike
        jac, losses = inputs(step)
        expected = eager.combine(jac, losses)
        got = fn(jac, losses)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert eager.last_stats is not None and compiled.last_stats is not None
        torch.testing.assert_close(
            compiled.last_stats.weights, eager.last_stats.weights, rtol=1e-6, atol=1e-6
        )
    for key, value in eager.state_dict().items():
        other = compiled.state_dict()[key]
        if isinstance(value, Tensor) and value.is_floating_point():
            torch.testing.assert_close(other, value, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(other, value), key


def test_compiled_pcgrad_draws_fresh_orders_each_call() -> None:
    torch._dynamo.reset()
    strategy = mtlkit.PCGrad(seed=0)
    fn = torch.compile(lambda j, l: strategy.combine(j, l), fullgraph=True)
    jac, losses = inputs()
    states = set()
    for _ in range(4):
        fn(jac, losses)
        states.add(bytes(strategy.generator.get_state().numpy()))
    assert len(states) == 4
    reference = mtlkit.PCGrad(seed=0)
    for _ in range(4):
        reference.draw_orders(K)
    assert torch.equal(reference.generator.get_state(), strategy.generator.get_state())


def test_pcgrad_copy_draws_from_its_own_generator_when_compiled() -> None:
    torch._dynamo.reset()
    original = mtlkit.PCGrad(seed=0)
    clone = copy.deepcopy(original)
    fn = torch.compile(lambda j, l: clone.combine(j, l), fullgraph=True)
    jac, losses = inputs()
    state = original.generator.get_state().clone()
    fn(jac, losses)
    assert torch.equal(original.generator.get_state(), state)
    assert not torch.equal(clone.generator.get_state(), state)


@pytest.mark.parametrize("name", DEVICE_RULE)
def test_device_rule_precision_against_float64(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    jac = torch.randn(K, 50_000, generator=g)
    losses = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    strategy, exact = make(name), make(name)
    update = strategy.combine(jac, losses)
    reference = exact.combine(jac.double(), losses)
    err = (update.double() - reference).norm() / reference.norm()
    assert err <= 1e-5, err


# ----------------------------------------------------------------------------- loss weightings
def warmed_up(name: str) -> LossWeighting:
    """A loss weighting past its first steps (FAMO's last losses and DWA's weights set)."""
    strategy = make_weighting(name)
    for step in range(3):
        jac, losses = inputs(10 + step)
        strategy.combine(jac, losses)
    return strategy


def test_every_loss_weighting_is_covered() -> None:
    names = {n for n in mtlkit.list_strategies() if not strategy_class(n).needs_jacobian}
    assert names == set(LOSS_WEIGHTINGS)


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
@pytest.mark.parametrize("finite", [True, False])
def test_loss_weighting_reads_nothing_to_the_host(name: str, finite: bool) -> None:
    """``combine`` and the engine's per-step calls (``loss_weights``, ``weighted_loss``
    with its backward, ``accept``)."""
    strategy = warmed_up(name)
    jac, losses = inputs()
    if not finite:
        jac[1, 3] = float("inf")
    step_losses = (losses + 0.25).requires_grad_(True)
    with no_host_reads():
        update = strategy.combine(jac, losses)
        strategy.loss_weights(step_losses.detach())
        total = strategy.weighted_loss(step_losses)
        total.backward()
        strategy.accept(step_losses.detach())
    assert bool(torch.isfinite(update).all()) is finite
    assert step_losses.grad is not None and bool(torch.isfinite(step_losses.grad).all())


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_nonfinite_combine_gives_nan_and_leaves_no_trace(name: str, fault: str) -> None:
    """A non-finite step: NaN update and weights, the state keeps its values (a device
    flag; RLW's generator excepted), and after ``discard_step`` the next step is the one
    an uninterrupted run takes."""
    strategy = warmed_up(name)
    reference = copy.deepcopy(strategy)
    before = clone_state(strategy.state_dict())
    jac, losses = inputs(1)
    if fault == "loss":
        losses[2] = float("nan")
    else:
        jac[0, 5] = float("-inf")
    update = strategy.combine(jac, losses)
    assert torch.isnan(update).all()
    assert strategy.last_stats is not None and torch.isnan(strategy.last_stats.weights).all()
    if name != "rlw":  # the generator moved past the draw: only discard_step puts it back
        assert same_state(strategy.state_dict(), before)
    strategy.discard_step()
    assert same_state(strategy.state_dict(), before)
    jac, losses = inputs(2)
    torch.testing.assert_close(strategy.combine(jac, losses), reference.combine(jac, losses))
    assert same_state(strategy.state_dict(), reference.state_dict())


def test_discard_step_undoes_what_the_flag_cannot_mask() -> None:
    """FAMO's first call sets its last losses and DWA counts the steps of a period: a
    device flag cannot mask those without a host read; ``discard_step`` undoes them."""
    jac, losses = inputs()
    losses[0] = float("inf")
    famo = mtlkit.FAMO()  # its very first call
    dwa = mtlkit.DWA(period=3)
    dwa.combine(*inputs(5))  # one step into the period
    for strategy in (famo, dwa):
        before = clone_state(strategy.state_dict())
        assert torch.isnan(strategy.combine(jac, losses)).all()
        assert not same_state(strategy.state_dict(), before)
        strategy.discard_step()
        assert same_state(strategy.state_dict(), before)


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
def test_loss_weighting_no_graph_break(name: str) -> None:
    strategy = warmed_up(name)
    jac, losses = inputs()

    def engine_step(step_losses: Tensor) -> Tensor:
        total = strategy.weighted_loss(step_losses)
        strategy.accept(step_losses.detach())
        return total

    for fn, args in [
        (lambda j, l: strategy.combine(j, l), (jac, losses)),
        (engine_step, (losses.clone().requires_grad_(True),)),
    ]:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
def test_loss_weighting_fullgraph_compile_matches_eager(name: str) -> None:
    """``combine`` and the engine's step (weighted loss, its gradient, ``accept``), each
    compiled whole: the same values as eager mode, and the states move alike."""
    torch._dynamo.reset()
    eager, compiled = make_weighting(name), make_weighting(name)

    def engine_step(strategy: LossWeighting, step_losses: Tensor) -> Tensor:
        total = strategy.weighted_loss(step_losses)
        strategy.accept(step_losses.detach())
        return total

    combine = torch.compile(lambda j, l: compiled.combine(j, l), fullgraph=True)
    step = torch.compile(lambda l: engine_step(compiled, l), fullgraph=True)
    for n in range(3):
        jac, losses = inputs(n)
        torch.testing.assert_close(combine(jac, losses), eager.combine(jac, losses))
        assert eager.last_stats is not None and compiled.last_stats is not None
        torch.testing.assert_close(compiled.last_stats.weights, eager.last_stats.weights)
        ours, theirs = losses.clone().requires_grad_(True), losses.clone().requires_grad_(True)
        total, expected = step(ours), engine_step(eager, theirs)
        torch.testing.assert_close(total, expected)
        total.backward()
        expected.backward()
        torch.testing.assert_close(ours.grad, theirs.grad)
    for key, value in eager.state_dict().items():
        other = compiled.state_dict()[key]
        if isinstance(value, Tensor) and value.is_floating_point():
            torch.testing.assert_close(other, value, rtol=1e-6, atol=1e-6)
        else:
            assert same_state(other, value), key


def test_compiled_rlw_draws_from_its_own_generator() -> None:
    torch._dynamo.reset()
    original = mtlkit.RLW(seed=0)
    clone = copy.deepcopy(original)
    fn = torch.compile(lambda j, l: clone.combine(j, l), fullgraph=True)
    state = original.generator.get_state().clone()
    weights = set()
    for n in range(3):
        fn(*inputs(n))
        assert clone.last_stats is not None
        weights.add(tuple(clone.last_stats.weights.tolist()))
    assert len(weights) == 3  # a fresh draw each call
    assert torch.equal(original.generator.get_state(), state)
    reference = mtlkit.RLW(seed=0)
    for _ in range(3):
        reference.accept(torch.ones(K))
    assert torch.equal(reference.generator.get_state(), clone.generator.get_state())
