"""From plans to batches: :class:`MultiTaskLoader` over per-task datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch.utils.data import default_collate

from mtlkit.schedulers.base import TaskScheduler, _check_int, _check_sizes
from mtlkit.schedulers.streams import ShuffledIndexStream

__all__ = ["CollateFn", "MultiTaskLoader", "SizedDataset"]

T_co = TypeVar("T_co", covariant=True)


class SizedDataset(Protocol[T_co]):
    """A map-style dataset with a length (any :class:`torch.utils.data.Dataset` that
    defines ``__len__``, or a plain list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> T_co: ...


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
