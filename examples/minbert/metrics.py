"""Evaluation metrics of the three miniBERT tasks.

- SST: accuracy, 5x5 confusion matrix, per-class and macro F1.
- Quora: accuracy.
- STS: Pearson correlation (the headline number) and Spearman rank correlation.
- Overall: ``(sst_acc + quora_acc + (sts_pearson + 1) / 2) / 3`` (CS224N's score, each term
  in [0, 1]).

Inputs are anything :func:`numpy.asarray` accepts (lists, arrays, CPU tensors).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "accuracy",
    "confusion_matrix",
    "f1_per_class",
    "macro_f1",
    "overall_score",
    "pearson",
    "spearman",
]


def _pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a).reshape(-1)
    y = np.asarray(b).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.shape[0]} vs {y.shape[0]}")
    if x.size == 0:
        raise ValueError("metrics need at least one value")
    return x, y


def accuracy(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Fraction of predictions equal to the labels."""
    x, y = _pair(predictions, labels)
    return float(np.mean(x == y))


def pearson(predictions: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Pearson correlation coefficient; ``nan`` when either input is constant."""
    x, y = _pair(predictions, targets)
    x, y = x.astype(np.float64), y.astype(np.float64)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def spearman(predictions: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Spearman rank correlation (ties get average ranks); ``nan`` when an input is constant."""
    x, y = _pair(predictions, targets)
    x, y = x.astype(np.float64), y.astype(np.float64)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def overall_score(sst_accuracy: float, quora_accuracy: float, sts_pearson: float) -> float:
    """CS224N's overall score: mean of the two accuracies and the Pearson mapped to [0, 1]."""
    return (sst_accuracy + quora_accuracy + (sts_pearson + 1.0) / 2.0) / 3.0


def confusion_matrix(
    labels: npt.ArrayLike, predictions: npt.ArrayLike, num_classes: int = 5
) -> np.ndarray:
    """Counts ``C[i, j]`` of examples of true class ``i`` predicted as class ``j``.

    Raises:
        ValueError: a label or prediction is not an integer in ``0..num_classes-1``.
    """
    y, p = _pair(labels, predictions)
    for name, values in (("labels", y), ("predictions", p)):
        if not np.all(np.equal(np.mod(values, 1), 0)) or values.min() < 0:
            raise ValueError(f"{name} must be non-negative integers")
        if values.max() >= num_classes:
            raise ValueError(f"{name} must be below num_classes={num_classes}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y.astype(np.int64), p.astype(np.int64)), 1)
    return matrix


def f1_per_class(confusion: npt.ArrayLike) -> np.ndarray:
    """F1 of each class from a confusion matrix (rows true, columns predicted).

    ``F1 = 2 TP / (2 TP + FP + FN)``; a class never true nor predicted gets 0.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {c.shape}")
    tp = np.diag(c)
    fp = c.sum(axis=0) - tp
    fn = c.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    f1: np.ndarray = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1


def macro_f1(confusion: npt.ArrayLike) -> float:
    """Unweighted mean of :func:`f1_per_class`."""
    return float(np.mean(f1_per_class(confusion)))
