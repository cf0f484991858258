"""Pairwise and triplet losses for embedding (sentence-similarity) tasks.

Each loss comes as a function and as an :class:`torch.nn.Module`, side by side in one
module of this package:

* :func:`cosine_embedding_loss` / :class:`CosineEmbeddingLoss` (``"cosine-embedding"``):
  cosine similarity with a margin for dissimilar pairs (the definition of
  :class:`torch.nn.CosineEmbeddingLoss`); labels 1 / -1;
* :func:`multiple_negatives_ranking_loss` / :class:`MultipleNegativesRankingLoss`
  (``"multiple-negatives-ranking"``, ``"mnrl"``): in-batch negatives ranking loss
  (Henderson et al. 2017); no labels;
* :func:`triplet_loss` / :class:`TripletLoss` (``"triplet"``): triplet margin loss
  (Schroff et al. 2015); no labels;
* :func:`cosent_loss` / :class:`CoSENTLoss` (``"cosent"``): pairwise ranking of cosine
  scores (Su 2022); real-valued scores, only their order counts;
* :func:`contrastive_loss` / :class:`ContrastiveLoss` (``"contrastive"``): margin
  contrastive loss (Hadsell, Chopra & LeCun 2006); labels 1 / 0.

Conventions: embeddings are ``(N, D)`` floating-point tensors (one row per example) and
per-pair labels are ``(N,)`` tensors. ``reduction`` is ``"mean"`` (default), ``"sum"`` or
``"none"`` (per-example losses of shape ``(N,)``). Shapes are checked eagerly with clear
errors; label *values* are not checked, because that would need a device sync.

The margin-based modules (:class:`CosineEmbeddingLoss`, :class:`TripletLoss`,
:class:`ContrastiveLoss`) take either a fixed margin or a :class:`MarginSchedule`
(:class:`ConstantMargin`, :class:`LinearMargin`, :class:`CallbackMargin`, or any
``Callable[[int], float]``), or a mapping ``{"start": a, "end": b, "steps": n}`` for a
:class:`LinearMargin` (see :func:`as_margin_schedule`); call the module's
:meth:`~MarginLoss.step` once per optimizer step to advance the schedule. The position
travels in the module's ``state_dict``.

The modules are registered by name (:data:`LOSSES`, the convention of
:mod:`mtlkit._registry`)::

    get_loss("contrastive", margin=0.5, distance="cosine")
    get_loss("mnrl", scale=20.0)
    get_loss("cosine-embedding", margin={"start": 0.2, "end": 0.6, "steps": 1000})
    list_losses()

    @register("my_loss")
    class MyLoss(nn.Module): ...
"""

from mtlkit.losses._common import Reduction
from mtlkit.losses.contrastive import ContrastiveLoss, contrastive_loss
from mtlkit.losses.cosent import CoSENTLoss, cosent_loss
from mtlkit.losses.cosine_embedding import CosineEmbeddingLoss, cosine_embedding_loss
from mtlkit.losses.margins import (
    CallbackMargin,
    ConstantMargin,
    LinearMargin,
    MarginLike,
    MarginLoss,
    MarginSchedule,
    as_margin_schedule,
)
from mtlkit.losses.multiple_negatives_ranking import (
    MultipleNegativesRankingLoss,
    multiple_negatives_ranking_loss,
)
from mtlkit.losses.registry import LOSSES, get_loss, list_losses, register
from mtlkit.losses.triplet import TripletLoss, triplet_loss

__all__ = [
    "LOSSES",
    "CallbackMargin",
    "CoSENTLoss",
    "ConstantMargin",
    "ContrastiveLoss",
    "CosineEmbeddingLoss",
    "LinearMargin",
    "MarginLike",
    "MarginLoss",
    "MarginSchedule",
    "MultipleNegativesRankingLoss",
    "Reduction",
    "TripletLoss",
    "as_margin_schedule",
    "contrastive_loss",
    "cosent_loss",
    "cosine_embedding_loss",
    "get_loss",
    "list_losses",
    "multiple_negatives_ranking_loss",
    "register",
    "triplet_loss",
]
