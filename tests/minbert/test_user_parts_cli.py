"""A strategy, a scheduler and a pairwise loss registered from outside mtlkit, under names
with underscores, are found by the ``get_*`` functions and selectable from the example's
command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit
from examples.minbert.cli import main
from mtlkit.losses import LOSSES
from mtlkit.schedulers import SCHEDULERS, TaskScheduler
from mtlkit.strategies import STRATEGIES, GramianStrategy

CALLS = {"strategy": 0, "scheduler": 0, "loss": 0}


class HalfSum(GramianStrategy):
    """Every task weighted 1/2."""

    def weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        CALLS["strategy"] += 1
        return torch.full((gram.shape[0],), 0.5, dtype=torch.float64, device=gram.device)


class EveryTaskFour(TaskScheduler):
    """All tasks every step, 4 examples each."""

    def __init__(self, sizes: list[int], epoch: int = 3) -> None:
        super().__init__(sizes, mode="all")
        self.steps_per_epoch = epoch

    def plan(self) -> dict[int, int]:
        CALLS["scheduler"] += 1
        return dict.fromkeys(range(self.num_tasks), 4)


class CosineToLabel(nn.Module):
    """(cos(u, v) - label)² on pairs with 1/0 labels."""

    def forward(self, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        CALLS["loss"] += 1
        return (F.cosine_similarity(u, v, dim=-1) - labels).pow(2).mean()


@pytest.fixture
def user_parts() -> Iterator[None]:
    mtlkit.strategies.register("my_half_sum")(HalfSum)
    mtlkit.schedulers.register("my_every_task_four")(EveryTaskFour)
    mtlkit.losses.register("my_cosine_to_label")(CosineToLabel)
    yield
    STRATEGIES._classes.pop("my-half-sum")
    SCHEDULERS._classes.pop("my-every-task-four")
    LOSSES._classes.pop("my-cosine-to-label")


def test_user_parts_are_found_by_name(user_parts: None) -> None:
    assert isinstance(mtlkit.get_strategy("my_half_sum"), HalfSum)
    ctx = mtlkit.Context(sizes=[10, 20, 30], epoch=5, seed=1)
    sched = mtlkit.get_scheduler("my-every-task-four", context=ctx)
    assert isinstance(sched, EveryTaskFour) and len(sched) == 5
    assert isinstance(mtlkit.get_loss("My_Cosine_To_Label"), CosineToLabel)


def test_user_parts_are_selectable_from_the_cli(user_parts: None, tmp_path: Path) -> None:
    CALLS.update(strategy=0, scheduler=0, loss=0)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--init",
            "tiny-random",
            "--train-limit",
            "24",
            "--dev-limit",
            "8",
            "--eval-train-limit",
            "8",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "3",
            "--max-length",
            "32",
            "--no-progress",
            "--strategy",
            "my_half_sum",
            "--scheduler",
            "my_every_task_four",
            "--quora-loss",
            "my_cosine_to_label",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "my-half-sum" and config["scheduler"] == "my-every-task-four"
    assert CALLS["strategy"] == 3  # one combination per step
    assert CALLS["scheduler"] == 3
    assert CALLS["loss"] == 3  # Quora's loss, once per step
    history = json.loads((out / "history.json").read_text())
    assert history[0]["step"] == 3
