"""The benchmark scripts run end to end (tiny inputs; the real runs live in benchmarks/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402


def test_quality_matrix_pipeline_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "q"
    argv = [
        "--quick",
        "--init",
        "tiny-random",
        "--strategies",
        "sum,pcgrad,mgda",
        "--seeds",
        "2",
        "--steps-per-epoch",
        "2",
        "--train-limit",
        "16",
        "--dev-limit",
        "16",
        "--out",
        str(out),
        "--scratch",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    ]
    quality.main(argv)
    results = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["strategy"], r["seed"]) for r in results) == [
        ("mgda", 0),
        ("pcgrad", 0),
        ("pcgrad", 1),
        ("sum", 0),
        ("sum", 1),
    ]
    table = out.with_suffix(".md").read_text()
    assert "| pcgrad | 2 |" in table and "step time / sum" in table
    assert out.with_suffix(".png").stat().st_size > 0
    # a second call finds every run done and trains nothing new
    quality.main(argv)
    assert len(json.loads(out.with_suffix(".json").read_text())) == 5
