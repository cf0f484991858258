"""Helpers for tests that compare nested state (state dicts, parameters) exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def same_state(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors, dicts, lists, numbers, None)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(same_state(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


def clone_state(state: Any) -> Any:
    """A copy of nested state whose tensors no longer alias the originals."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return state
