"""Triplet margin loss (Schroff, Kalenichenko & Philbin 2015, FaceNet)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtlkit.losses._common import (
    DISTANCES,
    Reduction,
    check_distance,
    check_margin,
    check_same,
    reduce,
)
from mtlkit.losses._common import distance as row_distance
from mtlkit.losses.margins import MarginLike, MarginLoss
from mtlkit.losses.registry import register

__all__ = ["TripletLoss", "triplet_loss"]


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    distance: Literal["euclidean", "squared_euclidean", "cosine"] = "euclidean",
    swap: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Triplet margin loss of Schroff, Kalenichenko & Philbin 2015, "FaceNet: A Unified
    Embedding for Face Recognition and Clustering" (Eq. 1)::

        loss_i = max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    Distances:

    * ``"euclidean"`` (default): ``‖a - b + eps‖₂`` with eps = 1e-6, exactly as
      :class:`torch.nn.TripletMarginLoss` (p = 2);
    * ``"squared_euclidean"``: ``‖a - b‖₂²``, the form used in the FaceNet paper;
    * ``"cosine"``: ``1 - cos(a, b)`` (in [0, 2]; use a margin well below 2).

    ``swap=True`` uses ``min(d(a, n), d(p, n))`` as the negative distance (the distance
    swap of Balntas et al. 2016, as in :class:`torch.nn.TripletMarginLoss`).

    There are no labels: row i of ``positive`` must be closer to row i of ``anchor`` than
    row i of ``negative`` is, by at least ``margin``.

    Relations: the margin is in units of the chosen distance. The Euclidean distances use
    the embeddings as they are (not normalised), so a margin for them depends on the
    embeddings' scale; the cosine distance does not. Choosing ``distance`` does not
    change the default margin (1, meant for ``"euclidean"``): pass a margin for the
    distance you choose. The form of the FaceNet paper is ``"squared_euclidean"``, not
    the default ``"euclidean"``, which is :class:`torch.nn.TripletMarginLoss`.

    Args:
        anchor, positive, negative: ``(N, D)`` floating-point embeddings.
        margin: margin (>= 0) in units of the chosen distance; default 1.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.
        swap: use the distance swap; default ``False``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    check_same(("anchor", "positive", "negative"), anchor, positive, negative)
    margin = check_margin(margin, nonnegative=True)
    d_ap = row_distance(anchor, positive, distance)
    d_an = row_distance(anchor, negative, distance)
    if swap:
        d_an = torch.minimum(d_an, row_distance(positive, negative, distance))
    return reduce((d_ap - d_an + margin).clamp(min=0), reduction)


@register("triplet")
class TripletLoss(MarginLoss):
    """Module form of :func:`triplet_loss` (FaceNet, Schroff et al. 2015) with a
    scheduled margin; registered as ``"triplet"``.

    ``forward(anchor, positive, negative)``, each ``(N, D)``; no labels.

    Args:
        margin: a number (>= 0; default 1), a mapping ``{"start", "end", "steps"}``
            (:class:`~mtlkit.losses.LinearMargin`), a
            :class:`~mtlkit.losses.MarginSchedule` or a callable of the step.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.
        swap: use the distance swap; default ``False``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        margin: MarginLike = 1.0,
        distance: Literal["euclidean", "squared_euclidean", "cosine"] = "euclidean",
        swap: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(margin, reduction)
        self.distance: Literal["euclidean", "squared_euclidean", "cosine"] = check_distance(
            distance, DISTANCES
        )
        self.swap = swap

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_loss(
            anchor, positive, negative, self.margin, self.distance, self.swap, self.reduction
        )
