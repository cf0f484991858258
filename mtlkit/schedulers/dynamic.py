"""Signal-driven allocation: :class:`DynamicBatchAllocation`, and the exact integer split
it uses, :func:`largest_remainder`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from typing import Any, Literal, cast

from torch import Tensor

from mtlkit.schedulers.base import (
    EpochSpec,
    Plan,
    TaskScheduler,
    _check_batch_sizes,
    _check_int,
    _check_positive_float,
    _fixed_epoch,
)
from mtlkit.schedulers.registry import register

__all__ = ["DynamicBatchAllocation", "largest_remainder"]


def largest_remainder(total: int, weights: Sequence[float], floor: int = 0) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, each at least ``floor``.

    Every task first gets ``floor``; the remaining ``total - K * floor`` units are shared
    by the largest-remainder (Hamilton) method: task i gets the integer part of its quota
    ``q_i = free * w_i / Σw`` and the units still left go, one each, to the tasks with the
    largest fractional parts (ties to the lower index). The result sums exactly to
    ``total`` and differs from ``floor + q_i`` by less than one for every task.

    Raises:
        ValueError: on an empty or negative/non-finite/all-zero weight vector, or when
            ``floor * K > total``.
    """
    k = len(weights)
    if k == 0:
        raise ValueError("weights is empty")
    total = _check_int("total", total, 0)
    floor = _check_int("floor", floor, 0)
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and non-negative, got {w}")
    s = math.fsum(w)
    if s <= 0:
        raise ValueError("weights sum to zero")
    free = total - k * floor
    if free < 0:
        raise ValueError(
            f"floor * K = {floor} * {k} = {floor * k} exceeds the total of {total}; lower the "
            "per-task floor or raise the total"
        )
    quotas = [free * x / s for x in w]
    base = [math.floor(q) for q in quotas]
    short = free - sum(base)
    order = sorted(range(k), key=lambda i: (-(quotas[i] - base[i]), i))
    for j in range(max(short, 0)):
        base[order[j % k]] += 1
    return [floor + b for b in base]


@register("dynamic", aliases=("dynamic-batch-allocation",))
class DynamicBatchAllocation(TaskScheduler):
    """All tasks every step, with per-task batch sizes re-allocated from a live signal.

    Each step has ``total_batch_size`` examples, at least ``min_per_task`` from each task.
    The rest is shared by weights that favour the tasks that lag behind:

    * ``signal="score"``: :meth:`update` receives a per-task score where higher is better
      (a dev metric, or a loss decrease you computed). The lag is
      ``lag_i = max_j s_j - s_i``.
    * ``signal="loss"``: :meth:`update` receives current per-task losses (e.g. running
      training losses); the scheduler turns consecutive updates into relative decreases
      ``r_i = (L_i^prev - L_i) / |L_i^prev|`` and uses ``lag_i = max_j r_j - r_i``, so
      tasks whose loss stalls get more examples. The first update only records losses.

    The weights are ``w = softmax(lag / temperature)`` (uniform until an update arrives;
    tasks that never got a value have lag 0), and the allocation is
    ``min_per_task + largest_remainder(total - K * min_per_task, w)`` (see
    :func:`largest_remainder`), which sums exactly to ``total_batch_size``. A small
    temperature concentrates the free examples on the most lagging task; a large one keeps
    the allocation near uniform. The schedule itself is deterministic.

    Epoch definition: ``"sum"`` is ``ceil(Σ_i n_i / total_batch_size)`` steps (one pass
    over all the data in total); an int fixes the number of steps.

    Args:
        sizes: per-task dataset sizes (or the sized datasets).
        total_batch_size: examples per step, all tasks together (default: the sum of the
            per-task ``batch_size``; one of the two must be given).
        batch_size: per-task examples per step, one int for all tasks or one per task,
            used only for the default ``total_batch_size`` (the split itself follows the
            signal).
        mode: always ``"all"`` (every task every step); accepted so that one
            :class:`~mtlkit.Context` builds any scheduler, and ``"one"`` is rejected.
        min_per_task: floor of examples per task and step (``min_per_task * K`` must not
            exceed ``total_batch_size``; use >= 1 when every task must appear each step).
        temperature: softmax temperature (> 0), in the units of the lag.
        signal: ``"score"`` or ``"loss"``, see above.
        epoch: ``"sum"`` or a positive number of steps.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        total_batch_size: int | None = None,
        *,
        batch_size: int | Sequence[int] | None = None,
        mode: Literal["all"] = "all",
        min_per_task: int = 1,
        temperature: float = 1.0,
        signal: Literal["score", "loss"] = "score",
        epoch: EpochSpec = "sum",
    ) -> None:
        if mode != "all":
            raise ValueError(
                "DynamicBatchAllocation draws from every task every step: mode must be 'all', "
                f"got {mode!r} (for one task per step use RoundRobin or a sampling scheduler)"
            )
        super().__init__(sizes, mode=mode)
        per_task = None if batch_size is None else _check_batch_sizes(batch_size, self.num_tasks)
        if total_batch_size is None:
            if per_task is None:
                raise TypeError(
                    "DynamicBatchAllocation needs total_batch_size (examples per step, all "
                    "tasks together) or batch_size (per-task examples, summed to the total)"
                )
            total_batch_size = sum(per_task)
        self.total_batch_size = _check_int("total_batch_size", total_batch_size, 1)
        self.min_per_task = _check_int("min_per_task", min_per_task, 0)
        if self.min_per_task * self.num_tasks > self.total_batch_size:
            raise ValueError(
                f"min_per_task * K = {self.min_per_task} * {self.num_tasks} exceeds "
                f"total_batch_size = {self.total_batch_size}"
            )
        self.temperature = _check_positive_float("temperature", temperature)
        if signal not in ("score", "loss"):
            raise ValueError(f"signal must be 'score' or 'loss', got {signal!r}")
        self.signal: Literal["score", "loss"] = signal
        fixed = _fixed_epoch(epoch, ("sum",))
        if fixed is None:
            fixed = math.ceil(sum(self.sizes) / self.total_batch_size)
        self.steps_per_epoch = fixed
        self._values: list[float | None] = [None] * self.num_tasks
        self._prev_losses: list[float | None] = [None] * self.num_tasks
        self._recompute()

    # -- signal

    def _parse(self, signal: Sequence[float] | Mapping[int, float] | Tensor) -> dict[int, float]:
        if isinstance(signal, Tensor):
            signal = cast(list[float], signal.detach().flatten().tolist())
        if isinstance(signal, Mapping):
            items = dict(signal)
        elif isinstance(signal, Sequence) and not isinstance(signal, (str, bytes)):
            if len(signal) != self.num_tasks:
                raise ValueError(
                    f"expected {self.num_tasks} values (one per task), got {len(signal)}"
                )
            items = dict(enumerate(signal))
        else:
            raise TypeError("signal must be a sequence of K floats or a {task: float} mapping")
        out = {}
        for task, value in items.items():
            if isinstance(task, bool) or not isinstance(task, int):
                raise TypeError(f"task keys must be ints, got {task!r}")
            if not 0 <= task < self.num_tasks:
                raise ValueError(f"task {task} out of range for {self.num_tasks} tasks")
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"task {task}: signal value {v} is not finite")
            out[task] = v
        return out

    def update(self, signal: Sequence[float] | Mapping[int, float] | Tensor) -> None:
        """Feed the latest per-task signal and re-allocate the per-step batch sizes.

        Args:
            signal: K values (a sequence or 1-D tensor), or a ``{task: value}`` mapping
                updating only some tasks (the others keep their last value). Scores when
                ``signal="score"``, losses when ``signal="loss"``.
        """
        values = self._parse(signal)
        for task, v in values.items():
            if self.signal == "score":
                self._values[task] = v
            else:
                prev = self._prev_losses[task]
                if prev is not None:
                    self._values[task] = (prev - v) / max(abs(prev), 1e-12)
                self._prev_losses[task] = v
        self._recompute()

    def _recompute(self) -> None:
        known = [v for v in self._values if v is not None]
        best = max(known) if known else 0.0
        lag = [0.0 if v is None else best - v for v in self._values]
        top = max(lag)
        w = [math.exp((x - top) / self.temperature) for x in lag]
        s = math.fsum(w)
        self._weights = [x / s for x in w]
        self._allocation = largest_remainder(
            self.total_batch_size, self._weights, floor=self.min_per_task
        )

    @property
    def weights(self) -> list[float]:
        """Current softmax weights over tasks (sum to 1)."""
        return list(self._weights)

    @property
    def allocation(self) -> list[int]:
        """Current per-task examples per step (sums to ``total_batch_size``)."""
        return list(self._allocation)

    def plan(self) -> Plan:
        return {i: c for i, c in enumerate(self._allocation) if c > 0}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["values"] = list(self._values)
        state["prev_losses"] = list(self._prev_losses)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        values = list(state["values"])
        prev = list(state["prev_losses"])
        if len(values) != self.num_tasks or len(prev) != self.num_tasks:
            raise ValueError("state holds signal values for a different number of tasks")
        self._values = [None if v is None else float(v) for v in values]
        self._prev_losses = [None if v is None else float(v) for v in prev]
        self._recompute()
