"""The Gramian kernel: exact to float64 accuracy across block boundaries and dtypes."""

from __future__ import annotations

import pytest
import torch

from mtlkit import _linalg as linalg
from mtlkit._linalg import GRAMIAN_CHUNK, gramian, weighted_sum


def _rel_err(matrix: torch.Tensor) -> float:
    exact = matrix.double() @ matrix.double().T
    norms = exact.diagonal().sqrt()
    scale = (norms[:, None] * norms[None, :]).clamp(min=1e-300)
    return ((gramian(matrix) - exact).abs() / scale).max().item()


@pytest.mark.parametrize("p", [1, 7, GRAMIAN_CHUNK, GRAMIAN_CHUNK + 1, 3 * GRAMIAN_CHUNK - 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_gramian_matches_float64(p: int, dtype: torch.dtype) -> None:
    torch.manual_seed(p)
    matrix = (torch.randn(4, p) * torch.tensor([[1e-3], [1.0], [1e3], [0.0]])).to(dtype)
    assert gramian(matrix).dtype == torch.float64
    assert _rel_err(matrix) < (1e-6 if dtype in (torch.float32, torch.float64) else 1e-5)


def test_gramian_beats_plain_float32_at_large_p() -> None:
    torch.manual_seed(0)
    matrix = torch.randn(3, 4_000_000) + 0.5  # large common component: float32 drift shows
    exact = matrix.double() @ matrix.double().T
    plain = (matrix @ matrix.T).double()
    ours = gramian(matrix)
    assert (ours - exact).abs().max() < (plain - exact).abs().max()
    assert _rel_err(matrix) < 1e-6


def test_weighted_sum_into_out() -> None:
    matrix = torch.randn(3, 10)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    out = torch.empty(10)
    res = weighted_sum(w, matrix, out=out)
    assert res.data_ptr() == out.data_ptr()
    torch.testing.assert_close(res, (w.float()[:, None] * matrix).sum(0))


@pytest.mark.parametrize("extra", [0, 1, 12345])
def test_weighted_sum_blocked(monkeypatch: pytest.MonkeyPatch, extra: int) -> None:
    """Blocked on the CPU (P over the block size, with a partial last block): every
    column is written once, equal to the one-product result."""
    monkeypatch.setattr(linalg, "WEIGHTED_SUM_CHUNK", 1000)
    matrix = torch.randn(4, 3000 + extra)
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    out = torch.full((matrix.shape[1],), float("nan"))
    res = weighted_sum(w, matrix, out=out)
    assert res.data_ptr() == out.data_ptr()
    exact = (w[:, None] * matrix.double()).sum(0)
    torch.testing.assert_close(res.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weighted_sum(w, matrix), res)


def test_gramian_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(K, P\)"):
        gramian(torch.ones(3))
