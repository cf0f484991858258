"""Random task sampling: :class:`SamplingScheduler` and its probability rules
(:class:`Proportional`, :class:`Temperature`, :class:`Annealed`).

Design: a rule subclass states only what it adds (its own parameters and
:meth:`~SamplingScheduler.probabilities`); it takes the shared keyword options of
:class:`SamplingScheduler` as ``**options: Unpack[SamplingOptions]`` and passes them on,
so their defaults and checks live in one place, mypy checks callers' keywords against
:class:`SamplingOptions`, and :class:`~mtlkit.schedulers.TaskScheduler` gives the class a
merged ``__signature__`` (own parameters, then the parent's) for ``help()`` and the
registry.
"""

from __future__ import annotations

import bisect
import math
from abc import abstractmethod
from collections.abc import Sequence, Sized

import torch
from torch import Tensor
from typing_extensions import TypedDict, Unpack

from mtlkit.schedulers.base import (
    EpochSpec,
    Mode,
    Plan,
    TaskScheduler,
    _check_batch_sizes,
    _check_int,
    _check_positive_float,
    _fixed_epoch,
)
from mtlkit.schedulers.registry import register

__all__ = ["Annealed", "Proportional", "SamplingOptions", "SamplingScheduler", "Temperature"]


class SamplingOptions(TypedDict, total=False):
    """The keyword options of :class:`SamplingScheduler` (defaults there), which every
    sampling rule takes too."""

    mode: Mode
    total_batch_size: int | None
    min_per_task: int
    epoch: EpochSpec
    seed: int


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

    def plan(self) -> Plan:
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


@register("proportional")
class Proportional(SamplingScheduler):
    """Sample tasks in proportion to their dataset sizes: ``p_i = n_i / Σ_j n_j``.

    With ``mode="one"`` and equal batch sizes this visits every example as often, in
    expectation, as concatenating and shuffling all the datasets would. See
    :class:`SamplingScheduler` for the arguments, the modes and the epoch definition.
    """

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, 1.0, None)


@register("temperature")
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

    The other arguments (``sizes``, ``batch_size`` and the :class:`SamplingOptions`) are
    those of :class:`SamplingScheduler`.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        temperature: float = 2.0,
        cap: int | None = None,
        **options: Unpack[SamplingOptions],
    ) -> None:
        self.temperature = _check_positive_float("temperature", temperature)
        self.cap = None if cap is None else _check_int("cap", cap, 1)
        super().__init__(sizes, batch_size, **options)

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, 1.0 / self.temperature, self.cap)


@register("annealed")
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

    The other arguments (``sizes``, ``batch_size`` and the :class:`SamplingOptions`) are
    those of :class:`SamplingScheduler`.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        num_epochs: int,
        final_alpha: float = 0.2,
        **options: Unpack[SamplingOptions],
    ) -> None:
        self.num_epochs = _check_int("num_epochs", num_epochs, 1)
        final_alpha = float(final_alpha)
        if not 0.0 <= final_alpha <= 1.0:
            raise ValueError(f"final_alpha must lie in [0, 1], got {final_alpha}")
        self.final_alpha = final_alpha
        super().__init__(sizes, batch_size, **options)

    def alpha(self, epoch: int) -> float:
        """α for the zero-based ``epoch`` (the paper's e is ``epoch + 1``)."""
        if self.num_epochs == 1:
            return 1.0
        frac = min(max(epoch, 0), self.num_epochs - 1) / (self.num_epochs - 1)
        return 1.0 - (1.0 - self.final_alpha) * frac

    def probabilities(self, epoch: int = 0) -> list[float]:
        return _power_probabilities(self.sizes, self.alpha(epoch), None)
