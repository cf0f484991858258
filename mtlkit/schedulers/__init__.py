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

By name
    :func:`get_scheduler` builds a registered scheduler (``"round-robin"``,
    ``"proportional"``, ``"temperature"``, ``"annealed"``, ``"dynamic"``) and fills its
    arguments from a :class:`mtlkit.Context`; :func:`register` adds your own,
    :func:`list_schedulers` lists them.

Example (all tasks per step, allocation driven by dev scores)::

    sched = DynamicBatchAllocation([len(a), len(b)], total_batch_size=64, min_per_task=8)
    loader = MultiTaskLoader([a, b], sched, seed=0)
    for epoch in range(3):
        for batches in loader:              # {task: collated batch}
            losses = [loss_fn[t](model, batch) for t, batch in batches.items()]
            ...
        sched.update(dev_scores())          # lagging tasks get more of each step

Modules: :mod:`~mtlkit.schedulers.base` (the base class and plan types),
:mod:`~mtlkit.schedulers.round_robin`, :mod:`~mtlkit.schedulers.sampling`,
:mod:`~mtlkit.schedulers.dynamic`, :mod:`~mtlkit.schedulers.streams`,
:mod:`~mtlkit.schedulers.loader` and :mod:`~mtlkit.schedulers.registry`.
"""

from mtlkit.schedulers.base import EpochSpec, Mode, Plan, TaskScheduler
from mtlkit.schedulers.dynamic import DynamicBatchAllocation, largest_remainder
from mtlkit.schedulers.loader import MultiTaskLoader, SizedDataset
from mtlkit.schedulers.registry import SCHEDULERS, get_scheduler, list_schedulers, register
from mtlkit.schedulers.round_robin import RoundRobin
from mtlkit.schedulers.sampling import Annealed, Proportional, SamplingScheduler, Temperature
from mtlkit.schedulers.streams import ShuffledIndexStream

__all__ = [
    "Annealed",
    "DynamicBatchAllocation",
    "EpochSpec",
    "Mode",
    "MultiTaskLoader",
    "Plan",
    "Proportional",
    "RoundRobin",
    "SCHEDULERS",
    "SamplingScheduler",
    "ShuffledIndexStream",
    "SizedDataset",
    "TaskScheduler",
    "Temperature",
    "get_scheduler",
    "largest_remainder",
    "list_schedulers",
    "register",
]
