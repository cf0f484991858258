"""Exact resume of the miniBERT trainer: a run killed mid-epoch and resumed with
``--resume`` ends bit-identical to an uninterrupted run; checkpoints are written
atomically; two runs with the same seed agree exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.minbert import checkpoint as checkpoint_mod
from examples.minbert import evaluate as evaluate_mod
from examples.minbert import train as train_mod
from examples.minbert.checkpoint import load_checkpoint
from examples.minbert.cli import main

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 12
EPOCHS = 2
#: Stateful parts on purpose: a sampling scheduler driven by dev scores, PCGrad's random
#: projection orders, dropout, a margin schedule and a fitted Quora threshold.
ARGS = [
    "train",
    "--init",
    "tiny-random",
    "--train-limit",
    "48",
    "--dev-limit",
    "16",
    "--val-limit",
    "16",
    "--eval-train-limit",
    "16",
    "--batch-size",
    "8",
    "--epochs",
    str(EPOCHS),
    "--steps-per-epoch",
    str(STEPS_PER_EPOCH),
    "--max-length",
    "48",
    "--no-progress",
    "--threads",
    "1",
    "--checkpoint-every",
    "3",
    "--scheduler",
    "dynamic",
    "--scheduler-arg",
    "temperature=0.05",
    "--scheduler-arg",
    "min_per_task=2",
    "--strategy",
    "pcgrad",
    "--quora-structure",
    "cosine",
    "--quora-loss",
    "cosine-embedding",
    "--margin",
    "0.2",
    "--margin-end",
    "0.6",
    "--margin-steps",
    "20",
    "--seed",
    "7",
]


def _history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "history.json").read_text())
    for row in rows:
        row.pop("seconds")  # wall time, the one field allowed to differ
    return list(rows)


def _assert_same_model(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def _assert_same_run(run: Path, ref: Path) -> None:
    state, ref_state = load_checkpoint(run / "latest.pt"), load_checkpoint(ref / "latest.pt")
    _assert_same_model(state["model"], ref_state["model"])
    assert state["loss_log"] == ref_state["loss_log"]
    assert state["strategy"]["generator"].equal(ref_state["strategy"]["generator"])
    assert _history(run) == _history(ref)
    # every step's gradient figures survive the resume, bit for bit
    assert torch.equal(state["conflicts"]["rows"], ref_state["conflicts"]["rows"])
    assert state["conflicts"]["rows"].shape[0] == len(state["loss_log"])
    grads = json.loads((run / "gradients.json").read_text())
    assert grads == json.loads((ref / "gradients.json").read_text())
    assert grads["steps"] == list(range(len(state["loss_log"])))
    assert state["split"] == ref_state["split"] is not None
    assert state["best_epoch"] == ref_state["best_epoch"]
    _assert_same_model(
        load_checkpoint(run / "best.pt")["model"], load_checkpoint(ref / "best.pt")["model"]
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (in this process, through the CLI)."""
    out = tmp_path_factory.mktemp("reference")
    assert main([*ARGS, "--out-dir", str(out)]) == 0
    return out


def test_same_seed_same_run(reference: Path, tmp_path: Path) -> None:
    assert main([*ARGS, "--out-dir", str(tmp_path)]) == 0
    _assert_same_run(tmp_path, reference)
    assert len(_history(tmp_path)) == EPOCHS


def test_killed_mid_epoch_then_resumed_is_bit_identical(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL once a checkpoint of the second epoch exists, then ``--resume``."""
    run = tmp_path / "run"
    latest = run / "latest.pt"
    cmd = [sys.executable, "-m", "examples.minbert", *ARGS, "--out-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kill_from = STEPS_PER_EPOCH + 3  # the first step checkpoint of epoch 2
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        seen: list[int] = []
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if latest.is_file():
                    # every latest.pt ever visible loads (atomic replace)
                    step = int(load_checkpoint(latest)["loader"]["scheduler"]["step"])
                    if not seen or seen[-1] != step:
                        seen.append(step)
                    if step >= kill_from:
                        proc.send_signal(signal.SIGKILL)
                        break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait()
    log_text = (tmp_path / "first.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill\n{log_text}"
    killed_at = int(load_checkpoint(latest)["loader"]["scheduler"]["step"])
    assert STEPS_PER_EPOCH < killed_at < EPOCHS * STEPS_PER_EPOCH, seen
    assert killed_at % STEPS_PER_EPOCH != 0  # mid-epoch
    assert all(s % 3 == 0 for s in seen), seen
    # a kill during a write leaves a partial temporary file: it must not matter, and the
    # resumed run (holding the folder's lock: no writer is alive) removes it
    stale = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    (run / ".latest.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 partial write")

    assert main([*ARGS, "--out-dir", str(run), "--resume"]) == 0  # here, to save a start-up
    assert f"at step {killed_at}" in capsys.readouterr().err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], stale
    _assert_same_run(run, reference)


#: ... and layer-wise rates (one optimizer group per encoder layer, each with its own state)
#: and a moving average of the weights, which each epoch evaluates and best.pt keeps.
SMALL = [
    *ARGS[:-2],
    "--seed",
    "3",
    "--steps-per-epoch",
    "4",
    "--checkpoint-every",
    "2",
    "--layer-lr-decay",
    "0.8",
    "--ema-decay",
    "0.9",
]


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-reference")
    assert main([*SMALL, "--out-dir", str(out)]) == 0
    return out


class Crash(Exception):
    """Stands for a kill: the process stops where it is, with what is on disk."""


@pytest.mark.parametrize("point", ["step-3", "eval-1", "step-6"])
def test_resume_from_any_crash_point(
    small_reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """In-process crashes at chosen points (mid-epoch in either epoch, during the first
    end-of-epoch evaluation) resume to the same end as an uninterrupted run."""
    kind, when = point.split("-")
    calls = {"step": 0, "eval": 0}
    real_step = train_mod.train_step
    real_predict = evaluate_mod.predict

    def step(*args: Any, **kwargs: Any) -> Any:
        calls["step"] += 1
        if kind == "step" and calls["step"] == int(when):
            raise Crash
        return real_step(*args, **kwargs)

    def predict(*args: Any, **kwargs: Any) -> Any:  # train, val, dev: the dev predictions
        calls["eval"] += 1
        if kind == "eval" and calls["eval"] == 3 * int(when):
            raise Crash
        return real_predict(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "train_step", step)
        m.setattr(evaluate_mod, "predict", predict)
        with pytest.raises(Crash):
            main([*SMALL, "--out-dir", str(tmp_path)])
    assert main([*SMALL, "--out-dir", str(tmp_path), "--resume"]) == 0
    _assert_same_run(tmp_path, small_reference)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pt"
    checkpoint_mod.save_atomic({"step": torch.tensor(1)}, path)

    def dies_mid_write(fh: Any, chunk: Any) -> None:
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # killed during the write

    with monkeypatch.context() as m:
        m.setattr(checkpoint_mod, "_write_chunk", dies_mid_write)
        with pytest.raises(KeyboardInterrupt):
            checkpoint_mod.save_atomic({"step": torch.tensor(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no partial file left
    assert int(load_checkpoint(path)["step"]) == 1  # the previous checkpoint, intact
    checkpoint_mod.save_atomic({"step": torch.tensor(3)}, path)
    assert int(load_checkpoint(path)["step"]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_resume_needs_the_same_number_of_processes(small_reference: Path, tmp_path: Path) -> None:
    """A data-parallel checkpoint holds each rank's data position and RNG state."""
    from examples.minbert.cli import build_parser, config_from_args

    state = load_checkpoint(small_reference / "latest.pt")
    own = {k: state[k] for k in ("loader", "rng_cpu", "rng_cuda")}
    checkpoint_mod.save_atomic({**state, "ranks": [own, own]}, tmp_path / "latest.pt")
    args = build_parser().parse_args([*SMALL, "--out-dir", str(tmp_path), "--resume"])
    with pytest.raises(checkpoint_mod.ResumeError, match="written by 2 process"):
        train_mod.train(config_from_args(args))
