"""Choose the miniBERT main job's defaults on the validation split, never on dev.

Runs every combination of the given options (``--grid OPTION=V1,V2,...``, options of
``python -m examples.minbert train`` without the dashes), and/or each ``--variant
"OPTIONS"`` on its own (``--variant ""`` is the defaults), with the same seeds, picks the
combination with the best mean *validation* overall score (each run's best epoch is also
chosen on validation), and reports every combination's dev score (the test) beside it —
dev picks nothing. Runs are stored in ``<out>.json`` as they finish and skipped when the
command is called again (resume); ``--jobs`` runs several at a time (e.g. 8 on one H200)::

    python benchmarks/sweep.py --budget full --grid lr=3e-5,5e-5,7e-5 \\
        --grid head-lr=3e-3,1e-2 --seeds 3 --jobs 8 --device cuda \\
        --out benchmarks/results/sweep-h200
    python benchmarks/sweep.py --budget full --seeds 1 --variant "" \\
        --variant "--quora-loss cosine-embedding" --variant "--epochs 5"
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402
from matrix import BUDGETS, Row, execute  # noqa: E402


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["lr=1e-5,2e-5", "head-lr=1e-2"]`` -> ``[("lr", ["1e-5", "2e-5"]), ...]``."""
    grid = []
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--grid {item!r}: expected OPTION=V1,V2,...")
        grid.append((name.lstrip("-"), values.split(",")))
    return grid


def grid_rows(grid: list[tuple[str, list[str]]]) -> list[Row]:
    """One row per combination of the grid's values."""
    names = [name for name, _ in grid]
    return [
        sweep_row(tuple(a for n, v in zip(names, values, strict=True) for a in (f"--{n}", v)))
        for values in itertools.product(*(v for _, v in grid))
    ]


def _label(args: tuple[str, ...]) -> str:
    """``("--quora-loss", "cosine-embedding", "--no-x")`` ->
    ``"quora-loss=cosine-embedding,no-x"``."""
    parts: list[str] = []
    for a in args:
        if a.startswith("--") or not parts:
            parts.append(a.lstrip("-"))
        else:
            parts[-1] += ("=" if "=" not in parts[-1] else " ") + a
    return ",".join(parts) or "defaults"


def sweep_row(args: tuple[str, ...]) -> Row:
    """The row that runs the main job with these options, labelled by them."""
    if any(a in ("--seed", "--out-dir", "--device") for a in args):
        raise ValueError(f"{shlex.join(args)!r}: the sweep sets --seed, --out-dir, --device")
    return Row(f"main/sweep:{_label(args)}", "main", args, None, "sweep")


def variant_rows(variants: list[str]) -> list[Row]:
    """One row per ``--variant "OPTIONS"`` (options as typed on the command line; ``""``
    is the defaults): the one-factor-at-a-time design a grid's product is too big for."""
    return [sweep_row(tuple(shlex.split(text))) for text in variants]


def rank(
    rows: list[Row], results: list[dict[str, Any]], seeds: int | None = None
) -> list[dict[str, Any]]:
    """Each combination's mean validation and dev overall scores, best on validation
    first (dev does not take part in the order).

    With ``seeds``, rows are compared on the same seeds, 0 .. seeds - 1: runs of other
    seeds are left out, and a row that lacks some of them ("complete" False) is ranked
    after every row that has them all, so a mean over fewer or other seeds never wins.
    """
    out = []
    for row in rows:
        runs = [r for r in results if r["key"] == row.key]
        if seeds is not None:
            runs = [r for r in runs if r["seed"] < seeds]
        if not runs:
            continue
        val = [r["val"]["overall"] for r in runs]
        dev = [r["dev"]["overall"] for r in runs]
        out.append(
            {
                "label": row.key.split(":", 1)[1],
                "seeds": len(runs),
                "complete": seeds is None or len(runs) == seeds,
                "val": (statistics.fmean(val), statistics.stdev(val) if len(val) > 1 else 0.0),
                "dev": (statistics.fmean(dev), statistics.stdev(dev) if len(dev) > 1 else 0.0),
                "dev_tasks": {
                    m: statistics.fmean(r["dev"][m] for r in runs)
                    for m in ("sst_acc", "quora_acc", "sts_pearson")
                },
            }
        )
    return sorted(out, key=lambda r: (not r["complete"], -r["val"][0]))


def markdown(ranked: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| options | seeds | val overall (selects) | dev overall (test) | dev SST | dev Quora "
        "| dev STS r |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranked):
        mark = " (chosen)" if i == 0 else ""
        if not r["complete"]:
            mark = " (fewer seeds: not chosen)"
        t = r["dev_tasks"]
        lines.append(
            f"| `{r['label']}`{mark} | {r['seeds']} | {r['val'][0]:.4f} ± {r['val'][1]:.4f} | "
            f"{r['dev'][0]:.4f} ± {r['dev'][1]:.4f} | {t['sst_acc']:.3f} | {t['quora_acc']:.3f} "
            f"| {t['sts_pearson']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", action="append", default=[], metavar="OPTION=V1,V2,...")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"OPTIONS"',
        help='one row with these options ("" = the defaults); with --grid, added to its rows',
    )
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/sweep")
    ap.add_argument("--scratch", default="runs/sweep")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the table from the runs stored, train nothing",
    )
    args = ap.parse_args(argv)
    try:
        rows = (grid_rows(parse_grid(args.grid)) if args.grid else []) + variant_rows(args.variant)
    except ValueError as err:
        ap.error(str(err))
    if not rows:
        ap.error("give --grid OPTION=V1,V2,... or --variant OPTIONS (or both)")
    if len({r.key for r in rows}) != len(rows):
        ap.error("the same combination is given twice")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    results: list[dict[str, Any]] = json.loads(store.read_text()) if store.exists() else []
    if not args.report_only:
        execute(
            lambda done: [(row, seed) for seed in range(args.seeds) for row in rows],
            results,
            store,
            BUDGETS[args.budget],
            device=args.device,
            scratch=Path(args.scratch),
            jobs=args.jobs,
        )
    command = shlex.join(argv if argv is not None else sys.argv[1:])
    header = (
        f"## miniBERT defaults chosen on the validation split (`{args.budget}` budget)\n\n"
        f"Command: `python benchmarks/sweep.py {command}`\n\nMachine: {machine()}\n\n"
        "Every run picks its best epoch on validation; the combination with the best mean "
        f"validation overall over the same seeds (0..{args.seeds - 1}) is chosen; dev (the "
        "test) is shown and chooses nothing."
    )
    text = markdown(rank(rows, results, args.seeds), header)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
