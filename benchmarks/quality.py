"""The miniBERT quality matrix: every strategy, one budget, the same seeds.

Trains the miniBERT example (embedded all-MiniLM-L6-v2) with each strategy and writes a
table — SST accuracy, Quora accuracy, STS Pearson, overall score (mean ± spread over
seeds), the share of training steps whose task gradients conflicted, training wall time,
and step time relative to ``sum`` — plus a plot.

* ``--quick``: a small budget (a slice of each training set, a slice of each dev set)
  that finishes in about an hour on a 2-core CPU: 3 seeds for ``sum``, ``pcgrad`` and
  ``gradnorm`` (the seed paper's three), 1 seed for the rest of the catalogue.
* default (full): full training and dev sets, 3 seeds for every strategy; for a GPU.

Results are appended to ``<out>.json`` after every run, and runs already there are skipped,
so an interrupted matrix resumes where it stopped. Run from the repository root::

    python benchmarks/quality.py --quick --out benchmarks/results/quality-quick-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

import mtlkit  # noqa: E402
from examples.minbert.train import TrainConfig, train  # noqa: E402

PAPER_THREE = ("sum", "pcgrad", "gradnorm")
METRICS = ("sst_acc", "quora_acc", "sts_pearson", "overall")

QUICK: dict[str, Any] = dict(
    epochs=1,
    steps_per_epoch=60,
    train_limit=4000,
    dev_limit=400,
    val_limit=400,
    eval_train_limit=200,
    max_length=64,
)
FULL: dict[str, Any] = dict(
    epochs=3,
    steps_per_epoch=500,
    batch_size=32,
    eval_train_limit=1000,
    max_length=128,
)


def strategy_options(name: str, num_tasks: int) -> dict[str, Any]:
    if name == "weighted":
        return {"weights": [1.0] * num_tasks}
    return {}


def run_one(name: str, seed: int, budget: dict[str, Any], device: str, scratch: Path) -> dict:
    budget = dict(budget)
    cfg = TrainConfig(
        out_dir=str(scratch / f"{name}-{seed}"),
        strategy=name,
        seed=seed,
        device=device,
        progress=False,
        overwrite=True,  # a rerun of an interrupted matrix replaces its own scratch runs
        **budget,
    )  # the main job's tasks, structures and losses
    cfg.strategy_options = strategy_options(name, len(cfg.tasks))
    t0 = time.perf_counter()
    history = train(cfg).history
    wall = time.perf_counter() - t0
    last = history[-1]
    train_seconds = sum(r["seconds"] for r in history)
    steps = cfg.epochs * int(cfg.steps_per_epoch or 1)
    return {
        "strategy": name,
        "seed": seed,
        **{m: last["dev"][m] for m in METRICS},
        "conflict_fraction": conflict_fraction(history),
        "wall_s": wall,
        "step_s": train_seconds / steps,
    }


def conflict_fraction(history: list[dict[str, Any]]) -> float | None:
    """The share of a run's steps whose per-task gradients had a conflicting pair (a
    negative cosine), from its history rows (each epoch's ``conflicts`` summary); ``None``
    for a run without per-task gradients (a loss weighting, a frozen encoder)."""
    rows = [r["conflicts"] for r in history if r.get("conflicts")]
    counted = [(c["conflict_fraction"], c["gradient_steps"]) for c in rows]
    total = sum(n for f, n in counted if f is not None)
    if not total:
        return None
    return sum(f * n for f, n in counted if f is not None) / total


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    names = list(dict.fromkeys(r["strategy"] for r in results))
    sum_step = (
        statistics.mean(r["step_s"] for r in results if r["strategy"] == "sum")
        if any(r["strategy"] == "sum" for r in results)
        else float("nan")
    )
    for n in names:
        rs = [r for r in results if r["strategy"] == n]
        row: dict[str, Any] = {"strategy": n, "seeds": len(rs)}
        for m in METRICS:
            vals = [r[m] for r in rs]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[m] = (statistics.mean(vals), spread)
        fractions = [r["conflict_fraction"] for r in rs if r.get("conflict_fraction") is not None]
        row["conflict_fraction"] = (
            (statistics.mean(fractions), statistics.stdev(fractions) if len(fractions) > 1 else 0.0)
            if fractions
            else None
        )
        row["wall_s"] = statistics.mean(r["wall_s"] for r in rs)
        row["step_ratio"] = statistics.mean(r["step_s"] for r in rs) / sum_step
        rows.append(row)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| strategy | seeds | SST acc | Quora acc | STS Pearson | overall | conflict steps | "
        "wall s | step time / sum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["overall"][0]):
        cells = [f"{r[m][0]:.3f} ± {r[m][1]:.3f}" for m in METRICS]
        conflicts = r.get("conflict_fraction")
        cells.append("n/a" if conflicts is None else f"{conflicts[0]:.0%} ± {conflicts[1]:.0%}")
        lines.append(
            f"| {r['strategy']} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {r['wall_s']:.0f} | {r['step_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -r["overall"][0])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar(
        xs,
        [r["overall"][0] for r in rows],
        yerr=[r["overall"][1] for r in rows],
        color=["tab:orange" if r["strategy"] in PAPER_THREE else "tab:blue" for r in rows],
    )
    ax.set_xticks(list(xs), [r["strategy"] for r in rows], rotation=45, ha="right")
    lo = min(r["overall"][0] for r in rows)
    ax.set_ylim(max(0.0, lo - 0.05), None)
    ax.set_ylabel("dev overall score")
    ax.set_title("miniBERT quality matrix (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the ~1 hour CPU budget")
    ap.add_argument("--strategies", default=None, help="comma-separated (default: all)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for sum/pcgrad/gradnorm")
    ap.add_argument(
        "--other-seeds",
        type=int,
        default=None,
        help="seeds for the other strategies (default: 1 quick, 3 full)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/quality")
    ap.add_argument("--scratch", default="runs/quality")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="override the budget")
    ap.add_argument("--train-limit", type=int, default=None, help="override the budget")
    ap.add_argument("--dev-limit", type=int, default=None, help="override the budget")
    ap.add_argument("--val-limit", type=int, default=None, help="override the budget")
    ap.add_argument("--weights", default=None, help="checkpoint folder (default: embedded)")
    ap.add_argument(
        "--init",
        default="pretrained",
        choices=["pretrained", "tiny-random"],
        help="tiny-random: a smoke run of the pipeline (tests)",
    )
    args = ap.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    for key in ("steps_per_epoch", "train_limit", "dev_limit", "val_limit", "init", "weights"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    names = args.strategies.split(",") if args.strategies else mtlkit.list_strategies()
    names = sorted(
        names,
        key=lambda n: (n not in PAPER_THREE, PAPER_THREE.index(n) if n in PAPER_THREE else 0, n),
    )
    others = args.other_seeds if args.other_seeds is not None else (1 if args.quick else 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    results: list[dict] = json.loads(store.read_text()) if store.exists() else []
    done = {(r["strategy"], r["seed"]) for r in results}
    plan = [(n, s) for n in names for s in range(args.seeds if n in PAPER_THREE else others)]
    for i, (name, seed) in enumerate(plan):
        if (name, seed) in done:
            continue
        print(f"[{i + 1}/{len(plan)}] {name} seed {seed}", flush=True)
        try:
            results.append(run_one(name, seed, budget, args.device, Path(args.scratch)))
        except Exception as err:  # a failing strategy must not lose the others' results
            print(f"  failed: {type(err).__name__}: {err}", flush=True)
            continue
        store.write_text(json.dumps(results, indent=1))
    rows = summarize(results)
    header = (
        f"## miniBERT quality matrix ({'quick' if args.quick else 'full'} budget)\n\n"
        f"Command: `python benchmarks/quality.py {' '.join(argv or sys.argv[1:])}`\n\n"
        f"Machine: {machine()}\n\nBudget: {json.dumps(budget)}; the main job's tasks "
        f"({', '.join(TrainConfig().tasks)}) and their options; AdamW; dev scores after the "
        "last step. Conflict steps: the share of training steps whose per-task gradients "
        "had a pair with a negative cosine (from each run's history; n/a: a loss weighting, "
        "which forms no per-task gradients)."
    )
    text = markdown(rows, header)
    out.with_suffix(".md").write_text(text)
    plot(rows, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
