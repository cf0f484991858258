"""Pairwise and triplet losses for embedding (sentence-similarity) tasks.

Each loss comes as a function and as an :class:`torch.nn.Module`:

* :func:`cosine_embedding_loss` / :class:`CosineEmbeddingLoss`: cosine similarity with a
  margin for dissimilar pairs (the definition of :class:`torch.nn.CosineEmbeddingLoss`);
* :func:`multiple_negatives_ranking_loss` / :class:`MultipleNegativesRankingLoss`:
  in-batch negatives ranking loss (Henderson et al. 2017);
* :func:`triplet_loss` / :class:`TripletLoss`: triplet margin loss (Schroff et al. 2015);
* :func:`cosent_loss` / :class:`CoSENTLoss`: pairwise ranking of cosine scores (Su 2022);
* :func:`contrastive_loss` / :class:`ContrastiveLoss`: margin contrastive loss (Hadsell,
  Chopra & LeCun 2006).

Conventions: embeddings are ``(N, D)`` floating-point tensors (one row per example) and
per-pair labels are ``(N,)`` tensors. ``reduction`` is ``"mean"`` (default), ``"sum"`` or
``"none"`` (per-example losses of shape ``(N,)``). Shapes are checked eagerly with clear
errors; label *values* are not checked, because that would need a device sync.

The margin-based modules (:class:`CosineEmbeddingLoss`, :class:`TripletLoss`,
:class:`ContrastiveLoss`) take either a fixed margin or a :class:`MarginSchedule`
(:class:`ConstantMargin`, :class:`LinearMargin`, :class:`CallbackMargin`, or any
``Callable[[int], float]``); call the module's :meth:`~MarginLoss.step` once per
optimizer step to advance the schedule. The position travels in the module's
``state_dict``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
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
    "multiple_negatives_ranking_loss",
    "triplet_loss",
]

Reduction = Literal["mean", "sum", "none"]

#: ``eps`` of :func:`torch.nn.functional.pairwise_distance` used for Euclidean distances
#: (the value ``torch.nn.TripletMarginLoss`` uses); it keeps the gradient finite at d = 0.
_PAIRWISE_EPS = 1e-6


# ----------------------------------------------------------------------------- checks


def _check_embeddings(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    return x


def _check_same(names: tuple[str, ...], *xs: Tensor) -> None:
    for name, x in zip(names, xs, strict=True):
        _check_embeddings(name, x)
    shape = xs[0].shape
    for name, x in zip(names[1:], xs[1:], strict=True):
        if x.shape != shape:
            raise ValueError(
                f"{names[0]} and {name} must have the same shape, got {tuple(shape)} and "
                f"{tuple(x.shape)}"
            )


def _check_labels(name: str, labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return labels


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return scale


def _check_margin(margin: float, *, nonnegative: bool) -> float:
    margin = float(margin)
    if not math.isfinite(margin) or (nonnegative and margin < 0):
        kind = "a finite number >= 0" if nonnegative else "a finite number"
        raise ValueError(f"margin must be {kind}, got {margin}")
    return margin


def _reduce(losses: Tensor, reduction: Reduction) -> Tensor:
    _check_reduction(reduction)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _cosine(u: Tensor, v: Tensor) -> Tensor:
    return F.cosine_similarity(u, v, dim=-1)


def _distance(u: Tensor, v: Tensor, distance: str) -> Tensor:
    if distance == "euclidean":
        return F.pairwise_distance(u, v, p=2.0, eps=_PAIRWISE_EPS)
    if distance == "squared_euclidean":
        return (u - v).pow(2).sum(dim=-1)
    if distance == "cosine":
        return 1.0 - _cosine(u, v)
    raise ValueError(
        f"distance must be 'euclidean', 'squared_euclidean' or 'cosine', got {distance!r}"
    )


# ----------------------------------------------------------------------------- functions


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

    Args:
        u, v: ``(N, D)`` embeddings of the two sides of each pair.
        target: ``(N,)`` labels, 1 (similar) or -1 (dissimilar), any dtype.
        margin: threshold for dissimilar pairs, usually in [-1, 1] (0 to 0.5 is typical).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    _check_same(("u", "v"), u, v)
    _check_labels("target", target, u.shape[0])
    margin = _check_margin(margin, nonnegative=False)
    c = _cosine(u, v)
    zero = torch.zeros((), dtype=c.dtype, device=c.device)
    pos = torch.where(target == 1, 1.0 - c, zero)
    neg = torch.where(target == -1, (c - margin).clamp(min=0), zero)
    return _reduce(pos + neg, reduction)


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

    Args:
        anchors: ``(N, D)``.
        positives: ``(N, D)``; row i is the positive of anchor i.
        negatives: optional hard negatives, ``(M, D)`` (any M) or ``(N, H, D)`` (H per
            pair). All of them become candidates for every anchor.
        scale: inverse temperature applied to the cosine similarities (> 0).
        symmetric: add the positives -> anchors direction.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(N,)`` per-pair losses).
    """
    _check_same(("anchors", "positives"), anchors, positives)
    scale = _check_scale(scale)
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
    return _reduce(loss, reduction)


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

    * ``"euclidean"``: ``‖a - b + eps‖₂`` with eps = 1e-6, exactly as
      :class:`torch.nn.TripletMarginLoss` (p = 2);
    * ``"squared_euclidean"``: ``‖a - b‖₂²``, the form used in the FaceNet paper;
    * ``"cosine"``: ``1 - cos(a, b)`` (in [0, 2]; use a margin well below 2).

    ``swap=True`` uses ``min(d(a, n), d(p, n))`` as the negative distance (the distance
    swap of Balntas et al. 2016, as in :class:`torch.nn.TripletMarginLoss`).

    Args:
        anchor, positive, negative: ``(N, D)`` embeddings.
        margin: margin (>= 0) in units of the chosen distance.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        swap: use the distance swap.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    _check_same(("anchor", "positive", "negative"), anchor, positive, negative)
    margin = _check_margin(margin, nonnegative=True)
    d_ap = _distance(anchor, positive, distance)
    d_an = _distance(anchor, negative, distance)
    if swap:
        d_an = torch.minimum(d_an, _distance(positive, negative, distance))
    return _reduce((d_ap - d_an + margin).clamp(min=0), reduction)


def cosent_loss(u: Tensor, v: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss (Su 2022, "CoSENT: A more efficient sentence vector scheme than
    Sentence-BERT", kexue.fm/archives/8847).

    With ``c_i = cos(u_i, v_i)`` and gold similarity scores ``s``, every pair of pairs
    (i, j) whose gold scores say ``s_i > s_j`` should also have ``c_i > c_j``::

        loss = log(1 + Σ_{(i, j): s_i > s_j} exp(scale * (c_j - c_i)))

    computed stably as a ``logsumexp`` over ``{0} ∪ {scale (c_j - c_i)}``. The loss only
    depends on the *order* of the scores (ties contribute nothing), so it is invariant to
    any strictly increasing transform of them. It is one term over the whole batch, so
    there is no ``reduction``; it costs O(N²) memory.

    Args:
        u, v: ``(N, D)`` embeddings of the two sides of each pair.
        scores: ``(N,)`` gold similarity scores (higher = more similar), any real dtype;
            they are labels and get no gradient.
        scale: inverse temperature (> 0).

    Returns:
        A scalar tensor.
    """
    _check_same(("u", "v"), u, v)
    _check_labels("scores", scores, u.shape[0])
    scale = _check_scale(scale)
    c = scale * _cosine(u, v)
    diff = c[None, :] - c[:, None]  # diff[i, j] = scale * (c_j - c_i)
    s = scores.detach()
    ordered = s[:, None] > s[None, :]  # s_i > s_j
    diff = diff.masked_fill(~ordered, -math.inf)
    zero = torch.zeros(1, dtype=c.dtype, device=c.device)
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)


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

    Distances: ``"euclidean"`` is ``‖u - v + eps‖₂`` with eps = 1e-6 (as
    :func:`torch.nn.functional.pairwise_distance`, which keeps the gradient finite at
    d = 0); ``"cosine"`` is the cosine distance ``1 - cos(u, v)`` in [0, 2].

    Args:
        u, v: ``(N, D)`` embeddings of the two sides of each pair.
        label: ``(N,)`` 1 for similar and 0 for dissimilar pairs, any dtype.
        margin: distance (>= 0) beyond which dissimilar pairs cost nothing.
        distance: ``"euclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(N,)`` losses).
    """
    _check_same(("u", "v"), u, v)
    _check_labels("label", label, u.shape[0])
    margin = _check_margin(margin, nonnegative=True)
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    d = _distance(u, v, distance)
    y = label.to(d.dtype)
    loss = y * d.pow(2) + (1.0 - y) * (margin - d).clamp(min=0).pow(2)
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------- margins


class MarginSchedule(ABC):
    """A margin as a function of the training step (0, 1, 2, ...)."""

    @abstractmethod
    def __call__(self, step: int) -> float:
        """Return the margin to use at ``step``."""


class ConstantMargin(MarginSchedule):
    """The same margin at every step."""

    def __init__(self, value: float) -> None:
        self.value = _check_margin(value, nonnegative=False)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantMargin({self.value})"


class LinearMargin(MarginSchedule):
    """Move linearly from ``start`` (step 0) to ``end`` (step ``steps``), then hold ``end``.

    ``margin(t) = start + (end - start) * min(t, steps) / steps``.
    """

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = _check_margin(start, nonnegative=False)
        self.end = _check_margin(end, nonnegative=False)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.steps = steps

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.steps) / self.steps
        return self.start + (self.end - self.start) * frac

    def __repr__(self) -> str:
        return f"LinearMargin(start={self.start}, end={self.end}, steps={self.steps})"


class CallbackMargin(MarginSchedule):
    """Any ``Callable[[int], float]`` of the step (the callable itself is not saved in
    ``state_dict``; only the step is)."""

    def __init__(self, fn: Callable[[int], float]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, step: int) -> float:
        return float(self.fn(step))

    def __repr__(self) -> str:
        return f"CallbackMargin({self.fn!r})"


MarginLike = float | MarginSchedule | Callable[[int], float]


def as_margin_schedule(margin: MarginLike) -> MarginSchedule:
    """Wrap a number in :class:`ConstantMargin` and a plain callable in
    :class:`CallbackMargin`; return schedules unchanged."""
    if isinstance(margin, MarginSchedule):
        return margin
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        return ConstantMargin(float(margin))
    if callable(margin):
        return CallbackMargin(margin)
    raise TypeError(f"margin must be a number, a MarginSchedule or a callable, got {margin!r}")


# ----------------------------------------------------------------------------- modules


class MarginLoss(nn.Module):
    """Base of the loss modules whose margin follows a :class:`MarginSchedule`.

    The module counts steps itself: call :meth:`step` once per optimizer step (or
    :meth:`set_step`). :attr:`margin` is the schedule's value at the current step. The
    step count is saved in ``state_dict()`` (as extra state), so a resumed run continues
    the schedule where it stopped.
    """

    _nonnegative_margin = True

    def __init__(self, margin: MarginLike, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.schedule = as_margin_schedule(margin)
        self.reduction: Reduction = reduction
        self.step_count = 0

    @property
    def margin(self) -> float:
        """The margin at the current step."""
        return _check_margin(self.schedule(self.step_count), nonnegative=self._nonnegative_margin)

    def step(self, n: int = 1) -> None:
        """Advance the margin schedule by ``n`` steps."""
        self.set_step(self.step_count + n)

    def set_step(self, step: int) -> None:
        """Jump the margin schedule to ``step``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self.step_count = step

    def get_extra_state(self) -> dict[str, int]:
        return {"step": self.step_count}

    def set_extra_state(self, state: Any) -> None:
        self.set_step(int(state["step"]))

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, step={self.step_count}, reduction={self.reduction!r}"


class CosineEmbeddingLoss(MarginLoss):
    """Module form of :func:`cosine_embedding_loss` with a scheduled margin.

    ``forward(u, v, target)``: ``u``, ``v`` of shape ``(N, D)``, ``target`` ``(N,)`` with
    1 (similar) / -1 (dissimilar).

    Args:
        margin: a number, a :class:`MarginSchedule` or a ``Callable[[int], float]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    _nonnegative_margin = False

    def __init__(self, margin: MarginLike = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__(margin, reduction)

    def forward(self, u: Tensor, v: Tensor, target: Tensor) -> Tensor:
        return cosine_embedding_loss(u, v, target, self.margin, self.reduction)


class TripletLoss(MarginLoss):
    """Module form of :func:`triplet_loss` (FaceNet, Schroff et al. 2015) with a
    scheduled margin.

    ``forward(anchor, positive, negative)``, each ``(N, D)``.

    Args:
        margin: a number (>= 0), a :class:`MarginSchedule` or a callable of the step.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        swap: use the distance swap.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        margin: MarginLike = 1.0,
        distance: Literal["euclidean", "squared_euclidean", "cosine"] = "euclidean",
        swap: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(margin, reduction)
        if distance not in ("euclidean", "squared_euclidean", "cosine"):
            raise ValueError(
                f"distance must be 'euclidean', 'squared_euclidean' or 'cosine', got {distance!r}"
            )
        self.distance: Literal["euclidean", "squared_euclidean", "cosine"] = distance
        self.swap = swap

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_loss(
            anchor, positive, negative, self.margin, self.distance, self.swap, self.reduction
        )


class ContrastiveLoss(MarginLoss):
    """Module form of :func:`contrastive_loss` (Hadsell et al. 2006) with a scheduled
    margin.

    ``forward(u, v, label)``: ``u``, ``v`` ``(N, D)``, ``label`` ``(N,)`` with 1 similar,
    0 dissimilar.

    Args:
        margin: a number (>= 0), a :class:`MarginSchedule` or a callable of the step.
        distance: ``"euclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        margin: MarginLike = 1.0,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(margin, reduction)
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.distance: Literal["euclidean", "cosine"] = distance

    def forward(self, u: Tensor, v: Tensor, label: Tensor) -> Tensor:
        return contrastive_loss(u, v, label, self.margin, self.distance, self.reduction)


class MultipleNegativesRankingLoss(nn.Module):
    """Module form of :func:`multiple_negatives_ranking_loss` (Henderson et al. 2017).

    ``forward(anchors, positives, negatives=None)``: ``(N, D)``, ``(N, D)`` and optional
    hard negatives ``(M, D)`` or ``(N, H, D)``.

    Args:
        scale: inverse temperature on the cosine similarities (> 0).
        symmetric: also rank anchors for each positive.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self, scale: float = 20.0, symmetric: bool = False, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.scale = _check_scale(scale)
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


class CoSENTLoss(nn.Module):
    """Module form of :func:`cosent_loss` (Su 2022).

    ``forward(u, v, scores)``: ``u``, ``v`` ``(N, D)``, gold ``scores`` ``(N,)``; returns a
    scalar.

    Args:
        scale: inverse temperature (> 0).
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)

    def forward(self, u: Tensor, v: Tensor, scores: Tensor) -> Tensor:
        return cosent_loss(u, v, scores, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
