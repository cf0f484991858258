"""Hugging Face ``Trainer`` integration: :class:`MultitaskTrainer`.

One training step of the ``Trainer`` computes each task's loss on its examples,
backpropagates them through :class:`~mtlkit.TaskGradients` (row k of J for task k), and
writes the strategy's update into the shared parameters' ``.grad`` at the last micro-batch
of the optimizer step; the ``Trainer`` then clips, steps the optimizer and the learning-rate
schedule, and logs as usual::

    trainer = MultitaskTrainer(
        model=model, args=args, train_dataset=train,   # a "task" column per example
        strategy=mtlkit.PCGrad(seed=0), tasks=["sst", "quora", "sts"],
    )
    trainer.train()

How tasks come in (one micro-batch of the ``Trainer``):

* a batch dict with a task column (``task_key``, default ``"task"``: the task's index per
  example); the batch is split into one sub-batch per task present;
* or a batch already grouped: ``{task: sub_batch}`` (task index or name) or a list of
  ``(task, sub_batch)`` pairs (from your own ``get_train_dataloader``).

Each sub-batch's loss is ``task_loss_fn(model, sub_batch, task)``; by default
``model(**sub_batch)`` (the task column included, so the model can pick the head) and its
``loss``. What is saved, gradient accumulation, mixed precision and multi-process training
are described in :class:`MultitaskTrainerMixin` and ``docs/integrations.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import transformers
from torch import Tensor, nn

from mtlkit._guard import NonFinitePolicy
from mtlkit.distributed import all_reduce_gradients, broadcast_parameters
from mtlkit.gradients import TaskGradients
from mtlkit.integrations._common import (
    STATE_NAME,
    SharedSpec,
    StepState,
    build_strategy,
    drop_grads,
    logger,
    other_trainable,
    refuse_defer,
    resolve_shared,
    scalar_loss,
    split_by_task,
    task_counts,
    task_groups,
    task_names_of,
)
from mtlkit.strategies import Strategy

__all__ = ["STATE_NAME", "MultitaskTrainer", "MultitaskTrainerMixin"]

TaskLossFn = Callable[[nn.Module, Any, int], Tensor]


def _unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``: its forward runs without DDP's
    gradient reducer, which must not average each task's gradient (the engine reduces J)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner: nn.Module = model.module
        return inner
    return model


class MultitaskTrainerMixin:
    """Turns a ``transformers.Trainer`` (or a subclass) into a multitask trainer.

    Use it before the ``Trainer`` class: ``class MyTrainer(MultitaskTrainerMixin, Trainer)``;
    :class:`MultitaskTrainer` is exactly that.

    Keyword args (the others go to the ``Trainer``):
        strategy: a :class:`~mtlkit.Strategy`, or a registered name (built with
            ``num_tasks`` and ``args.seed``, plus ``strategy_options``).
        tasks: the number of tasks or their names (names label the logged per-task losses
            ``loss_<name>``; a string task column is matched against them).
        shared_parameters: the parameters every task shares: a module, an attribute path of
            the model (``"bert"``), an iterable of parameters, or ``None`` for the model's
            ``base_model`` (the encoder of a Hugging Face model). The others (heads) train
            on their own task's gradients.
        task_loss_fn: ``(model, sub_batch, task) -> loss`` for one task's examples; by
            default the ``loss`` of ``model(**sub_batch)``.
        task_key: the task column of a batch (kept by ``remove_unused_columns``).
        nonfinite: the engine's policy for NaN/inf (``"raise"`` or ``"skip"``).

    Semantics:

    * **One optimizer step** combines the per-task gradients of all its micro-batches
      (``gradient_accumulation_steps``) once: each micro-batch's task loss is weighted by
      its share of the task's examples in the step, so row k of J is the gradient of task
      k's mean loss over the step's examples, as one big batch would give it. A task with
      no example in a step gets a zero row (logged as ``mtl_partial_steps``).
    * **Checkpoints**: the strategy's state is saved beside the optimizer's
      (``mtlkit_state.pt`` in each ``checkpoint-N`` folder) and restored by
      ``train(resume_from_checkpoint=...)``, so a resumed run continues exactly.
    * **fp16**: the accelerator's ``GradScaler`` is handed to the engine (the scaled
      losses go in, the scaled update comes out, the ``Trainer`` unscales, clips and steps).
      bf16 needs nothing.
    * **Several processes** (``torchrun``): the ``Trainer`` still wraps the model in DDP,
      but the step runs the module inside it, so DDP's reducer never averages a task's
      gradient; the engine averages J over the ranks (``process_group=True``) and the
      other trainable parameters' gradients are averaged once per step. DeepSpeed and FSDP
      are refused.
    * **Skipped steps** (``nonfinite="skip"``): every gradient is dropped, so the optimizer
      leaves the parameters alone (the learning-rate schedule still moves); counted as
      ``mtl_skipped_steps``.
    """

    # Attributes of transformers.Trainer that this mix-in uses (for the type checker).
    args: Any
    model: Any
    optimizer: Any
    accelerator: Any
    train_dataset: Any
    current_gradient_accumulation_steps: int

    def __init__(
        self,
        *args: Any,
        strategy: Strategy | str,
        tasks: int | Sequence[str] | None = None,
        shared_parameters: SharedSpec = None,
        task_loss_fn: TaskLossFn | None = None,
        task_key: str | None = "task",
        strategy_options: Mapping[str, Any] | None = None,
        nonfinite: NonFinitePolicy = "raise",
        **kwargs: Any,
    ) -> None:
        self.task_key = task_key
        self.task_loss_fn = task_loss_fn
        self._mtl_shared_spec = shared_parameters
        refuse_defer(nonfinite)
        self._mtl_nonfinite: NonFinitePolicy = nonfinite
        self._mtl_step_counts: dict[int, int] | None = None
        super().__init__(*args, **kwargs)
        names = task_names_of(tasks if tasks is not None else self._infer_tasks())
        #: The strategy combining the tasks' gradients (its state goes into checkpoints).
        self.strategy = build_strategy(
            strategy, len(names), seed=getattr(self.args, "seed", None), options=strategy_options
        )
        #: One optimizer step's bookkeeping (the engine is built at the first step).
        self.mtl = StepState(self.strategy, names)

    # ------------------------------------------------------------------ set-up
    @property
    def task_names(self) -> list[str]:
        return self.mtl.names

    @property
    def engine(self) -> TaskGradients | None:
        """The :class:`~mtlkit.TaskGradients` of the run (``None`` before the first step)."""
        return self.mtl.engine

    def _infer_tasks(self) -> int | Sequence[str]:
        data = self.train_dataset
        key = self.task_key
        if key is not None and data is not None and hasattr(data, "column_names"):
            if key in (data.column_names or []):
                return int(max(data[key])) + 1
        raise ValueError(
            "pass tasks= (the number of tasks or their names): it could not be read off "
            "the training set's task column"
        )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        columns = getattr(self, "_signature_columns", None)
        if self.task_key is not None and columns is not None and self.task_key not in columns:
            columns.append(self.task_key)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """The ``Trainer``'s optimizer, plus the strategy's own parameters (uncertainty
        weighting's log-variances), if it has any."""
        optimizer = super().create_optimizer(*args, **kwargs)  # type: ignore[misc]
        params_fn = getattr(self.strategy, "parameters", None)
        if optimizer is not None and callable(params_fn):
            known = {id(p) for g in optimizer.param_groups for p in g["params"]}
            extra = [p for p in params_fn() if id(p) not in known]
            if extra:
                optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _build_engine(self, model: nn.Module) -> TaskGradients:
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise RuntimeError(
                "MultitaskTrainer does not support DeepSpeed or FSDP: the per-task gradients "
                "of the shared parameters are combined before any sharded optimizer sees "
                "them. Use plain multi-process training (torchrun without an FSDP/DeepSpeed "
                "config), or mtlkit's FSDP2 support in your own loop (docs/guide.md)"
            )
        inner = _unwrap_ddp(model)
        shared = resolve_shared(inner, self._mtl_shared_spec)
        world = int(getattr(self.args, "world_size", 1) or 1)
        if world > 1 and inner is model:  # not wrapped: DDP would have synchronised them
            broadcast_parameters(inner)
        return self.mtl.build(
            shared,
            nonfinite=self._mtl_nonfinite,
            scaler=getattr(self.accelerator, "scaler", None),
            process_group=True if world > 1 else None,
        )

    # ------------------------------------------------------------------ batches
    def task_batches(self, inputs: Any) -> list[tuple[int, Any, int]]:
        """One micro-batch as ``(task, sub_batch, number of examples)``."""
        if self.task_key is not None and isinstance(inputs, Mapping) and self.task_key in inputs:
            return list(split_by_task(inputs, self.task_key, self.task_names))
        groups = task_groups(inputs, self.task_names)
        if groups is None:
            raise ValueError(
                f"a multitask batch needs a {self.task_key!r} column (the task of each "
                "example), or must be grouped by task ({task: sub_batch}, or a list of "
                f"(task, sub_batch)); got {type(inputs).__name__} with keys "
                f"{list(inputs)[:8] if isinstance(inputs, Mapping) else '-'}"
            )
        return groups

    def compute_task_loss(self, model: nn.Module, task: int, inputs: Any) -> Tensor:
        """The mean loss of task ``task`` on its sub-batch ``inputs``."""
        if self.task_loss_fn is not None:
            return scalar_loss(self.task_loss_fn(model, inputs, task))
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"task {task}'s sub-batch is a {type(inputs).__name__}, not a dict of model "
                "inputs: pass task_loss_fn=(model, sub_batch, task) -> loss"
            )
        return scalar_loss(model(**inputs))

    def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
        """The ``Trainer``'s micro-batches of one optimizer step; counts each task's
        examples in them (the weights of the micro-batches' task losses)."""
        result = super().get_batch_samples(*args, **kwargs)  # type: ignore[misc]
        counts: dict[int, int] = {}
        for batch in result[0]:
            for k, n in task_counts(batch, self.task_key, self.task_names).items():
                counts[k] = counts.get(k, 0) + n
        self._mtl_step_counts = counts
        return result

    def _weight(self, task: int, examples: int) -> float:
        counts = self._mtl_step_counts
        if counts and counts.get(task):
            return examples / counts[task]
        steps = getattr(self, "current_gradient_accumulation_steps", None)
        return 1.0 / float(steps or self.args.gradient_accumulation_steps)

    # ------------------------------------------------------------------ the step
    def training_step(
        self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None
    ) -> Tensor:
        """Forward and backward of every task of one micro-batch through the engine; at
        the step's last micro-batch, the strategy's update goes into ``.grad``."""
        engine = self.mtl.engine or self._build_engine(model)
        model.train()
        train_fn = getattr(self.optimizer, "train", None)
        if callable(train_fn):
            train_fn()
        inputs = self._prepare_inputs(inputs)  # type: ignore[attr-defined]
        inner = _unwrap_ddp(model)
        scaler = engine.scaler
        scale = scaler.scale if scaler is not None else None
        total = torch.zeros((), device=self.args.device)
        for task, sub, examples in self.task_batches(inputs):
            with self.compute_loss_context_manager():  # type: ignore[attr-defined]
                loss = self.compute_task_loss(inner, task, sub)
            weighted = loss * self._weight(task, examples)
            total = total + self.mtl.backward(task, weighted, scale=scale).to(total.device)
        if self.accelerator.sync_gradients:
            self._write_step(model)
        return total

    def _write_step(self, model: nn.Module) -> None:
        engine = self.mtl.engine
        assert engine is not None
        ok = self.mtl.finish(self.args.device)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if int(getattr(self.args, "world_size", 1) or 1) > 1:
            all_reduce_gradients(other_trainable(params, engine))
        if not ok and engine.scaler is None:
            drop_grads(params)
            drop_grads(model.parameters())
        self._mtl_step_counts = None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Any,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Evaluation: the sum of the task losses of a multitask batch (outputs ``{}``);
        any other batch goes to the ``Trainer``'s own ``compute_loss``."""
        multitask = (
            self.task_key is not None and isinstance(inputs, Mapping) and self.task_key in inputs
        ) or task_groups(inputs, self.task_names) is not None
        if not multitask:
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inner = _unwrap_ddp(model)
        losses = [self.compute_task_loss(inner, k, sub) for k, sub, _ in self.task_batches(inputs)]
        loss = torch.stack(losses).sum()
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The ``Trainer``'s log, plus each task's mean loss per step (``loss_<task>``)."""
        if "loss" in logs:
            logs = {**logs, **self.mtl.log_values()}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    # ------------------------------------------------------------------ checkpoints
    def multitask_state_dict(self) -> dict[str, Any]:
        """The strategy's state (with the tasks it was built for)."""
        return self.mtl.state_dict()

    def load_multitask_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mtl.load_state_dict(state)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(self.multitask_state_dict(), os.path.join(output_dir, STATE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            logger.warning(
                "%s has no %s: the strategy starts from its initial state", checkpoint, STATE_NAME
            )
            return
        self.load_multitask_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class MultitaskTrainer(MultitaskTrainerMixin, transformers.Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` with multitask steps: see :class:`MultitaskTrainerMixin`."""
