"""sentence-transformers integration: :class:`MultitaskSentenceTransformerTrainer` and
:class:`MtlkitLoss`.

sentence-transformers trains several tasks from a ``DatasetDict`` (one dataset, and one
loss, per task) with a multi-dataset batch sampler that yields *one task's batch at a
time* (round-robin or proportional). A gradient strategy needs every task in one step, so
:class:`MultitaskSentenceTransformerTrainer` regroups the sampler's stream into **steps
that hold a batch of every task**:

* the sampler's batches are read in its order (one pass per epoch) and each goes to its
  task; an epoch has M = (the fewest batches any task has in the stream) steps, and step j
  takes the j-th of M consecutive, nearly equal slices of every task's batches;
* round-robin: every step is one batch of every task (the sampler's K consecutive batches,
  as a hand-written loop would draw them);
* proportional: every step holds every task, each with about n_k / M of its n_k batches
  (all examples of every task are used once per epoch, as that sampler promises; a larger
  task gets more examples per step rather than more steps);
* a custom ``multi_dataset_batch_sampler`` is regrouped the same way.

One ``Trainer`` micro-batch is one such step; with ``gradient_accumulation_steps`` = G, an
optimizer step combines G of them once (every batch of a task adds into its row of J,
weighted by its share of the task's examples in the optimizer step). Each task's loss is
``loss[dataset_name](features, labels)``, as in sentence-transformers; the embedding model
is the shared part, a loss's own parameters (``SoftmaxLoss``'s classifier) are the task's.

:class:`MtlkitLoss` makes mtlkit's pairwise losses sentence-transformers losses::

    loss = {
        "nli": MtlkitLoss(model, "mnrl", scale=20.0),     # (anchor, positive[, negative])
        "sts": MtlkitLoss(model, mtlkit.losses.CoSENTLoss()),  # (sentence1, sentence2, score)
    }
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sentence_transformers
import torch
import transformers
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtlkit.integrations._common import SharedSpec
from mtlkit.integrations.transformers import MultitaskTrainerMixin, _unwrap_ddp
from mtlkit.losses import (
    MarginLoss,
    MultipleNegativesRankingLoss,
    TripletLoss,
    get_loss,
)
from mtlkit.strategies import Strategy

__all__ = [
    "MarginScheduleCallback",
    "MtlkitLoss",
    "MultitaskSentenceTransformerTrainer",
    "SentenceTransformersMultitaskMixin",
    "TaskStepBatchSampler",
]

#: mtlkit losses that take no labels (the embeddings of the columns only).
_NO_LABELS: tuple[type[nn.Module], ...] = (MultipleNegativesRankingLoss, TripletLoss)


class MtlkitLoss(nn.Module):
    """A loss of :mod:`mtlkit.losses` as a sentence-transformers loss.

    The embeddings of the dataset's text columns (in column order) and, for losses with
    labels, the label column go to the mtlkit loss:

    * ``MultipleNegativesRankingLoss`` (``"mnrl"``): (anchor, positive[, negative]), no label;
    * ``TripletLoss`` (``"triplet"``): (anchor, positive, negative), no label;
    * ``CoSENTLoss`` (``"cosent"``): (sentence1, sentence2) and a score (only its order
      counts);
    * ``CosineEmbeddingLoss`` (``"cosine-embedding"``): (sentence1, sentence2) and a label
      1 / -1;
    * ``ContrastiveLoss`` (``"contrastive"``): (sentence1, sentence2) and a label 1 / 0.

    Args:
        model: the ``SentenceTransformer`` (its ``sentence_embedding`` output is used).
        loss: a loss module of :mod:`mtlkit.losses`, or its registered name (built with
            ``options``).
        labels: whether the loss takes the label column (default: all but MNRL and triplet).

    A margin schedule of the loss moves once per optimizer step under
    :class:`MultitaskSentenceTransformerTrainer`; with another trainer add
    ``MarginScheduleCallback(loss)`` to its callbacks.
    """

    def __init__(
        self, model: nn.Module, loss: nn.Module | str, *, labels: bool | None = None, **options: Any
    ) -> None:
        super().__init__()
        self.model = model
        if isinstance(loss, str):
            loss = get_loss(loss, **options)
        elif options:
            raise ValueError("options are for a loss given by name")
        if not isinstance(loss, nn.Module):
            raise TypeError(f"loss must be an nn.Module or a registered name, got {loss!r}")
        self.loss = loss
        self.uses_labels = not isinstance(loss, _NO_LABELS) if labels is None else labels

    def forward(
        self, sentence_features: Sequence[Mapping[str, Tensor]], labels: Tensor | None
    ) -> Tensor:
        embeddings = [self.model(dict(f))["sentence_embedding"] for f in sentence_features]
        if not self.uses_labels:
            return self.loss(*embeddings)  # type: ignore[no-any-return]
        if labels is None:
            raise ValueError(
                f"{type(self.loss).__name__} needs a label column (label, score, ...) in the "
                "dataset"
            )
        return self.loss(*embeddings, labels)  # type: ignore[no-any-return]

    def step(self, n: int = 1) -> None:
        """Advance the margin schedule of a margin loss (nothing for the others)."""
        if isinstance(self.loss, MarginLoss):
            self.loss.step(n)

    def get_config_dict(self) -> dict[str, Any]:
        """What sentence-transformers writes into the model card."""
        return {"loss": repr(self.loss)}


class MarginScheduleCallback(transformers.TrainerCallback):  # type: ignore[misc]
    """Steps the margin schedules of :class:`MtlkitLoss` losses once per optimizer step."""

    def __init__(self, *losses: Any) -> None:
        self.losses = losses

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for loss in _mtlkit_losses(self.losses):
            loss.step()


def _mtlkit_losses(losses: Any) -> list[MtlkitLoss]:
    found: list[MtlkitLoss] = []
    items = losses.values() if isinstance(losses, Mapping) else losses
    for item in items:
        if isinstance(item, Mapping) or isinstance(item, (list, tuple)):
            found.extend(_mtlkit_losses(item))
        elif isinstance(item, nn.Module):
            found.extend(m for m in item.modules() if isinstance(m, MtlkitLoss))
    return found


class TaskStepBatchSampler:
    """Regroups a multi-dataset batch sampler's stream into steps with a batch of every
    task (see the module docstring).

    Each step is one flat list of ``(index, task, slot)`` tags, read by
    :class:`_TaggedDataset`; ``slot`` numbers the step's batches (the collate function puts
    each batch back together).
    """

    def __init__(self, sampler: Any, cumulative_sizes: Sequence[int]) -> None:
        self.sampler = sampler
        self.cumulative_sizes = list(cumulative_sizes)
        self.num_tasks = len(self.cumulative_sizes)
        self.batch_size = getattr(sampler, "batch_size", None)
        self.drop_last = getattr(sampler, "drop_last", False)

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def _task_of(self, index: int) -> int:
        return bisect.bisect_right(self.cumulative_sizes, index)

    def _per_task(self) -> list[list[list[int]]]:
        per_task: list[list[list[int]]] = [[] for _ in range(self.num_tasks)]
        for batch in self.sampler:
            batch = list(batch)
            if batch:
                per_task[self._task_of(int(batch[0]))].append(batch)
        return per_task

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        per_task = self._per_task()
        steps = min(len(b) for b in per_task)
        if steps == 0:
            empty = [k for k, b in enumerate(per_task) if not b]
            raise ValueError(f"tasks {empty} have no batch in this epoch: every task needs one")
        for j in range(steps):
            step: list[tuple[int, int, int]] = []
            slot = 0
            for k, batches in enumerate(per_task):
                n = len(batches)
                for batch in batches[j * n // steps : (j + 1) * n // steps]:
                    step.extend((int(i), k, slot) for i in batch)
                    slot += 1
            yield step

    def __len__(self) -> int:
        children = getattr(self.sampler, "batch_samplers", None)
        name = type(self.sampler).__name__
        if children is not None and name in ("RoundRobinBatchSampler", "ProportionalBatchSampler"):
            return min(len(c) for c in children)
        return min(len(b) for b in self._per_task())


class _TaggedDataset(Dataset[tuple[int, int, Any]]):
    """``dataset[(index, task, slot)]`` is ``(task, slot, dataset[index])``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tag: tuple[int, int, int]) -> tuple[int, int, Any]:  # type: ignore[override]
        index, task, slot = tag
        return task, slot, self.dataset[index]


class _StepCollate:
    """Collates each batch of a step with sentence-transformers' collator:
    ``[(task, examples, batch), ...]`` in slot order."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
        slots: dict[int, tuple[int, list[Any]]] = {}
        for task, slot, sample in items:
            slots.setdefault(slot, (task, []))[1].append(sample)
        return [(task, len(rows), self.collate(rows)) for task, rows in slots.values()]


class SentenceTransformersMultitaskMixin(MultitaskTrainerMixin):
    """Makes a sentence-transformers trainer (``SentenceTransformerTrainer``,
    ``CrossEncoderTrainer``, ``SparseEncoderTrainer``) multitask; use it before the
    trainer class. The tasks are the training ``DatasetDict``'s datasets, in order; the
    shared parameters default to the whole model. See the module docstring."""

    loss: Any
    data_collator: Any

    def __init__(
        self,
        *args: Any,
        strategy: Strategy | str,
        shared_parameters: SharedSpec = None,
        **kwargs: Any,
    ) -> None:
        if "tasks" in kwargs or "task_loss_fn" in kwargs:
            raise TypeError("the tasks are the training DatasetDict's datasets and their losses")
        super().__init__(
            *args,
            strategy=strategy,
            shared_parameters=shared_parameters,
            task_key=None,
            **kwargs,
        )
        margins = _mtlkit_losses([self.loss])
        if margins:
            self.add_callback(MarginScheduleCallback(*margins))  # type: ignore[attr-defined]

    def _infer_tasks(self) -> Sequence[str]:
        data = self.train_dataset
        if not isinstance(data, Mapping) or len(data) < 1:
            raise ValueError(
                "a multitask sentence-transformers trainer needs train_dataset= a DatasetDict "
                "(or dict) with one dataset per task"
            )
        return [str(name) for name in data]

    def _build_engine(self, model: nn.Module) -> Any:
        if self._mtl_shared_spec is None:
            self._mtl_shared_spec = _unwrap_ddp(model)
        return super()._build_engine(model)

    def get_train_dataloader(self) -> DataLoader[Any]:
        """sentence-transformers' loader, regrouped into steps with every task's batch."""
        loader = super().get_train_dataloader()  # type: ignore[misc]
        sampler = loader.batch_sampler
        while not hasattr(sampler, "batch_samplers") and hasattr(sampler, "batch_sampler"):
            sampler = sampler.batch_sampler  # accelerate's shard wrapper
        dataset = loader.dataset
        sizes = getattr(dataset, "cumulative_sizes", None)
        if sizes is None:
            raise ValueError("the training set must be a DatasetDict of the tasks' datasets")
        if len(sizes) != self.mtl.num_tasks:
            raise ValueError(f"{len(sizes)} datasets for {self.mtl.num_tasks} tasks")
        regrouped = DataLoader(
            _TaggedDataset(dataset),
            batch_sampler=TaskStepBatchSampler(sampler, sizes),  # type: ignore[arg-type]
            collate_fn=_StepCollate(self.data_collator),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        self._train_dataloader = self.accelerator.prepare(regrouped)
        return self._train_dataloader  # type: ignore[no-any-return]

    def compute_task_loss(self, model: nn.Module, task: int, inputs: Any) -> Tensor:
        """The loss of task ``task``'s batch: its dataset's loss on the batch's features."""
        inputs = dict(inputs)
        inputs.pop("dataset_name", None)
        features, labels = self.collect_features(inputs)  # type: ignore[attr-defined]
        loss_fn = self.loss
        if isinstance(loss_fn, Mapping):
            loss_fn = loss_fn[self.task_names[task]]
        inner = getattr(loss_fn, "model", None)
        if isinstance(inner, nn.parallel.DistributedDataParallel):  # set by evaluation
            loss_fn = self.override_model_in_loss(loss_fn, inner.module)  # type: ignore[attr-defined]
        loss = loss_fn(features, labels)
        if isinstance(loss, Mapping):
            self.track_loss_components(loss)  # type: ignore[attr-defined]
            loss = torch.stack(list(loss.values())).sum()
        return loss  # type: ignore[no-any-return]


class MultitaskSentenceTransformerTrainer(
    SentenceTransformersMultitaskMixin,
    sentence_transformers.SentenceTransformerTrainer,  # type: ignore[misc]
):
    """``SentenceTransformerTrainer`` with multitask steps: see the module docstring.

    ``MultitaskSentenceTransformerTrainer(model=model, args=args, train_dataset=datasets,
    loss={name: loss, ...}, strategy=mtlkit.PCGrad(seed=0))``, any multi-dataset batch
    sampler, any ``gradient_accumulation_steps``.
    """
