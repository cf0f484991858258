"""Training loop and CLI of the miniBERT example, on a tiny random-weight model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from examples.minbert.cli import main
from examples.minbert.multitask import TaskOptions, best_threshold
from examples.minbert.train import TrainConfig, Trainer, load_checkpoint


def tiny_config(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
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
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_tiny_model_loss_falls(tmp_path: Path) -> None:
    """Repeated steps on a fixed slice of each task: every task's loss goes down."""
    cfg = tiny_config(
        tmp_path,
        train_limit=8,
        epochs=1,
        steps_per_epoch=40,
        lr=3e-3,
        head_lr=1e-2,
        tasks=TaskOptions(dropout=0.0),
    )
    trainer = Trainer(cfg)
    trainer.fit()
    log = torch.tensor(trainer.loss_log)
    first, last = log[:5].mean(0), log[-5:].mean(0)
    assert (last < 0.7 * first).all(), (first, last)


@pytest.mark.parametrize(
    "tasks",
    [
        TaskOptions(quora_structure="siamese", sts_loss="cosent"),
        TaskOptions(
            quora_structure="cosine",
            quora_loss="cosine-embedding",
            margin=0.2,
            margin_end=0.6,
            margin_steps=2,
        ),
        TaskOptions(quora_structure="cosine", quora_loss="mnrl", pooling="cls"),
        TaskOptions(quora_structure="siamese", quora_loss="triplet", sts_structure="cross"),
        TaskOptions(quora_structure="cosine", quora_loss="contrastive"),
    ],
)
def test_structures_and_losses_train(tmp_path: Path, tasks: TaskOptions) -> None:
    history = Trainer(tiny_config(tmp_path, tasks=tasks, strategy="gradnorm")).fit()
    assert len(history) == 1 and all(
        torch.isfinite(torch.tensor(v)) for v in history[0]["loss"].values()
    )


def test_margin_schedule_moves(tmp_path: Path) -> None:
    tasks = TaskOptions(
        quora_structure="cosine",
        quora_loss="cosine-embedding",
        margin=0.2,
        margin_end=0.6,
        margin_steps=2,
    )
    trainer = Trainer(tiny_config(tmp_path, tasks=tasks))
    trainer.fit()
    assert trainer.model.quora_margin_loss is not None
    assert trainer.model.quora_margin_loss.margin == pytest.approx(0.6)  # type: ignore[union-attr]


def test_frozen_encoder_only_trains_heads(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path, fine_tune="last-linear-layer"))
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    head = trainer.model.sst_head.weight.detach().clone()
    trainer.fit()
    for k, v in trainer.model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(trainer.model.sst_head.weight, head)


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
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best dev" in printed and "overall" in printed
    for name in (
        "best.pt",
        "latest.pt",
        "config.json",
        "history.json",
        "curves.png",
        "sst-confusion.txt",
        "dev-predictions/sst.csv",
    ):
        assert (out / name).exists(), name
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"sst_acc", "quora_acc", "sts_pearson", "sts_spearman", "overall"} <= set(
        history[0]["dev"]
    )
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
    rc = main(["train", "--quora-loss", "mnrl", "--quora-structure", "cross"])
    assert rc == 2
    assert "siamese" in capsys.readouterr().err


def test_checkpoint_loads_without_code_execution(tmp_path: Path) -> None:
    Trainer(tiny_config(tmp_path)).fit()
    state = load_checkpoint(tmp_path / "latest.pt")  # weights_only=True inside
    assert {"model", "optimizer", "strategy", "loader", "rng_cpu"} <= set(state)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_best_threshold_by_hand() -> None:
    cos = torch.tensor([0.9, 0.8, 0.3, 0.2])
    labels = torch.tensor([1, 1, 0, 0])
    t = best_threshold(cos, labels)
    assert 0.3 < t < 0.8


def test_per_task_batch_sizes(tmp_path: Path) -> None:
    """``batch_size=[a, b, c]`` draws a, b and c examples of SST, Quora and STS each step."""
    trainer = Trainer(tiny_config(tmp_path, batch_size=[6, 3, 2]))
    batches = next(iter(trainer.loader))
    assert [len(batches[t].labels) for t in range(3)] == [6, 3, 2]
    assert trainer.cfg.task_batch_sizes == [6, 3, 2]
    assert tiny_config(tmp_path, batch_size=5).task_batch_sizes == [5, 5, 5]
    for bad in ([4, 4], [4, 0, 4], 0):
        with pytest.raises(ValueError, match="batch_size"):
            tiny_config(tmp_path, batch_size=bad)


def test_cli_batch_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.minbert.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--batch-size", "16,24,8"])
    assert config_from_args(args).task_batch_sizes == [16, 24, 8]
    args = build_parser().parse_args(["train", "--batch-size", "12"])
    assert config_from_args(args).task_batch_sizes == [12, 12, 12]
    for bad in ("16,8", "a,b,c", "0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--batch-size", bad])
    assert "--batch-size" in capsys.readouterr().err


def test_predictions_come_back_in_file_order(tmp_path: Path) -> None:
    """Evaluation batches sentences of similar length together; results are in file order
    and equal those of one example at a time (no padding at all)."""
    from examples.minbert.train import predict

    trainer = Trainer(tiny_config(tmp_path, dev_limit=30, tasks=TaskOptions(dropout=0.0)))
    dev = trainer.dev_sets
    lengths = [len(ex.sentence) for ex in dev[0].examples]
    assert lengths != sorted(lengths)  # the file is not already in length order
    batched = predict(trainer.model, dev, trainer.tokenizer, trainer.cfg, trainer.device)
    trainer.cfg.eval_batch_size = 1
    single = predict(trainer.model, dev, trainer.tokenizer, trainer.cfg, trainer.device)
    expected_labels = [
        [ex.label for ex in dev[0].examples],
        [ex.label for ex in dev[1].examples],
        [ex.score for ex in dev[2].examples],
    ]
    for (pb, lb), (ps, ls), labels in zip(batched, single, expected_labels, strict=True):
        assert lb.tolist() == pytest.approx(labels)
        assert ls.tolist() == pytest.approx(labels)
        assert pb.tolist() == pytest.approx(ps.tolist(), abs=1e-4)
