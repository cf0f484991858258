"""Fixed linear combinations: sum, mean, and given weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.strategies.base import GramianStrategy, register

__all__ = ["Mean", "Sum", "Weighted"]


@register("sum")
class Sum(GramianStrategy):
    r"""The plain multitask update :math:`d = \sum_i g_i` (weights all 1)."""

    host_rule: ClassVar[bool] = False

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        return torch.ones(gram.shape[0], dtype=torch.float64, device=gram.device)


@register("mean")
class Mean(GramianStrategy):
    r"""The average of the task gradients, :math:`d = \frac1K \sum_i g_i`."""

    host_rule: ClassVar[bool] = False

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        k = gram.shape[0]
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=gram.device)


@register("weighted")
class Weighted(GramianStrategy):
    r"""Fixed task weights: :math:`d = \sum_i w_i g_i`.

    Args:
        weights: one non-negative, finite weight per task.
    """

    host_rule: ClassVar[bool] = False

    def __init__(self, weights: Sequence[float] | Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() == 0 or not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights must be a non-empty sequence of finite numbers, got {w}")
        self._w = w
        self._on_device = w  # the weights on the last Gramian's device: copied once, not
        # each step (a copy to a GPU each step would sync the host and break CUDA graphs)

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        if gram.shape[0] != self._w.numel():
            raise ValueError(
                f"Weighted has {self._w.numel()} weights but J has {gram.shape[0]} task rows"
            )
        if self._on_device.device != gram.device:
            self._on_device = self._w.to(gram.device)
        return self._on_device

    def __repr__(self) -> str:
        return f"Weighted({self._w.tolist()})"

    def state_dict(self) -> dict[str, Any]:
        return {}
