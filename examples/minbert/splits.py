"""The data of a run: each task's files, and the validation split held out of each
training file (seeded by ``--val-seed``, independent of ``--seed``: every run of every
strategy holds out the same examples)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import (
    ConfigError,
)
from .config import TrainConfig, user_errors
from .data import ExampleDataset, dataset_path, holdout_indices
from .tasks import Task


def split_path(cfg: TrainConfig, task: str, split: str) -> Path:
    """The file of a task's split: ``cfg.files["{task}-{split}"]``, else
    ``{task}-{split}.csv`` in the data folder (default: the shipped files)."""
    key = f"{task}-{split}"
    if key in cfg.files:
        return Path(cfg.files[key])
    return dataset_path(task, split, cfg.data_dir)  # type: ignore[arg-type]


def load_split(
    cfg: TrainConfig, tasks: list[Task], split: str, limit: int | None
) -> list[ExampleDataset[Any]]:
    """Each task's ``split`` (:func:`split_path`).

    Raises:
        ConfigError: a file is missing or unreadable, or has no usable rows.
    """
    datasets = []
    for task in tasks:
        path = split_path(cfg, task.name, split)
        with user_errors():
            examples = task.read(path, strict=cfg.strict_data, limit=limit)
        if not examples:
            raise ConfigError(
                f"the {split} split of {task.name} is empty: {path} has no usable rows"
            )
        datasets.append(ExampleDataset(examples))
    return datasets


#: How the validation split is drawn (``split.json`` says so too).
SPLIT_RULE = (
    "each task's training file (its examples in file order, bad rows skipped, indices "
    "from 0) holds out the ceil(val_fraction x N) examples i with the smallest "
    "sha256('{val_seed}:{task}:{i}'); train_limit applies to the rest (in file order), "
    "val_limit to the held-out examples scored each epoch (in file order)"
)


@dataclass
class TrainingData:
    """The training sets and the validation split carved from them (:func:`load_training_data`).

    Attributes:
        train: each task's examples trained on (the training file less the held-out
            examples, then ``train_limit``).
        val: each task's held-out examples scored each epoch (``val_limit``); empty
            without a split (``val_fraction`` 0).
        split: what ``split.json`` records: the rule, the options, and per task the file,
            its number of examples, how many were held out, trained on and scored, and
            the held-out indices; ``sha256`` identifies the held-out examples (indices and
            ids) of every task (``None`` without a split).
    """

    train: list[ExampleDataset[Any]]
    val: list[ExampleDataset[Any]]
    split: dict[str, Any]

    @property
    def split_hash(self) -> str | None:
        """The held-out examples' SHA-256 (``None`` without a split)."""
        return self.split["sha256"]  # type: ignore[no-any-return]


def load_training_data(cfg: TrainConfig, tasks: list[Task]) -> TrainingData:
    """Each task's training file, less a validation split of ``cfg.val_fraction`` of it.

    The split (:func:`~examples.minbert.data.holdout_indices`, seeded by
    ``cfg.val_seed``) depends only on the files, the tasks' names, ``val_fraction`` and
    ``val_seed``: every run of every strategy and seed holds out the same examples.
    ``train_limit`` applies to what is left; ``val_limit`` to the held-out examples scored.

    Raises:
        ConfigError: a file is missing or unreadable, has no usable rows, or has too few to
            hold out a validation split and keep examples to train on.
    """
    train, val = [], []
    per_task: dict[str, Any] = {}
    identity: dict[str, list[tuple[int, str]]] = {}
    for task in tasks:
        path = split_path(cfg, task.name, "train")
        limit = cfg.train_limit if cfg.val_fraction == 0 else None  # the split reads all
        with user_errors():
            examples = task.read(path, strict=cfg.strict_data, limit=limit)
        if not examples:
            raise ConfigError(f"the train split of {task.name} is empty: {path} has no usable rows")
        held = holdout_indices(len(examples), cfg.val_fraction, cfg.val_seed, task.name)
        if len(held) >= len(examples):
            raise ConfigError(
                f"the train split of {task.name} ({path}) has {len(examples)} example(s): too "
                f"few to hold out a validation split of {cfg.val_fraction} and train on the "
                f"rest (lower --val-fraction, or --val-fraction 0 --select-on dev)"
            )
        held_set = set(held)
        kept = [ex for i, ex in enumerate(examples) if i not in held_set][: cfg.train_limit]
        out = [examples[i] for i in held]
        scored = out[: cfg.val_limit]
        train.append(ExampleDataset(kept))
        val.append(ExampleDataset(scored))
        identity[task.name] = [(i, str(getattr(examples[i], "uid", i))) for i in held]
        per_task[task.name] = {
            "file": str(path),
            "examples": len(examples),
            "held_out": len(held),
            "trained_on": len(kept),
            "val_scored": len(scored),
            "held_out_indices": held,
        }
    digest = None
    if cfg.val_fraction > 0:
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
    split = {
        "val_fraction": cfg.val_fraction,
        "val_seed": cfg.val_seed,
        "select_on": cfg.select_on,
        "rule": SPLIT_RULE if cfg.val_fraction > 0 else "no validation split (val_fraction 0)",
        "sha256": digest,
        "tasks": per_task,
    }
    return TrainingData(train, val if cfg.val_fraction > 0 else [], split)
