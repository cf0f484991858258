"""What a task scheduler is: the :class:`TaskScheduler` base, the plan types, and the
argument checks the schedulers share."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any, ClassVar, Literal, cast

import torch

from mtlkit._checks import check_int

__all__ = ["EpochSpec", "Mode", "Plan", "TaskScheduler"]

#: A step's plan: task index -> number of examples that task contributes to the step.
Plan = dict[int, int]
#: Loop style: ``"one"`` task per step, or ``"all"`` tasks every step.
Mode = Literal["one", "all"]
#: How long an epoch is: a named rule or a fixed number of steps.
EpochSpec = Literal["max", "min", "sum"] | int


# ----------------------------------------------------------------------------- checks


_check_int = check_int


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


# ----------------------------------------------------------------------------- signatures


def _forwarded_signature(cls: type) -> inspect.Signature | None:
    """The signature of ``cls(...)`` when its ``__init__`` forwards ``**options`` upward.

    ``def __init__(self, sizes, batch_size=32, *, temperature=2.0, **options)`` that passes
    ``options`` on to the parent's constructor really takes the parent's keyword
    arguments too; this spells them out (own parameters first, then the parent's that are
    not among them, as keyword-only) so that :func:`inspect.signature`, ``help()`` and the
    registry see every option with its default. ``None`` when ``__init__`` takes no
    ``**options`` (nothing to merge).
    """
    init = inspect.signature(cls.__dict__["__init__"])
    own = list(init.parameters.values())[1:]  # without self
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own):
        return None
    params = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in params}
    tail: list[inspect.Parameter] = []
    for p in inspect.signature(cls.__mro__[1]).parameters.values():
        if p.name in names or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            tail.append(p)
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    return inspect.Signature(params + tail, return_annotation=init.return_annotation)


# ----------------------------------------------------------------------------- base class


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
    :meth:`plan`, and extend :meth:`state_dict` / :meth:`load_state_dict` when they hold
    more state than the step counter and the generator.

    A subclass whose ``__init__`` takes only its own arguments plus ``**options`` that it
    passes on to its parent gets a merged ``__signature__`` listing the parent's options
    too, so :func:`mtlkit.schedulers.get_scheduler` fills and checks them by name.
    """

    #: Registry name (set by :func:`mtlkit.schedulers.register`).
    name: ClassVar[str] = ""

    steps_per_epoch: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            # None lets inspect read this class's own __init__ (not an inherited merge).
            cls.__signature__ = _forwarded_signature(cls)  # type: ignore[attr-defined]

    def __init__(self, sizes: Sequence[int | Sized], *, mode: Mode, seed: int = 0) -> None:
        self.sizes = _check_sizes(sizes)
        self.num_tasks = len(self.sizes)
        self.mode: Mode = _check_mode(mode)
        self.seed = _check_int("seed", seed, 0)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._step = 0

    @abstractmethod
    def plan(self) -> Plan:
        """Return the plan of step ``self.step``: ``{task: examples}``.

        The extension point of a new scheduler. :meth:`next_step` calls it once per step,
        in order, then advances :attr:`step`; draw any randomness from :attr:`generator`
        so that :meth:`state_dict` captures it.
        """

    @property
    def generator(self) -> torch.Generator:
        """The scheduler's own seeded generator (its state is in :meth:`state_dict`)."""
        return self._generator

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
        plan = self.plan()
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
