"""Margins that follow the training step, and the base of the margin loss modules.

A ``margin=`` option of :class:`~mtlkit.losses.CosineEmbeddingLoss`,
:class:`~mtlkit.losses.TripletLoss` and :class:`~mtlkit.losses.ContrastiveLoss` takes
any :data:`MarginLike` (see :func:`as_margin_schedule`):

* a number: :class:`ConstantMargin`;
* a mapping ``{"start": a, "end": b, "steps": n}``: :class:`LinearMargin` (the form to
  use where options are plain data, e.g. JSON from a command line:
  ``get_loss("triplet", margin={"start": 0.2, "end": 1.0, "steps": 1000})``);
* a :class:`MarginSchedule`, used as it is;
* any other ``Callable[[int], float]`` of the step: :class:`CallbackMargin`.

The module counts the steps (:meth:`MarginLoss.step`) and saves the count in its
``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mtlkit.losses._common import Reduction, check_margin, check_reduction

__all__ = [
    "CallbackMargin",
    "ConstantMargin",
    "LinearMargin",
    "MarginLike",
    "MarginLoss",
    "MarginSchedule",
    "as_margin_schedule",
]


class MarginSchedule(ABC):
    """A margin as a function of the training step (0, 1, 2, ...)."""

    @abstractmethod
    def __call__(self, step: int) -> float:
        """Return the margin to use at ``step``."""


class ConstantMargin(MarginSchedule):
    """The same margin at every step."""

    def __init__(self, value: float) -> None:
        self.value = check_margin(value, nonnegative=False)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantMargin({self.value})"


class LinearMargin(MarginSchedule):
    """Move linearly from ``start`` (step 0) to ``end`` (step ``steps``), then hold ``end``.

    ``margin(t) = start + (end - start) * min(t, steps) / steps``.

    As an option given as plain data: ``{"start": start, "end": end, "steps": steps}``
    (see :func:`as_margin_schedule`).
    """

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = check_margin(start, nonnegative=False)
        self.end = check_margin(end, nonnegative=False)
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


MarginLike = float | MarginSchedule | Callable[[int], float] | Mapping[str, Any]

_LINEAR_KEYS = ("start", "end", "steps")


def as_margin_schedule(margin: MarginLike) -> MarginSchedule:
    """The :class:`MarginSchedule` that a ``margin=`` option stands for.

    * a :class:`MarginSchedule` is returned unchanged;
    * a number ``m`` becomes ``ConstantMargin(m)``;
    * a mapping with exactly the keys ``"start"``, ``"end"`` and ``"steps"`` becomes
      ``LinearMargin(start, end, steps)`` (``steps`` a positive int), so that a margin
      that moves during training can be given as plain data, e.g. the JSON
      ``{"start": 0.2, "end": 0.6, "steps": 1000}``; other keys raise ``ValueError``;
    * any other callable of the step becomes ``CallbackMargin(fn)``.
    """
    if isinstance(margin, MarginSchedule):
        return margin
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        return ConstantMargin(float(margin))
    if isinstance(margin, Mapping):
        keys = set(margin)
        if keys != set(_LINEAR_KEYS):
            missing = [k for k in _LINEAR_KEYS if k not in keys]
            extra = sorted(map(repr, keys - set(_LINEAR_KEYS)))
            problems = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + (
                [f"unknown {', '.join(extra)}"] if extra else []
            )
            raise ValueError(
                "a margin given as a mapping is a LinearMargin and needs exactly the keys "
                f"'start', 'end' and 'steps' ({'; '.join(problems)})"
            )
        return LinearMargin(margin["start"], margin["end"], margin["steps"])
    if callable(margin):
        return CallbackMargin(margin)
    raise TypeError(
        "margin must be a number, a mapping {'start', 'end', 'steps'}, a MarginSchedule or "
        f"a callable, got {margin!r}"
    )


class MarginLoss(nn.Module):
    """Base of the loss modules whose margin follows a :class:`MarginSchedule`.

    The module counts steps itself: call :meth:`step` once per optimizer step (or
    :meth:`set_step`). :attr:`margin` is the schedule's value at the current step. The
    step count is saved in ``state_dict()`` (as extra state, ``{"step": n}``), so a
    resumed run continues the schedule where it stopped.

    Args:
        margin: anything :func:`as_margin_schedule` takes.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    _nonnegative_margin = True

    def __init__(self, margin: MarginLike, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.schedule = as_margin_schedule(margin)
        self.reduction: Reduction = reduction
        self.step_count = 0

    @property
    def margin(self) -> float:
        """The margin at the current step."""
        return check_margin(self.schedule(self.step_count), nonnegative=self._nonnegative_margin)

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
