"""benchmarks/speed.py's end-to-end section runs at tiny sizes and its gradients are right."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mtlkit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

CPU = torch.device("cpu")


def _torchjd_has(aggregator: str) -> bool:
    """Whether the section can run TorchJD with this aggregator (UPGrad needs extras)."""
    try:
        import torchjd.aggregation
        import torchjd.autojac  # noqa: F401

        getattr(torchjd.aggregation, aggregator)()
    except ImportError:
        return False
    return True


HAS_TORCHJD = _torchjd_has("PCGrad")
HAS_TORCHJD_UPGRAD = _torchjd_has("UPGrad")
#: float32 gradients against a float64 rule applied to the same float32 gradients.
TIGHT = 1e-5


def _row(rows: list[dict], aggregator: str, k: int) -> dict:
    (row,) = [r for r in rows if r["aggregator"] == aggregator and r["K"] == k]
    return row


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return speed.endtoend(
        [2000], [2, 3], 2, CPU, batch=8, aggregators=["pcgrad", "upgrad", "imtl-g"]
    )


def test_rows_exist_with_positive_times(rows: list[dict]) -> None:
    assert [(r["aggregator"], r["K"]) for r in rows] == [
        ("pcgrad", 2),
        ("pcgrad", 3),
        ("upgrad", 2),
        ("upgrad", 3),
        ("imtl-g", 2),
        ("imtl-g", 3),
    ]
    for r in rows:
        assert 1500 < r["P"] < 2500
        for key in ("summed ms", "mtlkit ms", "mtlkit batched ms"):
            assert r[key] > 0
        assert r["mtlkit / summed"] > 0 and r["mtlkit batched / summed"] > 0
        # the tasks conflict, so both rules differ from the sum: the checks below can fail
        assert r["min cos"] < -0.1


def test_mtlkit_and_summed_agree_with_the_float64_reference(rows: list[dict]) -> None:
    for r in rows:
        assert 0 <= r["summed err"] < TIGHT
        assert 0 <= r["mtlkit err"] < TIGHT  # loop and batched, shared and head gradients


def test_torchjd_columns_and_agreement(rows: list[dict]) -> None:
    if not HAS_TORCHJD:
        pytest.skip("torchjd is not installed")
    pc2, pc3 = _row(rows, "pcgrad", 2), _row(rows, "pcgrad", 3)
    for r in (pc2, pc3):
        assert r["torchjd ms"] > 0 and r["torchjd backward ms"] > 0
        assert r["mtlkit / torchjd"] > 0 and r["torchjd / summed"] > 0
    # K = 2: one projection order, so both libraries compute the same update
    assert pc2["torchjd err"] < TIGHT and pc2["mtlkit vs torchjd"] < TIGHT
    # K = 3: TorchJD draws its own orders from torch's generator: not comparable
    assert "mtlkit vs torchjd" not in pc3 and "torchjd err" not in pc3
    for k in (2, 3):
        up = _row(rows, "upgrad", k)
        if not HAS_TORCHJD_UPGRAD:
            assert "torchjd ms" not in up
            continue
        # TorchJD's default ridge (1e-4 on the trace-normalised Gramian) moves its update
        assert up["torchjd err"] < 1e-2 and up["mtlkit vs torchjd"] < 1e-2
    for k in (2, 3):  # IMTL-G has one answer when G is invertible: both libraries meet it
        imtl = _row(rows, "imtl-g", k)
        assert imtl["torchjd ms"] > 0
        assert imtl["torchjd err"] < TIGHT and imtl["mtlkit vs torchjd"] < TIGHT


def test_imtlg_reference_meets_the_paper_conditions() -> None:
    """The float64 IMTL-G reference: weights summing to 1, equal projections onto every
    task's unit gradient; for two orthogonal rows, the sum of the unit rows scaled to it."""
    gen = torch.Generator().manual_seed(0)
    j = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    d = speed.imtlg_reference(j)
    alpha = torch.linalg.lstsq(j.T, d[:, None]).solution.squeeze(1)
    assert abs(float(alpha.sum()) - 1.0) < 1e-10
    proj = (j @ d) / j.norm(dim=1)
    assert float(proj.max() - proj.min()) < 1e-10 * float(d.norm())
    ortho = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        speed.imtlg_reference(ortho), torch.tensor([0.75, 0.75], dtype=torch.float64)
    )


def test_a_wrong_combination_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agreement figures can fail: mtlkit given the sum instead of PCGrad is flagged."""
    monkeypatch.setattr(speed, "_mtlkit_strategy", lambda name, k: mtlkit.get_strategy("sum"))
    (row,) = speed.endtoend([2000], [2], 1, CPU, batch=8, aggregators=["pcgrad"])
    assert row["mtlkit err"] > 1e-2
    assert row["summed err"] < TIGHT
    if HAS_TORCHJD:
        assert row["mtlkit vs torchjd"] > 1e-2 and row["torchjd err"] < TIGHT


def test_upgrad_reference_is_the_dual_cone_projection() -> None:
    """The exact UPGrad reference: no conflict gives the mean; otherwise the update
    conflicts with no task and each weight is at least 1/K."""
    gen = torch.Generator().manual_seed(0)
    aligned = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(speed.upgrad_reference(aligned), aligned.mean(dim=0))
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d = speed.upgrad_reference(j)
    assert bool((j @ d >= -1e-12).all())
    gram = j @ j.T
    eye = torch.eye(2, dtype=torch.float64)
    w = sum(speed.dual_cone_weights(gram, eye[i]) for i in range(2)) / 2
    assert bool((w >= 0.5 - 1e-12).all())
    torch.testing.assert_close(w @ j, d)


def test_command_line_writes_the_section(tmp_path: Path) -> None:
    out = tmp_path / "e2e.md"
    speed.main(
        [
            "--sections",
            "endtoend",
            "--sizes",
            "2000",
            "--ks",
            "2",
            "--repeats",
            "1",
            "--batch",
            "4",
            "--aggregators",
            "pcgrad",
            "--out",
            str(out),
        ]
    )
    text = out.read_text()
    assert "## End to end" in text and "| pcgrad | 2024 | 2 |" in text


def test_aggregation_rows_with_the_compiled_combine() -> None:
    """The aggregation section at a tiny size: every timing column exists, and the combine
    compiled whole gives the exact PCGrad update (float32 against float64)."""
    rows = speed.aggregation([3000], [3], 1, CPU, compile_mode="default")
    assert [(r["P"], r["K"]) for r in rows] == [(3000, 3)]
    for r in rows:
        for key in ("read pass ms", "mtlkit ms", "mtlkit plain ms", "mtlkit compiled ms"):
            assert r[key] > 0
        assert 0 <= r["mtlkit err"] < TIGHT
        assert 0 <= r["compiled err"] < TIGHT
        assert r["compiled / plain"] > 0
        assert 10 < r["mtlkit ops"] < 200  # PCGrad at K = 3: about 50 (no loop over P)


def _ops_per_pcgrad_combine(k: int) -> int:
    matrix = torch.randn(k, 64, generator=torch.Generator().manual_seed(k))
    strategy = mtlkit.PCGrad(seed=0)
    return speed.count_ops(lambda: strategy.combine(matrix))


def test_pcgrad_surgery_costs_a_few_operations_per_task_not_per_pair() -> None:
    """Each of the K - 1 steps of PCGrad's surgery handles all K tasks at once: the
    operations of a call (``count_ops``: kernel launches on a GPU) grow by a handful per
    extra task (a step's five kernels and one CPU draw; the code before measured 18), not
    by a step's worth per task pair."""
    per_task = (_ops_per_pcgrad_combine(8) - _ops_per_pcgrad_combine(2)) / 6
    assert 0 < per_task <= 6, per_task
