"""The options of a miniBERT training run (:class:`TrainConfig`, checked when built), and
what may change when a run is resumed."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

import mtlkit

from .checkpoint import (
    ConfigError,
)
from .data import DataError
from .multitask import POOLINGS
from .tasks import TASKS, Task, make_tasks
from .weights import WeightsError

#: The most positions a ``tiny-random`` encoder gets (BERT's); a pretrained one has its own.
TINY_MAX_POSITIONS = 512
#: What picks the epoch that best.pt keeps (``TrainConfig.select_on``): the best on the
#: validation split, the best on dev (no test then), or the last one (no selection: the
#: protocol that retrains on all the training data once the recipe is chosen on val).
SELECT_ON = ("val", "dev", "last")


@dataclass
class TrainConfig:
    """Every option of a training run (saved as ``config.json`` in the run folder)."""

    out_dir: str = "runs/minbert"
    weights: str | None = None  # checkpoint folder; None: embedded all-MiniLM-L6-v2
    init: str = "pretrained"  # or "tiny-random" (tests, smoke runs)
    data_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # e.g. {"sst-train": "path.csv"}
    strict_data: bool = False
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # the rows of J, in order
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # {task: options}
    pooling: str = "mean"  # or "cls", "pooler"
    strategy: str = "mgda"  # chosen on the validation split: benchmarks/results/sweep-cpu.md
    strategy_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "round-robin"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    fine_tune: str = "full-model"  # or "last-linear-layer" (encoder frozen)
    epochs: int = 4  # chosen on validation: benchmarks/results/sweep-cpu-v2.md
    steps_per_epoch: int | None = 140  # None or 0: the scheduler's own epoch rule
    # examples per task and step: None (each task's own), one size, or one per task
    batch_size: int | list[int] | None = None
    lr: float = 1e-4  # encoder; chosen on validation: benchmarks/results/sweep-cpu-v2.md
    head_lr: float = 1e-2
    # encoder layer l of L trains at lr * layer_lr_decay**(L - l), the embeddings at
    # lr * layer_lr_decay**L (1: one rate for the whole encoder)
    layer_lr_decay: float = 1.0
    # > 0: evaluate and keep (best.pt) an exponential moving average of the trainable
    # weights with this decay (examples.minbert.averaging); 0: the weights themselves
    ema_decay: float = 0.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 64
    train_limit: int | None = None  # training examples per task, after the split (quick runs)
    dev_limit: int | None = None
    # The validation split: the fraction of each training file held out (never trained
    # on) to pick the best epoch, best.pt and dynamic allocation's signal; dev is the test.
    val_fraction: float = 0.1
    val_seed: int = 0  # which examples are held out: not `seed`, so every run holds out the same
    val_limit: int | None = None  # held-out examples per task scored each epoch (None: all)
    select_on: str = "val"  # "val", "last", or "dev" (only explicitly: no test then)
    eval_train_limit: int = 500  # training examples per task scored each epoch
    # training examples per task a calibration reads each epoch (Quora's cosine threshold
    # under a pairwise loss; None: the whole training set)
    calibrate_limit: int | None = None
    eval_batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    threads: int | None = None
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
    resume: bool = False  # continue the run in out_dir from its latest.pt
    overwrite: bool = False  # replace the run in out_dir (its files are removed)
    progress: bool = True
    distributed: bool = False  # data parallel: every rank holds the whole model
    fsdp: bool = False  # sharded: FSDP2, every rank holds a shard of the model

    def __post_init__(self) -> None:
        """Check every option that does not need a file: a bad value fails here, before a
        run starts, with :class:`~examples.minbert.checkpoint.ConfigError` (a ValueError)."""
        if self.fine_tune not in ("full-model", "last-linear-layer"):
            raise ConfigError("fine_tune must be 'full-model' or 'last-linear-layer'")
        if self.init not in ("pretrained", "tiny-random"):
            raise ConfigError(f"init must be 'pretrained' or 'tiny-random', got {self.init!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("epochs", "eval_batch_size", "eval_train_limit"):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_length", self.max_length, 3, "([CLS] x [SEP])")
        for name in ("train_limit", "dev_limit", "val_limit", "calibrate_limit"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1, "(an empty split cannot be used)")
        for name in ("steps_per_epoch", "checkpoint_every"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 0)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        for name in ("lr", "head_lr", "weight_decay"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        decay = self.layer_lr_decay
        if not _is_number(decay) or not 0 < decay <= 1:
            raise ConfigError(f"layer_lr_decay must be in (0, 1], got {decay!r}")
        ema = self.ema_decay
        if not _is_number(ema) or not 0 <= ema < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no average), got {ema!r}")
        if ema and self.fsdp:
            raise ConfigError(
                "ema_decay with fsdp is not supported: the average would be sharded like the "
                "weights; run without --ema-decay or without --fsdp"
            )
        fraction = self.val_fraction
        if not _is_number(fraction) or not 0 <= fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {fraction!r}")
        _at_least("val_seed", self.val_seed, 0)
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.select_on == "val" and fraction == 0:
            raise ConfigError(
                "val_fraction 0 holds out no validation split to select the best epoch on: "
                "hold one out (--val-fraction 0.1), keep the last epoch (--select-on last) or "
                "select on the dev sets explicitly with --select-on dev (their scores are then "
                "no test)"
            )
        if self.select_on == "last" and fraction == 0 and self.scheduler == "dynamic":
            raise ConfigError(
                "dynamic batch allocation needs a score of each task every epoch, and with "
                "--select-on last and val_fraction 0 only dev has one (the test: it must not "
                "steer training); hold out a validation split or choose another scheduler"
            )
        ratio = self.warmup_ratio
        if not _is_number(ratio) or not 0 <= ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {ratio!r}")
        check_device(self.device)
        if self.distributed and self.fsdp:
            raise ConfigError("distributed and fsdp exclude each other: choose one layout")
        if self.resume and self.overwrite:
            raise ConfigError(
                "resume and overwrite exclude each other: continue a run or replace it"
            )
        if mtlkit.normalize_name(self.strategy) not in mtlkit.list_strategies():
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {mtlkit.list_strategies()}"
            )
        if mtlkit.normalize_name(self.scheduler) not in mtlkit.list_schedulers():
            raise ConfigError(
                f"unknown scheduler {self.scheduler!r}; choose one of {mtlkit.list_schedulers()}"
            )
        self.task_records()  # unknown tasks and refused task options fail here
        keys = [f"{t}-{split}" for t in self.tasks for split in ("train", "dev")]
        unknown = [key for key in self.files if key not in keys]
        if unknown:
            raise ConfigError(
                f"unknown file key(s) {', '.join(unknown)}: the keys of tasks "
                f"{','.join(self.tasks)} are {', '.join(keys)}"
            )
        sizes = self.task_batch_sizes
        if len(sizes) != len(self.tasks) or min(sizes) < 1:
            raise ConfigError(
                f"batch_size must be one size >= 1 or {len(self.tasks)} of them "
                f"({', '.join(self.tasks)}), got {self.batch_size!r}"
            )

    def task_records(self) -> list[Task]:
        """The records of :attr:`tasks`, built with :attr:`task_options`."""
        return make_tasks(self.tasks, self.task_options)

    @property
    def task_batch_sizes(self) -> list[int]:
        """Examples per step of each task, in the order of :attr:`tasks`."""
        if self.batch_size is None:
            return [task.batch_size for task in self.task_records()]
        if isinstance(self.batch_size, int):
            return [self.batch_size] * len(self.tasks)
        return [int(b) for b in self.batch_size]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(name: str, value: Any, low: int, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(
            f"{name} must be an integer >= {low}{' ' + why if why else ''}, got {value!r}"
        )


def check_device(name: str) -> None:
    """Refuse a device string torch does not know (``auto``, ``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {name!r} is not a device (auto, cpu, cuda, cuda:N): {exc}"
        ) from None


#: Options that may differ between a run and its ``--resume`` (everything else must match
#: the checkpoint's config): how long to train, where the folder now is, how often to
#: checkpoint, and how to run (threads, device, progress bar). A changed device or number of
#: threads can change results in the last bits; more epochs extend the learning-rate
#: schedule (and the annealed scheduler) from the resumed step on.
RESUMABLE = frozenset(
    {
        "epochs",
        "out_dir",
        "resume",
        "overwrite",
        "progress",
        "threads",
        "device",
        "checkpoint_every",
    }
)
_NOT_OPTIONS = frozenset({"resume", "overwrite", "out_dir"})  # resumable, but not worth naming
#: How an option is named in messages where it is not ``--`` + its name.
_OPTION_NAMES = {
    "files": "--file",
    "task_options": "task options (--quora-*, --sts-*, --dropout, --task-arg)",
    "strategy_options": "--strategy-arg",
    "scheduler_options": "--scheduler-arg",
    "progress": "--no-progress",
    "init": "--init",
}


def resumable_option_names() -> list[str]:
    """The command-line names of the options ``--resume`` lets change."""
    return sorted(option_name(n) for n in RESUMABLE - _NOT_OPTIONS)


def option_name(field_name: str) -> str:
    """The command-line name of a :class:`TrainConfig` field (``head_lr`` -> ``--head-lr``)."""
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def _plain(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A config as JSON values (tuples become lists: saved and new configs compare)."""
    values = asdict(config) if isinstance(config, TrainConfig) else dict(config)
    return json.loads(json.dumps(values))  # type: ignore[no-any-return]


def resume_differences(
    saved: TrainConfig | Mapping[str, Any], new: TrainConfig | Mapping[str, Any]
) -> list[str]:
    """``--lr 0.0001 -> 1.0`` for each option outside :data:`RESUMABLE` that differs (an
    option missing from an older config counts as its default)."""
    old, now = _plain(saved), _plain(new)
    defaults = _plain(TrainConfig())
    out = []
    for f in fields(TrainConfig):
        if f.name in RESUMABLE:
            continue
        a, b = old.get(f.name, defaults[f.name]), now.get(f.name, defaults[f.name])
        if a != b:
            out.append(f"{option_name(f.name)} {a!r} -> {b!r}")
    return out


def selection_score(scores: Mapping[str, float]) -> float:
    """The overall score that picks the best epoch (-inf when it is not a number, so
    that an epoch with a NaN score is never chosen)."""
    value = float(scores["overall"])
    return value if math.isfinite(value) else -math.inf


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Missing or bad data and weight files become :class:`ConfigError` (one line)."""
    try:
        yield
    except (DataError, WeightsError, FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(str(exc)) from exc
