"""The loss registry: loss modules by name (the convention of :mod:`mtlkit._registry`).

::

    get_loss("contrastive", margin=0.5, distance="cosine")
    get_loss("mnrl", scale=20.0)                  # an alias
    get_loss("triplet", margin={"start": 0.2, "end": 1.0, "steps": 1000})
    list_losses()                                 # sorted names

    @register("my_loss")                          # found as "my_loss" or "my-loss"
    class MyLoss(nn.Module): ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from mtlkit._registry import Context, Registry

__all__ = ["LOSSES", "get_loss", "list_losses", "register"]

LOSSES: Registry[nn.Module] = Registry("loss")

M = TypeVar("M", bound=type[nn.Module])


def register(name: str, *, aliases: Sequence[str] = ()) -> Callable[[M], M]:
    """Class decorator: make a loss module available as ``get_loss(name)``.

    Names are normalised (:func:`mtlkit.normalize_name`): ``"my_loss"`` and
    ``"my-loss"`` are one name.
    """
    return LOSSES.register(name, aliases=aliases)


def get_loss(name: str, /, *, context: Context | None = None, **options: Any) -> nn.Module:
    """Build a registered loss module by name, e.g.
    ``get_loss("contrastive", margin=0.5, distance="cosine")``.

    ``options`` are the constructor's keyword arguments (an unknown one raises
    ``TypeError`` listing the options the loss takes). A ``margin`` may be given as plain
    data: a number, or ``{"start": a, "end": b, "steps": n}`` for a
    :class:`~mtlkit.losses.LinearMargin`. ``context`` (:class:`mtlkit.Context`) fills
    constructor arguments of the same name unless ``options`` gives them.
    """
    return LOSSES.build(name, context, **options)


def list_losses() -> list[str]:
    """Names of all registered losses, sorted (aliases left out)."""
    return LOSSES.names()
