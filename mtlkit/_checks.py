"""Validation of numeric options at construction (one message format for every part)."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_real"]


def check_real(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a finite float within the bounds, or ``ValueError`` naming ``name``.

    ``low``/``high`` are inclusive unless ``open_low``/``open_high``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if open_low or low is None else "["
    right = ")" if open_high or high is None else "]"
    span = f"{left}{lo}, {hi}{right}"
    inside = math.isfinite(x)
    if inside and low is not None:
        inside = x > low if open_low else x >= low
    if inside and high is not None:
        inside = x < high if open_high else x <= high
    if not inside:
        raise ValueError(f"{name} must be a finite number in {span}, got {value!r}")
    return x


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
