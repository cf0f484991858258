"""Multiple negatives ranking loss with in-batch negatives (Henderson et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.losses._common import Reduction, check_reduction, check_same, check_scale, reduce
from mtlkit.losses.registry import register

__all__ = ["MultipleNegativesRankingLoss", "multiple_negatives_ranking_loss"]


def multiple_negatives_ranking_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    scale: float = 20.0,
    symmetric: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Multiple negatives ranking loss with in-batch negatives.

    Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart
    Reply" (Sec. 4.4). Anchor i must pick its own positive among all candidates of the
    batch: the positives of the other pairs serve as negatives, and optional hard
    negatives add extra candidate columns. With ``S[i, j] = scale * cos(anchor_i,
    candidate_j)`` over the candidates ``[positives; negatives]``::

        loss_i = -log softmax(S[i, :])[i] = logsumexp_j S[i, j] - S[i, i]

    ``symmetric=True`` also scores each positive against all anchors (no hard negatives
    in that direction) and averages the two directions per pair:
    ``loss_i = (loss_i^{a->p} + loss_i^{p->a}) / 2``.

    There are no labels: the pairing *is* the label (row i of ``positives`` belongs to
    row i of ``anchors``), so every pair in the batch must be a positive pair.

    Relations: ``scale`` multiplies the cosine similarities, i.e. it is the inverse of a
    softmax temperature (scale 20 is temperature 1 / 20 = 0.05). Embeddings are
    L2-normalised inside, so their norm does not matter. When two pairs of a batch share
    the same positive (duplicates), that positive is also a negative of each of the two
    anchors, so neither loss can fall below log 2; keep duplicates out of a batch. With
    ``symmetric=True`` the loss is the *mean* of the two directions, not their sum.

    Args:
        anchors: ``(N, D)`` floating point.
        positives: ``(N, D)``; row i is the positive of anchor i.
        negatives: optional hard negatives, ``(M, D)`` (any M) or ``(N, H, D)`` (H per
            pair). All of them become candidates for every anchor. Default ``None``.
        scale: inverse temperature applied to the cosine similarities (> 0); default 20.
        symmetric: add the positives -> anchors direction; default ``False``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``(N,)`` per-pair
            losses).
    """
    check_same(("anchors", "positives"), anchors, positives)
    scale = check_scale(scale)
    n, d = anchors.shape
    candidates = positives
    if negatives is not None:
        if not isinstance(negatives, Tensor) or not negatives.is_floating_point():
            raise TypeError("negatives must be a floating-point tensor")
        if negatives.dim() == 3 and negatives.shape[0] != n:
            raise ValueError(
                f"negatives of shape (N, H, D) must have N = {n} rows, got {tuple(negatives.shape)}"
            )
        if negatives.dim() not in (2, 3) or negatives.shape[-1] != d:
            raise ValueError(
                f"negatives must have shape (M, {d}) or ({n}, H, {d}), got {tuple(negatives.shape)}"
            )
        candidates = torch.cat([positives, negatives.reshape(-1, d)], dim=0)
    a = F.normalize(anchors, dim=-1)
    c = F.normalize(candidates, dim=-1)
    labels = torch.arange(n, device=anchors.device)
    loss = F.cross_entropy(scale * (a @ c.T), labels, reduction="none")
    if symmetric:
        back = F.cross_entropy(scale * (c[:n] @ a.T), labels, reduction="none")
        loss = 0.5 * (loss + back)
    return reduce(loss, reduction)


@register("multiple-negatives-ranking", aliases=("mnrl",))
class MultipleNegativesRankingLoss(nn.Module):
    """Module form of :func:`multiple_negatives_ranking_loss` (Henderson et al. 2017);
    registered as ``"multiple-negatives-ranking"`` (alias ``"mnrl"``).

    ``forward(anchors, positives, negatives=None)``: ``(N, D)``, ``(N, D)`` and optional
    hard negatives ``(M, D)`` or ``(N, H, D)``; no labels (row i of ``positives`` is the
    positive of anchor i).

    Args:
        scale: inverse temperature on the cosine similarities (> 0); default 20.
        symmetric: also rank anchors for each positive; default ``False``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    def __init__(
        self, scale: float = 20.0, symmetric: bool = False, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.scale = check_scale(scale)
        self.symmetric = symmetric
        self.reduction: Reduction = reduction

    def forward(
        self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None
    ) -> Tensor:
        return multiple_negatives_ranking_loss(
            anchors, positives, negatives, self.scale, self.symmetric, self.reduction
        )

    def extra_repr(self) -> str:
        return f"scale={self.scale}, symmetric={self.symmetric}, reduction={self.reduction!r}"
