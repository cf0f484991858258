"""Gradient combination strategies, one module per family, registered by name."""

from mtlkit.strategies.aligned import AlignedMTL
from mtlkit.strategies.base import (
    STRATEGIES,
    GradientStats,
    GramianStrategy,
    LossWeighting,
    NonFiniteError,
    Strategy,
    get_strategy,
    list_strategies,
    register,
    strategy_class,
)
from mtlkit.strategies.basic import Mean, Sum, Weighted
from mtlkit.strategies.cagrad import CAGrad
from mtlkit.strategies.config import ConFIG
from mtlkit.strategies.dualproj import DualProj
from mtlkit.strategies.dwa import DWA
from mtlkit.strategies.famo import FAMO
from mtlkit.strategies.graddrop import GradDrop
from mtlkit.strategies.gradnorm import GradNorm
from mtlkit.strategies.gradvac import GradVac
from mtlkit.strategies.imtl import IMTLG
from mtlkit.strategies.mgda import MGDA
from mtlkit.strategies.nash import NashMTL
from mtlkit.strategies.pcgrad import PCGrad
from mtlkit.strategies.rlw import RLW
from mtlkit.strategies.uncertainty import UncertaintyWeighting
from mtlkit.strategies.upgrad import UPGrad

__all__ = [
    "STRATEGIES",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DWA",
    "DualProj",
    "FAMO",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientStats",
    "GramianStrategy",
    "IMTLG",
    "LossWeighting",
    "MGDA",
    "Mean",
    "NashMTL",
    "NonFiniteError",
    "PCGrad",
    "RLW",
    "Strategy",
    "Sum",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighted",
    "get_strategy",
    "list_strategies",
    "register",
    "strategy_class",
]
