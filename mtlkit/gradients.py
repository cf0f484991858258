"""The per-task gradient engine: task losses -> J (K x P) -> one update in ``.grad``.

Two loop styles are supported:

* **one batch per task** (separate graphs, the usual multitask loop)::

      mtl = TaskGradients(shared_params, strategy)
      for task, batch in enumerate(batches):
          mtl.backward(task, loss_fn(model, task, batch))   # frees that task's graph
      mtl.write_grad()                                      # update -> .grad
      optimizer.step()

  Each task's backward writes its shared-parameter gradient *straight into its row* of a
  preallocated J (the shared parameters' ``.grad`` are pointed at views of that row while
  autograd accumulates), and its task-specific parameters' gradients into ``.grad`` as
  usual. A step costs what the summed loop costs, plus two passes over J.

* **one graph** (all tasks computed from one forward pass): :func:`backward` or
  :meth:`TaskGradients.backward_all` run K backward passes through the shared graph
  (``mode="loop"``) or one batched backward (``mode="batched"``, ``is_grads_batched``),
  which falls back to the loop by itself when the graph does not support it.

The combined update is *added* into the shared parameters' ``.grad``, so gradient
accumulation over micro-batches works as with ``loss.backward()`` (the strategy then acts
on each micro-batch); with ``TaskGradients(..., accumulate=True)`` the micro-batches of a
task add into its row of J instead, and the strategy acts once on the whole batch.

``.grad`` follows autograd's conventions: a shared parameter that a task does not reach
counts as a zero gradient for that task (a zero column of J), and a shared parameter that
no task reached in a step, or that is frozen (``requires_grad=False``) when the update is
written, keeps its ``.grad`` untouched (``None`` stays ``None``), as after
``sum(losses).backward()``. Which parameters a step reached is recorded by one
post-accumulate-grad hook per parameter.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlkit import _params, distributed
from mtlkit._guard import (
    NonFiniteError,
    NonFiniteGuard,
    NonFinitePolicy,
    all_finite,
    check_finite,
    finite_tensor,
)
from mtlkit._linalg import autocast_off, gramian
from mtlkit.diagnostics import GradientStats
from mtlkit.strategies.base import GramianStrategy, LossWeighting, Strategy

__all__ = ["SharedFeatures", "TaskGradients", "backward"]


def _as_loss_list(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a 1-D tensor of K task losses or a sequence of scalars, "
                f"got shape {tuple(losses.shape)}"
            )
        return list(losses.unbind())
    out = list(losses)
    for i, loss in enumerate(out):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss of task {i} must be a scalar tensor, got {loss!r}")
    return [loss.reshape(()) for loss in out]


class TaskGradients:
    """Collects per-task gradients of shared parameters and applies a strategy.

    Args:
        shared_params: the parameters every task shares (the encoder): an iterable of
            trainable leaf tensors (``model.encoder.parameters()``), fixed at
            construction, or an ``nn.Module`` (``model.encoder``; not FSDP2-sharded),
            whose trainable parameters are read again at every step, so the engine
            follows parameters that were replaced (``load_state_dict(..., assign=True)``,
            a re-created layer) or frozen. All must be on one device; floating dtypes may
            differ (bfloat16 weights with float32 norms): J then takes the widest of
            them, each row is filled from each parameter's gradient, and the update is
            written back in each parameter's dtype. Parameters converted or moved in
            place (``model.double()``, ``model.to(device)``, also with
            ``torch.__future__.set_swap_module_params_on_conversion(True)``) are followed
            at the next step in either form. Other parameters (task heads) are untouched
            and get their gradients from autograd as usual.
        strategy: how the rows of J become one update (see :mod:`mtlkit.strategies`).
        num_tasks: K, if known (J is then allocated on the first backward).
        nonfinite: ``"raise"`` (default): NaN/inf in a loss, a task gradient or the
            combined update raises :class:`~mtlkit.NonFiniteError` naming the step (and
            the task where one is to blame), when :meth:`write_grad` runs.
            ``"skip"``: :meth:`write_grad` returns ``False`` and leaves the shared
            ``.grad`` untouched; skip ``optimizer.step()`` then. A loss weighting's state
            does not move on a skipped step. Both read one value to the host per step
            (whether the step is finite). ``"defer"``: nothing is checked inside the step
            (no host sync: for CUDA graphs and ``torch.compile``); the update is written
            as computed (NaN on a non-finite step: a device-rule strategy and a loss
            weighting keep their state tensors as they were), the non-finite steps are
            counted on the device (:attr:`nonfinite_steps`), and
            :meth:`check_nonfinite` raises if there was one: call it when you sync
            anyway (e.g. when you log). With an enabled ``scaler``, ``"defer"`` acts
            as ``"skip"`` (the scaler's step syncs to check for infs). (The policy is
            applied in one place, :mod:`mtlkit._guard`.)
        scaler: a ``torch.amp.GradScaler`` when training in float16: pass the scaled
            losses (``backward(task, scaler.scale(loss))``); J and the losses are unscaled
            before the strategy sees them, and the combined update is scaled back into
            ``.grad`` so ``scaler.step(optimizer)`` works as usual (on overflow the update
            is written as inf, so the scaler skips the step and lowers its scale).
        process_group: for data-parallel training, J and the losses are averaged over
            this group (or the default group when ``True``) by the hook
            :func:`mtlkit.distributed.mean_over_ranks` before the strategy sees them, so
            every rank combines the *global* per-task gradients (loss weightings: weights
            from the global losses, shared gradient averaged).
        accumulate: ``False`` (default): one :meth:`backward` per task between two
            :meth:`write_grad` calls; for gradient accumulation call :meth:`write_grad`
            per micro-batch (the strategy acts on each micro-batch and the updates add up
            in ``.grad``). ``True``: several :meth:`backward` (or :meth:`backward_all`)
            calls of a task *add* into its row of J, and its losses add up, until one
            :meth:`write_grad` combines the whole batch: pass each micro-batch's loss
            scaled as for ``loss.backward()`` accumulation (``loss / num_micro_batches``
            for a mean loss), and J and the losses are those of the full batch. A loss
            weighting then keeps every micro-batch's graph until :meth:`write_grad`
            backpropagates its weighted loss (no memory saving).

    After :meth:`write_grad`, a shared parameter that no task's backward reached in the
    step, or that is frozen then, keeps its ``.grad`` as autograd would leave it
    (``None`` stays ``None``): an optimizer with weight decay or momentum leaves it alone.
    In a step whose losses have a graph but reach none of the shared parameters,
    :meth:`write_grad` raises ``RuntimeError``: the parameters were most likely replaced
    after the engine was built (zero placeholder losses of empty batches,
    ``torch.zeros((), requires_grad=True)``, are exempt).
    """

    def __init__(
        self,
        shared_params: Iterable[Tensor] | nn.Module,
        strategy: Strategy,
        *,
        num_tasks: int | None = None,
        nonfinite: NonFinitePolicy = "raise",
        scaler: Any | None = None,
        process_group: Any | bool | None = None,
        accumulate: bool = False,
    ) -> None:
        #: The module whose parameters are re-read every step (``None``: a fixed list).
        self.module = shared_params if isinstance(shared_params, nn.Module) else None
        if isinstance(shared_params, nn.Module):
            _params.refuse_fsdp_module(shared_params)
            params = self._module_params()
        else:
            params = _params.check_shared(shared_params)
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a mtlkit Strategy, got {type(strategy).__name__}")
        self.strategy = strategy
        self.guard = NonFiniteGuard(nonfinite, scaler)
        self.process_group = process_group
        self.num_tasks = num_tasks
        self.accumulate = bool(accumulate)
        self.step_count = 0
        self._reach = _params.Reach()
        self._hooks: list[Any] = []
        weakref.finalize(self, _params.remove_hooks, self._hooks)
        #: FSDP2-sharded parameters (DTensors): J holds this rank's columns only.
        self.sharded = False
        # How the step becomes global over data-parallel ranks (one of the two, or none):
        # ``_reduce`` averages J (DDP: every rank holds whole gradients); ``_split`` sums
        # the per-rank Gramians of a J whose columns are split over the ranks (FSDP2:
        # each rank holds its shard), with the scale that makes it the global Gramian.
        self._reduce: distributed.Reduction | None = None
        self._split: tuple[Any, float] | None = None
        self._jac: Tensor | None = None
        self._row_views: list[list[Tensor]] = []
        #: This step's losses by task (detached, or whole for a loss weighting).
        self._losses: dict[int, Tensor] = {}
        #: Whether a loss of this step has a graph (not an empty batch's zero leaf).
        self._has_graph = False
        #: Whether J still holds the last step's rows (cleared before the first is added).
        self._stale_rows = True
        #: Non-finite steps since the last :meth:`check_nonfinite` (``"defer"``).
        self._nonfinite_steps: Tensor | None = None
        self._set_params(params, first=True)

    @property
    def nonfinite(self) -> NonFinitePolicy:
        """The non-finite policy, ``"raise"``, ``"skip"`` or ``"defer"``."""
        return self.guard.policy

    @property
    def nonfinite_steps(self) -> Tensor:
        """``nonfinite="defer"``: how many steps since the last :meth:`check_nonfinite`
        were not finite, a 0-d int64 tensor on the engine's device (reading its value
        syncs the host)."""
        if self._nonfinite_steps is None:
            return torch.zeros((), dtype=torch.int64, device=self.device)
        return self._nonfinite_steps

    def check_nonfinite(self) -> None:
        """``nonfinite="defer"``: raise :class:`~mtlkit.NonFiniteError` if a step since
        the last call was not finite (its NaN/inf update was written), and start counting
        again. One host sync; call it where the loop syncs anyway (logging, the end of an
        epoch). A no-op for the other policies, which check every step."""
        count = self._nonfinite_steps
        if count is None:
            return
        n = int(count.item())
        self._nonfinite_steps = None
        if n:
            raise NonFiniteError(
                f"{n} step(s) before step {self.step_count} had NaN/inf in a loss, a task "
                "gradient or the combined update (nonfinite='defer' wrote them): the model "
                "has taken a non-finite update; lower the learning rate, check the inputs, "
                "or use nonfinite='raise' to find the first such step and task"
            )

    def _defers(self) -> bool:
        """Whether this step is checked on the device only (``"defer"``, no enabled
        scaler)."""
        scaler = self.guard.scaler
        return self.guard.policy == "defer" and not (scaler is not None and scaler.is_enabled())

    def _count_nonfinite(self, finite: Tensor) -> None:
        """Add a step to :attr:`nonfinite_steps` where the 0-d flag ``finite`` is false,
        on the device."""
        bad = (~finite).to(device=self.device, dtype=torch.int64)
        if self._nonfinite_steps is None:
            self._nonfinite_steps = bad
        else:
            self._nonfinite_steps.add_(bad)

    @property
    def scaler(self) -> Any | None:
        """The ``GradScaler`` given at construction (or ``None``)."""
        return self.guard.scaler

    # ------------------------------------------------------------------ parameters
    def _module_params(self) -> list[Tensor]:
        assert self.module is not None
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"the shared module ({type(self.module).__name__}) has no trainable "
                "parameters: pass the module (or the parameters) all tasks share"
            )
        return _params.check_shared(params)

    def _set_params(self, params: list[Tensor], *, first: bool = False) -> None:
        """(Re)build everything that depends on the shared parameters' objects and layout:
        J is reallocated at the next backward, and the reach hooks are re-armed."""
        sharded = distributed.is_sharded(params[0])
        if sharded and not isinstance(self.strategy, (GramianStrategy, LossWeighting)):
            raise ValueError(
                f"{type(self.strategy).__name__} needs every coordinate of the per-task "
                "gradients (it is not a function of the Gramian), which sharded parameters "
                "split across ranks: use a Gramian strategy or a loss weighting with FSDP"
            )
        self.params = params
        self._locals = [_params.local(p) for p in params]
        self.numel = sum(t.numel() for t in self._locals)
        self.device = self._locals[0].device
        #: J's dtype: the widest of the shared parameters' dtypes.
        self.dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        #: Parameters whose gradient autograd accumulates straight into J's row (same
        #: dtype, not sharded); the others are copied (cast) into it after each backward.
        self._aliased = [not sharded and p.dtype == self.dtype for p in params]
        self._layout = _params.layout_of(params)
        self._jac = None
        self._row_views = []
        if first or sharded != self.sharded:
            self.sharded = sharded
            self._reduce, self._split = None, None
            if sharded:
                pg = self.process_group
                group = _params.mesh_group(params[0]) if pg in (None, True) else pg
                self._split = (group, 1.0)  # FSDP's reduce-scatter already averaged the rows
            else:
                self._reduce = distributed.mean_over_ranks(self.process_group)
        _params.remove_hooks(self._hooks)
        self._hooks.extend(None for _ in params)
        self._reach.flags = [False] * len(params)
        self._arm_hooks()

    def _arm_hooks(self) -> None:
        """A reach hook on every trainable (unsharded) parameter that has none yet."""
        if self.sharded:  # FSDP sets the sharded .grad itself: reach is read off .grad
            return
        for i, p in enumerate(self.params):
            if self._hooks[i] is None and p.requires_grad:
                existing = p._post_accumulate_grad_hooks
                hook = _params.reach_hook(self._reach, i)
                self._hooks[i] = p.register_post_accumulate_grad_hook(hook)  # type: ignore[no-untyped-call]
                if existing is not None:
                    # torch.utils.swap_tensors (swapping module conversions) leaves the hooks'
                    # dict on the object but their registration on the swapped-out tensor:
                    # assigning the dict registers it (and the user's hooks) again
                    p._post_accumulate_grad_hooks = existing

    def _follow_params(self) -> None:
        """At a step's first backward: follow replaced (module form), converted or moved
        shared parameters; later in the step (``write_grad``, or a backward whose
        ``.grad`` no longer fits), refuse any change."""
        params = self._module_params() if self.module is not None else self.params
        same_objects = len(params) == len(self.params) and all(
            a is b for a, b in zip(params, self.params, strict=True)
        )
        if same_objects and _params.layout_of(params) == self._layout:
            self._arm_hooks()  # a parameter unfrozen since
            return
        if self.module is not None:
            _params.refuse_fsdp_module(self.module)
        if self._losses:
            self._losses = {}  # the step is lost: the next backward starts a new one
            raise RuntimeError(
                "the shared parameters were replaced, converted or moved in the middle of a "
                "step (between backward() calls or before write_grad()): change them between "
                "steps only"
            )
        self._set_params(params)

    def _begin(self) -> None:
        """Called at every backward: a new step starts when no loss is pending (one
        look at the shared parameters per step; ``write_grad`` looks again)."""
        if not self._losses:
            self._follow_params()
            self._reach.flags = [False] * len(self.params)
            self._has_graph = False
            self._stale_rows = True

    # ------------------------------------------------------------------ buffers
    @property
    def jacobian(self) -> Tensor | None:
        """The (K, P) buffer holding this step's per-task gradients (None before use)."""
        return self._jac

    @property
    def stats(self) -> GradientStats | None:
        """Gradient-conflict figures of the last combination (norms, cosines, weights)."""
        return self.strategy.last_stats

    def _ensure_buffer(self, k: int) -> Tensor:
        if self._jac is None or self._jac.shape[0] != k:
            if self._jac is not None and self._losses:
                raise RuntimeError("the number of tasks changed in the middle of a step")
            self._jac = torch.zeros((k, self.numel), dtype=self.dtype, device=self.device)
            self._row_views = [self._views_of(row) for row in self._jac]
            self._stale_rows = False
        elif self._stale_rows:
            self._jac.zero_()
            self._stale_rows = False
        return self._jac

    def _views_of(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat (P,) buffer shaped like each shared parameter."""
        chunks = torch.split(flat, [t.numel() for t in self._locals])
        return [c.view_as(t) for c, t in zip(chunks, self._locals, strict=True)]

    def _num_tasks_for(self, task: int) -> int:
        if self.num_tasks is None:
            raise ValueError("pass num_tasks= to TaskGradients to use per-task backward")
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task index {task} is outside 0..{self.num_tasks - 1}")
        return self.num_tasks

    def _keep_loss(self, task: int, loss: Tensor) -> None:
        """Record a task's loss (summed over the micro-batches of an accumulating step)."""
        self._has_graph = self._has_graph or loss.grad_fn is not None
        if self.strategy.needs_jacobian:
            # a copy of one number: the output of a CUDA-graphed forward is overwritten
            # by the next replay (another task's), before write_grad reads it
            loss = loss.detach().clone()
        previous = self._losses.get(task)
        self._losses[task] = loss if previous is None else previous + loss

    # ------------------------------------------------------------------ backward
    def _row_backward(self, task: int, loss: Tensor, retain_graph: bool) -> None:
        """Run ``loss.backward()`` with the shared grads accumulating into row ``task``."""
        with self._grads_into(self._row_views[task]), _params.compiled_backward_errors():
            torch.autograd.backward(loss, retain_graph=retain_graph)

    @contextmanager
    def _grads_into(self, views: list[Tensor]) -> Iterator[None]:
        """Add the shared parameters' gradients of one backward into ``views``.

        Autograd adds into an existing ``.grad`` in place (first-order backward), so the
        gradients of parameters of J's dtype land in ``views`` with no copy. A parameter of
        another dtype gets its gradient in ``.grad`` from a cleared one, added (cast) into
        its view after; so do sharded parameters, from FSDP's reduce-scatter (their local
        shard). The user's ``.grad`` are put back after. Which parameters the backward
        reached is recorded (hooks; for sharded ones, whether FSDP wrote a gradient).
        """
        saved = [p.grad for p in self.params]
        reach = self._reach
        try:
            try:
                for p, view, alias in zip(self.params, views, self._aliased, strict=True):
                    p.grad = view if alias else None
            except RuntimeError:  # e.g. a dtype changed in the middle of the step
                self._follow_params()  # raises, saying so, when the parameters changed
                raise
            reach.active = True
            yield
            for i, (p, view, alias) in enumerate(
                zip(self.params, views, self._aliased, strict=True)
            ):
                grad = p.grad
                if grad is None:
                    continue
                if not alias:
                    view.add_(_params.local(grad))
                    if self.sharded:
                        reach.flags[i] = True
                elif grad is not view:  # replaced (create_graph): the sum, view included
                    view.copy_(grad)
        finally:
            reach.active = False
            for p, old in zip(self.params, saved, strict=True):
                p.grad = old

    def backward(self, task: int, loss: Tensor, *, retain_graph: bool = False) -> None:
        """Backpropagate task ``task``'s loss from its own graph (one batch per task).

        The shared parameters' gradient lands in row ``task`` of J (added to it, for a
        further micro-batch of the task with ``accumulate=True``); other parameters
        accumulate into ``.grad`` as usual. The task's graph is freed afterwards unless
        ``retain_graph`` (needed when the tasks share one forward: prefer
        :meth:`backward_all` then).
        """
        k = self._num_tasks_for(task)
        if task in self._losses and not self.accumulate:
            raise RuntimeError(
                f"task {task} was already backpropagated in this step: call write_grad() "
                "after each micro-batch, or build the engine with accumulate=True to add "
                "several micro-batches of a task into its row before one write_grad()"
            )
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss of task {task} must be a scalar tensor, got {loss!r}")
        loss = loss.reshape(())
        self._begin()
        if self.strategy.needs_jacobian:  # (a loss weighting backpropagates in write_grad)
            self._ensure_buffer(k)
            self._row_backward(task, loss, retain_graph=retain_graph)
        self._keep_loss(task, loss)

    def backward_all(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        mode: Literal["loop", "batched"] = "loop",
    ) -> None:
        """Backpropagate K losses that share one graph (one forward for all tasks).

        With ``accumulate=True`` every call adds into J (one call per micro-batch)."""
        items = _as_loss_list(losses)
        k = len(items)
        if mode not in ("loop", "batched"):
            raise ValueError(f"mode must be 'loop' or 'batched', got {mode!r}")
        if self.num_tasks is None:
            self.num_tasks = k
        elif self.num_tasks != k:
            raise ValueError(f"expected {self.num_tasks} losses, got {k}")
        if self._losses and not self.accumulate:
            raise RuntimeError("backward_all after per-task backward in the same step")
        self._begin()
        if self.strategy.needs_jacobian:
            self._backward_rows(items, mode)
        for i, loss in enumerate(items):
            self._keep_loss(i, loss)

    def _backward_rows(self, items: list[Tensor], mode: str) -> None:
        k = len(items)
        if mode == "batched" and k > 1 and not self.sharded:  # sharded: the loop
            stacked = torch.stack(items)
            try:
                grads = self._batched_grads(stacked)
            except RuntimeError as err:
                if _params.DONATED in str(err):
                    raise RuntimeError(_params.DONATED_HELP) from err
                warnings.warn(
                    f"batched backward is not supported by this graph ({err}); "
                    "falling back to one backward per task",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                self._write_batched(stacked, grads)
                return
        self._ensure_buffer(k)
        for i, loss in enumerate(items):
            self._row_backward(i, loss, retain_graph=i < k - 1)

    def _batched_grads(self, stacked: Tensor) -> list[Tensor | None]:
        """All K rows in one batched backward (``is_grads_batched``), graph retained."""
        k = stacked.shape[0]
        eye = torch.eye(k, dtype=stacked.dtype, device=stacked.device)
        live = [i for i, p in enumerate(self.params) if p.requires_grad]
        grads = torch.autograd.grad(
            stacked,
            [self.params[i] for i in live],
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        by_param: list[Tensor | None] = [None] * len(self.params)
        for i, g in zip(live, grads, strict=True):
            by_param[i] = g
        return by_param

    def _write_batched(self, stacked: Tensor, grads: list[Tensor | None]) -> None:
        k = stacked.shape[0]
        add = not self._stale_rows and self._jac is not None and self._jac.shape[0] == k
        if self._jac is None or self._jac.shape[0] != k:
            self._ensure_buffer(k)
        jac = self._jac
        assert jac is not None
        self._stale_rows = False
        offset = 0
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            n = p.numel()
            cols = jac[:, offset : offset + n]
            if g is not None:
                self._reach.flags[i] = True
                if add:
                    cols.add_(g.reshape(k, n))
                else:
                    cols.copy_(g.reshape(k, n))
            elif not add:
                cols.zero_()
            offset += n
        # Task-specific parameters: one backward of the sum, with the shared parameters'
        # gradients sent to a scratch row so they do not count twice.
        scratch = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        with self._grads_into(self._views_of(scratch)):
            torch.autograd.backward(stacked.sum())

    # ------------------------------------------------------------------ write-back
    def combine(self) -> bool:
        """Deprecated name of :meth:`write_grad` (kept for one release)."""
        warnings.warn(
            "TaskGradients.combine() is renamed write_grad(); combine() goes in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.write_grad()

    def write_grad(self) -> bool:
        """Combine this step's task gradients with the strategy and add them to ``.grad``.

        Only the shared parameters that a task's backward reached in this step and that
        require grad now receive the update; the others keep their ``.grad`` (as
        autograd leaves it). The combination runs with autocast off, so the Gramian and
        the weights keep their precision inside an autocast region.

        Returns ``True`` when the update was applied, ``False`` when the step was skipped
        (``nonfinite="skip"``, or a float16 overflow with a scaler).

        Raises:
            RuntimeError: a task has no backward in this step; the shared parameters
                were replaced, converted or moved since the step's backward; or the
                step's losses have a graph that reached none of the shared parameters
                (most likely they were replaced after the engine was built).
        """
        k = self.num_tasks
        if k is None or not self._losses:
            raise RuntimeError("write_grad() called before any task backward in this step")
        missing = [t for t in range(k) if t not in self._losses]
        if missing:
            raise RuntimeError(
                f"tasks {missing} have no backward in this step; call backward(task, loss) "
                "for every task (use a zero loss for a task with an empty batch)"
            )
        self._follow_params()  # refuses parameters changed since the step's backward
        losses = torch.stack([self._losses[t] for t in range(k)])
        try:
            with autocast_off(self.device.type, "cpu"):
                if isinstance(self.strategy, LossWeighting):
                    return self._write_weighted_loss(self.strategy, losses)
                return self._write_combined(losses)
        finally:
            self._losses = {}
            self.step_count += 1

    def _reached_over_ranks(self, packed: Tensor | None) -> list[bool]:
        """This step's reached flags, or (data parallel) the ranks' union of them, read
        from the tail of ``packed`` (reduced with the flags in it)."""
        if packed is None:
            return list(self._reach.flags)
        return [bool(v > 0) for v in packed[-len(self.params) :].tolist()]

    def _flags_tensor(self) -> Tensor:
        return torch.tensor(self._reach.flags, dtype=torch.float64, device=self.device)

    def _check_reached(self, reached: list[bool], losses: Tensor) -> None:
        """Raise when a step with real losses reached none of the shared parameters."""
        if any(reached) or not self._has_graph or not bool(losses.detach().ne(0).any()):
            return
        raise RuntimeError(
            f"step {self.step_count}: the tasks' losses reached none of the engine's "
            f"{len(self.params)} shared parameters. They were most likely replaced after "
            "TaskGradients was built (load_state_dict(..., assign=True), a re-created "
            "encoder, fully_shard, to_empty): build the engine on the new "
            "model.parameters(), or pass the module itself (TaskGradients(model.encoder, "
            "...)) so it follows its parameters. Otherwise the shared parameters given are "
            "not used by these losses."
        )

    def _write_mask(self, reached: list[bool]) -> list[bool]:
        """Which shared parameters receive the update: reached and trainable now."""
        return [r and p.requires_grad for r, p in zip(reached, self.params, strict=True)]

    def _reject(self, what: str, mask: list[bool]) -> bool:
        """A non-finite step: the guard skips it, lets the scaler see inf, or raises."""
        if not any(mask):  # the scaler must see the inf somewhere
            mask = [p.requires_grad for p in self.params]
        return self.guard.reject(
            f"step {self.step_count}: {what}",
            lambda: self._add_into_grad(
                torch.full((self.numel,), float("inf"), dtype=self.dtype, device=self.device),
                mask,
            ),
        )

    def _write_combined(self, losses: Tensor) -> bool:
        """Per-task gradients: J (reduced over ranks, unscaled) -> strategy -> ``.grad``."""
        jac = self._jac
        assert jac is not None
        losses = losses.to(torch.float64)
        packed = None
        if self._reduce is not None:  # the reached flags travel with the losses
            packed = torch.cat([losses.to(self.device), self._flags_tensor()])
            self._reduce(jac, packed)
            losses = packed[: -len(self.params)]
        reached = self._reached_over_ranks(packed)
        self._check_reached(reached, losses)
        mask = self._write_mask(reached)
        scale = self.guard.scale(self.device)
        if scale is not None:  # J and the losses were scaled: the strategy sees true ones
            jac.mul_(scale.reciprocal().to(jac.dtype))
            losses = losses / scale.to(torch.float64)
        last_stats = self.strategy.last_stats
        gram: Tensor | None = None
        try:
            if self._split is None:
                update = self.strategy.combine(jac, losses)
            else:  # this rank's columns of J; the weights from the global Gramian
                update, gram, losses = self._combine_split(jac, losses)
        except NonFiniteError as err:
            if not self._defers():
                return self._reject(str(err), mask)
            # a host-rule strategy found it (it reads its Gramian anyway): count, write NaN
            self._count_nonfinite(torch.zeros((), dtype=torch.bool, device=self.device))
            nan = torch.full((self.numel,), float("nan"), dtype=self.dtype, device=self.device)
            self._add_into_grad(nan, mask)
            return True
        if self._defers():
            stats = self.strategy.last_stats
            checked = stats.weights if self._split is not None and stats is not None else update
            self._count_nonfinite(finite_tensor(checked))
            self._add_into_grad(update, mask)
            return True
        if self._split is not None:
            # Ranks must agree without more communication: J and the losses were finite on
            # every rank (the summed Gramian says so), so check the weights, which are
            # identical on every rank. (An overflow of the weighted sum itself is left to
            # the optimizer's or the scaler's own checks in this mode.)
            stats = self.strategy.last_stats
            finite = stats is None or all_finite(stats.weights)
        else:
            finite = all_finite(update)
        if self.strategy.check_finite and not finite:
            if not getattr(self.strategy, "host_rule", True):
                # A device-rule strategy flags non-finite inputs without a sync (its update
                # is NaN): name the tasks here, on this rare path, and undo its step.
                try:
                    check_finite(gramian(jac) if gram is None else gram, losses)
                except NonFiniteError as err:
                    self.strategy.last_stats = last_stats
                    self.strategy.discard_step()
                    return self._reject(str(err), mask)
            return self._reject(
                f"the combined update of {type(self.strategy).__name__} is not finite "
                "(finite task gradients overflowed in the combination)",
                mask,
            )
        if scale is not None:
            update.mul_(scale.to(update.dtype))
        self._add_into_grad(update, mask)
        return True

    def _combine_split(self, jac: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A Gramian strategy on this rank's columns of J, with the global Gramian (the
        update, that Gramian and the global losses)."""
        assert self._split is not None and isinstance(self.strategy, GramianStrategy)
        group, gram_scale = self._split
        gram, losses = distributed.sum_gramian_over_ranks(
            gramian(jac), losses, group, gram_scale=gram_scale
        )
        return self.strategy.combine_gramian(jac, gram, losses), gram, losses

    def _write_weighted_loss(self, strategy: LossWeighting, losses: Tensor) -> bool:
        """Loss weighting: one backward of the weighted loss -> ``.grad``; the strategy's
        state moves (:meth:`LossWeighting.accept`) only once the update is written."""
        scale = self.guard.scale(self.device)
        if scale is not None:  # the losses were scaled: weigh the true ones
            losses = losses / scale.to(losses.dtype)
        total: Tensor | None = None
        if self._split is not None:  # bit-identical on every rank (state must not drift)
            group = self._split[0]
            total = distributed.sum_in_rank_order(losses.detach(), group)
            total /= dist.get_world_size(group) if distributed.is_active(group) else 1
        elif self._reduce is not None:
            total = losses.detach().clone()
            self._reduce(total)
        if total is not None:  # weigh the global losses: same weights on every rank
            # global values exactly (x - x is exactly 0), gradients through the local losses
            losses = total + (losses - losses.detach())
        values = losses.detach()
        defer = self._defers()
        if not defer and not all_finite(values):
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            return self._reject(f"non-finite loss in tasks {bad}", [])
        weighted = strategy.weighted_loss(losses)
        if scale is not None:
            weighted = weighted * scale.to(weighted.dtype)
        # The shared gradient goes to a buffer first (then, distributed, is averaged over
        # the ranks, the reached flags at its tail), so a NaN/inf gradient is caught before
        # it reaches ``.grad``.
        tail = len(self.params) if self._reduce is not None else 0
        buffer = torch.zeros(self.numel + tail, dtype=self.dtype, device=self.device)
        update = buffer[: self.numel]
        with self._grads_into(self._views_of(update)):
            torch.autograd.backward(weighted)
        packed = None
        if self._reduce is not None:
            buffer[self.numel :] = self._flags_tensor()
            self._reduce(buffer)
            packed = buffer
        reached = self._reached_over_ranks(packed)
        self._check_reached(reached, values)
        mask = self._write_mask(reached)
        if defer:
            finite = finite_tensor(values).to(self.device) & finite_tensor(update)
            self._count_nonfinite(finite)
            self._add_into_grad(update, mask)
            strategy.last_stats = GradientStats.from_weights(strategy.loss_weights(values))
            strategy.accept_where(values, finite)
            return True
        if strategy.check_finite and not all_finite(update):
            return self._reject(
                f"non-finite shared gradient (loss weighting {type(strategy).__name__}; "
                f"losses {values.tolist()})",
                mask,
            )
        self._add_into_grad(update, mask)
        strategy.last_stats = GradientStats.from_weights(strategy.loss_weights(values))
        strategy.accept(values)
        return True

    def _add_into_grad(self, update: Tensor, mask: list[bool]) -> None:
        """Add ``update`` into the ``.grad`` of the parameters ``mask`` selects (cast to
        each one's dtype)."""
        existing, additions = [], []
        for p, view, write in zip(self.params, self._views_of(update), mask, strict=True):
            if not write:
                continue
            if view.dtype != p.dtype:
                view = view.to(p.dtype)
            if p.grad is None:  # ``update`` is fresh each step: safe to alias
                p.grad = _params.sharded_like(p, view) if self.sharded else view
            else:
                existing.append(_params.local(p.grad))
                additions.append(view)
        if existing:
            torch._foreach_add_(existing, additions)

    def _remove_hooks(self) -> None:
        """Remove the engine's reach hooks (an engine used once, then dropped)."""
        _params.remove_hooks(self._hooks)


def _refuse_defer(nonfinite: str, where: str) -> None:
    """``"defer"`` counts non-finite steps in an engine; a call that builds its own
    engine each step would drop the count unseen."""
    if nonfinite == "defer":
        raise ValueError(
            f"{where} builds a new engine each call, so nonfinite='defer' would lose its "
            "count of non-finite steps: use 'raise' or 'skip', or keep a TaskGradients "
            "across steps and call its check_nonfinite()"
        )


def backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    strategy: Strategy,
    *,
    mode: Literal["loop", "batched"] = "loop",
    nonfinite: NonFinitePolicy = "raise",
) -> bool:
    """Backpropagate K task losses of one graph and write the combined shared update.

    The shared parameters' ``.grad`` receive ``strategy``'s combination of the per-task
    gradients (added to what is there); every other parameter receives the plain sum of
    the task gradients, as ``sum(losses).backward()`` would give it. Then call
    ``optimizer.step()``. For repeated use, :class:`TaskGradients` keeps its buffers.

    Returns ``True``, or ``False`` when ``nonfinite="skip"`` skipped the step.
    (``"defer"`` needs an engine that lives across steps: :class:`TaskGradients`.)
    """
    _refuse_defer(nonfinite, "mtlkit.backward")
    engine = TaskGradients(shared_params, strategy, nonfinite=nonfinite)
    try:
        engine.backward_all(losses, mode=mode)
        return engine.write_grad()
    finally:
        engine._remove_hooks()


class SharedFeatures:
    """Representation-level combination (Sener & Koltun 2018's MGDA-UB idea) for one graph.

    When every task reads one shared representation ``z = encoder(x)``, the per-task
    gradients can be taken with respect to ``z`` instead of the encoder's parameters:
    K cheap backward passes through the task heads only, the strategy on the (K, numel(z))
    matrix, then **one** backward through the encoder with the combined ``dz``. A step
    then costs about what a summed step costs, however large the encoder.

    What it changes: the strategy measures norms and conflicts between the tasks'
    gradients of the *features* (batch x width) rather than of the parameters, so its
    weights differ from the parameter-level ones (PCGrad projects in feature space; for
    Gramian strategies the encoder still receives ``Σ w_k ∇θ L_k`` with the weights
    chosen in feature space). Methods that need per-parameter gradients (GradDrop's
    sign statistics) act on feature coordinates instead.

    Usage::

        z = model.encoder(x)
        feats = SharedFeatures(z)
        losses = [head(feats.value) for head in model.heads]   # heads read feats.value
        feats.backward(losses, strategy)                       # all .grad filled
        optimizer.step()
    """

    def __init__(self, features: Tensor) -> None:
        if not features.requires_grad:
            raise ValueError("features must be part of the graph (requires_grad)")
        self.features = features
        #: The detached leaf the task heads must read.
        self.value = features.detach().requires_grad_(True)

    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        strategy: Strategy,
        *,
        nonfinite: NonFinitePolicy = "raise",
        process_group: Any | bool | None = None,
    ) -> bool:
        """Combine the per-task feature gradients and backpropagate through the encoder.

        Returns ``False`` (nothing written to the encoder) when ``nonfinite="skip"``
        skipped the step.

        With data parallelism (DDP-style or FSDP2), pass ``process_group`` (``True``: the
        default group): each rank's features are its own columns of the global feature
        Jacobian, so the weights come from the sum of the ranks' feature Gramians (one
        all-reduce of K² + K numbers) and the losses' mean, the same on every rank, as
        one process on the concatenated batch would choose them; the encoder's gradients
        are then averaged over the ranks as usual (FSDP's reduce-scatter, or
        :func:`mtlkit.distributed.all_reduce_gradients`).
        """
        _refuse_defer(nonfinite, "SharedFeatures.backward")
        engine = TaskGradients([self.value], strategy, nonfinite=nonfinite)
        if process_group is not None and process_group is not False:
            if not isinstance(strategy, (GramianStrategy, LossWeighting)):
                raise ValueError(
                    f"{type(strategy).__name__} is not a function of the Gramian: it cannot "
                    "combine features split over ranks"
                )
            group: Any = None if process_group is True else process_group
            world = dist.get_world_size(group) if distributed.is_active(group) else 1
            # one process on the concatenated batch: every rank's rows scaled by 1/world
            engine._split = (group, 1.0 / world**2)
        try:
            engine.backward_all(losses)
            ok = engine.write_grad()
        finally:
            engine._remove_hooks()
        if ok and self.value.grad is not None:
            torch.autograd.backward(self.features, self.value.grad)
        return ok
