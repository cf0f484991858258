"""Schedulers by name: :data:`SCHEDULERS`, :func:`register`, :func:`get_scheduler`.

The convention of :mod:`mtlkit._registry`, as for strategies. The built-in schedulers'
parameters are named like the :class:`~mtlkit.Context` fields (``sizes``, ``batch_size``,
``mode``, ``epoch``, ``seed``, ``num_epochs``), so one context builds any of them::

    ctx = Context(sizes=[8000, 16000, 5500], batch_size=[32, 16, 8], mode="all",
                  epoch=140, seed=0, num_epochs=3)
    get_scheduler("annealed", context=ctx)
    get_scheduler("temperature", context=ctx, temperature=5.0)  # options win over ctx
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mtlkit._registry import Context, Registry
from mtlkit.schedulers.base import TaskScheduler

__all__ = ["SCHEDULERS", "get_scheduler", "list_schedulers", "register"]

SCHEDULERS: Registry[TaskScheduler] = Registry("scheduler")

S = TypeVar("S", bound=type[TaskScheduler])


def register(name: str, *, aliases: Sequence[str] = ()) -> Callable[[S], S]:
    """Class decorator: make a scheduler available as ``get_scheduler(name)``.

    Names are normalised (:func:`mtlkit.normalize_name`): ``"my_sched"`` and
    ``"my-sched"`` are one name.
    """
    return SCHEDULERS.register(name, aliases=aliases)


def get_scheduler(name: str, /, *, context: Context | None = None, **options: Any) -> TaskScheduler:
    """Build a registered scheduler by name, e.g. ``get_scheduler("round-robin", sizes=s)``.

    ``context`` (:class:`mtlkit.Context`) fills the constructor arguments a scheduler takes
    from the run (``sizes``, ``batch_size``, ``mode``, ``epoch``, ``seed``,
    ``num_epochs``) unless ``options`` gives them; an option the scheduler does not take
    raises ``TypeError`` naming those it does take.
    """
    return SCHEDULERS.build(name, context, **options)


def list_schedulers() -> list[str]:
    """Names of all registered schedulers, sorted (aliases left out)."""
    return SCHEDULERS.names()
