"""Gradient combination strategies, one module per family, registered by name."""

from mtlkit.strategies.base import (
    GradientStats,
    GramianStrategy,
    LossWeighting,
    NonFiniteError,
    Strategy,
    get_strategy,
    list_strategies,
    register,
)
from mtlkit.strategies.basic import Mean, Sum, Weighted
from mtlkit.strategies.gradnorm import GradNorm
from mtlkit.strategies.pcgrad import PCGrad

__all__ = [
    "GradNorm",
    "GradientStats",
    "GramianStrategy",
    "LossWeighting",
    "Mean",
    "NonFiniteError",
    "PCGrad",
    "Strategy",
    "Sum",
    "Weighted",
    "get_strategy",
    "list_strategies",
    "register",
]
