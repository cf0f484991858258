"""The benchmark scripts run end to end (tiny inputs; the real runs live in benchmarks/)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

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


import matrix  # noqa: E402


def _record(key: str, seed: int, overall: float, val: float) -> dict:
    scores = {m: overall for m in matrix.METRICS}
    return {
        "key": key,
        "seed": seed,
        "dev": scores,
        "val": {**scores, "overall": val},
        "dev_last": {**scores, "overall": overall - 0.5},
        "conflict_fraction": 0.5,
        "norm_ratio": 2.0,
        "step_s": 1.0,
        "wall_s": 1.0,
    }


def test_matrix_paired_interval_is_students_t_on_the_differences() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = [0.731, 0.735, 0.729, 0.740, 0.733]
    b = [0.730, 0.731, 0.730, 0.734, 0.729]
    got = matrix.paired(a, b)
    ref = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert got["n"] == 5
    assert got["mean"] == pytest.approx(sum(a) / 5 - sum(b) / 5)
    assert (got["low"], got["high"]) == pytest.approx((ref.low, ref.high))
    one = matrix.paired([0.7], [0.6])
    assert one["mean"] == pytest.approx(0.1) and math.isnan(one["low"])


def test_matrix_screening_gives_all_seeds_to_the_best_on_validation_only() -> None:
    rows = matrix.rows(total_steps=60)
    screened = [r.name for r in rows if matrix.is_screened(r)]
    assert "sum" not in screened and "pcgrad" not in screened and "mgda" in screened
    # before the screening is complete, screened strategies run seed 0 only
    runs = matrix.plan(rows, 3, [])
    assert ("main/mgda", 1) not in {(r.key, s) for r, s in runs}
    assert {("main/sum", 2), ("cosent20/imtl-g", 2), ("main/dynamic-allocation", 2)} <= {
        (r.key, s) for r, s in runs
    }
    # the fixed rows get all their seeds first, then the screening
    order = [matrix.is_screened(r) for r, s in runs]
    assert order == sorted(order) and runs[-1][1] == 0
    # the best three on validation win, whatever their dev score; mean/weighted never do
    results = []
    for i, name in enumerate(screened):
        val = {"mgda": 0.9, "nash-mtl": 0.8, "cagrad": 0.7, "mean": 0.99}.get(name, 0.1 + i / 1000)
        results.append(_record(f"main/{name}", 0, overall=1.0 - val, val=val))
    assert matrix.screened_best(results) == ["mgda", "nash-mtl", "cagrad"]
    keys = {(r.key, s) for r, s in matrix.plan(rows, 3, results)}
    assert {("main/mgda", 2), ("main/nash-mtl", 1), ("main/cagrad", 2)} <= keys
    assert ("main/mean", 1) not in keys and ("main/upgrad", 1) not in keys


def test_matrix_best_named_skips_the_screening() -> None:
    rows = matrix.rows(total_steps=60)
    runs = matrix.plan(rows, 3, [], best=["mgda"])
    keys = [(r.key, s) for r, s in runs]
    # the named strategy runs every seed at once, beside the fixed rows, seed by seed
    assert {("main/mgda", 0), ("main/mgda", 2), ("main/sum", 2)} <= set(keys)
    assert not any(k.startswith("main/cagrad") or k == "main/upgrad" for k, _ in keys)
    assert [s for _, s in keys] == sorted(s for _, s in keys)


def test_matrix_margin_schedule_spans_the_budget_s_steps() -> None:
    # the dynamic margin grows over the run's own steps: the main job's when the budget
    # keeps its epochs and steps (4 x 140 = 560 at the example's defaults)
    from examples.minbert.cli import build_parser, config_from_args

    defaults = config_from_args(build_parser().parse_args(["train"]))
    full = matrix.budget_steps(matrix.BUDGETS["full"])
    assert full == defaults.epochs * defaults.steps_per_epoch
    assert matrix.budget_steps(matrix.BUDGETS["cpu-long"]) == 140
    margin = {r.key: r for r in matrix.rows(full)}["main/quora-dynamic-margin"].args
    assert margin[margin.index("--margin-steps") + 1] == str(full)


def test_matrix_best_named_in_the_report_and_an_unknown_one_refused(tmp_path: Path) -> None:
    out = tmp_path / "m"
    argv = ["--best", "mgda", "--report-only", "--out", str(out)]
    matrix.main(argv)
    assert "Best others named (`--best`, from an earlier screening on validation): ['mgda']" in (
        out.with_suffix(".md").read_text()
    )
    with pytest.raises(SystemExit):
        matrix.main(["--best", "mgda,nope", "--report-only", "--out", str(out)])


def test_matrix_summary_pairs_rows_by_seed_with_their_baseline() -> None:
    rows = matrix.rows(total_steps=60)
    results = [_record("main/sum", s, 0.70 + s / 100, 0.7) for s in range(3)]
    results += [_record("main/pcgrad", s, 0.71 + s / 100, 0.7) for s in range(4)]
    summary = {s["row"].key: s for s in matrix.summarize(rows, results)}
    diff = summary["main/pcgrad"]["diff"]["overall"]
    assert diff["n"] == 3  # seed 3 has no sum run to pair with
    assert diff["mean"] == pytest.approx(0.01) and diff["low"] == pytest.approx(0.01)
    last = summary["main/pcgrad"]["diff_last"]["overall"]  # the last epoch, paired alike
    assert last["n"] == 3 and last["mean"] == pytest.approx(0.01)
    assert summary["main/sum"]["overall_last"][0] == pytest.approx(0.21)
    table = matrix.markdown(list(summary.values()), "#")
    assert "**sig.**" in table and "| `pcgrad` | `sum` | 4 |" in table


def test_matrix_pipeline_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "m"
    argv = [
        "--budget",
        "tiny",
        "--seeds",
        "2",
        "--rows",
        "main/sum,main/pcgrad,main/dynamic-allocation,cosent20/sum",
        "--out",
        str(out),
        "--scratch",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    ]
    matrix.main(argv)
    results = json.loads(out.with_suffix(".json").read_text())
    assert len(results) == 8 and {r["best_epoch"] for r in results} <= {1, 2}
    assert all(0.0 <= r["dev"]["overall"] <= 1.0 and r["val"] for r in results)
    last = [
        json.loads(
            (
                Path(str(tmp_path / "runs"))
                / r["key"].replace("/", "-")
                / f"seed{r['seed']}"
                / "history.json"
            ).read_text()
        )[-1]["dev"]["overall"]
        for r in results
    ]
    assert [r["dev_last"]["overall"] for r in results] == last
    table = out.with_suffix(".md").read_text()
    assert "| `dynamic-allocation` | `pcgrad` | 2 |" in table
    assert "Setting `cosent20`" in table
    matrix.main(argv)  # resumes: everything is done, nothing is trained again
    assert len(json.loads(out.with_suffix(".json").read_text())) == 8


import sweep  # noqa: E402


def test_sweep_chooses_on_validation_and_runs_in_parallel(tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["--budget", "tiny", "--grid", "lr=1e-3,1e-6", "--seeds", "2", "--jobs", "2"]
    argv += ["--out", str(out), "--scratch", str(tmp_path / "runs"), "--device", "cpu"]
    sweep.main(argv)
    results = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["key"], r["seed"]) for r in results) == [
        ("main/sweep:lr=1e-3", 0),
        ("main/sweep:lr=1e-3", 1),
        ("main/sweep:lr=1e-6", 0),
        ("main/sweep:lr=1e-6", 1),
    ]
    ranked = sweep.rank(sweep.grid_rows(sweep.parse_grid(["lr=1e-3,1e-6"])), results)
    assert ranked[0]["val"][0] >= ranked[1]["val"][0]  # validation orders, whatever dev says
    assert f"| `{ranked[0]['label']}` (chosen) | 2 |" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="OPTION=V1"):
        sweep.parse_grid(["lr"])


def test_sweep_ranks_by_validation_not_dev() -> None:
    rows = sweep.grid_rows([("lr", ["a", "b"])])
    results = [_record("main/sweep:lr=a", s, overall=0.9, val=0.5) for s in range(2)]
    results += [_record("main/sweep:lr=b", s, overall=0.1, val=0.6) for s in range(2)]
    assert [r["label"] for r in sweep.rank(rows, results)] == ["lr=b", "lr=a"]
    assert rows[1].args == ("--lr", "b")


def test_sweep_compares_rows_on_the_same_seeds(tmp_path: Path) -> None:
    """A row's extra seeds do not enter its mean, and a row short of seeds (a screen) is
    never chosen over one that has them all, however high its mean."""
    rows = sweep.variant_rows(["--lr a", "--lr b", "--lr c"])
    results = [
        _record("main/sweep:lr=a", s, overall=0.5, val=v) for s, v in enumerate([0.6, 0.7, 0.1])
    ]
    results += [_record("main/sweep:lr=b", s, overall=0.5, val=0.62) for s in range(2)]
    results += [_record("main/sweep:lr=c", 0, overall=0.5, val=0.9)]
    ranked = sweep.rank(rows, results, seeds=2)
    assert [(r["label"], r["seeds"], r["complete"]) for r in ranked] == [
        ("lr=a", 2, True),  # 0.65 over seeds 0, 1 (0.467 with its seed 2)
        ("lr=b", 2, True),
        ("lr=c", 1, False),
    ]
    assert ranked[0]["val"][0] == pytest.approx(0.65)
    assert [r["label"] for r in sweep.rank(rows, results)] == ["lr=c", "lr=b", "lr=a"]
    out = tmp_path / "r"
    out.with_suffix(".json").write_text(json.dumps(results))
    argv = ["--variant", "--lr a", "--variant", "--lr b", "--variant", "--lr c"]
    sweep.main([*argv, "--seeds", "2", "--report-only", "--out", str(out)])
    table = out.with_suffix(".md").read_text()
    assert "| `lr=a` (chosen) | 2 | 0.6500" in table
    assert "| `lr=c` (fewer seeds: not chosen) | 1 | 0.9000" in table
    assert len(json.loads(out.with_suffix(".json").read_text())) == 6  # trained nothing


def test_sweep_variants_are_one_row_each_and_the_defaults_are_the_empty_one(
    tmp_path: Path,
) -> None:
    rows = sweep.variant_rows(["", "--quora-loss cosine-embedding --epochs 5"])
    assert [r.key for r in rows] == [
        "main/sweep:defaults",
        "main/sweep:quora-loss=cosine-embedding,epochs=5",
    ]
    assert rows[0].args == () and rows[1].args == (
        "--quora-loss",
        "cosine-embedding",
        "--epochs",
        "5",
    )
    with pytest.raises(ValueError, match="sets --seed"):
        sweep.variant_rows(["--seed 3"])
    out = tmp_path / "v"
    argv = ["--budget", "tiny", "--seeds", "1", "--variant", "", "--variant", "--lr 1e-6"]
    argv += ["--out", str(out), "--scratch", str(tmp_path / "runs"), "--device", "cpu"]
    sweep.main(argv)
    results = json.loads(out.with_suffix(".json").read_text())
    assert sorted(r["key"] for r in results) == ["main/sweep:defaults", "main/sweep:lr=1e-6"]
    assert {tuple(r["args"]) for r in results} == {(), ("--lr", "1e-6")}
    with pytest.raises(SystemExit):  # the grid's lr=1e-6 and the variant are the same run
        sweep.main([*argv, "--grid", "lr=1e-6"])
    with pytest.raises(SystemExit):  # nothing to run
        sweep.main(["--out", str(out)])
