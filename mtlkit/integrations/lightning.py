"""Lightning integration: :class:`MultitaskModule`, a ``LightningModule`` mix-in.

Automatic optimization (Lightning steps, clips, accumulates and schedules)::

    class Model(MultitaskModule, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = ..., ...
            self.configure_multitask(self.encoder, mtlkit.PCGrad(seed=0), tasks=3)

        def training_step(self, batch, batch_idx):
            losses = [F.mse_loss(h(self.encoder(x)), y) for h, (x, y) in zip(self.heads, batch)]
            return self.multitask_loss(losses)  # instead of sum(losses)

The overridden :meth:`~MultitaskModule.backward` hook sends the K losses through
:class:`~mtlkit.TaskGradients` (row k of J for task k) and, at the last micro-batch of an
optimizer step (``accumulate_grad_batches``), writes the strategy's update into ``.grad``;
Lightning then unscales (``precision="16-mixed"``), clips and steps as usual.

Manual optimization: the same call inside ``manual_backward``::

    opt = self.optimizers()
    opt.zero_grad()
    self.manual_backward(self.multitask_loss(losses))
    opt.step()

The strategy's state is saved in every checkpoint (``checkpoint["mtlkit"]``, by
:meth:`~MultitaskModule.on_save_checkpoint`) and restored by ``fit(ckpt_path=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit._guard import NonFinitePolicy
from mtlkit.gradients import TaskGradients
from mtlkit.integrations._common import (
    CHECKPOINT_KEY,
    StepState,
    build_strategy,
    drop_grads,
    refuse_defer,
    resolve_shared,
    task_names_of,
)
from mtlkit.strategies import Strategy

__all__ = ["CHECKPOINT_KEY", "MultitaskModule"]


class MultitaskModule:
    """``LightningModule`` mix-in: K task losses -> :class:`~mtlkit.TaskGradients`.

    Put it before ``LightningModule`` in the bases, call :meth:`configure_multitask` in
    ``__init__`` and return :meth:`multitask_loss` of the K losses from ``training_step``
    (automatic optimization) or pass it to ``manual_backward`` (manual optimization).

    * **Accumulation** (``Trainer(accumulate_grad_batches=N)``): every micro-batch's task
      losses (divided by N, as Lightning divides the loss) add into J; the strategy
      combines the whole batch once, at the last micro-batch. In manual optimization
      every :meth:`multitask_loss` writes the update, unless ``write=False``.
    * **fp16** (``precision="16-mixed"``): the precision plugin's ``GradScaler`` is handed
      to the engine. bf16 needs nothing.
    * **Checkpoints**: ``checkpoint["mtlkit"]`` holds the strategy's state. If you
      override ``on_save_checkpoint`` / ``on_load_checkpoint``, call ``super()``.
    * **A strategy with parameters** (uncertainty weighting): add
      ``self.strategy.parameters()`` to the optimizer in ``configure_optimizers``.
    * **Several processes** are refused for now: Lightning's DDP strategy averages each
      task's gradient in its backward hooks (use one device per run).
    """

    trainer: Any
    automatic_optimization: bool

    def configure_multitask(
        self,
        shared: nn.Module | Sequence[Tensor] | str,
        strategy: Strategy | str,
        *,
        tasks: int | Sequence[str],
        nonfinite: NonFinitePolicy = "raise",
        strategy_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        """Choose the shared parameters (a module, its attribute name, or parameters), the
        strategy (an instance, or a registered name built with ``tasks`` and ``seed``) and
        the tasks (a number or names)."""
        names = task_names_of(tasks)
        assert isinstance(self, nn.Module), "MultitaskModule is a LightningModule mix-in"
        #: The strategy combining the tasks' gradients (its state goes into checkpoints).
        self.strategy = build_strategy(strategy, len(names), seed=seed, options=strategy_options)
        self._mtl = StepState(self.strategy, names)
        module = resolve_shared(self, shared) if isinstance(shared, str) else shared
        # kept in a tuple: an nn.Module attribute would register the encoder a second time
        # (under another name in the state dict)
        self._mtl_shared = (module,)
        refuse_defer(nonfinite)
        self._mtl_nonfinite: NonFinitePolicy = nonfinite
        self._mtl_pending: tuple[list[Tensor], bool | None] | None = None

    def _state(self) -> StepState:
        state = getattr(self, "_mtl", None)
        if not isinstance(state, StepState):
            raise RuntimeError("call self.configure_multitask(...) in __init__ first")
        return state

    @property
    def task_names(self) -> list[str]:
        return self._state().names

    @property
    def engine(self) -> TaskGradients | None:
        """The :class:`~mtlkit.TaskGradients` of the run (``None`` before the first step)."""
        return self._state().engine

    def multitask_loss(
        self, losses: Sequence[Tensor] | Mapping[str, Tensor], *, write: bool | None = None
    ) -> Tensor:
        """Keep the K task losses for the next ``backward`` and return their sum (what
        Lightning sees as the step's loss). ``losses``: in task order, or a dict by task
        name. ``write``: whether that backward writes the update (default: at the last
        micro-batch of an optimizer step; always in manual optimization)."""
        state = self._state()
        if isinstance(losses, Mapping):
            unknown = set(losses) - set(state.names)
            if unknown or len(losses) != state.num_tasks:
                raise ValueError(f"losses for {sorted(losses)}; the tasks are {state.names}")
            items = [losses[name] for name in state.names]
        else:
            items = list(losses)
        if len(items) != state.num_tasks:
            raise ValueError(f"expected {state.num_tasks} task losses, got {len(items)}")
        items = [loss.reshape(()) if loss.dim() > 0 else loss for loss in items]
        self._mtl_pending = (items, write)
        return torch.stack(items).sum()

    def _build_engine(self) -> TaskGradients:
        trainer = self.trainer
        if int(getattr(trainer, "world_size", 1) or 1) > 1:
            raise RuntimeError(
                "MultitaskModule runs on one process: Lightning's DDP strategy averages each "
                "task's gradient in its backward hooks, before mtlkit can combine them. Train "
                "on one device, or write the loop with mtlkit.TaskGradients(..., "
                "process_group=True) (docs/guide.md, 'Scaling out')"
            )
        precision = getattr(trainer, "precision_plugin", None)
        return self._state().build(
            self._mtl_shared[0],  # type: ignore[arg-type]
            nonfinite=self._mtl_nonfinite,
            scaler=getattr(precision, "scaler", None),
        )

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward hook: the kept task losses go through the engine (a loss
        not made by :meth:`multitask_loss` is backpropagated as usual)."""
        pending = getattr(self, "_mtl_pending", None)
        if pending is None:
            super().backward(loss, *args, **kwargs)  # type: ignore[misc]
            return
        self._mtl_pending = None
        losses, write = pending
        state = self._state()
        engine = state.engine or self._build_engine()
        trainer = self.trainer
        divide = int(trainer.accumulate_grad_batches) if self.automatic_optimization else 1
        scaler = engine.scaler

        def factor(t: Tensor) -> Tensor:
            t = t / divide if divide != 1 else t
            return scaler.scale(t) if scaler is not None else t  # type: ignore[no-any-return]

        state.backward_all(losses, factor=factor, weight=1.0 / divide)
        if write is None:
            write = not (self.automatic_optimization and trainer.fit_loop._should_accumulate())
        if write:
            if not state.finish(losses[0].device) and scaler is None:
                assert isinstance(self, nn.Module)
                drop_grads(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        checkpoint[CHECKPOINT_KEY] = self._state().state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self._state().load_state_dict(state)

    def multitask_log_values(self) -> dict[str, float]:
        """Each task's mean loss per optimizer step since the last call (for ``self.log_dict``)."""
        return self._state().log_values()
