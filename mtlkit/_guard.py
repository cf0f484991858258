"""The one place for the non-finite / overflow policy.

Detection lives next to the data it reads (a Gramian strategy reads its Gramian's
diagonal, the engine reads the losses and the combined update); what happens then is
decided here, by :meth:`NonFiniteGuard.reject`, for every path of the engine:

* with an enabled ``GradScaler`` (float16 training), an inf update is written into
  ``.grad`` so ``scaler.step`` skips the step and lowers its scale;
* otherwise ``nonfinite="skip"`` skips the step (nothing written, no state moved);
* otherwise (``"raise"``) :class:`NonFiniteError` names the step and what was wrong.

``nonfinite="defer"`` checks nothing inside the step (no host sync, for CUDA graphs and
``torch.compile``): the engine counts non-finite steps on the device and raises when the
caller asks (:meth:`mtlkit.TaskGradients.check_nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "NonFinitePolicy",
    "all_finite",
    "check_finite",
    "finite_flag",
    "finite_tensor",
]

NonFinitePolicy = Literal["raise", "skip", "defer"]


class NonFiniteError(FloatingPointError):
    """A loss, a per-task gradient or the combined update holds NaN or inf."""


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one reduction pass, no temporary of its size
    (NaN propagates into the min and max; ±inf shows in one of them). Syncs once."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def finite_tensor(t: Tensor) -> Tensor:
    """Whether every entry of ``t`` is finite, as a 0-d bool tensor on its device (no
    host sync; one reduction pass, as :func:`all_finite`)."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def finite_flag(gram: Tensor, losses: Tensor | None) -> Tensor:
    """Whether every task's gradient and loss is finite, as a 0-d bool tensor on ``gram``'s
    device: no host sync (the way ``GradScaler`` finds infs).

    Reads the Gramian's diagonal only (a NaN or inf in row i of J makes ``G[i, i]`` NaN or
    inf). The device-rule strategies replace their weights by NaN where it is false
    (``torch.where``), so the update is NaN and the engine's one check of the combined
    update (:meth:`mtlkit.TaskGradients.write_grad`) rejects the step and names the task.
    """
    finite = torch.isfinite(gram.diagonal()).all()
    if losses is not None:
        finite = finite & torch.isfinite(losses.detach()).all().to(finite.device)
    return finite


def check_finite(gram: Tensor, losses: Tensor | None) -> None:
    """Raise :class:`NonFiniteError` naming the tasks whose gradient or loss is NaN/inf.

    Reads only the Gramian's diagonal (a NaN or inf anywhere in row i of J makes
    ``G[i, i]`` NaN or inf), so it costs no pass over P; it syncs once to decide.
    """
    diag = gram.diagonal()
    bad = ~torch.isfinite(diag)
    if losses is not None:
        bad = bad | ~torch.isfinite(losses.detach()).to(bad.device)
    if not bool(bad.any()):
        return
    what = []
    for t in bad.nonzero().flatten().tolist():
        kinds = []
        if not torch.isfinite(diag[t]):
            kinds.append("gradient")
        if losses is not None and not torch.isfinite(losses[t]):
            kinds.append(f"loss={losses[t].item()}")
        what.append(f"task {t} ({', '.join(kinds)})")
    raise NonFiniteError(
        "non-finite values in " + "; ".join(what) + ". Lower the learning rate, check the "
        "inputs of these tasks, or use nonfinite='skip' in the engine to skip such steps."
    )


class NonFiniteGuard:
    """Applies the engine's non-finite policy, with or without a ``GradScaler``.

    Args:
        policy: ``"raise"``, ``"skip"`` or ``"defer"``.
        scaler: a ``torch.amp.GradScaler`` (float16 training) or ``None``.
    """

    def __init__(self, policy: NonFinitePolicy, scaler: Any | None) -> None:
        if policy not in ("raise", "skip", "defer"):
            raise ValueError(f"nonfinite must be 'raise', 'skip' or 'defer', got {policy!r}")
        self.policy: NonFinitePolicy = policy
        self.scaler = scaler

    def scale(self, device: torch.device) -> Tensor | None:
        """The scaler's current scale on ``device`` (``None`` without an enabled scaler),
        read without a host sync where the scaler allows it."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        get_async = getattr(self.scaler, "_get_scale_async", None)
        scale = get_async() if get_async is not None else None
        if scale is None:
            scale = torch.tensor(float(self.scaler.get_scale()))
        return scale.to(device)  # type: ignore[no-any-return]

    def reject(self, message: str, write_inf: Callable[[], None]) -> bool:
        """Handle a non-finite step: returns ``False`` (skipped) or raises.

        ``write_inf`` writes an inf update into ``.grad``; it is called only under an
        enabled scaler, which then skips the optimizer step and lowers its scale.
        """
        if self.scaler is not None and self.scaler.is_enabled():
            write_inf()
            return False
        if self.policy == "skip":
            return False
        raise NonFiniteError(message)
