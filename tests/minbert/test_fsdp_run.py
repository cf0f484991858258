"""The miniBERT example sharded with FSDP2 (``torchrun --nproc_per_node 2 ... --fsdp``, gloo
on the CPU): a run killed with SIGKILL mid-epoch and resumed ends with the same parameters,
losses and scores as an uninterrupted one, and its checkpoints are ordinary whole-model
checkpoints (``evaluate`` scores ``best.pt`` in one process)."""

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
import torch.distributed as dist

from examples.minbert.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
ARGS = [
    "train",
    "--fsdp",
    "--init",
    "tiny-random",
    "--train-limit",
    "32",
    "--dev-limit",
    "16",
    "--val-limit",
    "8",
    "--eval-train-limit",
    "8",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--steps-per-epoch",
    str(STEPS),
    "--max-length",
    "32",
    "--no-progress",
    "--threads",
    "1",
    "--checkpoint-every",
    "1",
    "--strategy",
    "pcgrad",
    "--dropout",
    "0.1",
    "--seed",
    "5",
]


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "examples.minbert",
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _run(*args: str, log: Path) -> None:
    with open(log, "wb") as fh:
        proc = subprocess.run(
            _torchrun(*args), cwd=ROOT, env=ENV, stdout=fh, stderr=fh, timeout=300, check=False
        )
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def _step(latest: Path) -> int:
    return int(load_checkpoint(latest)["ranks"][0]["loader"]["scheduler"]["step"])


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun's workers are not in its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _kill_tree(pid: int) -> None:
    for p in _descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "history.json").read_text())
    for row in rows:
        row.pop("seconds")
    return list(rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp-reference")
    _run(*ARGS, "--out-dir", str(out / "run"), log=out / "log.txt")
    return out / "run"


def test_checkpoints_hold_the_whole_model(reference: Path, tmp_path: Path) -> None:
    state = load_checkpoint(reference / "latest.pt")
    assert len(state["ranks"]) == 2  # each rank's loader and RNG
    weights = state["model"]
    assert all(not hasattr(t, "to_local") for t in weights.values())  # plain tensors
    word = weights["encoder.embeddings.word_embeddings.weight"]
    assert word.shape[0] > 100  # the whole table, not a shard
    best = load_checkpoint(reference / "best.pt")
    epoch = best["epoch"]
    from examples.minbert.cli import main

    out = tmp_path / "eval"
    assert (
        main(["evaluate", str(reference / "best.pt"), "--out-dir", str(out), "--limit", "16"]) == 0
    )
    scores = json.loads((out / "scores.json").read_text())
    dev = _history(reference)[epoch - 1]["dev"]
    assert scores == pytest.approx(dev, abs=1e-6)  # one process scores what FSDP saw


def test_killed_fsdp_run_resumes_to_the_same_parameters(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    latest = run / "latest.pt"
    with open(tmp_path / "first.log", "wb") as fh:
        proc = subprocess.Popen(
            _torchrun(*ARGS, "--out-dir", str(run)),
            cwd=ROOT,
            env=ENV,
            stdout=fh,
            stderr=fh,
        )
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if latest.is_file() and _step(latest) >= STEPS + 1:  # mid epoch 2
                    _kill_tree(proc.pid)  # torchrun and its workers at once
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                _kill_tree(proc.pid)
            proc.wait()
    log = (tmp_path / "first.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill\n{log[-3000:]}"
    killed_at = _step(latest)
    assert STEPS < killed_at < 2 * STEPS, killed_at
    _run(*ARGS, "--out-dir", str(run), "--resume", log=tmp_path / "resumed.log")
    assert f"at step {killed_at}" in (tmp_path / "resumed.log").read_text(errors="replace")
    ours, ref = load_checkpoint(latest), load_checkpoint(reference / "latest.pt")
    assert ours["model"].keys() == ref["model"].keys()
    for key, value in ref["model"].items():
        assert torch.equal(ours["model"][key], value), key
    assert ours["loss_log"] == ref["loss_log"]
    assert ours["strategy"]["generator"].equal(ref["strategy"]["generator"])
    assert _history(run) == _history(reference)
