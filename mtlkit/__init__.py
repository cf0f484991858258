"""mtlkit: multitask optimization for PyTorch.

Three kinds of interchangeable parts and a thin engine that joins them to any loop:

* strategies (:mod:`mtlkit.strategies`): per-task gradients -> one update;
* the engine (:func:`backward`, :class:`TaskGradients`): losses -> per-task gradients
  -> the strategy's update in ``.grad``;
* task schedulers (:mod:`mtlkit.schedulers`): which task batches each step sees;
* pairwise and triplet losses (:mod:`mtlkit.losses`);
* data-parallel helpers (:mod:`mtlkit.distributed`);
* telemetry (:mod:`mtlkit.diagnostics`): norms, cosines, conflicts and weights of a step.

Every extension point has one registry convention: ``register(name)``,
``get_*(name, context=Context(...), **options)`` and ``list_*()`` for strategies,
schedulers and losses, with names normalised on both sides (``"my_method"`` is
``"my-method"``).
"""

from mtlkit import diagnostics, distributed, losses, schedulers
from mtlkit._guard import NonFiniteError
from mtlkit._registry import Context, normalize_name
from mtlkit.diagnostics import GradientStats
from mtlkit.gradients import SharedFeatures, TaskGradients, backward
from mtlkit.losses import get_loss, list_losses
from mtlkit.schedulers import get_scheduler, list_schedulers
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
    GradNorm,
    GradVac,
    GramianStrategy,
    LossWeighting,
    Mean,
    NashMTL,
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
    "AlignedMTL",
    "Context",
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
    "diagnostics",
    "distributed",
    "get_loss",
    "get_scheduler",
    "get_strategy",
    "list_losses",
    "list_schedulers",
    "list_strategies",
    "losses",
    "normalize_name",
    "schedulers",
]
