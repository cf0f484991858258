"""pytest-benchmark: PCGrad aggregation of a K x P matrix, mtlkit vs TorchJD vs a port loop.

Run: ``python -m pytest benchmarks/test_bench_aggregation.py --benchmark-enable``
(``MTLKIT_BENCH_P`` sets P; default 22.7M, MiniLM-L6 size). Not part of the test suite
(pytest's testpaths is ``tests/``). The read pass over J is the floor every method pays.
Ratios side by side, with errors against float64: ``benchmarks/speed.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import port_style_pcgrad  # noqa: E402

from mtlkit import PCGrad  # noqa: E402

P = int(os.environ.get("MTLKIT_BENCH_P", "22700000"))
KS = (2, 3, 8)


@pytest.fixture(scope="module", params=KS, ids=[f"K={k}" for k in KS])
def matrix(request: pytest.FixtureRequest) -> torch.Tensor:
    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(request.param)
    m = torch.randn(request.param, P, generator=gen)
    m += torch.tensor([(-1.0) ** i for i in range(request.param)])[:, None] * m[0]
    return m


def test_read_pass(benchmark: Callable[..., object], matrix: torch.Tensor) -> None:
    out = torch.empty(matrix.shape[1])
    benchmark(lambda: torch.sum(matrix, dim=0, out=out))


def test_mtlkit_pcgrad(benchmark: Callable[..., object], matrix: torch.Tensor) -> None:
    out = torch.empty(matrix.shape[1])
    strategy = PCGrad(seed=0)
    benchmark(lambda: strategy.combine(matrix, out=out))


def test_torchjd_pcgrad(benchmark: Callable[..., object], matrix: torch.Tensor) -> None:
    aggregation = pytest.importorskip(
        "torchjd.aggregation", reason="TorchJD not installed: pip install -e '.[bench]'"
    )
    agg = aggregation.PCGrad()
    benchmark(lambda: agg(matrix))


def test_port_loop_pcgrad(benchmark: Callable[..., object], matrix: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    benchmark.pedantic(lambda: port_style_pcgrad(matrix, gen), rounds=3)  # type: ignore[attr-defined]
