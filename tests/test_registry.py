"""One registry convention: names normalised on both sides, context filled in one place."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import mtlkit
from mtlkit import Context, normalize_name
from mtlkit._registry import Registry
from mtlkit.strategies import STRATEGIES, GramianStrategy, register


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("PCGrad", "pcgrad"),
        ("my_method", "my-method"),
        ("My Method", "my-method"),
        ("  round_robin ", "round-robin"),
        ("nash-mtl", "nash-mtl"),
    ],
)
def test_normalize_name(raw: str, canonical: str) -> None:
    assert normalize_name(raw) == canonical


def test_normalize_name_rejects_empty_and_non_strings() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_name(" _ ")
    with pytest.raises(TypeError):
        normalize_name(3)  # type: ignore[arg-type]


class Halves(GramianStrategy):
    """A user's strategy: every task weighted by ``scale`` / K."""

    def __init__(self, num_tasks: int, scale: float = 1.0, seed: int = 0) -> None:
        self.num_tasks = num_tasks
        self.scale = scale
        self.seed = seed

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        return torch.full((k,), self.scale / k, dtype=torch.float64, device=gram.device)


@pytest.fixture
def user_strategy() -> Iterator[type[Halves]]:
    cls = register("my_halves_method")(Halves)
    yield cls
    STRATEGIES._classes.pop("my-halves-method")


@pytest.mark.parametrize("name", ["my_halves_method", "my-halves-method", "My_Halves Method"])
def test_strategy_registered_from_outside_with_underscores(
    user_strategy: type[Halves], name: str
) -> None:
    assert "my-halves-method" in mtlkit.list_strategies()
    s = mtlkit.get_strategy(name, context=Context(num_tasks=4, seed=7))
    assert isinstance(s, user_strategy) and s.num_tasks == 4 and s.seed == 7
    assert user_strategy.name == "my-halves-method"
    j = torch.randn(4, 10, dtype=torch.float64)
    torch.testing.assert_close(s.combine(j), j.mean(0))


def test_context_fills_only_what_a_constructor_takes(user_strategy: type[Halves]) -> None:
    ctx = Context(num_tasks=3, seed=5, sizes=[10, 20, 30], mode="all")
    # explicit options win over the context
    s = mtlkit.get_strategy("my-halves-method", context=ctx, seed=1, scale=2.0)
    assert isinstance(s, Halves) and (s.seed, s.scale, s.num_tasks) == (1, 2.0, 3)
    # a strategy without num_tasks / seed parameters ignores those context fields
    assert isinstance(mtlkit.get_strategy("sum", context=ctx), mtlkit.Sum)
    assert isinstance(mtlkit.get_strategy("famo", context=ctx), mtlkit.FAMO)
    uw = mtlkit.get_strategy("uncertainty", context=ctx)
    assert isinstance(uw, mtlkit.UncertaintyWeighting) and uw.num_tasks == 3


def test_unknown_names_and_options_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="unknown strategy 'nope'; choose one of"):
        mtlkit.get_strategy("nope")
    with pytest.raises(TypeError, match=r"'pcgrad' has no option 'alpha'.*reduction, seed"):
        mtlkit.get_strategy("pcgrad", alpha=1.0)


def test_a_taken_name_cannot_be_registered_again() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("thing", aliases=("t",))
    class Thing:
        pass

    with pytest.raises(ValueError, match="already registered"):
        reg.register("Thing")(type("Other", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("other", aliases=("T",))(type("Other", (), {}))
    reg.register("thing")(Thing)  # the same class again is fine
    assert isinstance(reg.build("T"), Thing) and reg.names() == ["thing"] and "t" in reg
