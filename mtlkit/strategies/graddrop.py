"""GradDrop: gradient sign dropout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit._linalg import gramian
from mtlkit.strategies.base import GradientStats, Strategy, _check_inputs, check_finite, register

__all__ = ["GradDrop"]


@register("graddrop")
class GradDrop(Strategy):
    r"""Gradient Sign Dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov,
    2020, *Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout*, NeurIPS, Algorithm 1).

    Coordinate by coordinate, GradDrop keeps only the task gradients of one sign, chosen
    at random with the probability given by the sign purity of that coordinate:

    .. math:: \mathcal P = \tfrac12\Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big), \qquad
              U \sim \mathcal U[0, 1), \qquad
              M_i = \mathbb 1[U < \mathcal P]\,\mathbb 1[g_i > 0]
                  + \mathbb 1[U \ge \mathcal P]\,\mathbb 1[g_i < 0],

    with one U per coordinate shared by the tasks, and the update is
    :math:`d = \sum_i \big(\ell_i + (1 - \ell_i) M_i\big) \odot g_i` with the leak
    :math:`\ell_i \in [0, 1]` (0 by default: pure GradDrop; 1: the plain sum). Where all
    gradients are 0, :math:`\mathcal P = 1/2` (nothing to keep).

    The update is not a combination of the rows, so this class implements ``combine``
    directly, vectorised over P: a few elementwise passes over blocks of ``chunk``
    columns (K x chunk temporaries), plus one uniform draw per column.

    Properties: with K = 1 it returns the gradient; coordinates where all tasks agree in
    sign are kept whole (:math:`\mathcal P \in \{0, 1\}`); positively homogeneous,
    GradDrop(cJ) = c·GradDrop(J) for c > 0 with the same random draws (the purity is
    scale-free); invariant under permutations of the tasks with the same draws (the
    draws depend on P only); the expected update is not the sum.

    Deviations: the paper applies GradDrop to the gradients at a layer's activations,
    summed over the batch (optionally multiplied by the sign of the inputs); here it acts
    on the per-task gradients of the shared parameters handed to the strategy.

    Random draws: each call takes ``seed = torch.randint(0, 2**62, (), generator=g)`` from
    the strategy's CPU generator ``g`` and draws ``torch.rand(P, generator=
    torch.Generator(J.device).manual_seed(seed), dtype=dt, device=J.device)`` (``dt`` is
    J's dtype for float32/float64, float32 otherwise), so the draws are made on J's
    device and the state is only the CPU generator.

    ``last_stats`` needs the Gramian, an extra O(K²P) pass (paid only to report
    statistics and check finiteness; set ``compute_stats=False`` and ``check_finite =
    False`` to skip it); its ``weights`` are the fractions of each task's squared
    gradient norm that were kept, :math:`\lVert M_i \odot g_i\rVert^2/\lVert g_i\rVert^2`
    (with the leak applied).

    Args:
        leak: :math:`\ell`, one number for all tasks or one per task, in [0, 1].
        seed: seed of the strategy's own generator (``None``: drawn from torch's global RNG).
        compute_stats: form the Gramian to record ``last_stats``.
        chunk: columns processed at a time (bounds the K x chunk temporaries; the result
            does not depend on it).
    """

    def __init__(
        self,
        leak: float | Sequence[float] | Tensor = 0.0,
        seed: int | None = 0,
        compute_stats: bool = True,
        chunk: int = 1 << 20,
    ) -> None:
        lk = torch.as_tensor(leak, dtype=torch.float64).flatten().clone()
        if lk.numel() == 0 or bool(((lk < 0) | (lk > 1) | ~torch.isfinite(lk)).any()):
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.leak = lk
        self.compute_stats = compute_stats
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator.manual_seed(seed)

    def draw_uniform(self, p: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Draw this call's P uniform numbers (advances the generator by one seed)."""
        seed = int(torch.randint(0, 2**62, (), generator=self.generator).item())
        gen = torch.Generator(device=device).manual_seed(seed)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        return torch.rand(p, generator=gen, dtype=dtype, device=device)

    def combine(
        self, matrix: Tensor, losses: Tensor | None = None, *, out: Tensor | None = None
    ) -> Tensor:
        _check_inputs(matrix, losses)
        k, p = matrix.shape
        g = gramian(matrix) if (self.compute_stats or self.check_finite) else None
        if g is not None and self.check_finite:
            check_finite(g, losses)
        if self.leak.numel() not in (1, k):
            raise ValueError(f"GradDrop has {self.leak.numel()} leak values, J has {k} rows")
        u = self.draw_uniform(p, matrix.device, matrix.dtype)
        result = (
            out if out is not None else torch.empty(p, dtype=matrix.dtype, device=matrix.device)
        )
        leaky = not bool((self.leak == 0).all())
        lk = self.leak.to(device=matrix.device, dtype=matrix.dtype).expand(k)[:, None]
        kept_sq = torch.zeros(k, dtype=torch.float64, device=matrix.device)
        tiny = torch.finfo(u.dtype).tiny
        for start in range(0, p, self.chunk):  # bounded K x chunk temporaries
            stop = min(start + self.chunk, p)
            block = matrix[:, start:stop]
            work = block.to(u.dtype)
            total = work.sum(dim=0)
            spread = work.abs().sum(dim=0)
            purity = torch.where(spread > 0, 0.5 * (1 + total / spread.clamp(min=tiny)), 0.5)
            cut = u[start:stop]
            keep = torch.where(work > 0, cut < purity, cut >= purity).to(block.dtype)
            kept = block * (lk + (1 - lk) * keep) if leaky else block * keep
            torch.sum(kept, dim=0, out=result[start:stop])
            if g is not None and self.compute_stats:
                kept_sq += (kept.to(torch.float64) ** 2).sum(dim=1)
        if g is not None and self.compute_stats:
            diag = g.diagonal()
            frac = torch.where(diag > 0, kept_sq / diag.clamp(min=1e-300), 1.0)
            self.last_stats = GradientStats.from_gramian(g, frac)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"GradDrop(leak={self.leak.tolist()})"
