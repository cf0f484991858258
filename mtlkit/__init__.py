"""mtlkit: multitask optimization for PyTorch.

Three kinds of interchangeable parts and a thin engine that joins them to any loop:

* strategies (:mod:`mtlkit.strategies`): per-task gradients -> one update;
* the engine (:func:`backward`, :class:`TaskGradients`): losses -> per-task gradients
  -> the strategy's update in ``.grad``;
* task schedulers (:mod:`mtlkit.schedulers`): which task batches each step sees;
* pairwise and triplet losses (:mod:`mtlkit.losses`);
* data-parallel helpers (:mod:`mtlkit.distributed`).
"""

from mtlkit import distributed, losses, schedulers
from mtlkit._registry import Context, normalize_name
from mtlkit.gradients import SharedFeatures, TaskGradients, backward
from mtlkit.strategies import (
    DWA,
    FAMO,
    IMTLG,
    MGDA,
    RLW,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    GradDrop,
    GradientStats,
    GradNorm,
    GradVac,
    GramianStrategy,
    LossWeighting,
    Mean,
    NashMTL,
    NonFiniteError,
    PCGrad,
    Strategy,
    Sum,
    UncertaintyWeighting,
    UPGrad,
    Weighted,
    get_strategy,
    list_strategies,
)

__version__ = "0.1.0"

__all__ = [
    "Context",
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
    "SharedFeatures",
    "Strategy",
    "Sum",
    "TaskGradients",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighted",
    "backward",
    "distributed",
    "get_strategy",
    "list_strategies",
    "losses",
    "normalize_name",
    "schedulers",
]
