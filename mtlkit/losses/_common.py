"""What every loss shares: input checks, the reduction, and the one distance function.

:func:`check_distance` is the one place where distance names are validated: the
functions reach it through :func:`distance`, the modules call it in their constructors
(so a bad name fails when the module is built, not at the first batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DISTANCES",
    "PAIRWISE_EPS",
    "Distance",
    "Reduction",
    "check_distance",
    "check_embeddings",
    "check_labels",
    "check_margin",
    "check_reduction",
    "check_same",
    "check_scale",
    "cosine",
    "distance",
    "reduce",
]

Reduction = Literal["mean", "sum", "none"]

#: The distances between two embeddings that the losses know (see :func:`distance`).
Distance = Literal["euclidean", "squared_euclidean", "cosine"]
DISTANCES: tuple[Distance, ...] = ("euclidean", "squared_euclidean", "cosine")

#: ``eps`` of :func:`torch.nn.functional.pairwise_distance` used for Euclidean distances
#: (the value ``torch.nn.TripletMarginLoss`` uses); it keeps the gradient finite at d = 0.
PAIRWISE_EPS = 1e-6

D = TypeVar("D", bound=str)


# ----------------------------------------------------------------------------- checks


def check_embeddings(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    return x


def check_same(names: tuple[str, ...], *xs: Tensor) -> None:
    for name, x in zip(names, xs, strict=True):
        check_embeddings(name, x)
    shape = xs[0].shape
    for name, x in zip(names[1:], xs[1:], strict=True):
        if x.shape != shape:
            raise ValueError(
                f"{names[0]} and {name} must have the same shape, got {tuple(shape)} and "
                f"{tuple(x.shape)}"
            )


def check_labels(name: str, labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return labels


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return scale


def check_margin(margin: float, *, nonnegative: bool) -> float:
    margin = float(margin)
    if not math.isfinite(margin) or (nonnegative and margin < 0):
        kind = "a finite number >= 0" if nonnegative else "a finite number"
        raise ValueError(f"margin must be {kind}, got {margin}")
    return margin


def check_distance(name: object, allowed: Sequence[D]) -> D:
    """``name`` if it is one of ``allowed`` (the names a loss takes, a subset of
    :data:`DISTANCES`), else ``ValueError("distance must be 'euclidean', ... or 'cosine',
    got ...")``. The one place where distance names are checked.
    """
    for known in allowed:
        if name == known:
            return known
    names = [repr(a) for a in allowed]
    choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ValueError(f"distance must be {choices}, got {name!r}")


# ----------------------------------------------------------------------------- math


def reduce(losses: Tensor, reduction: Reduction) -> Tensor:
    check_reduction(reduction)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def cosine(u: Tensor, v: Tensor) -> Tensor:
    return F.cosine_similarity(u, v, dim=-1)


def distance(u: Tensor, v: Tensor, name: str, allowed: Sequence[Distance] = DISTANCES) -> Tensor:
    """Row-wise distance ``(N,)`` between ``(N, D)`` embeddings.

    * ``"euclidean"``: ``‖u - v + eps‖₂`` with eps = :data:`PAIRWISE_EPS` (1e-6), as
      :func:`torch.nn.functional.pairwise_distance`;
    * ``"squared_euclidean"``: ``‖u - v‖₂²`` (no eps);
    * ``"cosine"``: ``1 - cos(u, v)``, in [0, 2].

    ``name`` must be one of ``allowed`` (checked by :func:`check_distance`).
    """
    which = check_distance(name, allowed)
    if which == "euclidean":
        return F.pairwise_distance(u, v, p=2.0, eps=PAIRWISE_EPS)
    if which == "squared_euclidean":
        return (u - v).pow(2).sum(dim=-1)
    return 1.0 - cosine(u, v)
