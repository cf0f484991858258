"""Training loop and CLI of the miniBERT example, on a tiny random-weight model."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.minbert.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_atomic
from examples.minbert.cli import build_parser, config_from_args, main
from examples.minbert.tasks import best_threshold
from examples.minbert.train import TrainConfig, build_loader, build_model, load_split, train


def tiny_config(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        out_dir=str(out),
        init="tiny-random",
        train_limit=24,
        dev_limit=16,
        eval_train_limit=16,
        batch_size=8,
        epochs=1,
        steps_per_epoch=3,
        max_length=48,
        progress=False,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_loss_falls(tmp_path: Path) -> None:
    """Repeated steps on a fixed slice of each task: every task's loss goes down."""
    cfg = tiny_config(tmp_path, train_limit=8, steps_per_epoch=40, lr=3e-3, head_lr=1e-2)
    log = torch.tensor(train(cfg).loss_log)
    first, last = log[:5].mean(0), log[-5:].mean(0)
    assert (last < 0.7 * first).all(), (first, last)


@pytest.mark.parametrize(
    "options",
    [
        {"quora": {"structure": "siamese"}, "sts": {"loss": "cosent"}},
        {
            "quora": {
                "structure": "cosine",
                "loss": "cosine-embedding",
                "loss_options": {"margin": {"start": 0.2, "end": 0.6, "steps": 2}},
            }
        },
        {"quora": {"structure": "cosine", "loss": "mnrl"}},
        {"quora": {"structure": "siamese", "loss": "triplet"}, "sts": {"structure": "cross"}},
        {"quora": {"structure": "cosine", "loss": "contrastive"}},
    ],
)
def test_structures_and_losses_train(tmp_path: Path, options: dict[str, Any]) -> None:
    cfg = tiny_config(tmp_path, task_options=options, strategy="gradnorm")
    history = train(cfg).history
    assert len(history) == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in history[0]["loss"].values())


def test_pooling_cls_and_pooler(tmp_path: Path) -> None:
    for pooling in ("cls", "pooler"):
        history = train(tiny_config(tmp_path / pooling, pooling=pooling)).history
        assert torch.isfinite(torch.tensor(history[0]["dev"]["overall"]))


def test_margin_schedule_moves(tmp_path: Path) -> None:
    margin = {"start": 0.2, "end": 0.6, "steps": 2}
    quora = {"structure": "cosine", "loss": "cosine-embedding", "loss_options": {"margin": margin}}
    model = train(tiny_config(tmp_path, task_options={"quora": quora})).model
    pairwise = model.heads["quora"].pairwise
    assert pairwise is not None
    assert pairwise.margin == pytest.approx(0.6)


def test_frozen_encoder_only_trains_heads(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, fine_tune="last-linear-layer")
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg, cfg.task_records())  # the run's initial model (same seed)
    run = train(cfg)
    for k, v in run.model.encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k]), k
    head = model.heads["sst"].linear.weight
    assert not torch.equal(run.model.heads["sst"].linear.weight, head)


def test_cli_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--init",
            "tiny-random",
            "--train-limit",
            "24",
            "--dev-limit",
            "16",
            "--val-limit",
            "24",
            "--eval-train-limit",
            "16",
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "2",
            "--max-length",
            "48",
            "--no-progress",
            "--strategy",
            "pcgrad",
            "--scheduler",
            "dynamic",
            "--scheduler-arg",
            "temperature=0.05",
            "--scheduler-arg",
            "min_per_task=2",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr()
    assert "best val (epoch" in printed.out and "| dev: sst acc" in printed.out
    assert "overall" in printed.out
    header = (
        "loss sst  quora    sts | train sst  quora  sts r | val sst  quora  sts r overall | "
        "dev sst  quora  sts r  sts ρ overall | grad conflicts norm ratio"
    )
    assert header in printed.err
    assert "validation split: [800, 1600, 550] examples held out" in printed.err
    assert "gradient conflicts: " in printed.err and "of 4 steps had a conflicting" in printed.err
    for name in (
        "best.pt",
        "latest.pt",
        "config.json",
        "split.json",
        "history.json",
        "gradients.json",
        "curves.png",
        "conflicts.png",
        "sst-confusion.txt",
        "dev-predictions/sst.csv",
    ):
        assert (out / name).exists(), name
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for split in ("val", "dev"):
        assert {"sst_acc", "quora_acc", "sts_pearson", "sts_spearman", "overall"} <= set(
            history[0][split]
        )
    split = json.loads((out / "split.json").read_text())
    assert history[0]["val_split"] == history[1]["val_split"] == split["sha256"]
    assert [t["val_scored"] for t in split["tasks"].values()] == [24, 24, 24]
    grads = json.loads((out / "gradients.json").read_text())
    assert grads["steps"] == [0, 1, 2, 3] and grads["pairs"] == [
        "sst/quora",
        "sst/sts",
        "quora/sts",
    ]
    assert [len(c) for c in grads["cosines"]] == [3] * 4
    for row, steps in zip(history, ([0, 1], [2, 3]), strict=True):  # each epoch's own steps
        conflicts = [grads["conflicts"][s] for s in steps]
        assert row["conflicts"]["steps"] == 2
        assert row["conflicts"]["conflict_fraction"] == sum(c > 0 for c in conflicts) / 2
        assert set(row["conflicts"]["cosine"]) == set(grads["pairs"])
    config = json.loads((out / "config.json").read_text())
    assert config["scheduler_options"] == {"temperature": 0.05, "min_per_task": 2}
    assert (config["val_fraction"], config["val_seed"], config["select_on"]) == (0.1, 0, "val")
    rc = main(
        ["evaluate", str(out / "best.pt"), "--out-dir", str(tmp_path / "ev"), "--limit", "16"]
    )
    assert rc == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0.0 <= scores["sst_acc"] <= 1.0
    with open(tmp_path / "ev" / "quora.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "prediction", "label"] and len(rows) == 17


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--strategy", "nope"])
    with pytest.raises(SystemExit):
        main(["train", "--scheduler", "nope"])
    rc = main(["train", "--quora-loss", "mnrl", "--quora-structure", "cross"])
    assert rc == 2
    assert "siamese" in capsys.readouterr().err
    rc = main(["train", "--quora-loss", "contrastive", "--quora-loss-arg", "nope=1"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    rc = main(["train", "--margin", "0.3"])  # bce has no margin
    assert rc == 2


def test_cli_options_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--scheduler",
            "temperature",
            "--scheduler-arg",
            "temperature=5",
            "--quora-loss",
            "mnrl",
            "--quora-loss-arg",
            "scale=10",
            "--sts-loss",
            "cosent",
            "--sts-loss-arg",
            "scale=15.5",
            "--dropout",
            "0.3",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.scheduler_options == {"temperature": 5}
    assert cfg.task_options["quora"]["loss"] == "multiple-negatives-ranking"  # "mnrl": alias
    assert cfg.task_options["quora"]["loss_options"] == {"scale": 10}
    assert cfg.task_options["sts"]["loss_options"] == {"scale": 15.5}
    assert {o["dropout"] for o in cfg.task_options.values()} == {0.3}
    # --margin/--margin-end/--margin-steps: a moving margin of the pairwise loss
    args = build_parser().parse_args(
        ["train", "--quora-loss", "triplet", "--margin-end", "0.9", "--margin-steps", "7"]
    )
    margin = config_from_args(args).task_options["quora"]["loss_options"]["margin"]
    assert margin == {"start": 0.5, "end": 0.9, "steps": 7}


def test_checkpoint_loads_without_code_execution(tmp_path: Path) -> None:
    train(tiny_config(tmp_path))
    state = load_checkpoint(tmp_path / "latest.pt")  # weights_only=True inside
    assert {"model", "optimizer", "strategy", "loader", "rng_cpu"} <= set(state)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the test for code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("fmt", ["torch.save", "raw-pickle", "with-header"])
def test_malicious_checkpoint_is_refused(tmp_path: Path, fmt: str) -> None:
    """A pickle that runs code when loaded: refused, whether it comes as a plain torch file,
    a raw pickle, or inside a checkpoint header with a matching SHA-256 (the payload is
    still read with ``weights_only=True``: a checksum is no proof of a safe file)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "latest.pt"
    payload = {"model": _Payload(marker), "optimizer": {}}
    if fmt == "torch.save":
        torch.save(payload, path)
    elif fmt == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        save_atomic(payload, path)
    with pytest.raises(CheckpointError, match=str(path)) as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "weights_only" not in str(info.value)
    if fmt == "with-header":
        assert "posix.mkdir" in str(info.value) and "refused" in str(info.value)
    # a plain unpickler would run it: the file is a real attack
    if fmt == "torch.save":
        torch.load(path, weights_only=False)
    elif fmt == "raw-pickle":
        pickle.loads(path.read_bytes())
    else:
        data = path.read_bytes()
        torch.load(io.BytesIO(data[data.index(b"\n", len(MAGIC)) + 1 :]), weights_only=False)
    assert marker.is_dir()


def test_bf16_runs(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        train_limit=16,
        dev_limit=8,
        eval_train_limit=8,
        max_length=32,
        bf16=True,
        device="cpu",
    )
    run = train(cfg)
    assert len(run.loss_log) == 3
    assert torch.isfinite(torch.tensor(run.loss_log)).all()
    assert torch.isfinite(torch.tensor(run.history[0]["dev"]["overall"]))
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_best_threshold_by_hand() -> None:
    cos = torch.tensor([0.9, 0.8, 0.3, 0.2])
    labels = torch.tensor([1, 1, 0, 0])
    t = best_threshold(cos, labels)
    assert 0.3 < t < 0.8


def test_per_task_batch_sizes(tmp_path: Path) -> None:
    """``batch_size=[a, b, c]`` draws a, b and c examples of SST, Quora and STS each step;
    by default each task's record gives its own."""
    cfg = tiny_config(tmp_path, batch_size=[6, 3, 2])
    tasks = cfg.task_records()
    model, tokenizer = build_model(cfg, tasks)
    loader = build_loader(cfg, tasks, load_split(cfg, tasks, "train", 24), tokenizer)
    batches = next(iter(loader))
    assert [len(batches[t].labels) for t in range(3)] == [6, 3, 2]
    assert cfg.task_batch_sizes == [6, 3, 2]
    assert tiny_config(tmp_path, batch_size=5).task_batch_sizes == [5, 5, 5]
    assert tiny_config(tmp_path, batch_size=None).task_batch_sizes == [32, 32, 16]
    for bad in ([4, 4], [4, 0, 4], 0):
        with pytest.raises(ValueError, match="batch_size"):
            tiny_config(tmp_path, batch_size=bad)


def test_cli_batch_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["train", "--batch-size", "16,24,8"])
    assert config_from_args(args).task_batch_sizes == [16, 24, 8]
    args = build_parser().parse_args(["train", "--batch-size", "12"])
    assert config_from_args(args).task_batch_sizes == [12, 12, 12]
    args = build_parser().parse_args(["train", "--batch-size", "16,8"])
    with pytest.raises(ValueError, match="batch_size"):
        config_from_args(args)
    for bad in ("a,b,c", "0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--batch-size", bad])
    assert "--batch-size" in capsys.readouterr().err


def test_predictions_come_back_in_file_order(tmp_path: Path) -> None:
    """Evaluation batches sentences of similar length together; results are in file order
    and equal those of one example at a time (no padding at all)."""
    from examples.minbert.evaluate import predict

    cfg = tiny_config(tmp_path, dev_limit=30)
    tasks = cfg.task_records()
    model, tokenizer = build_model(cfg, tasks)
    dev = load_split(cfg, tasks, "dev", 30)
    lengths = [len(ex.sentence) for ex in dev[0].examples]
    assert lengths != sorted(lengths)  # the file is not already in length order
    on = {"device": torch.device("cpu"), "max_length": cfg.max_length}
    batched = predict(model, dev, tokenizer, batch_size=128, **on)
    single = predict(model, dev, tokenizer, batch_size=1, **on)
    expected_labels = [
        [ex.label for ex in dev[0].examples],
        [ex.label for ex in dev[1].examples],
        [ex.score for ex in dev[2].examples],
    ]
    for (pb, lb), (ps, ls), labels in zip(batched, single, expected_labels, strict=True):
        assert lb.tolist() == pytest.approx(labels)
        assert ls.tolist() == pytest.approx(labels)
        assert pb.tolist() == pytest.approx(ps.tolist(), abs=1e-4)
