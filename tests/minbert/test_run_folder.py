"""The run folder of the miniBERT trainer: nothing lost, nothing silent.

A second run never clobbers a first (lock, non-empty folder refused), ``--resume`` checks
its checkpoint and its options, checkpoints are written atomically with unique temporary
files and carry a SHA-256, what fails late is refused at start-up, and every user error is
one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.minbert import checkpoint as checkpoint_mod
from examples.minbert import train as train_mod
from examples.minbert.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "train",
    "--init",
    "tiny-random",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
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
    "--max-length",
    "32",
    "--threads",
    "1",
    "--no-progress",
]
SST_HEADER = "\tid\tsentence\tsentiment\n"


def _one_error(err: str) -> str:
    """The whole of stderr is one ``error: ...`` line (no traceback); return it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _last_error(err: str) -> str:
    """Log lines may come first; the last line is the error, and there is no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the training steps taken (none may be, when a run is refused)."""
    calls: list[int] = []
    real = train_mod.train_step

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    return calls


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (one epoch of two steps)."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert main([*TINY, "--out-dir", str(out)]) == 0
    return out


def _copy_run(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name, data in _snapshot(run).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(data)
    return to


# ------------------------------------------------------------------- 1. never clobbered
def test_second_run_in_a_used_folder_is_refused(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    before = _snapshot(run)
    capsys.readouterr()
    assert main([*TINY, "--out-dir", str(run), "--lr", "0.01"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(run) == before  # best.pt, history.json, config.json untouched


def test_overwrite_replaces_a_run(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")  # not a run's file: --overwrite keeps away
    assert main([*TINY, "--out-dir", str(run), "--overwrite"]) == 2
    assert "notes.txt" in _one_error(capsys.readouterr().err)
    (run / "notes.txt").unlink()
    assert main([*TINY, "--out-dir", str(run), "--overwrite", "--lr", "0.01"]) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01
    capsys.readouterr()
    assert main([*TINY, "--out-dir", str(run), "--overwrite", "--resume"]) == 2
    _one_error(capsys.readouterr().err)


def test_resume_without_a_checkpoint_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _count_steps(monkeypatch)
    assert main([*TINY, "--out-dir", str(tmp_path / "new"), "--resume"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "latest.pt" in line and str(tmp_path / "new") in line
    assert not steps
    assert not (tmp_path / "new" / "config.json").exists()


def test_a_refused_start_leaves_the_folder_usable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run refused at start-up writes nothing: the same folder takes the next run."""
    out = tmp_path / "run"
    assert main([*TINY, "--out-dir", str(out), "--lr", "-1"]) == 2  # the options
    empty = tmp_path / "sst-dev.csv"
    empty.write_text(SST_HEADER)
    assert main([*TINY, "--out-dir", str(out), "--file", f"sst-dev={empty}"]) == 2  # the data
    assert out.is_dir() and [p.name for p in out.iterdir()] == [".lock"]
    assert main([*TINY, "--out-dir", str(out)]) == 0


# ------------------------------------------------------------------- 2. one writer per folder
def test_a_locked_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with checkpoint_mod.RunLock(out):
        assert main([*TINY, "--out-dir", str(out)]) == 2
        line = _one_error(capsys.readouterr().err)
        assert str(out) in line and f"pid {os.getpid()}" in line
        with pytest.raises(checkpoint_mod.RunFolderError, match="in use"):
            checkpoint_mod.RunLock(out).acquire()
        assert main([*TINY, "--out-dir", str(out), "--resume"]) == 2  # in use comes first
        assert "in use" in _one_error(capsys.readouterr().err)
    assert main([*TINY, "--out-dir", str(out)]) == 0  # released


def test_a_folder_locked_by_another_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    holder = (
        "import sys\n"
        "from examples.minbert.checkpoint import RunLock\n"
        f"with RunLock({str(out)!r}):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert main([*TINY, "--out-dir", str(out)]) == 2
        line = _one_error(capsys.readouterr().err)
        assert f"pid {proc.pid}" in line and "in use" in line
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    assert main([*TINY, "--out-dir", str(out)]) == 0


def test_concurrent_writers_never_mix(tmp_path: Path) -> None:
    """Two writers of one path (unique temporary files): every read is one whole file."""
    path = tmp_path / "latest.pt"
    checkpoint_mod.save_atomic({"writer": 0, "x": torch.zeros(2000)}, path)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = []

    def write(writer: int) -> None:
        try:
            for i in range(30):
                value = torch.full((2000,), float(writer * 1000 + i))
                checkpoint_mod.save_atomic({"writer": writer, "x": value}, path)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def read() -> None:
        while not stop.is_set():
            try:
                state = checkpoint_mod.load_checkpoint(path)
                x = state["x"]
                assert bool((x == x[0]).all()), "mixed"
                reads.append(state["writer"])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=write, args=(w,)) for w in (1, 2)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert not errors, errors[:3]
    assert reads
    assert not [p.name for p in tmp_path.iterdir() if p.name != "latest.pt"]


def test_atomic_write_syncs_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    renamed: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        renamed.append((str(src), str(dst)))
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_mod.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_mod.os, "replace", replace)
    checkpoint_mod.save_atomic({"a": torch.ones(1)}, tmp_path / "latest.pt")
    checkpoint_mod.save_atomic({"a": torch.ones(1)}, tmp_path / "latest.pt")
    assert synced == ["file", "rename", "dir"] * 2
    (first, target), (second, _) = renamed
    assert first != second  # a new temporary file each time
    assert Path(first).parent == tmp_path and target == str(tmp_path / "latest.pt")


# ------------------------------------------------------------------- 3. resume checks options
def test_resume_with_changed_options_is_refused(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    before = _snapshot(run)
    capsys.readouterr()
    args = [*TINY, "--out-dir", str(run), "--resume", "--lr", "1", "--strategy", "pcgrad"]
    assert main(args) == 2
    line = _one_error(capsys.readouterr().err)
    assert "--lr 0.0001 -> 1.0" in line, line
    assert "--strategy 'mgda' -> 'pcgrad'" in line, line
    assert _snapshot(run) == before


def test_resume_may_change_epochs_threads_and_progress(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    args = [a for a in TINY if a != "--no-progress"]
    args[args.index("--epochs") + 1] = "2"
    args[args.index("--threads") + 1] = "2"
    assert main([*args, "--out-dir", str(run), "--resume", "--checkpoint-every", "1"]) == 0
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert "resumed from" in capsys.readouterr().err


def test_resume_differences_name_each_option() -> None:
    old = train_mod.TrainConfig(init="tiny-random", files={"sst-dev": "a.csv"})
    new = train_mod.TrainConfig(
        init="tiny-random",
        files={"sst-dev": "b.csv"},
        epochs=9,
        device="cpu",
        threads=1,
        out_dir="elsewhere",
        strategy_options={"x": 1},
    )
    diffs = train_mod.resume_differences(old, new)
    assert diffs == [
        "--file {'sst-dev': 'a.csv'} -> {'sst-dev': 'b.csv'}",
        "--strategy-arg {} -> {'x': 1}",
    ]
    assert train_mod.RESUMABLE >= {"epochs", "device", "threads", "checkpoint_every", "progress"}
    # the validation split and what selects on it are the run's: never resumable
    split = {"val_fraction", "val_seed", "val_limit", "select_on"}
    assert not split & train_mod.RESUMABLE
    other = train_mod.TrainConfig(
        init="tiny-random", val_fraction=0.2, val_seed=1, val_limit=5, select_on="dev"
    )
    assert train_mod.resume_differences(train_mod.TrainConfig(init="tiny-random"), other) == [
        "--val-fraction 0.1 -> 0.2",
        "--val-seed 0 -> 1",
        "--val-limit None -> 5",
        "--select-on 'val' -> 'dev'",
    ]


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--val-fraction", "0.2", "--val-fraction 0.1 -> 0.2"),
        ("--val-seed", "3", "--val-seed 0 -> 3"),
        ("--val-limit", "4", "--val-limit 8 -> 4"),
        ("--select-on", "dev", "--select-on 'val' -> 'dev'"),
    ],
)
def test_resume_with_another_validation_split_is_refused(
    done_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    named: str,
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    before = _snapshot(run)
    capsys.readouterr()
    assert main([*TINY, "--out-dir", str(run), "--resume", option, value]) == 2
    assert named in _one_error(capsys.readouterr().err)
    assert _snapshot(run) == before


def test_resume_checks_the_held_out_examples(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A training file that changed (another split drawn from it), or a checkpoint of a
    version without a validation split, is refused rather than continued on other data."""
    run = _copy_run(done_run, tmp_path / "run")
    state = checkpoint_mod.load_checkpoint(run / "latest.pt")
    checkpoint_mod.save_atomic({**state, "split": "0" * 64}, run / "latest.pt", kind="latest")
    capsys.readouterr()
    assert main([*TINY, "--out-dir", str(run), "--resume"]) == 2
    assert "validation split" in _last_error(capsys.readouterr().err)
    old = {k: v for k, v in state.items() if k != "split"}
    checkpoint_mod.save_atomic(old, run / "latest.pt", kind="latest")
    assert main([*TINY, "--out-dir", str(run), "--resume"]) == 2
    assert "earlier version" in _last_error(capsys.readouterr().err)


# ------------------------------------------------------------------- 4. refused at start-up
def test_empty_dev_split_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _count_steps(monkeypatch)
    assert main([*TINY, "--out-dir", str(tmp_path / "a"), "--dev-limit", "0"]) == 2
    assert "dev" in _one_error(capsys.readouterr().err)
    empty = tmp_path / "sst-dev.csv"
    empty.write_text(SST_HEADER)  # a header and no rows
    assert main([*TINY, "--out-dir", str(tmp_path / "b"), "--file", f"sst-dev={empty}"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(empty) in line and "sst" in line
    assert main([*TINY, "--out-dir", str(tmp_path / "c"), "--file", f"sst-train={empty}"]) == 2
    assert str(empty) in _one_error(capsys.readouterr().err)
    assert not steps


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--lr", "-1", "lr"),
        ("--lr", "nan", "lr"),
        ("--head-lr", "-0.5", "head_lr"),
        ("--layer-lr-decay", "0", "layer_lr_decay"),
        ("--layer-lr-decay", "1.5", "layer_lr_decay"),
        ("--ema-decay", "1", "ema_decay"),
        ("--ema-decay", "-0.5", "ema_decay"),
        ("--weight-decay", "inf", "weight_decay"),
        ("--warmup-ratio", "1", "warmup_ratio"),
        ("--warmup-ratio", "-0.1", "warmup_ratio"),
        ("--max-length", "10000", "max_length"),
        ("--max-length", "2", "max_length"),
        ("--train-limit", "0", "train_limit"),
        ("--val-fraction", "1", "val_fraction"),
        ("--val-fraction", "-0.1", "val_fraction"),
        ("--val-fraction", "0", "--select-on dev"),
        ("--val-seed", "-1", "val_seed"),
        ("--val-limit", "0", "val_limit"),
        ("--eval-train-limit", "0", "eval_train_limit"),
        ("--checkpoint-every", "-1", "checkpoint_every"),
        ("--steps-per-epoch", "-3", "steps_per_epoch"),
        ("--threads", "0", "threads"),
        ("--device", "nonsense", "device"),
        ("--file", "sts-dev=/nonexistent.csv", "/nonexistent.csv"),
    ],
)
def test_bad_values_are_refused_at_start_up(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    value: str,
    named: str,
) -> None:
    steps = _count_steps(monkeypatch)
    assert main([*TINY, "--out-dir", str(tmp_path / "run"), option, value]) == 2
    assert named in _one_error(capsys.readouterr().err)
    assert not steps


def test_a_file_for_a_task_not_trained_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--tasks", "sst", "--file", "sts-dev=x.csv"]) == 2
    assert "sts-dev" in _one_error(capsys.readouterr().err)
    with pytest.raises(ValueError, match="nope-dev"):
        train_mod.TrainConfig(files={"nope-dev": "x.csv"})


def _weights_folder(folder: Path, vocab_tokens: int) -> Path:
    """A tiny pretrained checkpoint folder: 128 embedding rows, 64 positions."""
    from safetensors.torch import save_file

    from examples.minbert.model import BertConfig, BertModel

    config = BertConfig.tiny()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "bert"}))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"tok{i}" for i in range(vocab_tokens - len(special))]
    (folder / "vocab.txt").write_text("\n".join(special + words) + "\n")
    save_file(BertModel(config).state_dict(), str(folder / "model.safetensors"))
    return folder


def test_the_model_tables_are_checked_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _count_steps(monkeypatch)
    base = [*TINY[:1], *TINY[3:]]  # no --init: pretrained weights from --weights
    big_vocab = _weights_folder(tmp_path / "big-vocab", 200)
    assert main([*base, "--weights", str(big_vocab), "--out-dir", str(tmp_path / "a")]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "200" in line and "128" in line
    fits = _weights_folder(tmp_path / "fits", 128)
    args = [*base, "--weights", str(fits), "--out-dir", str(tmp_path / "b")]
    args[args.index("--max-length") + 1] = "100"
    assert main(args) == 2
    line = _one_error(capsys.readouterr().err)
    assert "100" in line and "64" in line
    assert not steps


# ------------------------------------------------------------------- 5. disk full, Ctrl-C
def test_disk_full_during_a_checkpoint_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latest.pt"
    checkpoint_mod.save_atomic({"step": torch.tensor(1), "x": torch.zeros(300_000)}, path)
    written: list[int] = []
    real = checkpoint_mod._write_chunk

    def full(fh: Any, chunk: memoryview) -> None:
        if written:  # the second chunk does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(chunk))
        real(fh, chunk)

    monkeypatch.setattr(checkpoint_mod, "_write_chunk", full)
    with pytest.raises(checkpoint_mod.WriteError) as info:
        checkpoint_mod.save_atomic({"step": torch.tensor(2), "x": torch.ones(300_000)}, path)
    assert written  # it failed part-way
    assert str(info.value).startswith(f"could not write {path}: [Errno 28] No space left on device")
    assert isinstance(info.value, OSError)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # the partial file is gone
    assert int(checkpoint_mod.load_checkpoint(path)["step"]) == 1  # the previous one, intact


def test_disk_full_at_fsync_and_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    checkpoint_mod.save_atomic({"step": torch.tensor(1)}, path)

    def fails(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(checkpoint_mod.os, "fsync", fails)
        with pytest.raises(OSError, match=r"could not write .*best\.pt: \[Errno 28\]"):
            checkpoint_mod.save_atomic({"step": torch.tensor(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]

    def interrupted(fh: Any, chunk: memoryview) -> None:
        fh.write(bytes(chunk[:10]))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(checkpoint_mod, "_write_chunk", interrupted)
        with pytest.raises(KeyboardInterrupt):
            checkpoint_mod.save_atomic({"step": torch.tensor(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert int(checkpoint_mod.load_checkpoint(path)["step"]) == 1


def test_disk_full_during_a_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real = checkpoint_mod._write_chunk
    files: list[str] = []  # the temporary files of latest.pt, in order

    def full(fh: Any, chunk: memoryview) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fh.fileno()}")).name
        if name.startswith(".latest.pt."):
            if name not in files:
                files.append(name)
            if len(files) == 2:  # the second write of latest.pt (end of epoch 1)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, chunk)

    monkeypatch.setattr(checkpoint_mod, "_write_chunk", full)
    rc = main([*TINY, "--out-dir", str(out), "--epochs", "2", "--checkpoint-every", "1"])
    assert rc == 2
    line = _last_error(capsys.readouterr().err)
    assert line.startswith(f"error: could not write {out / 'latest.pt'}: [Errno 28]")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    state = checkpoint_mod.load_checkpoint(out / "latest.pt")
    assert int(state["loader"]["scheduler"]["step"]) == 1  # the previous checkpoint


def test_stale_temporary_files_are_removed(done_run: Path, tmp_path: Path) -> None:
    """A kill during a write leaves a temporary file; the next run holding the lock
    removes it."""
    run = _copy_run(done_run, tmp_path / "run")
    (run / ".latest.pt.k1ll3d.tmp").write_bytes(b"partial")
    (run / "latest.pt.tmp").write_bytes(b"partial")  # the name older versions used
    args = [*TINY, "--out-dir", str(run), "--resume"]
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 0
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------- 6. integrity
def _corrupt(kind: str, path: Path) -> None:
    if kind == "flipped":
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(50_000))
    elif kind == "foreign-torch":
        path.unlink()
        torch.save({"model": {"w": torch.zeros(3)}, "config": "{}"}, path)
    elif kind == "bad-header":
        path.write_bytes(checkpoint_mod.MAGIC + b"{not json\n" + b"x" * 100)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("flipped", "SHA-256"),
        ("truncated", "truncated"),
        ("zero", "empty"),
        ("random", "not a miniBERT checkpoint"),
        ("foreign-torch", "not a miniBERT checkpoint"),
        ("bad-header", "header"),
    ],
)
def test_a_damaged_checkpoint_is_one_sentence(
    done_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    says: str,
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    _corrupt(kind, run / "best.pt")
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), "--limit", "4"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(run / "best.pt") in line and says in line, line
    assert "weights_only" not in line
    with pytest.raises(checkpoint_mod.CheckpointError, match=says):
        checkpoint_mod.load_checkpoint(run / "best.pt")
    # a damaged latest.pt stops a resume in the same way
    _corrupt(kind, run / "latest.pt")
    assert main([*TINY, "--out-dir", str(run), "--resume"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(run / "latest.pt") in line and says in line, line


def test_checkpoint_format(done_run: Path) -> None:
    """A header line (format, version, kind, size, SHA-256), then ``torch.save`` bytes."""
    data = (done_run / "best.pt").read_bytes()
    assert data.startswith(checkpoint_mod.MAGIC)
    header_end = data.index(b"\n", len(checkpoint_mod.MAGIC)) + 1
    header = json.loads(data[len(checkpoint_mod.MAGIC) : header_end])
    payload = data[header_end:]
    assert header["format"] == "mtlkit-minbert" and header["version"] == 1
    assert header["kind"] == "best" and header["size"] == len(payload)
    assert header["sha256"] == hashlib.sha256(payload).hexdigest()
    import io

    state = torch.load(io.BytesIO(payload), weights_only=True)  # plain torch underneath
    assert {"model", "config", "epoch", "val", "dev", "select_on"} <= set(state)


def test_resume_needs_latest_not_best(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    (run / "latest.pt").write_bytes((run / "best.pt").read_bytes())
    assert main([*TINY, "--out-dir", str(run), "--resume"]) == 2
    assert "best" in _one_error(capsys.readouterr().err)


# ------------------------------------------------------------------- 7. evaluate --file
def test_evaluate_scores_a_train_file_given_explicitly(
    done_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine.csv"
    rows = [f"{i}\tu{i}\tsentence number {i}\t{i % 5}" for i in range(5)]
    mine.write_text(SST_HEADER + "\n".join(rows) + "\n")
    ev = tmp_path / "ev"
    args = ["evaluate", str(done_run / "best.pt"), "--out-dir", str(ev), "--limit", "4"]
    assert main([*args, "--file", f"sst-train={mine}"]) == 0
    printed = capsys.readouterr()
    assert str(mine) in printed.err  # which file each task was scored on
    ids = [line.split(",")[0] for line in (ev / "sst.csv").read_text().splitlines()[1:]]
    assert ids == ["u0", "u1", "u2", "u3"]  # the given file (--limit 4), not the dev file
    assert json.loads((ev / "scores.json").read_text())["sst_acc"] >= 0.0
    # two files for one task: which one? refused
    assert main([*args, "--file", f"sst-train={mine}", "--file", f"sst-dev={mine}"]) == 2
    assert "sst" in _one_error(capsys.readouterr().err)


def test_evaluate_refuses_unknown_file_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "sst-only"
    assert main([*TINY, "--tasks", "sst", "--out-dir", str(run)]) == 0
    capsys.readouterr()
    mine = tmp_path / "x.csv"
    mine.write_text(SST_HEADER + "0\tu0\tfine\t1\n")
    assert main(["evaluate", str(run / "best.pt"), "--file", f"quora-dev={mine}"]) == 2
    assert "quora-dev" in _one_error(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run / "best.pt"), "--file", f"nope-dev={mine}"])
    assert exit_info.value.code == 2
    assert "nope-dev" in capsys.readouterr().err
    for bad in (["--limit", "0"], ["--limit", "-1"]):
        assert main(["evaluate", str(run / "best.pt"), *bad]) == 2
        assert "limit" in _one_error(capsys.readouterr().err)
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in _one_error(capsys.readouterr().err)


# ------------------------------------------------------------------- bugs still show
def test_a_bug_still_raises_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(train_mod, "train_step", broken)
    with pytest.raises(ZeroDivisionError):
        main([*TINY, "--out-dir", str(tmp_path / "run")])
    # the lock went with the failed run: the folder takes a resume or an --overwrite
    monkeypatch.undo()
    assert main([*TINY, "--out-dir", str(tmp_path / "run"), "--overwrite"]) == 0
