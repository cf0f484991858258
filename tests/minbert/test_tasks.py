"""Task records: a fourth task added through one record, the pooler, no import cycles."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import mtlkit
from examples.minbert.cli import build_parser, config_from_args, main
from examples.minbert.data import read_sst
from examples.minbert.multitask import MultitaskBert
from examples.minbert.tasks import (
    HEAD_DROPOUT,
    TASKS,
    Classifier,
    Task,
    accuracy_metrics,
    classification_loss,
    classification_predict,
    make_tasks,
)
from examples.minbert.train import TrainConfig, build_model, build_optimizer, build_strategy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minbert"

#: The whole of what a new task takes: one record (its file is in SST's format).
PARITY = Task(
    name="parity",  # reads parity-train.csv / parity-dev.csv (here given with --file)
    read=read_sst,  # id, sentence, label
    pair_mode="single",
    head=lambda hidden: Classifier(hidden, 2),
    loss=classification_loss,
    predict=classification_predict,
    metrics=accuracy_metrics,
    score=lambda m: m["acc"],
    batch_size=8,
    num_classes=2,
)


def _parity_file(path: Path, n: int, seed: int) -> Path:
    """Sentences of 1..12 words; the label is the parity of the number of words."""
    rng = random.Random(seed)
    words = ["good", "film", "the", "a", "bad", "movie", "plot", "fine", "dull", "fun"]
    lines = ["\tid\tsentence\tsentiment"]
    for i in range(n):
        k = rng.randint(1, 12)
        lines.append(f"{i}\tp{i}\t{' '.join(rng.choice(words) for _ in range(k))}\t{k % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_fourth_task_is_one_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(TASKS, "parity", PARITY)
    engines: list[mtlkit.TaskGradients] = []

    class Recorded(mtlkit.TaskGradients):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr(mtlkit, "TaskGradients", Recorded)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--init",
            "tiny-random",
            "--tasks",
            "sst,quora,sts,parity",
            "--file",
            f"parity-train={_parity_file(tmp_path / 'train.csv', 64, 0)}",
            "--file",
            f"parity-dev={_parity_file(tmp_path / 'dev.csv', 24, 1)}",
            "--train-limit",
            "32",
            "--dev-limit",
            "16",
            "--eval-train-limit",
            "16",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "3",
            "--max-length",
            "32",
            "--no-progress",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    assert "parity acc" in capsys.readouterr().out
    (engine,) = engines
    assert engine.jacobian is not None and engine.jacobian.shape[0] == 4  # J has 4 rows
    (row,) = json.loads((out / "history.json").read_text())
    assert list(row["loss"]) == ["sst", "quora", "sts", "parity"]
    assert {"parity_acc"} <= set(row["train"]) and {"parity_acc"} <= set(row["dev"])
    assert len(row["gradients"]["norms"]) == 4
    # the overall score averages the four tasks' scores
    scores = [row["dev"]["sst_acc"], row["dev"]["quora_acc"], (row["dev"]["sts_pearson"] + 1) / 2]
    assert row["dev"]["overall"] == pytest.approx(sum([*scores, row["dev"]["parity_acc"]]) / 4)
    assert (out / "parity-confusion.txt").is_file()
    assert (out / "dev-predictions" / "parity.csv").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["tasks"] == ["sst", "quora", "sts", "parity"]
    assert TrainConfig(**config).task_batch_sizes == [32, 32, 16, 8]  # each record's own


def test_make_tasks_checks_names_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [t.name for t in make_tasks(["sts", "sst"])] == ["sts", "sst"]
    with pytest.raises(ValueError, match="unknown task"):
        make_tasks(["nope"])
    with pytest.raises(ValueError, match="twice"):
        make_tasks(["sst", "sst"])
    with pytest.raises(ValueError, match="siamese"):
        make_tasks(["quora"], {"quora": {"structure": "cross", "loss": "contrastive"}})
    with pytest.raises(ValueError, match="cosine"):
        make_tasks(["sts"], {"sts": {"structure": "cross", "loss": "cosent"}})
    with pytest.raises(TypeError, match="nope"):
        make_tasks(["quora"], {"quora": {"loss": "triplet", "loss_options": {"nope": 1}}})
    monkeypatch.setitem(TASKS, "parity", PARITY)
    with pytest.raises(ValueError, match="takes no options"):
        make_tasks(["parity"], {"parity": {"dropout": 0.1}})


def _dropouts(tasks: list[Task]) -> list[float]:
    """The dropout probability of each task's head (hidden size 8)."""
    return [
        next(m.p for m in task.head(8).modules() if isinstance(m, torch.nn.Dropout))
        for task in tasks
    ]


def test_heads_default_to_the_validated_dropout() -> None:
    """The heads' dropout (0.1, chosen on validation) is the default of the records, of a
    bare TrainConfig and of the command line alike; ``--dropout 0`` turns it off."""
    assert HEAD_DROPOUT == 0.1
    names = ["sst", "quora", "sts"]
    assert _dropouts(make_tasks(names)) == [HEAD_DROPOUT] * 3
    assert _dropouts(TrainConfig().task_records()) == [HEAD_DROPOUT] * 3
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert _dropouts(cfg.task_records()) == [HEAD_DROPOUT] * 3
    cfg = config_from_args(build_parser().parse_args(["train", "--dropout", "0"]))
    assert _dropouts(cfg.task_records()) == [0.0] * 3


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_pooler_is_shared_only_when_read(tmp_path: Path, pooling: str) -> None:
    cfg = TrainConfig(out_dir=str(tmp_path), init="tiny-random", pooling=pooling)
    model, _ = build_model(cfg, cfg.task_records())
    pooler = {id(p) for p in model.encoder.pooler.parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    optimized = {
        id(p)
        for group in build_optimizer(
            model, cfg, build_strategy(cfg, 3, torch.device("cpu"))
        ).param_groups
        for p in group["params"]
    }
    if pooling == "pooler":
        assert pooler <= shared and pooler <= optimized
    else:  # frozen: no gradient, not a column of J, not moved by the optimizer
        assert not pooler & shared and not pooler & optimized
        assert not any(p.requires_grad for p in model.encoder.pooler.parameters())
    # the pooler stays in the state dict: checkpoints with pooler weights load
    state = model.state_dict()
    assert "encoder.pooler.dense.weight" in state
    again, _ = build_model(cfg, cfg.task_records())
    again.load_state_dict(state)


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_layer_lr_decay_gives_each_layer_its_rate(tmp_path: Path, pooling: str) -> None:
    cfg = TrainConfig(
        out_dir=str(tmp_path), init="tiny-random", pooling=pooling, lr=1e-3, layer_lr_decay=0.5
    )
    model, _ = build_model(cfg, cfg.task_records())
    optimizer = build_optimizer(model, cfg, build_strategy(cfg, 3, torch.device("cpu")))
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    num_layers = model.encoder.config.num_hidden_layers
    expected = {id(p): 1e-3 * 0.5**num_layers for p in model.encoder.embeddings.parameters()}
    for index, layer in enumerate(model.encoder.encoder.layer):  # layer index + 1 of L
        expected.update({id(p): 1e-3 * 0.5 ** (num_layers - index - 1) for p in layer.parameters()})
    if pooling == "pooler":
        expected.update({id(p): 1e-3 for p in model.encoder.pooler.parameters()})
    expected.update({id(p): cfg.head_lr for p in model.head_parameters()})
    # every trainable parameter once, at its layer's rate; the frozen pooler nowhere
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(rate) == len(expected)
    assert rate == pytest.approx(expected)


def test_layer_lr_decay_one_keeps_one_encoder_group(tmp_path: Path) -> None:
    """The default builds the groups older checkpoints hold: the encoder, then the heads."""
    cfg = TrainConfig(out_dir=str(tmp_path), init="tiny-random")
    model, _ = build_model(cfg, cfg.task_records())
    groups = build_optimizer(model, cfg, build_strategy(cfg, 3, torch.device("cpu"))).param_groups
    assert [g["lr"] for g in groups] == [cfg.lr, cfg.head_lr]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.shared_parameters()]


def test_mean_pooling_never_moves_the_pooler(tmp_path: Path) -> None:
    from examples.minbert.train import train

    cfg = TrainConfig(
        out_dir=str(tmp_path),
        init="tiny-random",
        train_limit=16,
        dev_limit=8,
        eval_train_limit=8,
        batch_size=4,
        epochs=1,
        steps_per_epoch=2,
        max_length=32,
        progress=False,
    )
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg, cfg.task_records())
    run = train(cfg)
    assert isinstance(run.model, MultitaskBert)
    after = run.model.encoder.pooler.state_dict()
    for name, before in model.encoder.pooler.state_dict().items():
        assert torch.equal(before, after[name]), name
    trained = run.model.encoder.embeddings.LayerNorm.weight
    assert not torch.equal(model.encoder.embeddings.LayerNorm.weight, trained)


def _imports(path: Path) -> set[str]:
    """The example's modules that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("examples.minbert."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("examples.minbert."):
                    found.add(alias.name.split(".")[2])
    return found


def test_no_import_cycles() -> None:
    modules = {p.stem: _imports(p) for p in EXAMPLE.glob("*.py")}
    assert modules["model"] == set()  # the encoder file stands alone
    assert "model" not in modules["weights"] or "weights" not in modules["model"]
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join([*path, name])}"
        state[name] = "open"
        for dep in sorted(modules.get(name, ())):
            visit(dep, [*path, name])
        state[name] = "done"

    for name in modules:
        visit(name, [])
