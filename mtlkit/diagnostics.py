"""Gradient telemetry: what a step's per-task gradients looked like.

:class:`GradientStats` is read off the K x K Gramian ``G = J Jᵀ`` that Gramian
strategies form anyway, so it costs no pass over the P parameters and no device sync
until a logger asks for values. Loss weightings never form per-task gradients: their
stats carry the weights only (the other fields are ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientStats"]


@dataclass(frozen=True)
class GradientStats:
    """Gradient-conflict figures of one combination.

    All fields are tensors on the gradients' device (float64), so reading them costs no
    device sync until a logger asks for values (:meth:`as_dict`).

    Attributes:
        norms: (K,) per-task gradient norms ``‖g_i‖``; ``None`` for loss weightings,
            which never form per-task gradients.
        cosines: (K, K) pairwise cosine similarities (0 where a norm is 0); ``None`` for
            loss weightings.
        conflicts: () number of task pairs i < j with ``g_i · g_j < 0``; ``None`` for
            loss weightings.
        weights: (K,) the weights applied to the rows of J (``update = wᵀJ``), or to the
            losses for a loss weighting (GradDrop: the fraction of coordinates each task
            kept).
    """

    norms: Tensor | None
    cosines: Tensor | None
    conflicts: Tensor | None
    weights: Tensor

    @classmethod
    def from_gramian(cls, g: Tensor, weights: Tensor) -> GradientStats:
        """Norms, cosines and conflicts of the Gramian ``g``, with the weights used."""
        norms = g.diagonal().clamp(min=0).sqrt()
        outer = norms[:, None] * norms[None, :]
        cosines = torch.where(outer > 0, g / outer.clamp(min=torch.finfo(g.dtype).tiny), 0.0)
        upper = torch.triu(torch.ones_like(g, dtype=torch.bool), diagonal=1)
        conflicts = ((g < 0) & upper).sum()
        return cls(norms=norms, cosines=cosines, conflicts=conflicts, weights=weights)

    @classmethod
    def from_weights(cls, weights: Tensor) -> GradientStats:
        """The stats of a loss weighting: weights only."""
        return cls(norms=None, cosines=None, conflicts=None, weights=weights)

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (this one call syncs with the device); absent fields are
        ``None``."""
        return {
            "norms": None if self.norms is None else self.norms.tolist(),
            "cosines": None if self.cosines is None else self.cosines.tolist(),
            "conflicts": None if self.conflicts is None else int(self.conflicts.item()),
            "weights": self.weights.tolist(),
        }
