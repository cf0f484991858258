"""Device-rule strategies: ``combine`` reads nothing back to the host and compiles whole.

Sum, Mean, Weighted, PCGrad and GradNorm run their K x K rule on J's device
(``host_rule = False``): no ``.item()``, ``bool()``, ``.tolist()`` in ``combine``, a
device-side finiteness flag instead of a raising check, and ``torch.compile`` with
``fullgraph=True`` captures the whole call (PCGrad's draw from its CPU generator is an
opaque custom op there).
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
from mtlkit.strategies.base import GramianStrategy, Strategy, strategy_class

K, P = 3, 40
DEVICE_RULE = ["sum", "mean", "weighted", "pcgrad", "gradnorm"]


def make(name: str) -> Strategy:
    options: dict[str, Any] = {"weights": [1.0, 0.5, 2.0]} if name == "weighted" else {}
    return mtlkit.get_strategy(name, **options)


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
