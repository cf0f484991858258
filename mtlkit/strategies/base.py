"""The strategy abstractions every method implements.

A *strategy* turns the per-task gradients of the shared parameters, stacked as the rows
of a matrix ``J`` of shape (K, P), into one update vector of length P.

* :class:`Strategy` is the general interface: ``combine(J, losses) -> Tensor[P]``.
* :class:`GramianStrategy` covers every method whose update is a weighted sum of the
  rows, ``wᵀJ``, with weights that depend only on the Gramian ``G = J Jᵀ`` (and maybe the
  losses). The Gramian is formed once in float64 (:func:`mtlkit._linalg.gramian`), the
  method works in K x K space, and one more pass over P applies the weights.
* :class:`LossWeighting` covers methods that weight the *losses* and need no per-task
  gradients at all (uncertainty weighting, DWA, FAMO, RLW): the engine backpropagates
  their weighted loss once, at the cost of a plain summed step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from mtlkit._guard import NonFiniteError, check_finite, finite_flag
from mtlkit._linalg import gramian, weighted_sum
from mtlkit._registry import Context, Registry
from mtlkit.diagnostics import GradientStats

__all__ = [
    "STRATEGIES",
    "GradientStats",
    "GramianStrategy",
    "LossWeighting",
    "NonFiniteError",
    "Strategy",
    "check_finite",
    "get_strategy",
    "list_strategies",
    "register",
    "strategy_class",
]


def _check_inputs(matrix: Tensor, losses: Tensor | None) -> None:
    if not isinstance(matrix, Tensor) or matrix.dim() != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"J must be a (K, P) tensor of per-task gradients, got {shape}")
    if matrix.shape[0] == 0:
        raise ValueError("J has no rows: at least one task gradient is needed")
    if not matrix.is_floating_point():
        raise TypeError(f"J must be floating point, got {matrix.dtype}")
    if losses is not None and (losses.dim() != 1 or losses.shape[0] != matrix.shape[0]):
        raise ValueError(
            f"losses must have shape ({matrix.shape[0]},) to match J's {matrix.shape[0]} rows, "
            f"got {tuple(losses.shape)}"
        )


class Strategy(ABC):
    """Turns per-task gradients ``J`` (K, P) into one update vector (P,).

    Subclasses implement :meth:`combine`. Strategies with state (learned weights, loss
    history, a random generator) override :meth:`state_dict` / :meth:`load_state_dict`
    so a checkpoint carries it; stateless ones inherit empty versions.
    """

    #: Registry name (set by :func:`register`).
    name: ClassVar[str] = ""
    #: Whether the method needs per-task gradients (False for loss weightings).
    needs_jacobian: ClassVar[bool] = True

    last_stats: GradientStats | None = None
    #: Catch NaN/inf gradients or losses. A strategy whose K x K rule runs on the host
    #: (``host_rule``) raises :class:`NonFiniteError` naming the tasks (one small sync);
    #: a device-rule one (and a loss weighting's ``combine``) makes its weights NaN
    #: through a device-side flag (no sync), so the update is NaN and the engine's check
    #: of the combined update names the tasks.
    check_finite: bool = True

    @abstractmethod
    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        """Return the combined update of length P from the (K, P) matrix of gradients.

        Args:
            matrix: per-task gradients of the shared parameters, one task per row.
            losses: (K,) current task losses; methods that do not use them ignore them.
            out: optional preallocated (P,) output in ``matrix``'s dtype and device.
        """

    def discard_step(self) -> None:
        """Undo what the last :meth:`combine` changed that a device-side finiteness flag
        cannot mask (random draws from a CPU generator). The engine calls it, and restores
        :attr:`last_stats`, when it rejects a step whose inputs were not finite; the
        default does nothing."""
        return

    def state_dict(self) -> dict[str, Any]:
        """State needed to resume exactly (empty for stateless strategies)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; got state keys {list(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GramianStrategy(Strategy):
    """A strategy whose update is ``wᵀJ`` with weights chosen from ``G = J Jᵀ``.

    Subclasses implement :meth:`weights` on the float64 Gramian. The base class forms G
    once (chunked float64 accumulation, one pass over P), records
    :class:`GradientStats`, and applies the weights in a second pass over P.

    Where the K x K rule runs is set by :attr:`host_rule`:

    * ``True`` (the default; the solver-based methods: MGDA, UPGrad, CAGrad, Nash-MTL,
      ...): for a CUDA ``J``, G (and the losses) are copied to the host once per call —
      the one device sync of a step, which the finiteness check needs anyway — and the
      weights are sent back asynchronously. Iterative solvers (scipy, data-dependent loop
      counts) become microseconds of CPU work.
    * ``False`` (closed-form rules or a fixed number of small tensor ops: Sum, Mean,
      Weighted, PCGrad, GradNorm, IMTL-G): the rule runs on J's device and :meth:`combine` reads
      no value back to the host (no ``.item()``, ``bool()``, ``.tolist()``): the
      finiteness check is a device-side flag (:func:`mtlkit._guard.finite_flag`) that
      turns the weights into NaN, so the update is NaN, which the engine's one check of
      the combined update catches. ``combine`` can then be captured whole by
      ``torch.compile(fullgraph=True)`` or a CUDA graph.
    """

    #: Whether the K x K rule runs on the host (one device sync per call) or on J's device.
    host_rule: ClassVar[bool] = True

    @abstractmethod
    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """Return the (K,) float64 weights for the rows of J, given the float64 Gramian."""

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        _check_inputs(matrix, losses)
        return self.combine_gramian(matrix, gramian(matrix), losses, out=out)

    def combine_gramian(
        self,
        matrix: Tensor,
        gram: Tensor,
        losses: Tensor | None = None,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        """:meth:`combine` with the Gramian given: ``wᵀ matrix`` with ``w`` from ``gram``.

        For a J whose columns are split across processes (sharded parameters), each
        process passes its own columns as ``matrix`` and the *global* ``gram`` (the sum of
        the per-shard Gramians): the weights are the same on every process and each gets
        its slice of the update.
        """
        if not self.host_rule:
            return self._combine_on_device(matrix, gram, losses, out)
        g, host_losses = _to_host(gram, losses)
        if self.check_finite:
            check_finite(g, host_losses)
        w = self.weights(g, host_losses)
        self.last_stats = GradientStats.from_gramian(g, w)
        return weighted_sum(w, matrix, out=out)

    def _combine_on_device(
        self, matrix: Tensor, gram: Tensor, losses: Tensor | None, out: Tensor | None
    ) -> Tensor:
        """The device-rule path: no host sync; non-finite inputs give NaN weights."""
        if losses is not None:
            losses = losses.detach().to(device=gram.device, dtype=torch.float64)
        w = self.weights(gram, losses)
        if self.check_finite:
            w = torch.where(finite_flag(gram, losses), w, torch.nan)
        self.last_stats = GradientStats.from_gramian(gram, w)
        return weighted_sum(w, matrix, out=out)


def _to_host(gram: Tensor, losses: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The Gramian and the losses as float64 CPU tensors (one transfer for a CUDA J)."""
    if losses is not None:
        losses = losses.detach()
    if gram.device.type == "cpu":
        return gram, None if losses is None else losses.to(torch.float64)
    if losses is None:
        return gram.cpu(), None
    k = gram.shape[0]
    packed = torch.cat([gram.flatten(), losses.to(gram.device, torch.float64)]).cpu()
    return packed[: k * k].view(k, k), packed[k * k :]


class LossWeighting(Strategy):
    """A method that weights the task losses and needs no per-task gradients.

    Two calls, kept apart so that a skipped step moves nothing:

    * :meth:`loss_weights` (and :meth:`weighted_loss`, the scalar to backpropagate) are
      **pure**: the same losses and state give the same weights, and nothing changes.
    * :meth:`accept` moves the state on (loss histories, logits, random draws); the
      engine calls it once a step's update was written, never for a skipped step.

    The engine backpropagates :meth:`weighted_loss` once, so a step costs what a summed
    step costs. :meth:`combine` still works on a given J (weights the rows with
    :meth:`loss_weights`, then calls :meth:`accept`), so every strategy can be used
    through the same interface.

    No host sync: :meth:`loss_weights`, :meth:`weighted_loss`, :meth:`accept` and
    :meth:`combine` read no value back to the host (random draws come from a CPU
    generator, which reads no device value), so a CUDA step waits for nothing and the
    calls compile with ``torch.compile(fullgraph=True)``. :meth:`combine` checks
    finiteness as the device-rule Gramian strategies do: a device-side flag
    (:func:`mtlkit._guard.finite_flag`) turns the weights, hence the update, into NaN,
    and the tensors of the state that :meth:`accept` replaces (listed in
    :attr:`step_state`) keep their values through ``torch.where``. What a flag cannot
    mask (a Python counter, a state set for the first time, a CPU generator's draw) is
    put back by :meth:`discard_step`, which a caller that finds the update non-finite
    calls (as the engine does for a device-rule strategy).
    """

    needs_jacobian: ClassVar[bool] = False
    #: The attributes :meth:`accept` may replace (it never changes them in place): saved
    #: by :meth:`combine` so that a non-finite step keeps their values, and
    #: :meth:`discard_step` can put them back.
    step_state: ClassVar[tuple[str, ...]] = ()
    #: The :attr:`step_state` before the last :meth:`combine` (for :meth:`discard_step`).
    _state_before_step: dict[str, Any] | None = None

    @abstractmethod
    def loss_weights(self, losses: Tensor) -> Tensor:
        """Return the (K,) float64 weights for the current losses, changing no state."""

    def weighted_loss(self, losses: Tensor) -> Tensor:
        """Scalar to backpropagate (pure); by default ``Σ w_i L_i`` with
        :meth:`loss_weights`."""
        w = self.loss_weights(losses.detach())
        return (w.to(losses.dtype) * losses).sum()

    def accept(self, losses: Tensor) -> None:
        """Move the state on after a step with these (detached) losses was taken.

        Stateless weightings do nothing (the default).
        """

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        """``wᵀJ`` with the weights of :meth:`loss_weights`, then :meth:`accept`.

        No host sync: non-finite gradients or losses make the weights (hence the update)
        NaN through a device-side flag, and the tensors of the state keep their values;
        :meth:`discard_step` puts back what the flag cannot mask.
        """
        _check_inputs(matrix, losses)
        if losses is None:
            raise ValueError(f"{type(self).__name__} weights the losses: pass losses=")
        gram = gramian(matrix)
        values = losses.detach()
        before = {name: getattr(self, name) for name in self.step_state}
        w = self.loss_weights(values).to(device=gram.device, dtype=torch.float64)
        finite = finite_flag(gram, values) if self.check_finite else None
        if finite is not None:
            w = torch.where(finite, w, torch.nan)
        self.last_stats = GradientStats.from_gramian(gram, w)
        update = weighted_sum(w, matrix, out=out)
        self.accept(values)
        if finite is not None:
            for name, old in before.items():
                setattr(self, name, _keep_where(finite, getattr(self, name), old))
        self._state_before_step = before
        return update

    def accept_where(self, losses: Tensor, finite: Tensor) -> None:
        """:meth:`accept`, with the tensors of :attr:`step_state` keeping their values
        where the 0-d device flag ``finite`` is false (no host read; what the flag cannot
        mask, e.g. a Python counter, moves as in :meth:`accept`)."""
        before = {name: getattr(self, name) for name in self.step_state}
        self.accept(losses)
        for name, old in before.items():
            setattr(self, name, _keep_where(finite, getattr(self, name), old))

    def discard_step(self) -> None:
        """Put back the state the last :meth:`combine` moved (its :attr:`step_state`),
        for a step whose update was found non-finite."""
        before = self._state_before_step
        if before is not None:
            for name, old in before.items():
                setattr(self, name, old)
            self._state_before_step = None


def _keep_where(finite: Tensor, new: Any, old: Any) -> Any:
    """``new`` where the 0-d device flag ``finite`` is true, else ``old``, for a state
    value of the same structure (a tensor of one shape, dtype and device, or a list of
    them); any other value (a Python number, a state set for the first time) is ``new``:
    the flag cannot choose it without a host read (:meth:`LossWeighting.discard_step`
    puts it back)."""
    if isinstance(new, Tensor) and isinstance(old, Tensor):
        same = new.shape == old.shape and new.dtype == old.dtype and new.device == old.device
        return torch.where(finite.to(new.device), new, old) if same else new
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_keep_where(finite, a, b) for a, b in zip(new, old, strict=True)]
    return new


# ----------------------------------------------------------------------------- registry

STRATEGIES: Registry[Strategy] = Registry("strategy")

S = TypeVar("S", bound=type[Strategy])


def register(name: str, *, aliases: Sequence[str] = ()) -> Callable[[S], S]:
    """Class decorator: make a strategy available as ``get_strategy(name)``.

    Names are normalised (:func:`mtlkit.normalize_name`): ``"my_method"`` and
    ``"my-method"`` are one name.
    """
    return STRATEGIES.register(name, aliases=aliases)


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (case, ``_`` and ``-`` insensitive)."""
    return STRATEGIES.get_class(name)


def get_strategy(name: str, /, *, context: Context | None = None, **options: Any) -> Strategy:
    """Build a registered strategy by name, e.g. ``get_strategy("pcgrad", seed=0)``.

    ``context`` (:class:`mtlkit.Context`) fills the constructor arguments a strategy takes
    from the run (``num_tasks``, ``seed``) unless ``options`` gives them.
    """
    return STRATEGIES.build(name, context, **options)


def list_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    return STRATEGIES.names()
