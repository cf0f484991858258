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

from . import metrics
from .checkpoint import WriteError, write_atomic
from .tasks import Task

__all__ = [
    "format_table",
    "plot_curves",
    "save_confusions",
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


def format_table(history: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """One line per epoch: the mean training loss of each task, the first metric of each
    task on the training examples scored, every dev metric and the overall dev score."""
    if not history:
        return ""
    train_keys = _columns(history[0], tasks, "train", first=True)
    dev_keys = _columns(history[0], tasks, "dev", first=False)
    blocks = [
        ("loss", [(t, t) for t in tasks]),
        ("train", [(k, _label(k, tasks)) for k in train_keys]),
        ("dev", [(k, _label(k, tasks)) for k in dev_keys] + [("overall", "overall")]),
    ]
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
            values = r["loss" if block == "loss" else block]
            parts.append(
                " ".join(f"{values[k]:>{w}.3f}" for k, w in zip(keys, widths, strict=True))
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
    for key in keys:
        ax2.plot(epochs, [r["dev"][key] for r in history], marker="o", label=f"dev {key}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("dev score")
    ax2.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    write_atomic(folder / "curves.png", image.getbuffer())
