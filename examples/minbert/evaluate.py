"""Evaluation: predictions of every task on a dataset, their scores, calibration.

Scores are keyed ``{task}_{metric}`` (``sst_acc``, ``sts_pearson``, ...) plus ``overall``,
the mean of the tasks' scores in [0, 1] (for SST, Quora and STS:
``(sst_acc + quora_acc + (sts_pearson + 1) / 2) / 3``, CS224N's overall score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data import Collate, SentenceExample
from .multitask import MultitaskBert
from .tasks import Task
from .tokenizer import BertTokenizer

__all__ = ["calibrate", "predict", "scores", "task_metrics", "task_scores"]

Results = list[tuple[np.ndarray, np.ndarray]]


def _text_length(example: Any) -> int:
    """Characters of an example's text(s): a cheap proxy of its length in tokens."""
    if isinstance(example, SentenceExample):
        return len(example.sentence)
    return max(len(example.sentence1), len(example.sentence2))


@torch.no_grad()
def predict(
    model: MultitaskBert,
    datasets: Sequence[Dataset[Any]],
    tokenizer: BertTokenizer,
    *,
    device: torch.device,
    max_length: int,
    batch_size: int = 128,
    bf16: bool = False,
) -> Results:
    """``(predictions, labels)`` of each of ``model.tasks`` on its dataset, in file order."""
    was_training = model.training
    model.eval()
    out = []
    for index, (task, ds) in enumerate(zip(model.tasks, datasets, strict=True)):
        # batches of similar length waste little on padding; results go back to file order
        order = sorted(range(len(ds)), key=lambda i: _text_length(ds[i]))  # type: ignore[arg-type]
        loader = DataLoader(
            Subset(ds, order),
            batch_size=batch_size,
            collate_fn=Collate(tokenizer, pair_mode=task.pair_mode, max_length=max_length),
        )
        preds, labels = [], []
        for batch in loader:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                p = model.predict(index, batch)
            preds.append(p.float().cpu())
            labels.append(batch.labels.cpu())
        inverse = np.argsort(np.asarray(order, dtype=np.int64))
        out.append((torch.cat(preds).numpy()[inverse], torch.cat(labels).numpy()[inverse]))
    model.train(was_training)
    return out


@torch.no_grad()
def calibrate(
    model: MultitaskBert,
    datasets: Sequence[Dataset[Any]],
    tokenizer: BertTokenizer,
    *,
    device: torch.device,
    max_length: int,
    batch_size: int = 128,
) -> None:
    """Run each task's ``calibrate`` (if it has one) on its (training) dataset, in file
    order: e.g. Quora's cosine threshold when it is trained with a pairwise loss."""
    was_training = model.training
    model.eval()
    for task, ds in zip(model.tasks, datasets, strict=True):
        if task.calibrate is None:
            continue
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            collate_fn=Collate(tokenizer, pair_mode=task.pair_mode, max_length=max_length),
        )
        task.calibrate(model, model.heads[task.name], (batch.to(device) for batch in loader))
    model.train(was_training)


def scores(tasks: Sequence[Task], results: Results) -> dict[str, float]:
    """``{task}_{metric}`` for every task's metrics, and ``overall``: the tasks' mean score."""
    out: dict[str, float] = {}
    per_task = []
    for task, (pred, label) in zip(tasks, results, strict=True):
        m = task.metrics(pred, label)
        out.update({f"{task.name}_{key}": value for key, value in m.items()})
        per_task.append(task.score(m))
    out["overall"] = sum(per_task) / len(per_task)
    return out


def task_metrics(task: Task, scores: Mapping[str, float]) -> dict[str, float]:
    """The metrics of ``task`` from a :func:`scores` dict (``{metric: value}``)."""
    prefix = f"{task.name}_"
    return {k[len(prefix) :]: v for k, v in scores.items() if k.startswith(prefix)}


def task_scores(tasks: Sequence[Task], scores: Mapping[str, float]) -> list[float]:
    """Each task's score in [0, 1] (what dynamic batch allocation reads)."""
    return [task.score(task_metrics(task, scores)) for task in tasks]
