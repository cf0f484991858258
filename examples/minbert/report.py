"""Reports of a run: the per-epoch table, predictions as CSV, confusion matrices, training
curves and ``history.json``. Columns come from the task records and the history rows.

Every file is written atomically (:func:`~examples.minbert.checkpoint.write_atomic`): a
reader or a kill sees the previous version or the new one, and a full disk raises
:class:`~examples.minbert.checkpoint.WriteError` naming the file."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.diagnostics import ConflictLog

from . import metrics
from .checkpoint import WriteError, write_atomic
from .tasks import Task

__all__ = [
    "conflict_line",
    "format_table",
    "plot_conflicts",
    "plot_curves",
    "save_confusions",
    "write_conflicts",
    "write_history",
    "write_predictions",
]

#: Short column labels of metrics (``sts r``, ``sts ρ``); others show the task name alone.
ABBREVIATIONS = {"pearson": "r", "spearman": "ρ"}


def _columns(row: dict[str, Any], tasks: Sequence[str], split: str, first: bool) -> list[str]:
    """The keys of ``row[split]`` of each task: all of them, or each task's first."""
    keys = []
    for name in tasks:
        own = [k for k in row[split] if k.startswith(f"{name}_")]
        keys += own[:1] if first else own
    return keys


def _label(key: str, tasks: Sequence[str]) -> str:
    name = max((t for t in tasks if key.startswith(f"{t}_")), key=len)
    metric = key[len(name) + 1 :]
    return f"{name} {ABBREVIATIONS[metric]}" if metric in ABBREVIATIONS else name


def _cell(value: Any, key: str, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if key == "conflict_fraction":
        return f"{value:>{width}.0%}"
    if key == "norm_ratio":
        return f"{value:>{width}.2f}"
    return f"{value:>{width}.3f}"


def format_table(history: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """One line per epoch: the mean training loss of each task; the first metric of each
    task on the training examples scored; on the validation split (which picks the best
    epoch) the first metric of each task and the overall score; every dev metric and the
    overall dev score (the test); and the epoch's gradient figures: the share of steps
    with a conflicting pair of tasks and the largest mean gradient norm over the smallest.
    A run without a validation split has no val columns, one without per-task gradients
    no gradient columns."""
    if not history:
        return ""
    first = history[0]
    blocks = [
        ("loss", [(t, t) for t in tasks]),
        ("train", [(k, _label(k, tasks)) for k in _columns(first, tasks, "train", first=True)]),
    ]
    if first.get("val") is not None:
        val_keys = _columns(first, tasks, "val", first=True)
        blocks.append(("val", [(k, _label(k, tasks)) for k in val_keys] + [("overall", "overall")]))
    dev_keys = _columns(first, tasks, "dev", first=False)
    blocks.append(("dev", [(k, _label(k, tasks)) for k in dev_keys] + [("overall", "overall")]))
    if first.get("conflicts") is not None:
        blocks.append(("grad", [("conflict_fraction", "conflicts"), ("norm_ratio", "norm ratio")]))
    head, cells = [f"{'epoch':>5} {'time s':>7}"], []
    for block, columns in blocks:
        labels = [label for _, label in columns]
        labels[0] = f"{block} {labels[0]}"
        widths = [max(6, len(label)) for label in labels]
        head.append(" ".join(f"{label:>{w}}" for label, w in zip(labels, widths, strict=True)))
        cells.append((block, [key for key, _ in columns], widths))
    lines = [" | ".join(head)]
    lines.append("-" * len(lines[0]))
    for r in history:
        parts = [f"{r['epoch']:>5} {r['seconds']:>7.0f}"]
        for block, keys, widths in cells:
            values = r.get("conflicts" if block == "grad" else block) or {}
            parts.append(
                " ".join(_cell(values.get(k), k, w) for k, w in zip(keys, widths, strict=True))
            )
        lines.append(" | ".join(parts))
    return "\n".join(lines)


def write_predictions(
    folder: Path,
    tasks: Sequence[Task],
    datasets: Sequence[Any],
    results: Sequence[tuple[np.ndarray, np.ndarray]],
) -> None:
    """``{task}.csv`` with the columns id, prediction, label, in file order."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"could not create {folder}: {exc}", folder) from exc
    for task, ds, (pred, label) in zip(tasks, datasets, results, strict=True):
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["id", "prediction", "label"])
        for ex, p, y in zip(ds.examples, pred.tolist(), label.tolist(), strict=True):
            w.writerow([ex.uid, p, y])
        write_atomic(folder / f"{task.name}.csv", text.getvalue().encode())


def save_confusions(
    folder: Path, tasks: Sequence[Task], results: Sequence[tuple[np.ndarray, np.ndarray]]
) -> None:
    """``{task}-confusion.txt`` (matrix and per-class F1) of each classification task."""
    for task, (pred, label) in zip(tasks, results, strict=True):
        if task.num_classes is None:
            continue
        cm = metrics.confusion_matrix(label.astype(int), pred.astype(int), task.num_classes)
        f1 = metrics.f1_per_class(cm)
        text = f"{task.name.upper()} dev confusion matrix (rows: true class, columns: predicted)\n"
        text += "\n".join(" ".join(f"{int(v):5d}" for v in row) for row in cm)
        text += "\nper-class F1: " + " ".join(f"{v:.3f}" for v in f1) + "\n"
        write_atomic(folder / f"{task.name}-confusion.txt", text.encode())


def write_history(folder: Path, history: Sequence[dict[str, Any]]) -> None:
    write_atomic(folder / "history.json", json.dumps(history, indent=2).encode())


def plot_curves(
    folder: Path, history: Sequence[dict[str, Any]], loss_log: Sequence[Any], tasks: Sequence[str]
) -> None:
    """``curves.png``: each task's training loss (moving average) and the dev scores."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no training-curve plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if loss_log:
        arr = np.asarray(loss_log, dtype=float)
        win = max(1, len(arr) // 50)
        kernel = np.ones(win) / win
        for i, name in enumerate(tasks):
            ax1.plot(np.convolve(arr[:, i], kernel, mode="valid"), label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (moving average)")
    ax1.legend()
    epochs = [r["epoch"] for r in history]
    keys = [*_columns(history[0], tasks, "dev", first=True), "overall"] if history else []
    for i, key in enumerate(keys):
        color = f"C{i}"
        ax2.plot(epochs, [r["dev"][key] for r in history], "o-", color=color, label=f"dev {key}")
        if history[0].get("val") is not None:
            ax2.plot(
                epochs, [r["val"][key] for r in history], "s--", color=color, label=f"val {key}"
            )
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("score (val: selection, dev: test)")
    ax2.legend(fontsize="small")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    write_atomic(folder / "curves.png", image.getbuffer())


def write_conflicts(folder: Path, log: ConflictLog) -> None:
    """``gradients.json`` (every step's norms, pairwise cosines, number of conflicting
    pairs and weights, and the run's summary: :meth:`~mtlkit.diagnostics.ConflictLog.to_dict`)
    and its figure ``conflicts.png``."""
    values = log.to_dict()
    write_atomic(folder / "gradients.json", json.dumps(values).encode())
    plot_conflicts(folder, values)


def conflict_line(summary: dict[str, Any]) -> str:
    """One line of a run's (or an epoch's) gradient figures, from
    :meth:`~mtlkit.diagnostics.ConflictLog.summary`."""
    if not summary["steps"]:
        return "gradients: the strategy reported no gradient figures"
    if not summary["gradient_steps"]:
        weights = ", ".join(f"{k} {v:.3f}" for k, v in summary["weight_mean"].items())
        return (
            f"gradients: no per-task gradients over {summary['steps']} steps (a loss "
            f"weighting); mean weights {weights or '-'}"
        )
    cosines = ", ".join(f"{pair} {c['mean']:+.3f}" for pair, c in summary["cosine"].items())
    norms = ", ".join(f"{k} {v:.3g}" for k, v in summary["norm_mean"].items())
    ratio = summary["norm_ratio"]
    return (
        f"gradient conflicts: {summary['conflict_fraction']:.0%} of {summary['gradient_steps']} "
        f"steps had a conflicting pair of tasks; mean cosine {cosines or '-'}; mean norm "
        f"{norms} (max/min {'-' if ratio is None else f'{ratio:.2f}'})"
    )


def plot_conflicts(folder: Path, values: dict[str, Any]) -> None:
    """``conflicts.png``: every step's pairwise cosines and per-task gradient norms (and
    weights), with the share of steps with a conflicting pair in the title."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no gradient-conflict plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = values["steps"]
    has = [n is not None for n in values["norms"]]
    xs = [s for s, h in zip(steps, has, strict=True) if h]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    if xs:
        cos = np.asarray([c for c in values["cosines"] if c is not None], dtype=float)
        norms = np.asarray([n for n in values["norms"] if n is not None], dtype=float)
        win = max(1, len(xs) // 50)  # long runs: each step faint, a moving average on top
        for ax, series, labels in ((ax1, cos, values["pairs"]), (ax2, norms, values["tasks"])):
            for j, label in enumerate(labels):
                if win == 1:
                    ax.plot(xs, series[:, j], lw=0.8, color=f"C{j}", label=label)
                    continue
                ax.plot(xs, series[:, j], lw=0.5, color=f"C{j}", alpha=0.25)
                smooth = np.convolve(series[:, j], np.ones(win) / win, mode="valid")
                ax.plot(xs[win - 1 :], smooth, lw=1.2, color=f"C{j}", label=label)
        ax1.axhline(0.0, color="black", lw=0.5)
        if norms.size and (norms > 0).all():
            ax2.set_yscale("log")
        if values["pairs"]:
            ax1.legend(fontsize="small")
        ax2.legend(fontsize="small")
    else:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no per-task gradients\n(a loss weighting)", ha="center")
    if steps:
        weights = np.asarray(values["weights"], dtype=float)
        for i, name in enumerate(values["tasks"]):
            ax3.plot(steps, weights[:, i], lw=0.8, label=name)
        ax3.legend(fontsize="small")
    ax1.set(xlabel="step", ylabel="cosine of the tasks' gradients", title="pairwise cosines")
    ax2.set(xlabel="step", ylabel="gradient norm", title="per-task gradient norms")
    ax3.set(xlabel="step", ylabel="weight", title="weights")
    summary = values["summary"]
    fraction = summary["conflict_fraction"]
    share = "-" if fraction is None else f"{fraction:.0%}"
    fig.suptitle(
        f"gradient conflicts: {share} of {summary['gradient_steps']} steps had a conflicting "
        f"pair of tasks"
    )
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    write_atomic(folder / "conflicts.png", image.getbuffer())
