"""Margin contrastive loss (Hadsell, Chopra & LeCun 2006)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from mtlkit.losses._common import (
    Reduction,
    check_distance,
    check_labels,
    check_margin,
    check_same,
    reduce,
)
from mtlkit.losses._common import distance as row_distance
from mtlkit.losses.margins import MarginLike, MarginLoss
from mtlkit.losses.registry import register

__all__ = ["ContrastiveLoss", "contrastive_loss"]

#: The distances the contrastive loss takes (the squared Euclidean distance would be
#: squared again).
CONTRASTIVE_DISTANCES: tuple[Literal["euclidean", "cosine"], ...] = ("euclidean", "cosine")


def contrastive_loss(
    u: Tensor,
    v: Tensor,
    label: Tensor,
    margin: float = 1.0,
    distance: Literal["euclidean", "cosine"] = "euclidean",
    reduction: Reduction = "mean",
) -> Tensor:
    """Contrastive loss of Hadsell, Chopra & LeCun 2006, "Dimensionality Reduction by
    Learning an Invariant Mapping" (Eq. 4)::

        loss_i = label_i * d_i² + (1 - label_i) * max(0, margin - d_i)²

    Label convention: **1 = similar, 0 = dissimilar** (the paper uses the opposite,
    Y = 0 for similar pairs). Soft labels in [0, 1] interpolate the two terms. The paper's
    factor 1/2 on both terms is left out (it only rescales the loss).

    Distances: ``"euclidean"`` (default) is ``‖u - v + eps‖₂`` with eps = 1e-6 (as
    :func:`torch.nn.functional.pairwise_distance`, which keeps the gradient finite at
    d = 0); ``"cosine"`` is the cosine distance ``1 - cos(u, v)`` in [0, 2].

    Relations: the common form ``0.5 * [y d² + (1 - y) max(0, m - d)²]`` (with the
    paper's 1/2 and the same 1 = similar labels as here; e.g. sentence-transformers'
    ``ContrastiveLoss``) is exactly half of this loss for the same distance and margin:
    multiply this loss by 0.5 to compare values (its gradients are twice those of the
    common form too). The defaults here are
    the Euclidean distance and margin 1; pass ``distance`` and ``margin`` explicitly when
    comparing with another implementation, and a margin in [0, 2] with
    ``distance="cosine"``. Labels 1 / -1 (the convention of
    :func:`~mtlkit.losses.cosine_embedding_loss`) are not rejected but wrong here: y = -1
    gives ``-d² + 2 max(0, m - d)²``; pass ``(label + 1) / 2``.

    Args:
        u, v: ``(N, D)`` floating-point embeddings of the two sides of each pair.
        label: ``(N,)`` 1 for similar and 0 for dissimilar pairs (or soft labels in
            [0, 1]), any dtype.
        margin: distance (>= 0) beyond which dissimilar pairs cost nothing; default 1.
        distance: ``"euclidean"`` (default) or ``"cosine"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    check_same(("u", "v"), u, v)
    check_labels("label", label, u.shape[0])
    margin = check_margin(margin, nonnegative=True)
    d = row_distance(u, v, distance, CONTRASTIVE_DISTANCES)
    y = label.to(d.dtype)
    loss = y * d.pow(2) + (1.0 - y) * (margin - d).clamp(min=0).pow(2)
    return reduce(loss, reduction)


@register("contrastive")
class ContrastiveLoss(MarginLoss):
    """Module form of :func:`contrastive_loss` (Hadsell et al. 2006) with a scheduled
    margin; registered as ``"contrastive"``.

    ``forward(u, v, label)``: ``u``, ``v`` ``(N, D)``, ``label`` ``(N,)`` with 1 similar,
    0 dissimilar.

    Args:
        margin: a number (>= 0; default 1), a mapping ``{"start", "end", "steps"}``
            (:class:`~mtlkit.losses.LinearMargin`), a
            :class:`~mtlkit.losses.MarginSchedule` or a callable of the step.
        distance: ``"euclidean"`` (default) or ``"cosine"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        margin: MarginLike = 1.0,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(margin, reduction)
        self.distance: Literal["euclidean", "cosine"] = check_distance(
            distance, CONTRASTIVE_DISTANCES
        )

    def forward(self, u: Tensor, v: Tensor, label: Tensor) -> Tensor:
        return contrastive_loss(u, v, label, self.margin, self.distance, self.reduction)
