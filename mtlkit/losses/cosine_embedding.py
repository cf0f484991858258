"""Cosine embedding loss (the definition of :class:`torch.nn.CosineEmbeddingLoss`)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.losses._common import Reduction, check_labels, check_margin, check_same, cosine, reduce
from mtlkit.losses.margins import MarginLike, MarginLoss
from mtlkit.losses.registry import register

__all__ = ["CosineEmbeddingLoss", "cosine_embedding_loss"]


def cosine_embedding_loss(
    u: Tensor,
    v: Tensor,
    target: Tensor,
    margin: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cosine embedding loss: pull similar pairs together, push dissimilar pairs apart.

    Per pair, with ``c = cos(u_i, v_i)``::

        loss_i = 1 - c                   if target_i == 1   (similar)
        loss_i = max(0, c - margin)      if target_i == -1  (dissimilar)

    This is the definition of :class:`torch.nn.CosineEmbeddingLoss`, with the same label
    convention: **1 / -1**. Other target values (e.g. 0) contribute a loss of 0; they are
    not rejected, since checking would sync with the device.

    Relations: with 1 / 0 labels (the convention of the contrastive loss and of most
    paraphrase data sets), every dissimilar pair (0) silently costs nothing and only the
    similar pairs are trained; pass ``2 * label - 1``. The margin is on the cosine
    *similarity* (a dissimilar pair costs nothing once ``cos <= margin``), not on a
    distance as in :func:`~mtlkit.losses.contrastive_loss` and
    :func:`~mtlkit.losses.triplet_loss`.

    Args:
        u, v: ``(N, D)`` floating-point embeddings of the two sides of each pair.
        target: ``(N,)`` labels, 1 (similar) or -1 (dissimilar), any dtype.
        margin: threshold for dissimilar pairs, usually in [-1, 1] (0 to 0.5 is typical);
            default 0.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    check_same(("u", "v"), u, v)
    check_labels("target", target, u.shape[0])
    margin = check_margin(margin, nonnegative=False)
    c = cosine(u, v)
    zero = torch.zeros((), dtype=c.dtype, device=c.device)
    pos = torch.where(target == 1, 1.0 - c, zero)
    neg = torch.where(target == -1, (c - margin).clamp(min=0), zero)
    return reduce(pos + neg, reduction)


@register("cosine-embedding")
class CosineEmbeddingLoss(MarginLoss):
    """Module form of :func:`cosine_embedding_loss` with a scheduled margin; registered
    as ``"cosine-embedding"``.

    ``forward(u, v, target)``: ``u``, ``v`` of shape ``(N, D)``, ``target`` ``(N,)`` with
    1 (similar) / -1 (dissimilar); 0 labels cost nothing (see
    :func:`cosine_embedding_loss`).

    Args:
        margin: a number (default 0, may be negative), a mapping
            ``{"start", "end", "steps"}`` (:class:`~mtlkit.losses.LinearMargin`), a
            :class:`~mtlkit.losses.MarginSchedule` or a ``Callable[[int], float]``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    _nonnegative_margin = False

    def __init__(self, margin: MarginLike = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__(margin, reduction)

    def forward(self, u: Tensor, v: Tensor, target: Tensor) -> Tensor:
        return cosine_embedding_loss(u, v, target, self.margin, self.reduction)
