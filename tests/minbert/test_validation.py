"""Model selection on a validation split carved from the training files (never on dev),
and the gradient-conflict telemetry of every step of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.minbert import evaluate as evaluate_mod
from examples.minbert import train as train_mod
from examples.minbert.checkpoint import ConfigError, load_checkpoint
from examples.minbert.cli import main, summary_line
from examples.minbert.data import holdout_indices
from examples.minbert.train import TrainConfig, load_training_data, train
from mtlkit.schedulers import DynamicBatchAllocation

SST_HEADER = "\tid\tsentence\tsentiment\n"


def tiny_config(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        out_dir=str(out),
        init="tiny-random",
        train_limit=24,
        dev_limit=16,
        val_limit=12,
        eval_train_limit=8,
        batch_size=8,
        epochs=1,
        steps_per_epoch=2,
        max_length=32,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _held_out(cfg: TrainConfig) -> dict[str, list[int]]:
    split = load_training_data(cfg, cfg.task_records()).split
    return {name: t["held_out_indices"] for name, t in split["tasks"].items()}


# ------------------------------------------------------------------ the split
def test_holdout_indices() -> None:
    held = holdout_indices(1000, 0.1, 0, "sst")
    assert len(held) == 100 and held == sorted(set(held)) and 0 <= held[0] and held[-1] < 1000
    assert holdout_indices(1000, 0.1, 0, "sst") == held  # deterministic
    assert holdout_indices(1000, 0.1, 1, "sst") != held  # another seed, another split
    assert holdout_indices(1000, 0.1, 0, "sts") != held  # each task its own draw
    assert set(holdout_indices(1000, 0.05, 0, "sst")) < set(held)  # nested in the fraction
    assert len(holdout_indices(5500, 0.1, 0, "sts")) == 550  # no float noise (0.1 * 5500)
    assert len(holdout_indices(7, 0.1, 0, "x")) == 1  # ceil: at least one
    assert holdout_indices(10, 0.0, 0, "x") == []
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            holdout_indices(10, bad, 0, "x")


def test_the_split_is_the_same_for_every_run(tmp_path: Path) -> None:
    """Another seed, strategy, scheduler, train limit or task order: the same held-out
    examples of each task (they depend on the files, val_fraction and val_seed only)."""
    base = tiny_config(tmp_path)
    held = _held_out(base)
    assert [len(v) for v in held.values()] == [800, 1600, 550]
    others = [
        tiny_config(tmp_path, seed=5, strategy="mgda", scheduler="proportional"),
        tiny_config(tmp_path, train_limit=None, val_limit=None, strategy="dwa"),
        tiny_config(tmp_path, tasks=["sts", "sst", "quora"]),
    ]
    for cfg in others:
        assert _held_out(cfg) == held
    data = load_training_data(base, base.task_records())
    assert load_training_data(others[0], others[0].task_records()).split_hash == data.split_hash
    assert _held_out(tiny_config(tmp_path, val_seed=1)) != held
    assert _held_out(tiny_config(tmp_path, val_fraction=0.2))["sst"] != held["sst"]


def test_train_limit_applies_after_the_split(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, train_limit=50, val_limit=7)
    tasks = cfg.task_records()
    data = load_training_data(cfg, tasks)
    for task, kept, val in zip(tasks, data.train, data.val, strict=True):
        everything = task.read(train_mod.split_path(cfg, task.name, "train"))
        held = data.split["tasks"][task.name]["held_out_indices"]
        rest = [ex for i, ex in enumerate(everything) if i not in set(held)]
        assert kept.examples == rest[:50]  # the first 50 not held out, in file order
        assert val.examples == [everything[i] for i in held[:7]]  # scored: val_limit of them
        assert not {ex.line for ex in kept.examples} & {everything[i].line for i in held}
        info = data.split["tasks"][task.name]
        assert (info["trained_on"], info["val_scored"]) == (50, 7)
        assert info["examples"] == len(everything)


def test_examples_trained_on_are_never_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example the loop collates into a training batch is outside the split."""
    seen: list[tuple[int, Any]] = []

    class Recording(train_mod.Collate):
        def __call__(self, examples: Any) -> Any:
            seen.extend((id(self), ex) for ex in examples)
            return super().__call__(examples)

    monkeypatch.setattr(train_mod, "Collate", Recording)
    cfg = tiny_config(tmp_path, train_limit=None, steps_per_epoch=6, batch_size=16)
    train(cfg)
    split = json.loads((tmp_path / "split.json").read_text())
    collates = list(dict.fromkeys(c for c, _ in seen))  # one per task, in task order
    assert len(collates) == 3 and len(seen) == 3 * 6 * 16
    for task, collate in zip(cfg.task_records(), collates, strict=True):
        everything = task.read(train_mod.split_path(cfg, task.name, "train"))
        held = {everything[i].line for i in split["tasks"][task.name]["held_out_indices"]}
        trained = {ex.line for c, ex in seen if c == collate}
        assert trained and not trained & held, task.name


def test_too_small_a_training_file_is_refused(tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    one.write_text(SST_HEADER + "0\ta\tfine film\t3\n")
    cfg = tiny_config(tmp_path / "run", files={"sst-train": str(one)})
    with pytest.raises(ConfigError, match="too few to hold out"):
        load_training_data(cfg, cfg.task_records())
    three = tmp_path / "three.csv"
    three.write_text(SST_HEADER + "".join(f"{i}\ta\tfilm {i}\t3\n" for i in range(3)))
    cfg = tiny_config(tmp_path / "run", files={"sst-train": str(three)}, val_fraction=0.5)
    data = load_training_data(cfg, cfg.task_records())
    assert (len(data.train[0]), len(data.val[0])) == (1, 2)  # ceil(0.5 x 3) held out


# ------------------------------------------------------------------ selection on val
def _fake_scores(monkeypatch: pytest.MonkeyPatch, val: list[float], dev: list[float]) -> None:
    """Overall scores per epoch: ``val[i]`` on the validation split, ``dev[i]`` on dev
    (told apart by their sizes: val_limit 12, dev_limit 16, eval_train_limit 8)."""
    real = evaluate_mod.scores
    count = {"val": 0, "dev": 0}

    def scores(tasks: Any, results: Any) -> dict[str, float]:
        out = real(tasks, results)
        size = len(results[0][1])
        kind = {12: "val", 16: "dev"}.get(size)
        if kind is not None:
            out["overall"] = (val if kind == "val" else dev)[count[kind]]
            out["sst_acc"] = out["overall"]  # a task score too: dynamic allocation reads those
            count[kind] += 1
        return out

    monkeypatch.setattr(evaluate_mod, "scores", scores)


def _updates(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    signals: list[list[float]] = []
    real = DynamicBatchAllocation.update

    def update(self: DynamicBatchAllocation, signal: Any) -> None:
        signals.append(list(signal))
        real(self, signal)

    monkeypatch.setattr(DynamicBatchAllocation, "update", update)
    return signals


DISAGREE = {"val": [0.9, 0.2, 0.5], "dev": [0.1, 0.95, 0.3]}  # val: epoch 1; dev: epoch 2


def test_the_best_epoch_is_chosen_on_val_never_on_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_scores(monkeypatch, DISAGREE["val"], DISAGREE["dev"])
    signals = _updates(monkeypatch)
    out = tmp_path / "run"
    args = [
        "train",
        "--init",
        "tiny-random",
        "--train-limit",
        "24",
        "--dev-limit",
        "16",
        "--val-limit",
        "12",
        "--eval-train-limit",
        "8",
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--steps-per-epoch",
        "1",
        "--max-length",
        "32",
        "--threads",
        "1",
        "--no-progress",
        "--scheduler",
        "dynamic",
        "--out-dir",
        str(out),
    ]
    assert main(args) == 0
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 and best["select_on"] == "val"
    assert json.loads(best["val"])["overall"] == 0.9 and json.loads(best["dev"])["overall"] == 0.1
    assert load_checkpoint(out / "latest.pt")["best_epoch"] == 1
    printed = capsys.readouterr().out
    assert "best val (epoch 1): " in printed and "overall 0.900" in printed
    assert "| dev: " in printed and "overall 0.100" in printed
    history = json.loads((out / "history.json").read_text())
    assert [r["val"]["overall"] for r in history] == DISAGREE["val"]
    assert [r["dev"]["overall"] for r in history] == DISAGREE["dev"]
    # dynamic allocation was fed the val scores of each epoch, never dev's
    assert [s[0] for s in signals] == DISAGREE["val"]


def test_select_on_dev_only_when_asked_and_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_scores(monkeypatch, DISAGREE["val"], DISAGREE["dev"])
    signals = _updates(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=3, steps_per_epoch=1, scheduler="dynamic", select_on="dev")
    run = train(cfg)
    assert run.best_epoch == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert [s[0] for s in signals] == DISAGREE["dev"]
    assert "WARNING: --select-on dev" in capsys.readouterr().err
    line = summary_line(run.history, run.best_epoch, "dev", cfg.out_dir)
    assert line.startswith("best dev (epoch 2; SELECTED ON DEV: these are not test scores)")
    assert json.loads((tmp_path / "config.json").read_text())["select_on"] == "dev"


def test_without_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``val_fraction`` 0: no split (the run reads and trains as before this option),
    only with an explicit ``select_on="dev"``."""
    with pytest.raises(ConfigError, match="--select-on dev"):
        tiny_config(tmp_path, val_fraction=0.0)
    cfg = tiny_config(tmp_path, val_fraction=0.0, select_on="dev")
    data = load_training_data(cfg, cfg.task_records())
    assert data.val == [] and data.split_hash is None
    first = cfg.task_records()[0].read(train_mod.split_path(cfg, "sst", "train"), limit=24)
    assert data.train[0].examples == first  # the file's first examples, as before
    run = train(cfg)
    assert "val" not in run.history[0] and run.history[0]["val_split"] is None
    err = capsys.readouterr().err
    assert "| val" not in err and "| dev sst" in err and "WARNING: --select-on dev" in err


def test_select_on_last_keeps_the_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``last``: best.pt is the last epoch whatever val and dev say; dynamic allocation
    still reads val, never dev."""
    _fake_scores(monkeypatch, DISAGREE["val"], DISAGREE["dev"])
    signals = _updates(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=3, steps_per_epoch=1, scheduler="dynamic", select_on="last")
    run = train(cfg)
    assert run.best_epoch == 3 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    assert load_checkpoint(tmp_path / "best.pt")["select_on"] == "last"
    assert [s[0] for s in signals] == DISAGREE["val"]
    assert "best.pt keeps the last epoch" in capsys.readouterr().err
    line = summary_line(run.history, run.best_epoch, "last", cfg.out_dir)
    assert line.startswith("last epoch (3): val: ") and "| dev: " in line


def test_select_on_last_without_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A final run on all the training data: ``val_fraction`` 0 with ``last`` trains on
    every training example, keeps the last epoch, and lets dev steer nothing (dynamic
    allocation, which would need dev's scores, is refused)."""
    with pytest.raises(ConfigError, match="dynamic batch allocation"):
        tiny_config(tmp_path, val_fraction=0.0, select_on="last", scheduler="dynamic")
    cfg = tiny_config(tmp_path, val_fraction=0.0, select_on="last", epochs=2)
    data = load_training_data(cfg, cfg.task_records())
    assert data.val == [] and data.split_hash is None
    run = train(cfg)
    assert run.best_epoch == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert "val" not in run.history[-1]
    assert "WARNING" not in capsys.readouterr().err
    line = summary_line(run.history, run.best_epoch, "last", cfg.out_dir)
    assert line.startswith("last epoch (2): dev: ")


# ------------------------------------------------------------------ conflict telemetry
def test_loss_weighting_runs_record_weights_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train(tiny_config(tmp_path, strategy="dwa", epochs=2))
    row = run.history[0]["conflicts"]
    assert row["steps"] == 2 and row["gradient_steps"] == 0 and row["conflict_fraction"] is None
    assert set(row["weight_mean"]) == {"sst", "quora", "sts"}
    grads = json.loads((tmp_path / "gradients.json").read_text())
    assert grads["norms"] == [None] * 4 and len(grads["weights"]) == 4
    assert (tmp_path / "conflicts.png").stat().st_size > 0
    err = capsys.readouterr().err
    assert "no per-task gradients over 4 steps" in err
    assert "grad conflicts norm ratio" in err and "      -          -" in err


def test_a_frozen_encoder_has_no_gradient_figures(tmp_path: Path) -> None:
    run = train(tiny_config(tmp_path, fine_tune="last-linear-layer"))
    assert "conflicts" not in run.history[0]
    assert not (tmp_path / "gradients.json").exists()


def test_the_conflict_log_holds_every_step(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=2, steps_per_epoch=3, strategy="pcgrad")
    run = train(cfg)
    assert run.conflicts is not None and run.conflicts.steps == list(range(6))
    grads = json.loads((tmp_path / "gradients.json").read_text())
    assert grads["steps"] == list(range(6)) and grads["tasks"] == ["sst", "quora", "sts"]
    for row, epoch in zip(run.history, range(2), strict=True):
        span = range(3 * epoch, 3 * epoch + 3)
        conflicts = [grads["conflicts"][s] for s in span]
        assert row["conflicts"]["conflict_fraction"] == sum(c > 0 for c in conflicts) / 3
        for j, pair in enumerate(grads["pairs"]):
            cos = [grads["cosines"][s][j] for s in span]
            assert row["conflicts"]["cosine"][pair]["mean"] == pytest.approx(sum(cos) / 3)
            assert row["conflicts"]["cosine"][pair]["min"] == min(cos)
    whole = grads["summary"]
    assert whole["steps"] == 6
    assert whole["conflict_fraction"] == sum(c > 0 for c in grads["conflicts"]) / 6


def test_the_quality_benchmark_reports_each_runs_conflict_fraction(tmp_path: Path) -> None:
    """``benchmarks/quality.py`` reads the share of steps with a conflict from a run's
    history (weighted by each epoch's steps) and puts it in its table."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import quality

    run = train(tiny_config(tmp_path / "pcgrad", epochs=2, steps_per_epoch=3))
    fraction = quality.conflict_fraction(run.history)
    grads = json.loads((tmp_path / "pcgrad" / "gradients.json").read_text())
    assert fraction == pytest.approx(grads["summary"]["conflict_fraction"])
    rows = [{"conflicts": {"conflict_fraction": 0.5, "gradient_steps": 2}}]
    rows.append({"conflicts": {"conflict_fraction": 1.0, "gradient_steps": 6}})
    assert quality.conflict_fraction(rows) == pytest.approx(7 / 8)
    weighting = [{"conflicts": {"conflict_fraction": None, "gradient_steps": 0}}]
    assert quality.conflict_fraction(weighting) is None
    assert quality.conflict_fraction([{"epoch": 1}]) is None  # a history before telemetry
    metrics = {m: 0.5 for m in quality.METRICS}
    results = [
        {
            "strategy": "sum",
            "seed": 0,
            **metrics,
            "conflict_fraction": 0.25,
            "wall_s": 1,
            "step_s": 1,
        },
        {
            "strategy": "sum",
            "seed": 1,
            **metrics,
            "conflict_fraction": 0.75,
            "wall_s": 1,
            "step_s": 1,
        },
        {
            "strategy": "dwa",
            "seed": 0,
            **metrics,
            "conflict_fraction": None,
            "wall_s": 1,
            "step_s": 1,
        },
        {"strategy": "rlw", "seed": 0, **metrics, "wall_s": 1, "step_s": 1},  # an older result
    ]
    table = quality.markdown(quality.summarize(results), "#")
    assert "| conflict steps |" in table
    assert "| sum | 2 | " in table and "| 50% ± 35% |" in table
    assert table.count("| n/a |") == 2


def test_calibrate_limit_caps_what_the_threshold_is_fitted_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--calibrate-limit``: Quora's cosine threshold (pairwise loss) is fitted on the
    first N training examples of each task each epoch, not the whole training set."""
    from examples.minbert import evaluate

    seen: list[list[int]] = []
    real = evaluate.calibrate

    def spy(model, datasets, tokenizer, **kw):  # type: ignore[no-untyped-def]
        seen.append([len(d) for d in datasets])
        return real(model, datasets, tokenizer, **kw)

    monkeypatch.setattr(evaluate, "calibrate", spy)
    with pytest.raises(ConfigError, match="calibrate_limit"):
        TrainConfig(calibrate_limit=0)
    argv = ["train", "--init", "tiny-random", "--epochs", "1", "--steps-per-epoch", "1"]
    argv += ["--train-limit", "40", "--dev-limit", "8", "--val-limit", "8", "--no-progress"]
    argv += ["--quora-loss", "cosine-embedding", "--calibrate-limit", "12", "--device", "cpu"]
    argv += ["--out-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    assert seen == [[12, 12, 12]]
