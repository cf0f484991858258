"""Task schedulers: which tasks a multitask training step sees, and with how many examples.

A multitask training loop comes in one of two styles:

* **one task per step** (``mode="one"``): each step draws a batch from a single task and
  backpropagates that task's loss. This is the classic way to mix datasets.
* **all tasks per step** (``mode="all"``): each step draws a batch from *every* task, so
  the per-task losses (and gradients) of one step can be combined, as gradient strategies
  such as PCGrad or MGDA need.

Every scheduler produces one *plan* per step: a ``dict`` mapping a task index to the number
of examples that task contributes to the step (tasks with zero examples are left out). In
``mode="one"`` the plan has a single entry. A scheduler knows only the dataset sizes;
:class:`MultiTaskLoader` turns its plans into collated batches drawn from real
:class:`torch.utils.data.Dataset` objects.

Sampling of examples
    Each task reads its dataset through its own :class:`ShuffledIndexStream`: a shuffled
    pass over all indices drawn with the task's own seeded :class:`torch.Generator`. When a
    pass is used up the next one starts with a fresh shuffle, so every example is visited
    exactly once per pass. Streams do **not** restart at epoch boundaries: an epoch is only
    a number of steps, and a batch may straddle two passes (to keep the batch size fixed).

Epochs
    ``len(scheduler)`` is the number of steps in an epoch and ``iter(scheduler)`` (or
    ``iter(loader)``) yields the steps left in the current epoch. What an epoch means is an
    explicit choice (the ``epoch`` argument), see :class:`RoundRobin` and
    :class:`SamplingScheduler`.

Determinism and resuming
    All randomness comes from seeded generators owned by the scheduler and the streams.
    ``state_dict()`` / ``load_state_dict()`` on schedulers and on the loader capture the
    step counter, generator states, the positions in each task's permutation and (for
    :class:`DynamicBatchAllocation`) the live signal, so a resumed run sees exactly the
    batches the uninterrupted run would have seen.

Example (all tasks per step, allocation driven by dev scores)::

    sched = DynamicBatchAllocation([len(a), len(b)], total_batch_size=64, min_per_task=8)
    loader = MultiTaskLoader([a, b], sched, seed=0)
    for epoch in range(3):
        for batches in loader:              # {task: collated batch}
            losses = [loss_fn[t](model, batch) for t, batch in batches.items()]
            ...
        sched.update(dev_scores())          # lagging tasks get more of each step
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal, Protocol, TypeVar, cast

import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = [
    "Annealed",
    "DynamicBatchAllocation",
    "EpochSpec",
    "Mode",
    "MultiTaskLoader",
    "Plan",
    "Proportional",
    "RoundRobin",
    "SamplingScheduler",
    "ShuffledIndexStream",
    "SizedDataset",
    "TaskScheduler",
    "Temperature",
    "largest_remainder",
]

#: A step's plan: task index -> number of examples that task contributes to the step.
Plan = dict[int, int]
#: Loop style: ``"one"`` task per step, or ``"all"`` tasks every step.
Mode = Literal["one", "all"]
#: How long an epoch is: a named rule or a fixed number of steps.
EpochSpec = Literal["max", "min", "sum"] | int

T_co = TypeVar("T_co", covariant=True)


class SizedDataset(Protocol[T_co]):
    """A map-style dataset with a length (any :class:`torch.utils.data.Dataset` that
    defines ``__len__``, or a plain list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> T_co: ...


# ----------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_positive_float(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_sizes(sizes: Sequence[int | Sized]) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError("sizes must be a sequence of dataset sizes (ints) or sized datasets")
    if len(sizes) == 0:
        raise ValueError("the task list is empty: at least one task is needed")
    out = []
    for i, s in enumerate(sizes):
        n = s if isinstance(s, int) and not isinstance(s, bool) else None
        if n is None:
            if not isinstance(s, Sized):
                raise TypeError(f"task {i}: expected a dataset size or a sized dataset, got {s!r}")
            n = len(s)
        if n <= 0:
            raise ValueError(f"task {i} has an empty dataset (size {n}); every task needs data")
        out.append(n)
    return out


def _check_batch_sizes(batch_size: int | Sequence[int], num_tasks: int) -> list[int]:
    if isinstance(batch_size, int) and not isinstance(batch_size, bool):
        return [_check_int("batch_size", batch_size, 1)] * num_tasks
    if not isinstance(batch_size, Sequence) or len(batch_size) != num_tasks:
        raise ValueError(
            f"batch_size must be an int or a sequence of {num_tasks} ints (one per task), "
            f"got {batch_size!r}"
        )
    return [_check_int(f"batch_size[{i}]", b, 1) for i, b in enumerate(batch_size)]


def _check_mode(mode: str) -> Mode:
    if mode not in ("one", "all"):
        raise ValueError(f"mode must be 'one' (one task per step) or 'all', got {mode!r}")
    return cast(Mode, mode)


def _fixed_epoch(epoch: EpochSpec, allowed: tuple[str, ...]) -> int | None:
    """Return the step count of an int ``epoch`` (None for a named rule in ``allowed``)."""
    if isinstance(epoch, str):
        if epoch not in allowed:
            raise ValueError(
                f"epoch must be one of {', '.join(map(repr, allowed))} or a positive number "
                f"of steps, got {epoch!r}"
            )
        return None
    return _check_int("epoch", epoch, 1)


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


# ----------------------------------------------------------------------------- schedulers


class TaskScheduler(ABC):
    """Base class: yields one :data:`Plan` (``{task: num_examples}``) per training step.

    Args:
        sizes: the number of examples of each task's dataset (or the sized datasets).
        mode: ``"one"`` task per step or ``"all"`` tasks per step.
        seed: seed of the scheduler's own :class:`torch.Generator` (used by the random
            schedulers; the deterministic ones ignore it).

    Attributes:
        sizes: the validated per-task dataset sizes.
        num_tasks: K, the number of tasks.
        steps_per_epoch: number of steps in one epoch (also ``len(scheduler)``).

    :meth:`next_step` returns the next plan (the schedule itself is endless);
    ``iter(scheduler)`` yields the plans left in the current epoch. Subclasses implement
    :meth:`_plan`, and extend :meth:`state_dict` / :meth:`load_state_dict` when they hold
    more state than the step counter and the generator.
    """

    steps_per_epoch: int

    def __init__(self, sizes: Sequence[int | Sized], *, mode: Mode, seed: int = 0) -> None:
        self.sizes = _check_sizes(sizes)
        self.num_tasks = len(self.sizes)
        self.mode: Mode = _check_mode(mode)
        self.seed = _check_int("seed", seed, 0)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._step = 0

    @abstractmethod
    def _plan(self) -> Plan:
        """Return the plan of step ``self.step`` (called once per step, in order)."""

    @property
    def step(self) -> int:
        """Number of steps planned so far (the index of the next step)."""
        return self._step

    @property
    def epoch(self) -> int:
        """Zero-based index of the epoch the next step belongs to."""
        return self._step // self.steps_per_epoch

    def next_step(self) -> Plan:
        """Plan the next step and advance the step counter."""
        plan = self._plan()
        self._step += 1
        return plan

    def __iter__(self) -> Iterator[Plan]:
        """Yield the plans of the steps left in the current epoch."""
        end = (self.epoch + 1) * self.steps_per_epoch
        while self._step < end:
            yield self.next_step()

    def __len__(self) -> int:
        return self.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the schedule exactly where it stands."""
        return {
            "type": type(self).__name__,
            "num_tasks": self.num_tasks,
            "step": self._step,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from a scheduler built the same way)."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"state is from a {state.get('type')!r} scheduler, not {type(self).__name__!r}"
            )
        if state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"state is for {state.get('num_tasks')} tasks, this scheduler has {self.num_tasks}"
            )
        self._step = _check_int("state['step']", state["step"], 0)
        self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tasks={self.num_tasks}, mode={self.mode!r}, "
            f"steps_per_epoch={self.steps_per_epoch})"
        )


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

    def _plan(self) -> Plan:
        if self.mode == "all":
            return dict(enumerate(self.batch_sizes))
        task = self._step % self.num_tasks
        return {task: self.batch_sizes[task]}


class SamplingScheduler(TaskScheduler):
    """Base of the schedulers that draw tasks at random from a distribution ``p``.

    Subclasses implement :meth:`probabilities` (which may depend on the epoch).

    * ``mode="one"``: each step draws one task i with probability ``p_i`` and plans a batch
      of ``batch_size[i]`` examples from it. Over many steps the share of steps of task i
      tends to ``p_i``.
    * ``mode="all"``: each step has ``total_batch_size`` examples; every task gets
      ``min_per_task`` of them and each remaining example picks its task independently
      from ``p`` (one multinomial draw per step). The expected number of examples of task
      i per step is ``min_per_task + p_i * (total - K * min_per_task)``.

    Epoch definition: ``"sum"`` means one pass over all the data in total, i.e.
    ``Σ_i ceil(n_i / batch_size[i])`` steps in ``mode="one"`` and
    ``ceil(Σ_i n_i / total_batch_size)`` steps in ``mode="all"``; an int fixes the number
    of steps.

    Args:
        sizes: per-task dataset sizes (or the sized datasets).
        batch_size: examples per task batch, one int or one per task.
        mode: ``"one"`` or ``"all"``.
        total_batch_size: examples per step in ``mode="all"`` (default: the sum of the
            per-task batch sizes).
        min_per_task: floor of examples per task and step in ``mode="all"``.
        epoch: ``"sum"`` or a positive number of steps.
        seed: seed of the scheduler's generator.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        mode: Mode = "one",
        total_batch_size: int | None = None,
        min_per_task: int = 1,
        epoch: EpochSpec = "sum",
        seed: int = 0,
    ) -> None:
        super().__init__(sizes, mode=mode, seed=seed)
        self.batch_sizes = _check_batch_sizes(batch_size, self.num_tasks)
        if total_batch_size is None:
            total_batch_size = sum(self.batch_sizes)
        self.total_batch_size = _check_int("total_batch_size", total_batch_size, 1)
        self.min_per_task = _check_int("min_per_task", min_per_task, 0)
        if self.mode == "all" and self.min_per_task * self.num_tasks > self.total_batch_size:
            raise ValueError(
                f"min_per_task * K = {self.min_per_task} * {self.num_tasks} exceeds "
                f"total_batch_size = {self.total_batch_size}"
            )
        fixed = _fixed_epoch(epoch, ("sum",))
        if fixed is None:
            if self.mode == "one":
                fixed = sum(
                    math.ceil(n / b) for n, b in zip(self.sizes, self.batch_sizes, strict=True)
                )
            else:
                fixed = math.ceil(sum(self.sizes) / self.total_batch_size)
        self.steps_per_epoch = fixed
        self._cache: tuple[int, list[float], Tensor] | None = None

    @abstractmethod
    def probabilities(self, epoch: int = 0) -> list[float]:
        """Task probabilities (summing to 1) used during the zero-based ``epoch``."""

    def _probs(self) -> tuple[list[float], Tensor]:
        epoch = self.epoch
        if self._cache is None or self._cache[0] != epoch:
            p = self.probabilities(epoch)
            cum = []
            acc = 0.0
            for x in p:
                acc += x
                cum.append(acc)
            self._cache = (epoch, cum, torch.tensor(p, dtype=torch.float64))
        return self._cache[1], self._cache[2]

    def _plan(self) -> Plan:
        cum, p = self._probs()
        k = self.num_tasks
        if self.mode == "one":
            u = float(torch.rand((), dtype=torch.float64, generator=self._generator))
            task = min(bisect.bisect_right(cum, u * cum[-1]), k - 1)
            return {task: self.batch_sizes[task]}
        free = self.total_batch_size - k * self.min_per_task
        counts = [self.min_per_task] * k
        if free > 0:
            draws = torch.multinomial(p, free, replacement=True, generator=self._generator)
            for i, c in enumerate(torch.bincount(draws, minlength=k).tolist()):
                counts[i] += int(c)
        return {i: c for i, c in enumerate(counts) if c > 0}


def _power_probabilities(sizes: Sequence[int], exponent: float, cap: int | None) -> list[float]:
    """``p_i ∝ min(n_i, cap)^exponent``, computed in log space (no overflow for big n)."""
    logs = [exponent * math.log(n if cap is None else min(n, cap)) for n in sizes]
    top = max(logs)
    w = [math.exp(x - top) for x in logs]
    s = math.fsum(w)
    return [x / s for x in w]


class Proportional(SamplingScheduler):
    """Sample tasks in proportion to their dataset sizes: ``p_i = n_i / Σ_j n_j``.

    With ``mode="one"`` and equal batch sizes this visits every example as often, in
    expectation, as concatenating and shuffling all the datasets would. See
    :class:`SamplingScheduler` for the arguments, the modes and the epoch definition.
    """

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, 1.0, None)


class Temperature(SamplingScheduler):
    """Temperature-scaled sampling: ``p_i ∝ min(n_i, cap)^(1/T)``.

    ``T = 1`` is proportional sampling, ``T -> ∞`` uniform sampling; values in between
    up-sample small tasks. The optional ``cap`` bounds the size any one task is credited
    with ("examples-proportional mixing with an artificial limit"), so huge datasets do
    not swamp the mixture. This is the mixing rule of Raffel et al. 2020, "Exploring the
    Limits of Transfer Learning with a Unified Text-to-Text Transformer" (T5, Sec. 3.5.2)
    and Arivazhagan et al. 2019, "Massively Multilingual Neural Machine Translation in the
    Wild" (who use T = 5).

    Args:
        temperature: T > 0.
        cap: optional positive size limit applied before the temperature.

    The other arguments are those of :class:`SamplingScheduler`.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        temperature: float = 2.0,
        cap: int | None = None,
        mode: Mode = "one",
        total_batch_size: int | None = None,
        min_per_task: int = 1,
        epoch: EpochSpec = "sum",
        seed: int = 0,
    ) -> None:
        self.temperature = _check_positive_float("temperature", temperature)
        self.cap = None if cap is None else _check_int("cap", cap, 1)
        super().__init__(
            sizes,
            batch_size,
            mode=mode,
            total_batch_size=total_batch_size,
            min_per_task=min_per_task,
            epoch=epoch,
            seed=seed,
        )

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, 1.0 / self.temperature, self.cap)


class Annealed(SamplingScheduler):
    """Annealed sampling of Stickland & Murray 2019, "BERT and PALs: Projected Attention
    Layers for Efficient Adaptation in Multi-Task Learning" (Sec. 4).

    During epoch ``e = 1..E`` (``E = num_epochs``) tasks are drawn with
    ``p_i ∝ n_i^α_e``, where

        ``α_e = 1 - (1 - final_alpha) * (e - 1) / (E - 1)``

    so sampling starts proportional to the dataset sizes (α = 1) and moves towards uniform.
    With the paper's ``final_alpha = 0.2`` this is ``α_e = 1 - 0.8 (e - 1) / (E - 1)``.
    For ``E = 1`` α stays 1; after the last epoch α stays at ``final_alpha``. Epochs are
    this scheduler's epochs (``steps_per_epoch`` steps each).

    Args:
        num_epochs: E >= 1, the number of epochs the annealing spans.
        final_alpha: α of the last epoch, in [0, 1].

    The other arguments are those of :class:`SamplingScheduler`.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        num_epochs: int,
        final_alpha: float = 0.2,
        mode: Mode = "one",
        total_batch_size: int | None = None,
        min_per_task: int = 1,
        epoch: EpochSpec = "sum",
        seed: int = 0,
    ) -> None:
        self.num_epochs = _check_int("num_epochs", num_epochs, 1)
        final_alpha = float(final_alpha)
        if not 0.0 <= final_alpha <= 1.0:
            raise ValueError(f"final_alpha must lie in [0, 1], got {final_alpha}")
        self.final_alpha = final_alpha
        super().__init__(
            sizes,
            batch_size,
            mode=mode,
            total_batch_size=total_batch_size,
            min_per_task=min_per_task,
            epoch=epoch,
            seed=seed,
        )

    def alpha(self, epoch: int) -> float:
        """α for the zero-based ``epoch`` (the paper's e is ``epoch + 1``)."""
        if self.num_epochs == 1:
            return 1.0
        frac = min(max(epoch, 0), self.num_epochs - 1) / (self.num_epochs - 1)
        return 1.0 - (1.0 - self.final_alpha) * frac

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, self.alpha(epoch), None)


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
        total_batch_size: examples per step, all tasks together.
        min_per_task: floor of examples per task and step (``min_per_task * K`` must not
            exceed ``total_batch_size``; use >= 1 when every task must appear each step).
        temperature: softmax temperature (> 0), in the units of the lag.
        signal: ``"score"`` or ``"loss"``, see above.
        epoch: ``"sum"`` or a positive number of steps.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        total_batch_size: int,
        *,
        min_per_task: int = 1,
        temperature: float = 1.0,
        signal: Literal["score", "loss"] = "score",
        epoch: EpochSpec = "sum",
    ) -> None:
        super().__init__(sizes, mode="all")
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

    def _plan(self) -> Plan:
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


# ----------------------------------------------------------------------------- loading


class ShuffledIndexStream:
    """An endless stream of indices into one dataset, one shuffled pass after another.

    Each pass is a permutation of ``range(size)`` drawn with this stream's own seeded
    :class:`torch.Generator` (or the identity when ``shuffle=False``), so every index is
    visited exactly once per pass; a used-up pass is followed by a freshly shuffled one.
    :meth:`take` may straddle two passes.

    Args:
        size: dataset length (>= 1).
        seed: seed of the stream's generator.
        shuffle: shuffle each pass (True) or read in order (False).
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.size = _check_int("size", size, 1)
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        self._passes = 0
        self._new_pass()
        self._position = 0

    def _new_pass(self) -> None:
        # Remember the generator state *before* the shuffle: the state dict then only
        # needs it (not the permutation) to rebuild the current pass.
        self._pass_state = self._generator.get_state()
        if self.shuffle:
            self._perm = torch.randperm(self.size, generator=self._generator)
        else:
            self._perm = torch.arange(self.size)
        self._position = 0

    @property
    def passes(self) -> int:
        """Number of passes started before the current one."""
        return self._passes

    @property
    def position(self) -> int:
        """Number of indices already taken from the current pass."""
        return self._position

    def take(self, n: int) -> list[int]:
        """Return the next ``n`` indices."""
        n = _check_int("n", n, 0)
        out: list[int] = []
        while len(out) < n:
            if self._position == self.size:
                self._new_pass()
                self._passes += 1
            stop = min(self.size, self._position + n - len(out))
            out.extend(self._perm[self._position : stop].tolist())
            self._position = stop
        return out

    def state_dict(self) -> dict[str, Any]:
        """Position in the current pass, pass count and generator state."""
        return {
            "size": self.size,
            "shuffle": self.shuffle,
            "passes": self._passes,
            "position": self._position,
            "pass_state": self._pass_state.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state["size"] != self.size or bool(state["shuffle"]) != self.shuffle:
            raise ValueError(
                f"state is for a stream of size {state['size']} (shuffle={state['shuffle']}), "
                f"this one has size {self.size} (shuffle={self.shuffle})"
            )
        self._generator.set_state(state["pass_state"])
        self._new_pass()
        self._passes = _check_int("state['passes']", state["passes"], 0)
        self._position = _check_int("state['position']", state["position"], 0)
        if self._position > self.size:
            raise ValueError(f"position {self._position} exceeds the stream size {self.size}")


CollateFn = Callable[[list[Any]], Any]


class MultiTaskLoader:
    """Turn a scheduler's plans into batches drawn from per-task datasets.

    Each step yields a ``dict`` ``{task: batch}`` (in task order) with one collated batch
    per task the plan names: one entry in ``mode="one"``, every task in ``mode="all"``.
    ``iter(loader)`` yields the steps left in the scheduler's current epoch, so
    ``for epoch in range(E): for batches in loader: ...`` trains E epochs, and a loader
    restored from :meth:`state_dict` resumes mid-epoch. Task i reads its dataset through a
    :class:`ShuffledIndexStream` seeded from ``seed`` and i.

    Examples are fetched in the main process (``dataset[i]``, or the dataset's
    ``__getitems__`` when it has one) and collated with the task's collate function.

    Args:
        datasets: one map-style dataset per task; their lengths must match
            ``scheduler.sizes``.
        scheduler: the :class:`TaskScheduler` deciding each step's plan.
        collate_fn: one function for all tasks, one per task (``None`` entries use the
            default), or ``None`` for :func:`torch.utils.data.default_collate`.
        shuffle: shuffle each pass of each task (False reads every dataset in order).
        seed: seed from which the per-task stream seeds are derived.
    """

    def __init__(
        self,
        datasets: Sequence[SizedDataset[Any]],
        scheduler: TaskScheduler,
        collate_fn: CollateFn | Sequence[CollateFn | None] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(scheduler, TaskScheduler):
            raise TypeError(f"scheduler must be a TaskScheduler, got {type(scheduler).__name__}")
        if len(datasets) != scheduler.num_tasks:
            raise ValueError(
                f"got {len(datasets)} datasets for a scheduler of {scheduler.num_tasks} tasks"
            )
        sizes = _check_sizes(list(datasets))
        if sizes != scheduler.sizes:
            raise ValueError(
                f"dataset sizes {sizes} do not match the scheduler's sizes {scheduler.sizes}"
            )
        self.datasets = list(datasets)
        self.scheduler = scheduler
        if collate_fn is None or callable(collate_fn):
            fns: list[CollateFn | None] = [collate_fn] * scheduler.num_tasks
        else:
            fns = list(collate_fn)
            if len(fns) != scheduler.num_tasks:
                raise ValueError(
                    f"got {len(fns)} collate functions for {scheduler.num_tasks} tasks"
                )
        self.collate_fns: list[CollateFn] = [default_collate if f is None else f for f in fns]
        base = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        seeds = torch.randint(0, 2**62, (scheduler.num_tasks,), generator=base).tolist()
        self.streams = [
            ShuffledIndexStream(n, seed=int(s), shuffle=shuffle)
            for n, s in zip(sizes, seeds, strict=True)
        ]

    def _fetch(self, task: int, n: int) -> Any:
        indices = self.streams[task].take(n)
        ds = self.datasets[task]
        getitems = getattr(ds, "__getitems__", None)
        items = getitems(indices) if getitems is not None else [ds[i] for i in indices]
        return self.collate_fns[task](list(items))

    def next_step(self) -> dict[int, Any]:
        """Draw the batches of the next step (independent of epoch boundaries)."""
        plan = self.scheduler.next_step()
        return {task: self._fetch(task, n) for task, n in sorted(plan.items())}

    def __iter__(self) -> Iterator[dict[int, Any]]:
        """Yield ``{task: batch}`` for each step left in the current epoch."""
        sched = self.scheduler
        end = (sched.epoch + 1) * sched.steps_per_epoch
        while sched.step < end:
            yield self.next_step()

    def __len__(self) -> int:
        return self.scheduler.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state and every stream's position and generator state."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "streams": [s.state_dict() for s in self.streams],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        streams = list(state["streams"])
        if len(streams) != len(self.streams):
            raise ValueError(f"state has {len(streams)} streams, loader has {len(self.streams)}")
        self.scheduler.load_state_dict(state["scheduler"])
        for stream, s in zip(self.streams, streams, strict=True):
            stream.load_state_dict(s)
