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
accumulation over micro-batches works as with ``loss.backward()``. A shared parameter
that a task does not reach counts as a zero gradient for that task.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from mtlkit import distributed
from mtlkit._guard import NonFiniteError, NonFiniteGuard, NonFinitePolicy, all_finite
from mtlkit._linalg import gramian
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
        shared_params: the parameters every task shares (the encoder). All must be on one
            device with one floating dtype. Other parameters (task heads) are untouched
            and get their gradients from autograd as usual.
        strategy: how the rows of J become one update (see :mod:`mtlkit.strategies`).
        num_tasks: K, if known (J is then allocated on the first backward).
        nonfinite: ``"raise"`` (default): NaN/inf in a loss, a task gradient or the
            combined update raises :class:`~mtlkit.NonFiniteError` naming the step (and
            the task where one is to blame), when :meth:`write_grad` runs.
            ``"skip"``: :meth:`write_grad` returns ``False`` and leaves the shared
            ``.grad`` untouched; skip ``optimizer.step()`` then. A loss weighting's state
            does not move on a skipped step. (The policy is applied in one place,
            :mod:`mtlkit._guard`.)
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
    """

    def __init__(
        self,
        shared_params: Iterable[Tensor],
        strategy: Strategy,
        *,
        num_tasks: int | None = None,
        nonfinite: NonFinitePolicy = "raise",
        scaler: Any | None = None,
        process_group: Any | bool | None = None,
    ) -> None:
        params = _check_shared(shared_params)
        #: FSDP2-sharded parameters (DTensors): J holds this rank's columns only.
        self.sharded = distributed.is_sharded(params[0])
        if self.sharded and not isinstance(strategy, (GramianStrategy, LossWeighting)):
            raise ValueError(
                f"{type(strategy).__name__} needs every coordinate of the per-task gradients "
                "(it is not a function of the Gramian), which sharded parameters split across "
                "ranks: use a Gramian strategy or a loss weighting with FSDP"
            )
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a mtlkit Strategy, got {type(strategy).__name__}")
        self.params = params
        self.strategy = strategy
        self.guard = NonFiniteGuard(nonfinite, scaler)
        self.process_group = process_group
        self.num_tasks = num_tasks
        self._locals = [_local(p) for p in params]
        self.numel = sum(t.numel() for t in self._locals)
        self.device = self._locals[0].device
        self.dtype = self._locals[0].dtype
        # How the step becomes global over data-parallel ranks (one of the two, or none):
        # ``_reduce`` averages J (DDP: every rank holds whole gradients); ``_split`` sums
        # the per-rank Gramians of a J whose columns are split over the ranks (FSDP2:
        # each rank holds its shard), with the scale that makes it the global Gramian.
        self._reduce: distributed.Reduction | None = None
        self._split: tuple[Any, float] | None = None
        if self.sharded:
            group = _mesh_group(params[0]) if process_group in (None, True) else process_group
            self._split = (group, 1.0)  # FSDP's reduce-scatter already averaged the rows
        else:
            self._reduce = distributed.mean_over_ranks(process_group)
        self.step_count = 0
        self._jac: Tensor | None = None
        self._row_views: list[list[Tensor]] = []
        #: This step's losses by task (detached, or whole for a loss weighting).
        self._losses: dict[int, Tensor] = {}

    @property
    def nonfinite(self) -> NonFinitePolicy:
        """The non-finite policy, ``"raise"`` or ``"skip"``."""
        return self.guard.policy

    @property
    def scaler(self) -> Any | None:
        """The ``GradScaler`` given at construction (or ``None``)."""
        return self.guard.scaler

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

    # ------------------------------------------------------------------ backward
    def _row_backward(self, task: int, loss: Tensor, retain_graph: bool) -> None:
        """Run ``loss.backward()`` with the shared grads accumulating into row ``task``."""
        assert self._jac is not None
        self._jac[task].zero_()
        with self._grads_into(self._row_views[task]):
            torch.autograd.backward(loss, retain_graph=retain_graph)

    @contextmanager
    def _grads_into(self, views: list[Tensor]) -> Iterator[None]:
        """Send the shared parameters' gradients of one backward into ``views``.

        Autograd adds into an existing ``.grad`` in place (first-order backward), so the
        gradients land in ``views`` with no copy. Sharded parameters get their gradient
        from FSDP's reduce-scatter instead: their ``.grad`` is cleared before and its local
        shard copied into ``views`` after. The user's ``.grad`` are put back after.
        """
        saved = [p.grad for p in self.params]
        try:
            for p, view in zip(self.params, views, strict=True):
                p.grad = None if self.sharded else view
            yield
            for p, view in zip(self.params, views, strict=True):
                grad = p.grad
                if grad is None:
                    if self.sharded:  # no task reached this parameter
                        view.zero_()
                elif self.sharded:
                    view.copy_(_local(grad))
                elif grad is not view:  # replaced (create_graph)
                    view.copy_(grad)
        finally:
            for p, old in zip(self.params, saved, strict=True):
                p.grad = old

    def backward(self, task: int, loss: Tensor, *, retain_graph: bool = False) -> None:
        """Backpropagate task ``task``'s loss from its own graph (one batch per task).

        The shared parameters' gradient lands in row ``task`` of J; other parameters
        accumulate into ``.grad`` as usual. The task's graph is freed afterwards unless
        ``retain_graph`` (needed when the tasks share one forward: prefer
        :meth:`backward_all` then).
        """
        k = self._num_tasks_for(task)
        if task in self._losses:
            raise RuntimeError(f"task {task} was already backpropagated in this step")
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss of task {task} must be a scalar tensor, got {loss!r}")
        loss = loss.reshape(())
        if not self.strategy.needs_jacobian:
            self._losses[task] = loss  # backpropagated once, weighted, in write_grad()
            return
        self._ensure_buffer(k)
        self._row_backward(task, loss, retain_graph=retain_graph)
        self._losses[task] = loss.detach()

    def backward_all(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        mode: Literal["loop", "batched"] = "loop",
    ) -> None:
        """Backpropagate K losses that share one graph (one forward for all tasks)."""
        items = _as_loss_list(losses)
        k = len(items)
        if self.num_tasks is None:
            self.num_tasks = k
        elif self.num_tasks != k:
            raise ValueError(f"expected {self.num_tasks} losses, got {k}")
        if self._losses:
            raise RuntimeError("backward_all after per-task backward in the same step")
        if not self.strategy.needs_jacobian:
            self._losses = dict(enumerate(items))
            return
        jac = self._ensure_buffer(k)
        if mode == "batched" and k > 1 and not self.sharded:  # sharded: the loop
            try:
                self._batched_backward(items, jac)
            except RuntimeError as err:
                warnings.warn(
                    f"batched backward is not supported by this graph ({err}); "
                    "falling back to one backward per task",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                self._losses = {i: loss.detach() for i, loss in enumerate(items)}
                return
        elif mode not in ("loop", "batched"):
            raise ValueError(f"mode must be 'loop' or 'batched', got {mode!r}")
        for i, loss in enumerate(items):
            self._row_backward(i, loss, retain_graph=i < k - 1)
        self._losses = {i: loss.detach() for i, loss in enumerate(items)}

    def _batched_backward(self, items: list[Tensor], jac: Tensor) -> None:
        k = len(items)
        stacked = torch.stack(items)
        eye = torch.eye(k, dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked,
            self.params,
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        offset = 0
        for p, g in zip(self.params, grads, strict=True):
            n = p.numel()
            if g is None:
                jac[:, offset : offset + n].zero_()
            else:
                jac[:, offset : offset + n].copy_(g.reshape(k, n))
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

        Returns ``True`` when the update was applied, ``False`` when the step was skipped
        (``nonfinite="skip"``, or a float16 overflow with a scaler).
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
        losses = torch.stack([self._losses[t] for t in range(k)])
        try:
            if isinstance(self.strategy, LossWeighting):
                return self._write_weighted_loss(self.strategy, losses)
            return self._write_combined(losses)
        finally:
            self._losses = {}
            self.step_count += 1

    def _reject(self, what: str) -> bool:
        """A non-finite step: the guard skips it, lets the scaler see inf, or raises."""
        return self.guard.reject(
            f"step {self.step_count}: {what}",
            lambda: self._add_into_grad(
                torch.full((self.numel,), float("inf"), dtype=self.dtype, device=self.device)
            ),
        )

    def _write_combined(self, losses: Tensor) -> bool:
        """Per-task gradients: J (reduced over ranks, unscaled) -> strategy -> ``.grad``."""
        jac = self._jac
        assert jac is not None
        losses = losses.to(torch.float64)
        if self._reduce is not None:
            self._reduce(jac, losses)
        scale = self.guard.scale(self.device)
        if scale is not None:  # J and the losses were scaled: the strategy sees true ones
            jac.mul_(scale.reciprocal().to(jac.dtype))
            losses = losses / scale.to(torch.float64)
        try:
            if self._split is None:
                update = self.strategy.combine(jac, losses)
            else:  # this rank's columns of J; the weights from the global Gramian
                update = self._combine_split(jac, losses)
        except NonFiniteError as err:
            return self._reject(str(err))
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
            return self._reject(
                f"the combined update of {type(self.strategy).__name__} is not finite "
                "(finite task gradients overflowed in the combination)"
            )
        if scale is not None:
            update.mul_(scale.to(update.dtype))
        self._add_into_grad(update)
        return True

    def _combine_split(self, jac: Tensor, losses: Tensor) -> Tensor:
        """A Gramian strategy on this rank's columns of J, with the global Gramian."""
        assert self._split is not None and isinstance(self.strategy, GramianStrategy)
        group, gram_scale = self._split
        gram, losses = distributed.sum_gramian_over_ranks(
            gramian(jac), losses, group, gram_scale=gram_scale
        )
        return self.strategy.combine_gramian(jac, gram, losses)

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
        if not all_finite(values):
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            return self._reject(f"non-finite loss in tasks {bad}")
        weighted = strategy.weighted_loss(losses)
        if scale is not None:
            weighted = weighted * scale.to(weighted.dtype)
        # The shared gradient goes to a buffer first (then, distributed, is averaged over
        # the ranks), so a NaN/inf gradient is caught before it reaches ``.grad``.
        update = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        with self._grads_into(self._views_of(update)):
            torch.autograd.backward(weighted)
        if self._reduce is not None:
            self._reduce(update)
        if strategy.check_finite and not all_finite(update):
            return self._reject(
                f"non-finite shared gradient (loss weighting {type(strategy).__name__}; "
                f"losses {values.tolist()})"
            )
        self._add_into_grad(update)
        strategy.last_stats = GradientStats.from_weights(strategy.loss_weights(values))
        strategy.accept(values)
        return True

    def _add_into_grad(self, update: Tensor) -> None:
        existing, additions = [], []
        for p, view in zip(self.params, self._views_of(update), strict=True):
            if p.grad is None:  # ``update`` is fresh each step: safe to alias
                p.grad = _sharded_like(p, view) if self.sharded else view
            else:
                existing.append(_local(p.grad))
                additions.append(view)
        if existing:
            torch._foreach_add_(existing, additions)


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
    """
    engine = TaskGradients(shared_params, strategy, nonfinite=nonfinite)
    engine.backward_all(losses, mode=mode)
    return engine.write_grad()


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
        engine.backward_all(losses)
        ok = engine.write_grad()
        if ok and self.value.grad is not None:
            torch.autograd.backward(self.features, self.value.grad)
        return ok


def _local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a sharded tensor, else ``t``."""
    if distributed.is_sharded(t):
        with torch.no_grad():
            return t.to_local()  # type: ignore[attr-defined, no-any-return]
    return t


def _sharded_like(param: Tensor, local: Tensor) -> Tensor:
    """A gradient for sharded ``param`` whose local shard is ``local`` (no copy)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        shape=param.shape,
        stride=param.stride(),
        run_check=False,
    )


def _mesh_group(param: Tensor) -> Any:
    """The process group of a sharded parameter's (one-dimensional) device mesh."""
    mesh = param.device_mesh  # type: ignore[attr-defined]
    if mesh.ndim != 1:
        raise ValueError(
            f"sharded parameters on a {mesh.ndim}-D device mesh (HSDP) are not supported; "
            "shard over one mesh dimension (fully_shard with a 1-D mesh)"
        )
    return mesh.get_group()


def _check_shared(shared_params: Iterable[Tensor]) -> list[Tensor]:
    """The shared parameters as a list of distinct leaf tensors that require grad."""
    if isinstance(shared_params, Tensor):
        raise TypeError(
            "shared_params must be an iterable of parameters (e.g. model.encoder.parameters() "
            "or [model.weight]), not one tensor"
        )
    params = list(shared_params)
    if not params:
        raise ValueError("shared_params is empty: pass the parameters all tasks share")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"shared_params[{i}] is not a tensor: {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(
                f"shared_params[{i}] (shape {tuple(p.shape)}) has requires_grad=False "
                "(frozen): leave it out of the shared parameters"
            )
        if not p.is_leaf:
            raise ValueError(
                f"shared_params[{i}] (shape {tuple(p.shape)}) is not a leaf tensor (a view or "
                "the result of an operation): pass the parameters themselves"
            )
        if id(p) in seen:
            raise ValueError(f"shared_params[{i}] appears twice")
        seen.add(id(p))
    devices = {p.device for p in params}
    dtypes = {p.dtype for p in params}
    if len({distributed.is_sharded(p) for p in params}) > 1:
        raise ValueError(
            "shared parameters must be all sharded (FSDP2) or all whole: shard the whole "
            "shared module with fully_shard, or none of it"
        )
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(
            f"shared parameters must share one device and dtype, got {devices} / {dtypes}"
        )
    return params
