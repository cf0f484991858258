"""Multitask training of miniBERT with mtlkit, top to bottom: the config, the set-up, the loop.

:func:`train` sets a run up in this order: device and process group, model, data, task
scheduler and loader, strategy and engine, optimizer and learning-rate schedule, resume.
Then the loop: each step draws one batch of every task (the scheduler decides how many
examples each gets) and backpropagates each task's loss from its own graph into mtlkit's
:class:`~mtlkit.TaskGradients`, which writes the strategy's combination of the encoder's
per-task gradients into ``.grad``; then the optimizer steps, and the step's gradient figures
(``engine.stats``) go to a :class:`~mtlkit.diagnostics.ConflictLog` on the device. Each
epoch ends with an evaluation (training examples, the validation split held out of the
training files, which picks the best epoch, and the dev sets, the test), a checkpoint and a
line of the table.

What is specific to a task (its data, head, loss, prediction, metrics) comes from its
record in :mod:`examples.minbert.tasks`; this file does not name any task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import mtlkit
from mtlkit.diagnostics import ConflictLog
from mtlkit.schedulers import DynamicBatchAllocation, MultiTaskLoader

from . import evaluate, report
from .checkpoint import (
    ConfigError,
    FullModelState,
    FullOptimizerState,
    ResumeError,
    RunError,
    RunFolderError,
    RunLock,
    Stateful,
    load_checkpoint,
    remove_stale_temporaries,
    restore,
    save_best,
    save_latest,
    write_atomic,
)
from .data import Collate, DataError, ExampleDataset, dataset_path, holdout_indices
from .model import BertConfig, BertModel
from .multitask import POOLINGS, MultitaskBert
from .tasks import TASKS, Task, make_tasks
from .tokenizer import BertTokenizer
from .weights import WeightsError, load_pretrained

#: The most positions a ``tiny-random`` encoder gets (BERT's); a pretrained one has its own.
TINY_MAX_POSITIONS = 512
#: What may pick the best epoch (``TrainConfig.select_on``).
SELECT_ON = ("val", "dev")


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
    strategy: str = "pcgrad"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "round-robin"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    fine_tune: str = "full-model"  # or "last-linear-layer" (encoder frozen)
    epochs: int = 3
    steps_per_epoch: int | None = 140  # None or 0: the scheduler's own epoch rule
    # examples per task and step: None (each task's own), one size, or one per task
    batch_size: int | list[int] | None = None
    lr: float = 5e-5  # encoder
    head_lr: float = 1e-2
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
    select_on: str = "val"  # "val", or "dev" (only explicitly: its scores are then no test)
    eval_train_limit: int = 500  # training examples per task scored each epoch
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
        for name in ("train_limit", "dev_limit", "val_limit"):
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
        fraction = self.val_fraction
        if not _is_number(fraction) or not 0 <= fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {fraction!r}")
        _at_least("val_seed", self.val_seed, 0)
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.select_on == "val" and fraction == 0:
            raise ConfigError(
                "val_fraction 0 holds out no validation split to select the best epoch on: "
                "hold one out (--val-fraction 0.1) or select on the dev sets explicitly with "
                "--select-on dev (their scores are then no test)"
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
    """``--lr 5e-05 -> 1.0`` for each option outside :data:`RESUMABLE` that differs (an
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


@dataclass
class Run:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]  # one row per epoch (also in history.json)
    loss_log: list[list[float]]  # every step's loss of each task
    model: MultitaskBert
    rank: int = 0
    best_epoch: int | None = None  # the epoch of best.pt (chosen on `select_on`)
    conflicts: ConflictLog | None = None  # every step's gradient figures (gradients.json)


def selection_score(scores: Mapping[str, float]) -> float:
    """The overall score that picks the best epoch (-inf when it is not a number, so
    that an epoch with a NaN score is never chosen)."""
    value = float(scores["overall"])
    return value if math.isfinite(value) else -math.inf


# ------------------------------------------------------------------------------ set-up
def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if present, else the CPU; a CUDA device that is not there is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s)")
    return device


def setup_device(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """The device, and this process's rank and the world size (data-parallel runs are
    launched by torchrun: one process, and one GPU, per rank)."""
    device = resolve_device(cfg.device)
    if not (cfg.distributed or cfg.fsdp):
        return device, 0, 1
    import torch.distributed as dist

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def build_model(cfg: TrainConfig, tasks: list[Task]) -> tuple[MultitaskBert, BertTokenizer]:
    """The tokenizer, and the encoder (pretrained or tiny random) with the tasks' heads."""
    with user_errors():
        tokenizer = BertTokenizer.from_folder(cfg.weights, max_length=cfg.max_length)
        if cfg.init == "tiny-random":
            if cfg.max_length > TINY_MAX_POSITIONS:
                raise ConfigError(
                    f"max_length {cfg.max_length} exceeds {TINY_MAX_POSITIONS}, the most "
                    f"positions a tiny-random encoder gets"
                )
            config = BertConfig.tiny(
                vocab_size=tokenizer.vocab_size, max_position_embeddings=cfg.max_length
            )
            encoder = BertModel(config)
        else:
            encoder, config, _ = load_pretrained(cfg.weights)
    source = "the embedded model" if cfg.weights is None else cfg.weights
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"the vocabulary of {source} has {tokenizer.vocab_size} tokens but its embedding "
            f"table has {config.vocab_size} rows: the weights and vocab.txt do not belong "
            f"together"
        )
    if cfg.max_length > config.max_position_embeddings:
        raise ConfigError(
            f"max_length {cfg.max_length} exceeds the position table of {source} "
            f"({config.max_position_embeddings} positions)"
        )
    if config.type_vocab_size < 2 and any(t.pair_mode == "cross" for t in tasks):
        raise ConfigError(
            f"{source} has {config.type_vocab_size} token type(s): the cross-encoder pairs of "
            f"{', '.join(t.name for t in tasks if t.pair_mode == 'cross')} need 2"
        )
    if cfg.fine_tune == "last-linear-layer":
        encoder.requires_grad_(False)
    return MultitaskBert(encoder, tasks, cfg.pooling), tokenizer


def shard_model(model: MultitaskBert) -> None:
    """FSDP2: shard every module the loop calls on its own (the embeddings, each
    transformer layer, the pooler when it is trained, each linear layer of the heads),
    so that FSDP gathers a module's parameters when it runs and reduce-scatters their
    gradients after. mtlkit's engine sees sharded shared parameters and keeps only this
    rank's shard of J."""
    from torch.distributed.fsdp import fully_shard

    encoder = model.encoder
    fully_shard(encoder.embeddings)
    for layer in encoder.encoder.layer:
        fully_shard(layer)
    if any(p.requires_grad for p in encoder.pooler.parameters()):
        fully_shard(encoder.pooler)
    for module in model.heads.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Missing or bad data and weight files become :class:`ConfigError` (one line)."""
    try:
        yield
    except (DataError, WeightsError, FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(str(exc)) from exc


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


def build_loader(
    cfg: TrainConfig,
    tasks: list[Task],
    datasets: list[ExampleDataset[Any]],
    tokenizer: BertTokenizer,
    rank: int = 0,
) -> MultiTaskLoader:
    """The task scheduler (``loader.scheduler``) and the loader of every task's batches."""
    context = mtlkit.Context(
        sizes=[len(d) for d in datasets],
        batch_size=cfg.task_batch_sizes,
        mode="all",  # a batch of every task at every step
        epoch=cfg.steps_per_epoch or None,
        seed=cfg.seed,
        num_epochs=cfg.epochs,
    )
    scheduler = mtlkit.get_scheduler(cfg.scheduler, context=context, **cfg.scheduler_options)
    collates = [Collate(tokenizer, pair_mode=t.pair_mode, max_length=cfg.max_length) for t in tasks]
    return MultiTaskLoader(datasets, scheduler, collates, seed=cfg.seed + 1000 * rank)


def build_strategy(cfg: TrainConfig, num_tasks: int, device: torch.device) -> mtlkit.Strategy:
    """The strategy; the context fills ``num_tasks`` and ``seed`` where it takes them."""
    context = mtlkit.Context(num_tasks=num_tasks, seed=cfg.seed)
    strategy = mtlkit.get_strategy(cfg.strategy, context=context, **cfg.strategy_options)
    if isinstance(strategy, mtlkit.UncertaintyWeighting):  # learnable log-variances
        strategy.to(device)
    return strategy


def build_optimizer(
    model: MultitaskBert, cfg: TrainConfig, strategy: mtlkit.Strategy
) -> torch.optim.Optimizer:
    """AdamW: the encoder at ``lr``; the heads (and learnable strategy weights) at ``head_lr``."""
    heads = model.head_parameters()
    if isinstance(strategy, mtlkit.UncertaintyWeighting):
        heads += list(strategy.parameters())
    groups = [{"params": heads, "lr": cfg.head_lr}]
    encoder = model.shared_parameters()
    if encoder:
        groups.insert(0, {"params": encoder, "lr": cfg.lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def warmup_linear(total: int, warmup: int) -> Any:
    """LR factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# ------------------------------------------------------------------------------ one step
def train_step(
    model: MultitaskBert,
    engine: mtlkit.TaskGradients | None,
    optimizer: torch.optim.Optimizer,
    batches: dict[int, Any],
    *,
    device: torch.device,
    bf16: bool = False,
    distributed: bool = False,
) -> list[float]:
    """One optimizer step on ``{task index: batch}``; returns each task's loss."""
    optimizer.zero_grad(set_to_none=True)
    losses: list[Tensor] = []
    for index in range(len(model.tasks)):
        if index in batches:
            batch = batches[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.task_loss(index, batch).float()
        else:  # the scheduler gave this task no examples this step
            loss = torch.zeros((), device=device, requires_grad=True)
        losses.append(loss)
        if engine is not None:
            engine.backward(index, loss)  # the task's encoder gradient -> row `index` of J
    if engine is not None:
        ok = engine.write_grad()  # the strategy's update -> the encoder's .grad
    else:  # frozen encoder: the heads share nothing
        torch.autograd.backward(torch.stack(losses).sum())
        ok = True
    if distributed:  # the engine averaged J over the ranks; the heads' gradients here
        from mtlkit.distributed import all_reduce_gradients

        all_reduce_gradients(model.head_parameters())
    if ok:  # False: a non-finite step the engine skipped
        optimizer.step()
    model.step_schedules()
    return [float(x.detach()) for x in losses]


# ------------------------------------------------------------------------------ the run folder
#: What a run writes to its folder (``--overwrite`` removes these and refuses other files).
RUN_FILES = frozenset(
    {
        "latest.pt",
        "best.pt",
        "config.json",
        "split.json",
        "history.json",
        "gradients.json",
        "curves.png",
        "conflicts.png",
        "dev-predictions",
        "eval",
    }
)


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.endswith("-confusion.txt")


def open_run_folder(cfg: TrainConfig) -> RunLock:
    """Lock the run folder and check it suits the run; returns the held lock.

    A new run needs an empty (or new) folder, or ``overwrite`` (then the previous run's
    files are removed; a folder with other files is refused). ``resume`` needs the folder's
    ``latest.pt``. Temporary files that killed writers left are removed.

    Raises:
        RunFolderError: the folder is in use by another run, holds a run (or other files),
            or has no checkpoint to resume.
    """
    out = Path(cfg.out_dir)
    missing = RunFolderError(
        f"--resume: there is no checkpoint to resume in {out} ({out / 'latest.pt'} does not "
        f"exist); start a new run without --resume"
    )
    if cfg.resume and not out.is_dir():
        raise missing  # (without creating the folder)
    lock = RunLock(out).acquire()
    try:
        remove_stale_temporaries(out)
        present = sorted(p.name for p in out.iterdir() if p.name != lock.path.name)
        if cfg.resume:
            if not (out / "latest.pt").is_file():
                raise missing
        elif present and not cfg.overwrite:
            shown = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
            what = "holds a run" if "config.json" in present else "is not empty"
            raise RunFolderError(
                f"{out} {what} ({shown}): continue its run with --resume, replace it with "
                f"--overwrite, or choose another --out-dir"
            )
        elif present:  # overwrite: remove the previous run's files, and only those
            foreign = [name for name in present if not _is_run_file(name)]
            if foreign:
                raise RunFolderError(
                    f"--overwrite replaces a run folder, and {out} also holds "
                    f"{', '.join(foreign[:6])}: move those away or choose another --out-dir"
                )
            for name in present:
                path = out / name
                try:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError as exc:
                    raise RunFolderError(f"--overwrite: could not remove {path}: {exc}") from exc
    except BaseException:
        lock.release()
        raise
    return lock


def _on_rank0(rank: int, world: int, fn: Any) -> Any:
    """``fn()`` on rank 0; a :class:`RunError` there is raised on every rank (no rank waits
    forever in a collective call)."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except RunError as exc:
            error = exc
    if world > 1:
        import torch.distributed as dist

        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise RunFolderError(box[0])
    if error is not None:
        raise error
    return result


# ------------------------------------------------------------------------------ the run
def train(cfg: TrainConfig) -> Run:
    """Train (or, with ``cfg.resume``, continue) the run ``cfg`` describes.

    Everything that can be checked before training is, in this order: the options
    (:class:`TrainConfig`), the run folder (lock, empty or ``overwrite``, ``resume``'s
    checkpoint and its options), the model's tables against the tokenizer and
    ``max_length``, and the data files (none may be empty). The folder's lock is held until
    the run ends.

    Raises:
        RunError: a problem the user can fix (one sentence; the CLI prints it as one line).
    """
    # ---- device and process group
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device, rank, world = setup_device(cfg)
    lock = _on_rank0(rank, world, lambda: open_run_folder(cfg))
    try:
        return _train(cfg, device, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> Run:
    out = Path(cfg.out_dir)

    def log(message: str) -> None:
        if rank == 0:
            tqdm.write(message, file=sys.stderr)

    # ---- resume: the checkpoint, and the options it was written with
    latest = out / "latest.pt"
    state: dict[str, Any] | None = None
    if cfg.resume:
        state = load_checkpoint(latest, kind="latest")
        try:
            saved = json.loads(state["config"])
        except (KeyError, TypeError, ValueError):
            raise ResumeError(f"{latest} does not hold the options of its run") from None
        changed = resume_differences(saved, cfg)
        if changed:
            may = ", ".join(sorted(option_name(n) for n in RESUMABLE - _NOT_OPTIONS))
            raise ResumeError(
                f"--resume continues the run in {out} with its own options, and these differ: "
                f"{'; '.join(changed)} (only {may} may change: start a new run for others)"
            )

    # ---- model: the encoder, then each task's head (in task order: the seeded RNG)
    tasks = cfg.task_records()
    names = [task.name for task in tasks]
    model, tokenizer = build_model(cfg, tasks)
    model.to(device)
    if cfg.distributed or cfg.fsdp:
        from mtlkit.distributed import broadcast_parameters

        broadcast_parameters(model)  # every rank starts from rank 0's parameters
        torch.manual_seed(cfg.seed + 1000 * rank)  # other dropout masks on each rank
    if cfg.fsdp:
        shard_model(model)

    # ---- data (the training sets less the validation split; dev), scheduler and loader
    data = load_training_data(cfg, tasks)
    train_sets, val_sets = data.train, data.val
    dev_sets = load_split(cfg, tasks, "dev", cfg.dev_limit)
    if state is not None:  # the same held-out examples as when the run started
        if "split" not in state:
            raise ResumeError(
                f"{latest} was written by an earlier version of this example, without a "
                f"validation split: start a new run"
            )
        if state["split"] != data.split_hash:
            raise ResumeError(
                f"the validation split drawn from the training files now differs from the "
                f"one {latest} was trained with (a training file changed?): resume with the "
                f"same files, or start a new run"
            )
    loader = build_loader(cfg, tasks, train_sets, tokenizer, rank)
    scheduler = loader.scheduler
    steps = len(loader)  # per epoch
    if steps < 1:
        raise ConfigError(
            f"an epoch of this run has no steps (train sizes {[len(d) for d in train_sets]})"
        )

    # ---- strategy and engine: per-task gradients of the encoder -> one update
    strategy = build_strategy(cfg, len(tasks), device)
    shared = model.shared_parameters()
    engine = (
        mtlkit.TaskGradients(
            shared,
            strategy,
            num_tasks=len(tasks),
            process_group=True if cfg.distributed else None,
        )
        if shared
        else None
    )

    # ---- optimizer and learning-rate schedule
    optimizer = build_optimizer(model, cfg, strategy)
    total = cfg.epochs * steps
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear(total, int(cfg.warmup_ratio * total))
    )

    # ---- resume: every stateful part, the RNG and the progress so far
    model_state: Stateful = FullModelState(model) if cfg.fsdp else model
    parts = {
        "model": model_state,
        "optimizer": FullOptimizerState(model, optimizer) if cfg.fsdp else optimizer,
        "lr_schedule": lr_schedule,
        "strategy": strategy,
    }
    # every step's gradient figures, kept on the device (no sync per step); in latest.pt
    conflicts = ConflictLog(names=names, device=device)
    parts["conflicts"] = conflicts
    own = {"loader": loader}  # differs per rank
    history: list[dict[str, Any]] = []
    loss_log: list[list[float]] = []
    best, best_epoch = -math.inf, None
    config = json.dumps(asdict(cfg))
    if state is not None:
        restore(state, parts, own, rank=rank, world=world)
        history = json.loads(state["history"])
        loss_log = [list(x) for x in state["loss_log"]]
        best = float(state["best"])
        best_epoch = state["best_epoch"]
        del state
        if engine is not None:  # step numbers in NonFiniteError messages go on
            engine.step_count = scheduler.step
        log(f"resumed from {latest} at step {scheduler.step}")

    def checkpoint() -> None:
        progress = {
            "history": json.dumps(history),
            "loss_log": loss_log,
            "best": best,
            "best_epoch": best_epoch,
            "split": data.split_hash,
        }
        save_latest(latest, parts, own, {**progress, "config": config}, rank=rank, world=world)

    # ---- the loop
    if rank == 0:
        write_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2).encode())
        write_atomic(out / "split.json", json.dumps(data.split, indent=1).encode())
    log(
        f"miniBERT multitask: strategy={strategy!r} scheduler={cfg.scheduler} device={device} "
        f"train sizes={[len(d) for d in train_sets]} steps/epoch={steps} epochs={cfg.epochs}"
    )
    if val_sets:
        held = [t["held_out"] for t in data.split["tasks"].values()]
        log(
            f"validation split: {held} examples held out of the training files "
            f"(--val-fraction {cfg.val_fraction}, --val-seed {cfg.val_seed}; "
            f"{[len(d) for d in val_sets]} scored each epoch; sha256 "
            f"{data.split_hash[:12] if data.split_hash else None}, split.json); the best epoch "
            f"is chosen on {cfg.select_on}"
        )
    if cfg.select_on == "dev":
        log(
            "WARNING: --select-on dev: the best epoch, best.pt and dynamic batch allocation "
            "are chosen on the dev sets, so their dev scores are NOT a test (tuned on them)"
        )
    recorded: mtlkit.GradientStats | None = None
    for epoch in range(scheduler.epoch, cfg.epochs):
        t0 = time.perf_counter()
        done = loss_log[epoch * steps :]  # steps of this epoch before a resume count too
        sums = [sum(c, 0.0) for c in zip(*done, strict=True)] if done else [0.0] * len(tasks)
        count = len(done)
        bar = tqdm(
            total=steps,
            initial=scheduler.step - epoch * steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress or rank != 0,
            dynamic_ncols=True,
        )
        for batches in loader:
            step_losses = train_step(
                model,
                engine,
                optimizer,
                batches,
                device=device,
                bf16=cfg.bf16,
                distributed=cfg.distributed,
            )
            lr_schedule.step()
            loss_log.append(step_losses)
            stats = engine.stats if engine is not None else None
            if stats is not None and stats is not recorded:  # (a skipped step keeps old ones)
                conflicts.record(stats, step=len(loss_log) - 1)  # device copies: no sync
                recorded = stats
            sums = [a + b for a, b in zip(sums, step_losses, strict=True)]
            count += 1
            bar.update(1)
            bar.set_postfix({n: f"{s / count:.3f}" for n, s in zip(names, sums, strict=True)})
            at = scheduler.step
            if cfg.checkpoint_every and at % cfg.checkpoint_every == 0 and at % steps != 0:
                checkpoint()  # (the end of an epoch is checkpointed after its evaluation)
        bar.close()
        seconds = time.perf_counter() - t0
        mean_losses = [s / max(count, 1) for s in sums]

        # ---- evaluate: training examples, the validation split (it picks) and the dev sets
        # (the test), in eval mode: no randomness
        on = {"device": device, "max_length": cfg.max_length, "batch_size": cfg.eval_batch_size}
        evaluate.calibrate(model, train_sets, tokenizer, **on)
        train_eval = [ExampleDataset(d.examples[: cfg.eval_train_limit]) for d in train_sets]
        train_results = evaluate.predict(model, train_eval, tokenizer, bf16=cfg.bf16, **on)
        val = None
        if val_sets:
            val_results = evaluate.predict(model, val_sets, tokenizer, bf16=cfg.bf16, **on)
            val = evaluate.scores(tasks, val_results)
        dev_results = evaluate.predict(model, dev_sets, tokenizer, bf16=cfg.bf16, **on)
        dev = evaluate.scores(tasks, dev_results)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": scheduler.step,
            "seconds": round(seconds, 1),
            "loss": dict(zip(names, mean_losses, strict=True)),
            "train": evaluate.scores(tasks, train_results),
        }
        if val is not None:
            row["val"] = val
        row["dev"] = dev
        row["val_split"] = data.split_hash
        if engine is not None:  # this epoch's steps (one transfer from the device)
            row["conflicts"] = conflicts.summary(epoch * steps, (epoch + 1) * steps)
        if engine is not None and engine.stats is not None:
            row["gradients"] = engine.stats.as_dict()  # the epoch's last step
        history.append(row)
        chosen = val if cfg.select_on == "val" and val is not None else dev
        if isinstance(scheduler, DynamicBatchAllocation):  # more examples for lagging tasks
            scheduler.update(evaluate.task_scores(tasks, chosen))
        if selection_score(chosen) > best:  # the same on every rank: each scored the same sets
            best, best_epoch = selection_score(chosen), epoch + 1
            weights = model_state.state_dict()  # FSDP: gathered (every rank takes part)
            if rank == 0:
                info = {
                    "config": config,
                    "epoch": epoch + 1,
                    "select_on": cfg.select_on,
                    "val": json.dumps(val),
                    "dev": json.dumps(dev),
                }
                save_best(out / "best.pt", weights, **info)
                report.write_predictions(out / "dev-predictions", tasks, dev_sets, dev_results)
                report.save_confusions(out, tasks, dev_results)
        checkpoint()
        log(report.format_table(history, names))

    if rank == 0:
        report.write_history(out, history)
        report.plot_curves(out, history, loss_log, names)
        if engine is not None:
            report.write_conflicts(out, conflicts)  # gradients.json and conflicts.png
            log(report.conflict_line(conflicts.summary()))
    return Run(history, loss_log, model, rank, best_epoch, conflicts)
