"""Deterministic scheduling: :class:`RoundRobin`."""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized

from mtlkit.schedulers.base import (
    EpochSpec,
    Mode,
    Plan,
    TaskScheduler,
    _check_batch_sizes,
    _fixed_epoch,
)
from mtlkit.schedulers.registry import register

__all__ = ["RoundRobin"]


@register("round-robin")
class RoundRobin(TaskScheduler):
    """Visit the tasks in turn (``mode="one"``) or all of them every step (``mode="all"``).

    In ``mode="one"`` step t trains task ``t mod K`` on a batch of ``batch_size[t mod K]``
    examples; in ``mode="all"`` every step has a batch of ``batch_size[i]`` from each task i.
    The schedule is deterministic.

    Epoch definition (with ``c_i = ceil(n_i / batch_size[i])`` batches per pass of task i):

    * ``"max"``: until the longest task (in batches) is exhausted, i.e. ``max_i c_i`` steps
      in ``mode="all"`` and ``K * max_i c_i`` in ``mode="one"``. Shorter tasks restart with
      a fresh shuffle meanwhile, so they are oversampled.
    * ``"min"``: until the shortest task is exhausted (``min_i c_i``, resp. ``K * min_i c_i``
      steps). Longer tasks continue from where they stopped in the next epoch.
    * an int: that many steps.

    Args:
        sizes: per-task dataset sizes (or the sized datasets).
        batch_size: examples per task batch, one int for all tasks or one per task.
        mode: ``"one"`` or ``"all"``.
        epoch: ``"max"``, ``"min"`` or a positive number of steps.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        mode: Mode = "one",
        epoch: EpochSpec = "max",
    ) -> None:
        super().__init__(sizes, mode=mode)
        self.batch_sizes = _check_batch_sizes(batch_size, self.num_tasks)
        fixed = _fixed_epoch(epoch, ("max", "min"))
        if fixed is None:
            counts = [math.ceil(n / b) for n, b in zip(self.sizes, self.batch_sizes, strict=True)]
            per_task = max(counts) if epoch == "max" else min(counts)
            fixed = per_task * (self.num_tasks if self.mode == "one" else 1)
        self.steps_per_epoch = fixed

    def plan(self) -> Plan:
        if self.mode == "all":
            return dict(enumerate(self.batch_sizes))
        task = self._step % self.num_tasks
        return {task: self.batch_sizes[task]}
