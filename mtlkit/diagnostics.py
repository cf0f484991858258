"""Gradient telemetry: what a step's per-task gradients looked like.

:class:`GradientStats` is read off the K x K Gramian ``G = J Jᵀ`` that Gramian
strategies form anyway, so it costs no pass over the P parameters and no device sync
until a logger asks for values. Loss weightings never form per-task gradients: their
stats carry the weights only (the other fields are ``None``).

:class:`ConflictLog` keeps every step's stats of a run on the device (one row per step)
and moves them to the host only when asked: per-step values and summaries (how often
some pair of tasks conflicted, each pair's cosines, each task's gradient norm).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ConflictLog", "GradientStats"]


class GradientStats:
    """Gradient-conflict figures of one combination.

    All fields are tensors on the gradients' device (float64), so reading them costs no
    device sync until a logger asks for values (:meth:`as_dict`). Stats made
    :meth:`from_gramian` keep the K x K Gramian and compute the norms, cosines and
    conflicts the first time one of them is read (a dozen small kernels a step that no
    one pays unless they look). The object is read-only.

    Attributes:
        norms: (K,) per-task gradient norms ``‖g_i‖``; ``None`` for loss weightings,
            which never form per-task gradients.
        cosines: (K, K) pairwise cosine similarities (0 where a norm is 0); ``None`` for
            loss weightings.
        conflicts: () number of task pairs i < j with ``g_i · g_j < 0``; ``None`` for
            loss weightings.
        weights: (K,) the weights applied to the rows of J (``update = wᵀJ``), or to the
            losses for a loss weighting (GradDrop: the fraction of coordinates each task
            kept).
    """

    def __init__(
        self,
        norms: Tensor | None,
        cosines: Tensor | None,
        conflicts: Tensor | None,
        weights: Tensor,
    ) -> None:
        self._figures: tuple[Tensor | None, Tensor | None, Tensor | None] | None = (
            norms,
            cosines,
            conflicts,
        )
        self._gram: Tensor | None = None
        self._weights = weights

    @classmethod
    def from_gramian(cls, g: Tensor, weights: Tensor) -> GradientStats:
        """Norms, cosines and conflicts of the Gramian ``g`` (computed when first read),
        with the weights used."""
        stats = cls(None, None, None, weights)
        stats._figures, stats._gram = None, g
        return stats

    @classmethod
    def from_weights(cls, weights: Tensor) -> GradientStats:
        """The stats of a loss weighting: weights only."""
        return cls(norms=None, cosines=None, conflicts=None, weights=weights)

    def with_weights(self, weights: Tensor) -> GradientStats:
        """The same gradients' stats with other weights (e.g. rescaled)."""
        stats = GradientStats(None, None, None, weights)
        stats._figures, stats._gram = self._figures, self._gram
        return stats

    @property
    def weights(self) -> Tensor:
        return self._weights

    @property
    def norms(self) -> Tensor | None:
        return self._read()[0]

    @property
    def cosines(self) -> Tensor | None:
        return self._read()[1]

    @property
    def conflicts(self) -> Tensor | None:
        return self._read()[2]

    def _read(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if self._figures is None:
            assert self._gram is not None
            self._figures = _gramian_figures(self._gram)
        return self._figures

    def __repr__(self) -> str:
        norms, cosines, conflicts = self._read()
        return (
            f"GradientStats(norms={norms!r}, cosines={cosines!r}, conflicts={conflicts!r}, "
            f"weights={self.weights!r})"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (this one call syncs with the device); absent fields are
        ``None``."""
        return {
            "norms": None if self.norms is None else self.norms.tolist(),
            "cosines": None if self.cosines is None else self.cosines.tolist(),
            "conflicts": None if self.conflicts is None else int(self.conflicts.item()),
            "weights": self.weights.tolist(),
        }


def _gramian_figures(g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The norms, cosines and number of conflicting pairs (i < j) of a Gramian."""
    norms = g.diagonal().clamp(min=0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosines = torch.where(outer > 0, g / outer.clamp(min=torch.finfo(g.dtype).tiny), 0.0)
    upper = torch.triu(torch.ones_like(g, dtype=torch.bool), diagonal=1)
    conflicts = ((g < 0) & upper).sum()
    return norms, cosines, conflicts


class ConflictLog:
    """Every step's :class:`GradientStats` of a run, kept on the device until asked for.

    :meth:`record` copies one step's figures into a row of a buffer on the stats' device
    (grown by doubling): device-side copies only, no ``.item()``, ``.tolist()`` or other
    host sync, so a GPU loop may record every step without waiting for the device. The
    values reach the host in one transfer when :meth:`to_dict`, :meth:`summary` or
    :meth:`state_dict` is called (at the end of an epoch, say).

    A row holds, for K tasks and the ``K (K - 1) / 2`` pairs ``i < j`` (in the order of
    ``torch.triu_indices``: (0, 1), (0, 2), ..., (1, 2), ...): the K gradient norms, the
    pairs' cosines, the number of conflicting pairs (``g_i · g_j < 0``) and the K weights.
    Steps of a loss weighting (whose stats have no norms, cosines or conflicts) record
    the weights only; those figures are ``None`` for them in :meth:`to_dict` and they do
    not count in the gradient summaries.

    Example::

        log = ConflictLog(names=["sst", "quora", "sts"])
        for step, batch in enumerate(loader):
            ...
            engine.write_grad()
            if engine.stats is not None:
                log.record(engine.stats, step=step)  # no host sync
        print(log.summary()["conflict_fraction"])  # one transfer

    Args:
        num_tasks: K (default: the length of ``names``, else the first stats recorded).
        names: the tasks' names, used as keys of the summaries (default ``"0"``,
            ``"1"``, ...); pairs are named ``"a/b"``.
        capacity: rows allocated at first (the buffer doubles when full).
        device: where the rows are kept (default: the device of the first stats).
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        names: Sequence[str] | None = None,
        capacity: int = 256,
        device: torch.device | str | None = None,
    ) -> None:
        if names is not None:
            names = [str(n) for n in names]
            if num_tasks is not None and num_tasks != len(names):
                raise ValueError(f"num_tasks is {num_tasks} but {len(names)} names are given")
            num_tasks = len(names)
        if num_tasks is not None and num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._k = num_tasks
        self._names = names
        self._capacity = capacity
        self._device = None if device is None else torch.device(device)
        self._buffer: Tensor | None = None  # (capacity, width) float64, NaN where unset
        self._pairs: Tensor | None = None  # flat indices of the upper triangle, on device
        self._size = 0
        self._steps: list[int] = []  # host: step numbers, ascending
        self._has: list[bool] = []  # host: whether the step had gradient figures
        self._relocate = False  # loaded onto the CPU for want of a device

    # ------------------------------------------------------------------ layout
    @property
    def num_tasks(self) -> int | None:
        """K (``None`` until given or first recorded)."""
        return self._k

    @property
    def names(self) -> list[str]:
        """The tasks' names (``"0"``, ``"1"``, ... when none were given)."""
        if self._names is not None:
            return list(self._names)
        return [str(i) for i in range(self._k or 0)]

    @property
    def pairs(self) -> list[str]:
        """The pairs ``"a/b"`` (i < j) in the order of the cosine columns."""
        names = self.names
        k = len(names)
        return [f"{names[i]}/{names[j]}" for i in range(k) for j in range(i + 1, k)]

    @property
    def device(self) -> torch.device | None:
        """The device the rows are kept on (``None`` before the first record)."""
        return self._device if self._buffer is None else self._buffer.device

    @property
    def steps(self) -> list[int]:
        """The step number of each row (host values, ascending)."""
        return list(self._steps)

    def __len__(self) -> int:
        return self._size

    def _width(self, k: int) -> int:
        return 2 * k + k * (k - 1) // 2 + 1

    def _columns(self, k: int) -> tuple[slice, slice, int, slice]:
        p = k * (k - 1) // 2
        return slice(0, k), slice(k, k + p), k + p, slice(k + p + 1, 2 * k + p + 1)

    def _allocate(self, rows: int, device: torch.device) -> Tensor:
        assert self._k is not None
        return torch.full(
            (rows, self._width(self._k)), math.nan, dtype=torch.float64, device=device
        )

    # ------------------------------------------------------------------ recording
    def record(self, stats: GradientStats, step: int | None = None) -> None:
        """Append one step's figures (device-side copies; no host sync).

        Args:
            stats: the step's stats (``engine.stats``, ``strategy.last_stats``).
            step: the step's number (default: one more than the last one recorded, or
                0); numbers must increase.

        Raises:
            ValueError: the stats have another number of tasks than the log, shapes that
                do not fit, or ``step`` does not increase.
        """
        weights = stats.weights
        if weights.dim() != 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(weights.shape)}")
        k = int(weights.shape[0])  # shapes are host metadata: no sync
        if self._k is not None and k != self._k:
            raise ValueError(f"the log has {self._k} tasks but these stats have {k}")
        if stats.norms is not None:
            if stats.cosines is None or stats.conflicts is None:
                raise ValueError("stats with norms need cosines and conflicts too")
            if tuple(stats.norms.shape) != (k,) or tuple(stats.cosines.shape) != (k, k):
                raise ValueError(
                    f"norms must be ({k},) and cosines ({k}, {k}), got "
                    f"{tuple(stats.norms.shape)} and {tuple(stats.cosines.shape)}"
                )
        if step is None:
            step = self._steps[-1] + 1 if self._steps else 0
        elif self._steps and step <= self._steps[-1]:
            raise ValueError(f"step {step} does not follow step {self._steps[-1]}")
        self._k = k
        if self._buffer is None:
            device = self._device if self._device is not None else weights.device
            self._buffer = self._allocate(self._capacity, device)
        elif self._relocate:  # loaded without a device: go where the stats are, once
            self._buffer = self._buffer.to(weights.device)
        self._relocate = False
        if self._size == self._buffer.shape[0]:  # full: double (device-side copy)
            grown = self._allocate(2 * self._buffer.shape[0], self._buffer.device)
            grown[: self._size].copy_(self._buffer)
            self._buffer = grown
        row = self._buffer[self._size]
        norms, cosines, conflicts, weight_cols = self._columns(k)
        if stats.norms is not None:
            assert stats.cosines is not None and stats.conflicts is not None
            if self._pairs is None or self._pairs.device != stats.cosines.device:
                upper = torch.triu_indices(k, k, offset=1, device=stats.cosines.device)
                self._pairs = upper[0] * k + upper[1]
            row[norms].copy_(stats.norms.detach())
            row[cosines].copy_(torch.take(stats.cosines.detach(), self._pairs))
            row[conflicts].copy_(stats.conflicts.detach())
        row[weight_cols].copy_(weights.detach())
        self._size += 1
        self._steps.append(int(step))
        self._has.append(stats.norms is not None)

    # ------------------------------------------------------------------ reading
    def _range(self, start_step: int | None, stop_step: int | None) -> tuple[int, int]:
        lo = 0 if start_step is None else bisect.bisect_left(self._steps, start_step)
        hi = self._size if stop_step is None else bisect.bisect_left(self._steps, stop_step)
        return lo, max(lo, hi)

    def values(
        self, start_step: int | None = None, stop_step: int | None = None
    ) -> dict[str, Tensor]:
        """The rows of the steps in ``[start_step, stop_step)`` as tensors on the log's
        device (no copy to the host): ``norms`` (n, K), ``cosines`` (n, pairs),
        ``conflicts`` (n,), ``weights`` (n, K) (float64; NaN where a step had no such
        figure) and ``steps`` (n,) int64."""
        lo, hi = self._range(start_step, stop_step)
        k = self._k or 0
        if self._buffer is None:
            rows = torch.empty((0, self._width(k)), dtype=torch.float64, device=self._device)
        else:
            rows = self._buffer[lo:hi]
        norms, cosines, conflicts, weights = self._columns(k)
        return {
            "steps": torch.tensor(self._steps[lo:hi], dtype=torch.int64, device=rows.device),
            "norms": rows[:, norms],
            "cosines": rows[:, cosines],
            "conflicts": rows[:, conflicts],
            "weights": rows[:, weights],
        }

    def _host_rows(self, lo: int, hi: int) -> Tensor:
        """Rows ``lo:hi`` on the CPU (the one transfer, and sync, of a read)."""
        if self._buffer is None or hi <= lo:
            return torch.empty((0, self._width(self._k or 0)), dtype=torch.float64)
        return self._buffer[lo:hi].cpu()

    def to_dict(
        self, start_step: int | None = None, stop_step: int | None = None
    ) -> dict[str, Any]:
        """Plain Python values of the steps in ``[start_step, stop_step)`` (all by
        default), in one transfer from the device.

        Returns:
            ``tasks`` and ``pairs`` (names), ``steps``, and per step: ``norms`` (K),
            ``cosines`` (the pairs'), ``conflicts`` (number of conflicting pairs) and
            ``weights`` (K); the first three are ``None`` for a loss weighting's steps.
            ``summary``: :meth:`summary` of the same steps.
        """
        lo, hi = self._range(start_step, stop_step)
        rows = self._host_rows(lo, hi)
        k = self._k or 0
        norms, cosines, conflicts, weights = self._columns(k)
        has = self._has[lo:hi]
        table = rows.tolist()
        return {
            "tasks": self.names,
            "pairs": self.pairs,
            "steps": self._steps[lo:hi],
            "norms": [r[norms] if h else None for r, h in zip(table, has, strict=True)],
            "cosines": [r[cosines] if h else None for r, h in zip(table, has, strict=True)],
            "conflicts": [
                int(r[conflicts]) if h else None for r, h in zip(table, has, strict=True)
            ],
            "weights": [r[weights] for r in table],
            "summary": self._summarize(rows, has),
        }

    def summary(
        self, start_step: int | None = None, stop_step: int | None = None
    ) -> dict[str, Any]:
        """Summaries of the steps in ``[start_step, stop_step)`` (all by default), in one
        transfer from the device.

        Returns:
            ``steps``: the steps recorded; ``gradient_steps``: those with gradient figures
            (not a loss weighting's); ``conflict_fraction``: the fraction of those with at
            least one conflicting pair; ``mean_conflicts``: conflicting pairs per step;
            ``cosine``: ``{pair: {"mean", "min", "max"}}``; ``norm_mean``: each task's
            mean gradient norm; ``norm_ratio``: the largest of those over the smallest;
            ``weight_mean``: each task's mean weight. Figures without steps to average,
            and a ratio over a zero norm, are ``None``.
        """
        lo, hi = self._range(start_step, stop_step)
        return self._summarize(self._host_rows(lo, hi), self._has[lo:hi])

    def _summarize(self, rows: Tensor, has: Sequence[bool]) -> dict[str, Any]:
        k = self._k or 0
        norms, cosines, conflicts, weights = self._columns(k)
        names, pairs = self.names, self.pairs
        grads = rows[torch.tensor(list(has), dtype=torch.bool)] if has else rows[:0]
        n = int(grads.shape[0])
        out: dict[str, Any] = {
            "steps": int(rows.shape[0]),
            "gradient_steps": n,
            "conflict_fraction": None,
            "mean_conflicts": None,
            "cosine": {},
            "norm_mean": {},
            "norm_ratio": None,
            "weight_mean": {},
        }
        if rows.shape[0]:
            out["weight_mean"] = dict(
                zip(names, rows[:, weights].mean(dim=0).tolist(), strict=True)
            )
        if n == 0:
            return out
        count = grads[:, conflicts]
        out["conflict_fraction"] = float((count > 0).to(torch.float64).mean())
        out["mean_conflicts"] = float(count.mean())
        cos = grads[:, cosines]
        out["cosine"] = {
            pair: {"mean": mean, "min": low, "max": high}
            for pair, mean, low, high in zip(
                pairs,
                cos.mean(dim=0).tolist(),
                cos.min(dim=0).values.tolist() if cos.shape[1] else [],
                cos.max(dim=0).values.tolist() if cos.shape[1] else [],
                strict=True,
            )
        }
        mean_norms = grads[:, norms].mean(dim=0)
        out["norm_mean"] = dict(zip(names, mean_norms.tolist(), strict=True))
        low, high = float(mean_norms.min()), float(mean_norms.max())
        out["norm_ratio"] = high / low if low > 0 and math.isfinite(high / low) else None
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The log as CPU tensors and plain values (``torch.save`` with
        ``weights_only`` loading reads it back)."""
        k = self._k or 0
        return {
            "num_tasks": self._k,
            "names": self._names,
            "rows": self._host_rows(0, self._size).reshape(self._size, self._width(k)),
            "steps": torch.tensor(self._steps, dtype=torch.int64),
            "has_gradients": torch.tensor(self._has, dtype=torch.bool),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the log's rows with those of :meth:`state_dict` (put on
        :attr:`device` when one is set; else they stay on the CPU until the next
        :meth:`record` moves them to the stats' device)."""
        k = state["num_tasks"]
        names = state["names"]
        if names is not None and self._names is not None and list(names) != self._names:
            raise ValueError(f"the saved log's tasks are {list(names)}, not {self._names}")
        if k is not None and self._k is not None and k != self._k:
            raise ValueError(f"the saved log has {k} tasks, not {self._k}")
        rows: Tensor = state["rows"]
        steps = [int(s) for s in state["steps"].tolist()]
        has = [bool(h) for h in state["has_gradients"].tolist()]
        if not (rows.shape[0] == len(steps) == len(has)):
            raise ValueError("the saved log's rows, steps and flags differ in number")
        self._k = k if k is not None else self._k
        if names is not None and self._names is None:
            self._names = list(names)
        self._steps, self._has, self._size = steps, has, len(steps)
        self._pairs = None
        if self._k is None:
            self._buffer = None
            return
        device = self._device if self._device is not None else torch.device("cpu")
        self._buffer = self._allocate(max(self._capacity, 2 * self._size), device)
        self._buffer[: self._size].copy_(rows.to(device=device, dtype=torch.float64))
        self._relocate = self._device is None
