"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from examples.minbert.metrics import (
    accuracy,
    confusion_matrix,
    f1_per_class,
    macro_f1,
    overall_score,
    pearson,
    spearman,
)


def test_accuracy() -> None:
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == 0.75
    assert accuracy(torch.tensor([1, 1]), np.array([0, 1])) == 0.5
    with pytest.raises(ValueError, match="length mismatch"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="at least one"):
        accuracy([], [])


def test_pearson_by_hand() -> None:
    # x = (1, 2, 3), y = (1, 3, 2): deviations (-1, 0, 1) and (-1, 1, 0);
    # sum of products 1, sums of squares 2 and 2, so r = 1 / sqrt(2 * 2) = 0.5.
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # x = (1, 2, 3, 4), y = (2, 4, 5, 9): deviations (-1.5, -0.5, 0.5, 1.5), (-3, -1, 0, 4);
    # products 4.5 + 0.5 + 0 + 6 = 11, sums of squares 5 and 26: r = 11 / sqrt(130).
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert pearson([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_spearman_by_hand() -> None:
    # Monotone but not linear: ranks agree perfectly.
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    # Ranks (1, 2, 3) vs (1, 3, 2): Pearson of the ranks, 0.5 as above.
    assert spearman([10, 20, 30], [5, 50, 7]) == pytest.approx(0.5)
    # Ties share the average rank: y ranks (1.5, 1.5, 3) against x ranks (1, 2, 3):
    # deviations (-1, 0, 1) and (-0.5, -0.5, 1): r = 1.5 / sqrt(2 * 1.5) = sqrt(3) / 2.
    assert spearman([1, 2, 3], [4, 4, 9]) == pytest.approx(math.sqrt(3) / 2)


def test_overall_score() -> None:
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert overall_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert overall_score(0.0, 0.0, -1.0) == pytest.approx(0.0)


def test_confusion_matrix_and_f1_by_hand() -> None:
    labels = [0, 0, 1, 1, 1, 2, 4]
    preds = [0, 1, 1, 1, 2, 2, 0]
    c = confusion_matrix(labels, preds, num_classes=5)
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[0, 0] = 1  # label 0 predicted 0
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 2] = 1
    expected[2, 2] = 1
    expected[4, 0] = 1
    np.testing.assert_array_equal(c, expected)
    assert c.sum() == len(labels)
    # Class 0: TP 1, FP 1 (the 4), FN 1 -> 2 / (2 + 1 + 1) = 0.5.
    # Class 1: TP 2, FP 1, FN 1 -> 4 / 6.  Class 2: TP 1, FP 1, FN 0 -> 2 / 3.
    # Class 3: never true nor predicted -> 0.  Class 4: TP 0, FN 1 -> 0.
    f1 = f1_per_class(c)
    np.testing.assert_allclose(f1, [0.5, 2 / 3, 2 / 3, 0.0, 0.0])
    assert macro_f1(c) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 5)


def test_confusion_matrix_rejects_bad_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0, 5], [0, 1])
    with pytest.raises(ValueError, match="non-negative integers"):
        confusion_matrix([0, -1], [0, 1])
    with pytest.raises(ValueError, match="square"):
        f1_per_class(np.zeros((2, 3)))
