"""An exponential moving average of a model's trainable weights (``--ema-decay``).

After every optimizer step the average moves towards the weights:
``avg <- avg + (1 - d_t) (w - avg)``, with the decay warmed up as
``d_t = min(d, (1 + t) / (10 + t))`` at the t-th update, so the first updates are not
dominated by the starting weights. Evaluation, the best epoch and ``best.pt`` use the
averaged weights; training goes on from the raw ones.

Polyak and Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
Control Optim. 1992 (averaging the iterates); Izmailov et al., "Averaging Weights Leads to
Wider Optima and Better Generalization", UAI 2018 (averaging the weights of a trained net).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``params`` (every trainable parameter of the model).

    One fused update a step (``torch._foreach_lerp_``): no Python loop over parameters on
    the hot path and no host sync. ``state_dict`` holds the average and the update count, so
    a resumed run continues it exactly.
    """

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay!r}")
        self.params = params
        self.decay = decay
        self.updates = 0
        self.average = [p.detach().clone() for p in params]

    def rate(self) -> float:
        """The decay of the next update, warmed up: ``min(d, (1 + t) / (10 + t))``."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after an optimizer step)."""
        weight = 1.0 - self.rate()
        self.updates += 1
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the model holds the averaged weights; the raw ones come back after."""
        raw = [p.detach().clone() for p in self.params]
        torch._foreach_copy_([p.detach() for p in self.params], self.average)
        try:
            yield
        finally:
            torch._foreach_copy_([p.detach() for p in self.params], raw)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        average = state["average"]
        if len(average) != len(self.average) or any(
            a.shape != b.shape for a, b in zip(average, self.average, strict=True)
        ):
            raise ValueError("the saved weight average does not fit this model's parameters")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        with torch.no_grad():
            for mine, saved in zip(self.average, average, strict=True):
                mine.copy_(saved)
