r"""The two-objective conflict toy: every registered strategy from the same start points.

The problem is the 2-D illustration of Liu et al. (2021, *Conflict-Averse Gradient Descent
for Multi-task Learning*, NeurIPS, Section 5.1), later reused by Nash-MTL (Navon et al.,
2022, ICML) and FAMO (Liu et al., 2023, NeurIPS). With the parameter
:math:`x = (x_1, x_2) \in \mathbb R^2`:

.. math::

    f_1 &= \log\max(|\tfrac12(-x_1 - 7) - \tanh(-x_2)|,\ 5\cdot 10^{-6}) + 6, \\
    f_2 &= \log\max(|\tfrac12(-x_1 + 3) + \tanh(-x_2) + 2|,\ 5\cdot 10^{-6}) + 6, \\
    g_1 &= \big((-x_1 + 7)^2 + 0.1\,(-x_2 - 8)^2\big)/10 - 20, \\
    g_2 &= \big((-x_1 - 7)^2 + 0.1\,(-x_2 - 8)^2\big)/10 - 20, \\
    c_1 &= \max(\tanh(x_2/2), 0), \qquad c_2 = \max(\tanh(-x_2/2), 0), \\
    L_1 &= c_1 f_1 + c_2 g_1, \qquad L_2 = c_1 f_2 + c_2 g_2 .

Note the sign in :math:`f_2`: it is :math:`+\tanh(-x_2)`, as in the reference code released
with the CAGrad paper (and reused by Nash-MTL and FAMO); a minus there moves the valley of
:math:`f_2` but not the character of the problem.

Above the :math:`x_1` axis the losses are log-valleys whose gradients grow without bound
near their floors and whose weights :math:`c_1` saturate (flat, slowly varying regions);
below it they are two shifted bowls. The Pareto set of the bottom part is, up to the
tiny effect of :math:`c_2`, the segment :math:`x_1 \in [-7, 7]` at :math:`x_2 \approx
-8.36`; the minimum of :math:`L_1 + L_2` lies at its middle, :math:`x_1 = 0`.

Each step: the 2 x 2 Jacobian of :math:`(L_1, L_2)` with respect to :math:`x` by autograd,
``strategy.combine(J, losses)``, and one Adam step with that update as the gradient of
:math:`x`. All runs (strategies x start points) advance together: one forward and
backward over an (N, 2) batch of points per step; the per-run strategy calls are the only
Python loop. Adam works coordinate by coordinate, so one optimiser over the batch is the
same as one optimiser per run.

Choices of this script (not of the papers), all options of :func:`run`:

* Adam with ``lr = 0.1``, ``betas = (0.9, 0.9)``, and a cosine decay of the learning rate
  down to ``lr * final_lr_ratio`` over 1000 steps, so the end points are well defined (a
  constant-rate Adam keeps oscillating by about ``lr`` around a minimum). The CAGrad paper
  runs Adam at a constant 1e-3 with the default ``betas = (0.9, 0.999)`` for 100 000 steps,
  a hundred times this budget. The short budget needs the small second-moment rate: the
  valley floors produce gradient spikes of up to :math:`1/(5\cdot 10^{-6}) = 2\cdot 10^5`,
  and with :math:`\beta_2 = 0.999` Adam remembers them for thousands of steps, in which
  the iterate barely moves (at lr 0.05 for 1500 steps, the runs of ``sum``, ``mean`` and
  ``mgda`` from (0, 0) and (9, 9) end short of the Pareto set, min-norm points 0.01 to
  0.85); :math:`\beta_2 = 0.9` forgets a spike within a few dozen steps;
* the losses handed to ``combine`` are shifted by their infima, :math:`\ell_i = L_i -
  \inf L_i \ge 0` (:func:`task_infima`), which changes no gradient. The loss-based methods
  (GradNorm, DWA, FAMO, uncertainty weighting) assume positive losses, and the toy's go
  down to about -20. With this shift :math:`\ell_i` can reach 0, so the methods whose
  weights grow like :math:`1/\ell_i` (FAMO, uncertainty weighting) follow whichever task
  gets close to its own minimum first;
* strategies that learn parameters of their own (uncertainty weighting's log-variances)
  have them trained by a second Adam (same settings) on ``strategy.weighted_loss(losses)``,
  as in a real loop; ``weighted`` uses the fixed weights (0.75, 0.25); the seeded
  strategies (PCGrad, GradVac, GradDrop, RLW) get ``seed``.

An end point counts as *Pareto-stationary* when the minimum-norm point of the convex hull
of :math:`\nabla L_1` and :math:`\nabla L_2` there has a norm below ``tol`` (1e-2 by
default). Gradient norms in the bottom basin are of order 1; at the default settings the
runs that converge end with min-norm points below 1e-4, those that have not yet
converged above 0.1, so the verdict does not hinge on the exact value.

Run ``python -m examples.conflict_toy --out docs/figures`` to write ``conflict_toy.png``
(trajectories over the contours of :math:`L_1 + L_2`, one panel per strategy),
``conflict_toy.md`` and ``conflict_toy.json`` (where each run ends). The 95 runs take
about a minute on a busy 2-core CPU, most of it in the strategies' per-call overhead
(0.2 to 0.8 ms a call; CAGrad's solver 1.4 ms); ``--strategies`` and ``--steps``
make it shorter. Needs scipy (the reference minima) and matplotlib (the figure), both
in the ``minbert`` extra.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import mtlkit
from mtlkit.strategies import Strategy

__all__ = [
    "STARTS",
    "RunResult",
    "ToyResult",
    "build_strategy",
    "global_minimum",
    "losses",
    "main",
    "min_norm_hull",
    "plot",
    "run",
    "task_infima",
    "value_and_jacobian",
    "write_outputs",
]

#: Floor inside the logarithms of f1 and f2.
FLOOR = 5e-6
#: Start points: the three of the CAGrad paper's figure, plus (0, 0) and (10, -8).
STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (-8.5, -5.0),
    (0.0, 0.0),
    (9.0, 9.0),
    (10.0, -8.0),
)
#: Options for the strategies that need some (or whose defaults do not fit K = 2).
OPTIONS: dict[str, dict[str, Any]] = {
    "weighted": {"weights": [0.75, 0.25]},
    "uncertainty": {"num_tasks": 2},
}
#: Below this value of L1 + L2 a point is in the bottom basin (the top part is >= -12.4,
#: the Pareto segment of the bottom part is <= -20.4).
LOW_LOSS = -20.0


def losses(x: Tensor) -> Tensor:
    """The two task losses at the points ``x`` (..., 2); returns (..., 2)."""
    x1, x2 = x[..., 0], x[..., 1]
    t = torch.tanh(-x2)
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7.0) - t).abs(), min=FLOOR)) + 6.0
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3.0) + t + 2.0).abs(), min=FLOOR)) + 6.0
    bottom = 0.1 * (-x2 - 8.0) ** 2
    g1 = ((-x1 + 7.0) ** 2 + bottom) / 10.0 - 20.0
    g2 = ((-x1 - 7.0) ** 2 + bottom) / 10.0 - 20.0
    c1 = torch.tanh(0.5 * x2).clamp(min=0.0)
    c2 = torch.tanh(-0.5 * x2).clamp(min=0.0)
    return torch.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2], dim=-1)


def value_and_jacobian(points: Tensor) -> tuple[Tensor, Tensor]:
    """Losses (N, 2) and Jacobians (N, 2, 2) (row i: the gradient of L_i) at N points.

    The points are independent, so the gradient of ``L_i`` summed over the batch holds
    every point's own gradient of ``L_i``: two backward passes for the whole batch.
    """
    x = points.detach().requires_grad_(True)
    values = losses(x)
    rows = [torch.autograd.grad(values[:, i].sum(), x, retain_graph=i == 0)[0] for i in range(2)]
    return values.detach(), torch.stack(rows, dim=1)


def min_norm_hull(jac: Tensor) -> Tensor:
    """Norm of the minimum-norm point of the segment between the two rows, per point.

    ``jac`` is (N, 2, 2). Closed form: ``γ = clip((g2 - g1)·g2 / ‖g2 - g1‖², 0, 1)``,
    point ``γ g1 + (1 - γ) g2``.
    """
    j = jac.to(torch.float64)
    g1, g2 = j[:, 0], j[:, 1]
    diff = g2 - g1
    den = (diff * diff).sum(-1)
    gamma = torch.where(den > 0, (diff * g2).sum(-1) / den.clamp(min=1e-300), 0.5)
    gamma = gamma.clamp(0.0, 1.0)
    point = gamma[:, None] * g1 + (1.0 - gamma[:, None]) * g2
    norms: Tensor = torch.linalg.vector_norm(point, dim=-1)
    return norms


def _refined_minimum(objective: int | None, grid: int = 401) -> tuple[list[float], float]:
    """Minimise L_i (objective i) or L1 + L2 (None): grid search, then L-BFGS-B."""
    from scipy.optimize import minimize

    def f(x: Tensor) -> Tensor:
        v = losses(x)
        return v.sum(-1) if objective is None else v[..., objective]

    axis = torch.linspace(-11.0, 11.0, grid, dtype=torch.float64)
    mesh = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    start = mesh[int(torch.argmin(f(mesh)))]

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = f(x)
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad.numpy()

    res = minimize(fun, start.numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-12})
    best = res.x if res.fun <= float(f(start)) else start.numpy()
    return [float(v) for v in best], float(f(torch.tensor(best, dtype=torch.float64)))


@functools.lru_cache(maxsize=1)
def task_infima() -> tuple[float, float]:
    """``inf L_1`` and ``inf L_2`` over the plane (numerically; both about -20)."""
    return _refined_minimum(0)[1], _refined_minimum(1)[1]


@functools.lru_cache(maxsize=1)
def global_minimum() -> tuple[tuple[float, float], float]:
    """The minimiser and the minimum of ``L_1 + L_2`` (numerically)."""
    x, value = _refined_minimum(None)
    return (x[0], x[1]), value


def build_strategy(name: str, seed: int = 0) -> Strategy:
    """A fresh instance of the registered strategy ``name`` for this toy (K = 2)."""
    # the context gives ``seed`` to the strategies that take one
    return mtlkit.get_strategy(name, context=mtlkit.Context(seed=seed), **OPTIONS.get(name, {}))


@dataclass
class RunResult:
    """Where one run (one strategy, one start point) ends."""

    strategy: str
    start: tuple[float, float]
    end: tuple[float, float]
    losses: tuple[float, float]
    total: float
    min_norm: float
    pareto_stationary: bool
    low_loss: bool


@dataclass
class ToyResult:
    """All runs, their trajectories, and the settings that produced them."""

    runs: list[RunResult]
    trajectories: dict[str, np.ndarray]  # strategy -> (steps + 1, starts, 2)
    seconds_per_call: dict[str, float]  # strategy -> mean wall time of one combine call
    settings: dict[str, Any] = field(default_factory=dict)

    def by_strategy(self) -> dict[str, list[RunResult]]:
        out: dict[str, list[RunResult]] = {}
        for r in self.runs:
            out.setdefault(r.strategy, []).append(r)
        return out


def run(
    strategies: Sequence[str] | None = None,
    starts: Sequence[tuple[float, float]] = STARTS,
    steps: int = 1000,
    lr: float = 0.1,
    final_lr_ratio: float = 0.01,
    seed: int = 0,
    tol: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.9),
) -> ToyResult:
    """Optimise from every start with every strategy; return end points and trajectories.

    Args:
        strategies: registry names (default: all registered strategies).
        starts: start points.
        steps: optimisation steps per run.
        lr: initial Adam learning rate (cosine decay to ``lr * final_lr_ratio``).
        final_lr_ratio: last learning rate relative to ``lr``.
        seed: seed of the seeded strategies (PCGrad, GradVac, GradDrop, RLW).
        tol: threshold on the min-norm point of the gradients' hull (Pareto-stationarity).
        betas: Adam's moment rates (see the module docstring for the choice of 0.9).

    Runs on one intra-op thread (restored afterwards): the tensors are tiny.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(strategies, starts, steps, lr, final_lr_ratio, seed, tol, betas)
    finally:
        torch.set_num_threads(threads)


def _run(
    strategies: Sequence[str] | None,
    starts: Sequence[tuple[float, float]],
    steps: int,
    lr: float,
    final_lr_ratio: float,
    seed: int,
    tol: float,
    betas: tuple[float, float],
) -> ToyResult:
    names = list(mtlkit.list_strategies() if strategies is None else strategies)
    n_starts = len(starts)
    runs = [(name, s) for name in names for s in range(n_starts)]
    instances = [build_strategy(name, seed) for name, _ in runs]
    own_params = [list(getattr(st, "parameters", lambda: [])()) for st in instances]
    flat_params = [p for ps in own_params for p in ps]

    x = torch.tensor([starts[s] for _, s in runs], dtype=torch.float64)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr, betas=betas)
    side = torch.optim.Adam(flat_params, lr=lr, betas=betas) if flat_params else None
    low = torch.tensor(task_infima(), dtype=torch.float64)

    traj = np.empty((steps + 1, len(runs), 2))
    traj[0] = x.detach().numpy()
    spent = dict.fromkeys(names, 0.0)
    update = torch.empty_like(x)
    for step in range(steps):
        rate = final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * rate
        values, jac = value_and_jacobian(x)
        shifted = values - low
        if side is not None:
            side.zero_grad()
        for n, (name, _) in enumerate(runs):
            strategy = instances[n]
            tick = time.perf_counter()
            update[n] = strategy.combine(jac[n], shifted[n])
            spent[name] += time.perf_counter() - tick
            if own_params[n]:
                strategy.weighted_loss(shifted[n]).backward()  # type: ignore[attr-defined]
        x.grad = update.clone()
        optimizer.step()
        if side is not None:
            for group in side.param_groups:
                group["lr"] = lr * rate
            side.step()
        traj[step + 1] = x.detach().numpy()

    end = x.detach()
    values, jac = value_and_jacobian(end)
    norms = min_norm_hull(jac)
    results = []
    for n, (name, s) in enumerate(runs):
        total = float(values[n].sum())
        results.append(
            RunResult(
                strategy=name,
                start=(float(starts[s][0]), float(starts[s][1])),
                end=(float(end[n, 0]), float(end[n, 1])),
                losses=(float(values[n, 0]), float(values[n, 1])),
                total=total,
                min_norm=float(norms[n]),
                pareto_stationary=bool(norms[n] < tol),
                low_loss=total < LOW_LOSS,
            )
        )
    trajectories = {
        name: traj[:, i * n_starts : (i + 1) * n_starts].copy() for i, name in enumerate(names)
    }
    per_call = {name: spent[name] / max(steps * n_starts, 1) for name in names}
    settings = dict(
        steps=steps,
        lr=lr,
        final_lr_ratio=final_lr_ratio,
        seed=seed,
        tol=tol,
        betas=list(betas),
        starts=[list(s) for s in starts],
        task_infima=list(task_infima()),
        options=OPTIONS,
    )
    return ToyResult(results, trajectories, per_call, settings)


# ----------------------------------------------------------------------------- outputs

_START_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple")


def plot(result: ToyResult, path: Path) -> None:
    """Trajectories over the contours of L1 + L2, one panel per strategy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = list(result.trajectories)
    cols = 5
    rows = math.ceil((len(names) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    axis = torch.linspace(-11.0, 11.0, 221, dtype=torch.float64)
    mesh = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    total = losses(mesh).sum(-1).numpy()
    levels = np.linspace(-30.0, 16.0, 24)
    (mx, my), _ = global_minimum()
    runs = result.by_strategy()
    starts = result.settings["starts"]
    for i, ax in enumerate(axes.flat):
        ax.set_xlim(-11, 11)
        ax.set_ylim(-11, 11)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if i >= len(names):
            ax.axis("off")
            continue
        name = names[i]
        ax.contour(axis, axis, total, levels=levels, cmap="viridis", linewidths=0.6)
        ax.plot([-7, 7], [my, my], color="0.6", linewidth=3, alpha=0.5, zorder=1)
        ax.plot(mx, my, marker="*", color="k", markersize=9, zorder=5)
        path_xy = result.trajectories[name]
        for s in range(path_xy.shape[1]):
            colour = _START_COLOURS[s % len(_START_COLOURS)]
            ax.plot(path_xy[:, s, 0], path_xy[:, s, 1], color=colour, linewidth=1.2, zorder=3)
            ax.plot(*path_xy[0, s], marker="o", color=colour, markersize=4, zorder=4)
            r = runs[name][s]
            ax.plot(
                *path_xy[-1, s],
                marker="x" if r.pareto_stationary else "s",
                color="k",
                markersize=5,
                mew=1.2,
                zorder=6,
            )
        ps = sum(r.pareto_stationary for r in runs[name])
        low = sum(r.low_loss for r in runs[name])
        ax.set_title(f"{name}  (PS {ps}/{len(starts)}, low {low}/{len(starts)})", fontsize=9)
    legend_ax = axes.flat[len(names)]
    handles = [
        Line2D([], [], color=_START_COLOURS[s % 5], marker="o", label=f"start {tuple(p)}")
        for s, p in enumerate(starts)
    ]
    handles += [
        Line2D([], [], color="k", marker="x", linestyle="", label="end, Pareto-stationary"),
        Line2D([], [], color="k", marker="s", linestyle="", label="end, not stationary"),
        Line2D([], [], color="k", marker="*", linestyle="", label="min of L1 + L2"),
        Line2D([], [], color="0.6", linewidth=3, alpha=0.5, label="Pareto segment"),
    ]
    legend_ax.legend(handles=handles, loc="center", fontsize=8, frameon=False)
    fig.suptitle(
        f"Conflict toy: contours of L1 + L2; Adam, lr {result.settings['lr']} (cosine), "
        f"{result.settings['steps']} steps",
        fontsize=11,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    # A 128-colour palette keeps the file small (~0.2 MB instead of ~0.8 MB) and the
    # lines crisp; Pillow comes with matplotlib.
    from PIL import Image

    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)


def _markdown(result: ToyResult) -> str:
    st = result.settings
    (mx, my), best = global_minimum()
    starts = [tuple(s) for s in st["starts"]]
    lines = [
        "# Conflict toy: where each run ends",
        "",
        "Written by `python -m examples.conflict_toy` (see its docstring for the problem).",
        f"Adam, lr {st['lr']} with cosine decay to {st['lr'] * st['final_lr_ratio']:g}, "
        f"{st['steps']} steps, seed {st['seed']}.",
        f"Global minimum of L1 + L2: {best:.4f} at ({mx:.4f}, {my:.4f}); infima of the "
        f"tasks: L1 {st['task_infima'][0]:.4f}, L2 {st['task_infima'][1]:.4f}.",
        "",
        "Each cell: `L1, L2` at the end point; **PS** when the end point is Pareto-stationary "
        f"(min-norm point of the hull of the two gradients below {st['tol']:g}), *low* when "
        f"L1 + L2 < {LOW_LOSS:g} (the bottom basin). *Worst gap*: the largest L1 + L2 over "
        "the starts minus the global minimum (0: every run ends at the minimum of the sum). "
        "*µs/call*: mean wall time of one `combine` call on this machine.",
        "",
        "| strategy | "
        + " | ".join(f"start {s}" for s in starts)
        + " | PS | low | worst gap | µs/call |",
        "|---" * (len(starts) + 5) + "|",
    ]
    for name, runs in result.by_strategy().items():
        cells = []
        for r in runs:
            tags = [t for t, on in (("**PS**", r.pareto_stationary), ("*low*", r.low_loss)) if on]
            cells.append(f"{r.losses[0]:.2f}, {r.losses[1]:.2f} {' '.join(tags)}".strip())
        ps = sum(r.pareto_stationary for r in runs)
        low = sum(r.low_loss for r in runs)
        gap = max(r.total for r in runs) - best
        micro = 1e6 * result.seconds_per_call[name]
        lines.append(
            f"| `{name}` | " + " | ".join(cells) + f" | {ps}/{len(runs)} | {low}/{len(runs)} "
            f"| {gap:.2f} | {micro:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_outputs(result: ToyResult, out: Path, figure: bool = True) -> list[Path]:
    """Write ``conflict_toy.{png,md,json}`` into ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    (mx, my), best = global_minimum()
    payload = {
        "settings": result.settings,
        "global_minimum": {"x": [mx, my], "value": best},
        "low_loss_threshold": LOW_LOSS,
        "seconds_per_call": result.seconds_per_call,
        "runs": [asdict(r) for r in result.runs],
    }
    paths = [out / "conflict_toy.json", out / "conflict_toy.md"]
    paths[0].write_text(json.dumps(payload, indent=1) + "\n")
    paths[1].write_text(_markdown(result))
    if figure:
        paths.append(out / "conflict_toy.png")
        plot(result, paths[-1])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.conflict_toy", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--strategies", nargs="*", default=None, help="default: all")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--final-lr-ratio", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta2", type=float, default=0.9, help="Adam's second-moment rate")
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    tick = time.perf_counter()
    result = run(
        args.strategies,
        steps=args.steps,
        lr=args.lr,
        final_lr_ratio=args.final_lr_ratio,
        seed=args.seed,
        tol=args.tol,
        betas=(0.9, args.beta2),
    )
    took = time.perf_counter() - tick
    for path in write_outputs(result, args.out, figure=not args.no_figure):
        print(f"wrote {path}")
    print(f"{len(result.runs)} runs in {took:.1f} s")


if __name__ == "__main__":
    main()
