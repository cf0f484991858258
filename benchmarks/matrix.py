"""The miniBERT quality matrix v2: paired seeds, intervals, the seed paper's claims, and a
setting where the choice of strategy should matter.

Every row is a set of options of ``python -m examples.minbert train`` on top of a
*setting*; every row runs with the same seeds as the row it is compared with (its
baseline), so each seed gives one paired difference, and the table reports the mean
difference of the dev overall score with its 95 % confidence interval (Student's t over
the seeds, ``scipy.stats.t``), marked significant when the interval excludes zero.

Settings:

* ``main``: the main job's set-up (the example's defaults: SST cross-entropy, Quora
  Siamese + BCE, STS 5·cos + MSE, round-robin; each row names its strategy).
* ``cosent20``: the same, but STS trains with CoSENT at scale 20, a loss several times
  larger than the other two (the loss-scale imbalance magnitude-balancing strategies are
  meant for).

Rows of ``main``: every registered strategy (``sum``, ``pcgrad`` and ``gradnorm`` with
all seeds; the others first with seed 0 only, a screening, after which the three with the
best *validation* score get all seeds; dev never picks anything; ``--best`` names them
instead, from an earlier screening, and skips this one); the seed paper's claims,
compared with PCGrad, round-robin and BCE (the paper's set-up): Quora with the
cosine-embedding loss instead of BCE, a margin growing from 0 to 0.5 over the run instead of
a fixed 0.5 (compared with the fixed-margin row), and dynamic batch allocation instead of
round-robin. Rows of ``cosent20``: ``sum``, ``pcgrad``, ``gradnorm`` and ``imtl-g``
(compared with ``sum``).

Each run picks its best epoch on the validation split and reports that epoch's dev scores
(dev is the test). The fixed rows run first, seed by seed (every row's seed 0, then every
row's seed 1, ...), then the screening and the best others' seeds, so an interrupted
matrix still has balanced rows; results are appended to
``<out>.json`` after every run and runs already there are skipped, so calling the command
again resumes it. Run from the repository root::

    python benchmarks/matrix.py --budget cpu --out benchmarks/results/matrix-cpu

A longer budget on chosen rows (the best others named, not screened again)::

    python benchmarks/matrix.py --budget cpu-long --rows main/sum,main/mgda --best mgda \\
        --out benchmarks/results/matrix-cpu-long
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

import mtlkit  # noqa: E402
from examples.minbert.cli import build_parser, config_from_args  # noqa: E402
from examples.minbert.train import train  # noqa: E402

METRICS = ("sst_acc", "quora_acc", "sts_pearson", "overall")

#: Budgets: options of the training run that every row shares. ``full`` is the main job
#: exactly (its epochs and steps, full training, validation and dev sets); ``cpu`` is what
#: a 2-core CPU can run for the whole matrix in about two hours (2 epochs, so that dynamic
#: allocation gets one update; Quora's cosine threshold, under a pairwise loss, fitted on
#: 2000 training pairs instead of all 14.4k); ``cpu-long`` is 2.3x its steps (a quarter of
#: the main job's) scored on the full validation and dev sets, for checking its findings on
#: a few rows (about 9 minutes a run on a 2-core CPU); ``tiny`` is a smoke test of the
#: pipeline (random weights).
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": dict(
        epochs=2,
        steps_per_epoch=30,
        dev_limit=400,
        val_limit=200,
        eval_train_limit=50,
        calibrate_limit=2000,
    ),
    "cpu-long": dict(epochs=2, steps_per_epoch=70, eval_train_limit=50, calibrate_limit=2000),
    "tiny": dict(
        epochs=2,
        steps_per_epoch=2,
        train_limit=16,
        dev_limit=16,
        val_limit=16,
        eval_train_limit=8,
        init="tiny-random",
    ),
}

SETTINGS: dict[str, tuple[str, ...]] = {
    "main": (),
    "cosent20": ("--sts-loss", "cosent", "--sts-loss-arg", "scale=20"),
}
PAPER_THREE = ("sum", "pcgrad", "gradnorm")
COSENT_STRATEGIES = ("sum", "pcgrad", "gradnorm", "imtl-g")
#: Strategies run once but never chosen as a "best other": ``weighted`` with uniform
#: weights is ``sum``, and ``mean`` is ``sum / K``, which AdamW (invariant to the scale of
#: the gradient up to its epsilon) turns into the same updates.
NOT_SCREENED = ("mean", "weighted")
#: How many of the screened strategies get every seed.
BEST_OTHERS = 3


@dataclass(frozen=True)
class Row:
    """One row of the matrix: CLI options on top of its setting's."""

    key: str  # "setting/name", unique
    setting: str
    args: tuple[str, ...]
    baseline: str | None  # the key of the row its paired differences are taken against
    what: str  # the question the row answers (shown in the table)

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]


def rows(total_steps: int) -> list[Row]:
    """Every row the matrix can run (which of them get all seeds: :func:`plan`)."""
    out = [
        Row(
            f"main/{s}",
            "main",
            ("--strategy", s),
            None if s == "sum" else "main/sum",
            "the seed paper's strategy" if s == "pcgrad" else "strategy vs sum",
        )
        for s in mtlkit.list_strategies()
    ]
    # The claim rows are taken against PCGrad (the paper's strategy), named explicitly so
    # that they mean the same whatever the example's default strategy is.
    pcgrad = ("--strategy", "pcgrad")
    cosine = (*pcgrad, "--quora-loss", "cosine-embedding")
    out += [
        Row(
            "main/quora-cosine-embedding",
            "main",
            cosine,
            "main/pcgrad",
            "Quora: cosine-embedding loss (margin 0.5) vs BCE",
        ),
        Row(
            "main/quora-dynamic-margin",
            "main",
            (*cosine, "--margin", "0", "--margin-end", "0.5", "--margin-steps", str(total_steps)),
            "main/quora-cosine-embedding",
            "Quora: margin 0 -> 0.5 over the run vs a fixed 0.5",
        ),
        Row(
            "main/dynamic-allocation",
            "main",
            (*pcgrad, "--scheduler", "dynamic"),
            "main/pcgrad",
            "dynamic batch allocation vs round-robin",
        ),
    ]
    out += [
        Row(
            f"cosent20/{s}",
            "cosent20",
            ("--strategy", s),
            None if s == "sum" else "cosent20/sum",
            "strategy vs sum, STS loss ~several x the others",
        )
        for s in COSENT_STRATEGIES
    ]
    return out


def screened_best(results: list[dict[str, Any]], count: int = BEST_OTHERS) -> list[str] | None:
    """The ``count`` screened strategies (every one but the paper's three, seed 0 in
    ``main``) with the best validation overall score, or ``None`` until all are screened."""
    others = [s for s in mtlkit.list_strategies() if s not in (*PAPER_THREE, *NOT_SCREENED)]
    val = {
        r["key"].split("/", 1)[1]: r["val"]["overall"]
        for r in results
        if r["seed"] == 0 and r["key"] in {f"main/{s}" for s in others}
    }
    if len(val) < len(others):
        return None
    return sorted(val, key=lambda s: -val[s])[:count]


def plan(
    all_rows: list[Row], seeds: int, results: list[dict[str, Any]], best: list[str] | None = None
) -> list[tuple[Row, int]]:
    """The (row, seed) runs in the order they run: first every fixed row (the paper's
    three, the claims, the other settings) seed by seed, then the screening (seed 0 of
    each other strategy), then, once it is complete, the other seeds of the best
    ``BEST_OTHERS`` on validation. An interrupted matrix thus has the fixed rows complete
    or balanced first. With ``best`` given (an earlier screening's choice) there is no
    screening: those strategies' rows join the fixed ones, seed by seed, and the other
    screened rows do not run."""
    if best is not None:
        chosen = [r for r in all_rows if not is_screened(r) or r.name in best]
        return [(row, seed) for seed in range(seeds) for row in chosen]
    named = set(screened_best(results) or [])
    fixed = [r for r in all_rows if not is_screened(r)]
    screened = [r for r in all_rows if is_screened(r)]
    out = [(row, seed) for seed in range(seeds) for row in fixed]
    out += [(row, 0) for row in screened]
    out += [(row, seed) for seed in range(1, seeds) for row in screened if row.name in named]
    return out


def budget_steps(budget: dict[str, Any]) -> int:
    """The training steps of a run under ``budget``: its epochs and steps per epoch, the
    example's defaults where the budget keeps them."""
    defaults = config_from_args(build_parser().parse_args(["train"]))
    epochs = budget.get("epochs", defaults.epochs)
    return int(epochs) * int(budget.get("steps_per_epoch", defaults.steps_per_epoch))


def is_screened(row: Row) -> bool:
    """A ``main`` strategy row other than the paper's three: seed 0 first, more if it is
    among the best on validation."""
    others = set(mtlkit.list_strategies()) - set(PAPER_THREE)
    return row.setting == "main" and row.args[:1] == ("--strategy",) and row.name in others


def config_for(row: Row, seed: int, budget: dict[str, Any], device: str, scratch: Path) -> Any:
    argv = ["train", *SETTINGS[row.setting], *row.args, "--device", device, "--seed", str(seed)]
    cfg = config_from_args(build_parser().parse_args(argv))
    if cfg.strategy == "weighted":
        cfg.strategy_options = {"weights": [1.0] * len(cfg.tasks)}
    return dataclasses.replace(
        cfg,
        out_dir=str(scratch / row.key.replace("/", "-") / f"seed{seed}"),
        progress=False,
        overwrite=True,  # a rerun of an interrupted matrix replaces its own scratch run
        **budget,
    )


def run_one(row: Row, seed: int, budget: dict[str, Any], device: str, scratch: Path) -> dict:
    cfg = config_for(row, seed, budget, device, scratch)
    t0 = time.perf_counter()
    run = train(cfg)
    wall = time.perf_counter() - t0
    chosen = run.history[(run.best_epoch or len(run.history)) - 1]
    steps = cfg.epochs * int(cfg.steps_per_epoch or 1)
    summaries = [h["conflicts"] for h in run.history if h.get("conflicts")]
    return {
        "key": row.key,
        "seed": seed,
        "args": list(row.args),
        "best_epoch": run.best_epoch,
        "dev": {m: chosen["dev"][m] for m in METRICS},
        "val": {m: chosen["val"][m] for m in METRICS},
        "dev_last": {m: run.history[-1]["dev"][m] for m in METRICS},
        "conflict_fraction": _weighted(summaries, "conflict_fraction"),
        "norm_ratio": _weighted(summaries, "norm_ratio"),
        "min_cosine": min_cosine(Path(cfg.out_dir)),
        "wall_s": wall,
        "step_s": sum(h["seconds"] for h in run.history) / steps,
    }


def execute(
    next_runs: Callable[[list[dict[str, Any]]], list[tuple[Row, int]]],
    results: list[dict[str, Any]],
    store: Path,
    budget: dict[str, Any],
    *,
    device: str,
    scratch: Path,
    jobs: int = 1,
    max_runs: int | None = None,
) -> None:
    """Run what ``next_runs(results)`` plans and is not in ``results`` yet, ``jobs`` at a
    time, appending each record to ``results`` and rewriting ``store`` after every run (so
    an interrupted call loses at most the runs in flight). The plan is asked again after
    every run, so runs that depend on earlier ones (the screening) join as soon as they
    can. A run that raises is reported and not retried in this call."""
    started = 0
    failed: set[tuple[str, int]] = set()
    pool = None
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        budget = {**budget, "threads": threads}
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    running: dict[Future[dict[str, Any]], tuple[str, int]] = {}
    try:
        while True:
            busy = {(r["key"], r["seed"]) for r in results} | failed | set(running.values())
            todo = [(row, seed) for row, seed in next_runs(results) if (row.key, seed) not in busy]
            if pool is None:
                if not todo or (max_runs is not None and started >= max_runs):
                    return
                row, seed = todo[0]
                print(f"[{len(results) + 1}] {row.key} seed {seed}", flush=True)
                started += 1
                try:
                    results.append(run_one(row, seed, budget, device, scratch))
                    store.write_text(json.dumps(results, indent=1))
                except Exception as err:  # one failing run must not lose the others
                    print(f"  failed: {type(err).__name__}: {err}", flush=True)
                    failed.add((row.key, seed))
                continue
            while todo and len(running) < jobs and (max_runs is None or started < max_runs):
                row, seed = todo.pop(0)
                print(f"[{len(results) + len(running) + 1}] {row.key} seed {seed}", flush=True)
                started += 1
                running[pool.submit(run_one, row, seed, budget, device, scratch)] = (row.key, seed)
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                try:
                    results.append(future.result())
                    store.write_text(json.dumps(results, indent=1))
                except Exception as err:
                    print(f"  {key} failed: {type(err).__name__}: {err}", flush=True)
                    failed.add(key)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def min_cosine(run_dir: Path) -> float | None:
    """The mean over a run's steps of the most negative pairwise cosine between task
    gradients (how strong the conflicts are, where the conflict share says how often),
    from its ``gradients.json``; ``None`` without one."""
    path = run_dir / "gradients.json"
    if not path.exists():
        return None
    cosines = [c for c in json.loads(path.read_text()).get("cosines", []) if c]
    return statistics.fmean(min(c) for c in cosines) if cosines else None


def backfill(results: list[dict[str, Any]], scratch: Path) -> None:
    """Fill ``min_cosine`` and ``dev_last`` of records written before they were recorded,
    from their scratch run folders where these still exist."""
    for r in results:
        run_dir = scratch / r["key"].replace("/", "-") / f"seed{r['seed']}"
        if "min_cosine" not in r:
            r["min_cosine"] = min_cosine(run_dir)
        history = run_dir / "history.json"
        if "dev_last" not in r and history.exists():
            last = json.loads(history.read_text())[-1]["dev"]
            r["dev_last"] = {m: last[m] for m in METRICS}


def _weighted(summaries: list[dict[str, Any]], key: str) -> float | None:
    """A per-epoch telemetry figure averaged over the run's steps (``None`` without
    per-task gradients, e.g. a loss weighting)."""
    pairs = [(s.get(key), s.get("gradient_steps") or 0) for s in summaries]
    pairs = [(v, n) for v, n in pairs if v is not None and n]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def paired(values: list[float], baseline: list[float]) -> dict[str, float]:
    """Mean paired difference and its two-sided 95 % Student-t interval."""
    from scipy import stats

    d = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(d)
    mean = statistics.fmean(d)
    if n < 2:
        return {"n": n, "mean": mean, "low": math.nan, "high": math.nan}
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(d) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def summarize(all_rows: list[Row], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key: dict[str, dict[int, dict]] = {}
    for r in results:
        by_key.setdefault(r["key"], {})[r["seed"]] = r
    out = []
    for row in all_rows:
        runs = by_key.get(row.key)
        if not runs:
            continue
        summary: dict[str, Any] = {"row": row, "seeds": sorted(runs)}
        for m in METRICS:
            vals = [runs[s]["dev"][m] for s in sorted(runs)]
            summary[m] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        lasts = [runs[s]["dev_last"]["overall"] for s in sorted(runs) if "dev_last" in runs[s]]
        if len(lasts) == len(runs):
            sd = statistics.stdev(lasts) if len(lasts) > 1 else 0.0
            summary["overall_last"] = (statistics.fmean(lasts), sd)
        fractions = [
            r["conflict_fraction"] for r in runs.values() if r["conflict_fraction"] is not None
        ]
        summary["conflict_fraction"] = statistics.fmean(fractions) if fractions else None
        ratios = [r["norm_ratio"] for r in runs.values() if r.get("norm_ratio") is not None]
        summary["norm_ratio"] = statistics.fmean(ratios) if ratios else None
        mins = [r["min_cosine"] for r in runs.values() if r.get("min_cosine") is not None]
        summary["min_cosine"] = statistics.fmean(mins) if mins else None
        summary["step_s"] = statistics.fmean(r["step_s"] for r in runs.values())
        base = by_key.get(row.baseline or "", {})
        common = sorted(set(runs) & set(base))
        if row.baseline and common:
            summary["diff"] = {
                m: paired([runs[s]["dev"][m] for s in common], [base[s]["dev"][m] for s in common])
                for m in METRICS
            }
            if all("dev_last" in r for r in (*runs.values(), *base.values())):
                summary["diff_last"] = {
                    m: paired(
                        [runs[s]["dev_last"][m] for s in common],
                        [base[s]["dev_last"][m] for s in common],
                    )
                    for m in METRICS
                }
            summary["step_ratio"] = statistics.fmean(
                runs[s]["step_s"] / base[s]["step_s"] for s in common
            )
        out.append(summary)
    return out


def _diff_cell(d: dict[str, float]) -> str:
    if d["n"] < 2:
        return f"{d['mean']:+.4f} (n = 1)"
    mark = " **sig.**" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{mark}"


def markdown(summaries: list[dict[str, Any]], header: str) -> str:
    lines = [header, ""]
    for setting in SETTINGS:
        rows_here = [s for s in summaries if s["row"].setting == setting]
        if not rows_here:
            continue
        lines += [
            f"### Setting `{setting}`"
            + (f": `{' '.join(SETTINGS[setting])}`" if SETTINGS[setting] else ""),
            "",
            "| row | compared with | seeds | dev overall, last epoch | Δ last epoch, 95 % CI | "
            "Δ SST | Δ Quora | Δ STS r | dev overall, epoch chosen on val | Δ chosen epoch, "
            "95 % CI | conflict steps | min cosine | max/min norm | step time ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in rows_here:
            row, diff, last = s["row"], s.get("diff"), s.get("diff_last")
            cf = s["conflict_fraction"]
            nr = s["norm_ratio"]
            ol = s.get("overall_last")
            cells = [
                f"`{row.name}`",
                f"`{row.baseline.split('/', 1)[1]}`" if row.baseline else "—",
                str(len(s["seeds"])),
                f"{ol[0]:.4f} ± {ol[1]:.4f}" if ol else "—",
                _diff_cell(last["overall"]) if last else "—",
                *(f"{last[m]['mean']:+.4f}" if last else "—" for m in METRICS[:3]),
                f"{s['overall'][0]:.4f} ± {s['overall'][1]:.4f}",
                _diff_cell(diff["overall"]) if diff else "—",
                "n/a" if cf is None else f"{cf:.0%}",
                "n/a" if s["min_cosine"] is None else f"{s['min_cosine']:+.3f}",
                "n/a" if nr is None else f"{nr:.1f}",
                f"{s['step_ratio']:.2f}" if "step_ratio" in s else "—",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    """The paired differences with their intervals, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (setting, [s for s in summaries if s["row"].setting == setting and s.get("diff")])
        for setting in SETTINGS
    ]
    panels = [(k, v) for k, v in panels if v]
    if not panels:
        return
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.5 + 0.32 * sum(len(v) + 2 for _, v in panels)),
        gridspec_kw={"height_ratios": [len(v) + 2 for _, v in panels]},
        squeeze=False,
    )
    for ax, (setting, items) in zip(axes[:, 0], panels, strict=True):
        ys = range(len(items))
        d = [s.get("diff_last", s["diff"])["overall"] for s in items]
        err = [
            [x["mean"] - x["low"] if x["n"] > 1 else 0 for x in d],
            [x["high"] - x["mean"] if x["n"] > 1 else 0 for x in d],
        ]
        # Rows with an interval (n > 1) solid; single-seed screening runs hollow.
        many = [x["n"] > 1 for x in d]
        for flag, style in ((True, {"fmt": "o"}), (False, {"fmt": "o", "mfc": "none"})):
            idx = [i for i in ys if many[i] == flag]
            if idx:
                ax.errorbar(
                    [d[i]["mean"] for i in idx],
                    idx,
                    xerr=[[err[0][i] for i in idx], [err[1][i] for i in idx]],
                    capsize=3,
                    color="C0",
                    **style,
                )
        ax.axvline(0.0, color="grey", lw=1)
        labels = [
            f"{s['row'].name} vs {s['row'].baseline.split('/', 1)[1]} (n={len(s['seeds'])})"
            for s in items
        ]
        ax.set_yticks(list(ys), labels)
        ax.set_ylim(-1, len(items))
        ax.set_title(f"setting {setting}", loc="left")
        ax.set_xlabel("dev overall, last epoch: paired difference, 95% CI (hollow: one seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/matrix")
    ap.add_argument("--scratch", default="runs/matrix")
    ap.add_argument(
        "--best",
        default=None,
        help="comma-separated strategies taken as the best others (from an earlier "
        "screening on validation); skips the screening",
    )
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs at a time (processes; e.g. 8 on one H200)"
    )
    ap.add_argument("--report-only", action="store_true", help="write the table, train nothing")
    args = ap.parse_args(argv)
    budget = BUDGETS[args.budget]
    all_rows = rows(budget_steps(budget))
    best = None
    if args.best is not None:
        best = [b for b in args.best.split(",") if b]
        screenable = {r.name for r in all_rows if is_screened(r)}
        if not set(best) <= screenable:
            ap.error(
                f"--best: unknown {sorted(set(best) - screenable)}; known: {sorted(screenable)}"
            )
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - {r.key for r in all_rows}
        if unknown:
            ap.error(f"unknown rows {sorted(unknown)}; known: {[r.key for r in all_rows]}")
        all_rows = [r for r in all_rows if r.key in wanted]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    results: list[dict] = json.loads(store.read_text()) if store.exists() else []
    if not args.report_only:
        execute(
            lambda done: plan(all_rows, args.seeds, done, best),
            results,
            store,
            budget,
            device=args.device,
            scratch=Path(args.scratch),
            jobs=args.jobs,
            max_runs=args.max_runs,
        )
    backfill(results, Path(args.scratch))
    if results:
        store.write_text(json.dumps(results, indent=1))  # with what backfill found
    summaries = summarize(all_rows, results)
    best = best if best is not None else screened_best(results)
    command = shlex.join(argv if argv is not None else sys.argv[1:])
    header = (
        f"## miniBERT quality matrix v2 (`{args.budget}` budget)\n\n"
        f"Command: `python benchmarks/matrix.py {command}`\n\n"
        f"Machine: {machine()}\n\nBudget: {json.dumps(budget) if budget else 'none'} on top of the "
        "main job's options. Scores: dev (the test) after the last epoch (no selection), and "
        "at the epoch chosen on the validation split. Difference: the row's dev overall "
        "minus its baseline's, paired by seed, "
        "mean and 95 % Student-t interval; **sig.** when the interval excludes 0. Conflict "
        "steps: share of steps with a pair of task gradients at a negative cosine; min "
        "cosine: the mean over steps of the most negative pairwise cosine; max/min "
        "norm: mean ratio of the largest to the smallest task-gradient norm.\n\n"
        + (
            f"Best others named (`--best`, from an earlier screening on validation): {best}."
            if args.best is not None
            else f"Screening (seed 0, validation overall): best others = {best or 'not complete'}."
        )
    )
    text = markdown(summaries, header)
    out.with_suffix(".md").write_text(text)
    plot(summaries, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
