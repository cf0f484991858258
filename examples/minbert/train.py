"""Multitask training of miniBERT with mtlkit, top to bottom: the config, the set-up, the loop.

:func:`train` sets a run up in this order: device and process group, model, data, task
scheduler and loader, strategy and engine, optimizer and learning-rate schedule, resume.
Then the loop: each step draws one batch of every task (the scheduler decides how many
examples each gets) and backpropagates each task's loss from its own graph into mtlkit's
:class:`~mtlkit.TaskGradients`, which writes the strategy's combination of the encoder's
per-task gradients into ``.grad``; then the optimizer steps. Each epoch ends with an
evaluation, a checkpoint and a line of the table.

What is specific to a task (its data, head, loss, prediction, metrics) comes from its
record in :mod:`examples.minbert.tasks`; this file does not name any task.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

import mtlkit
from mtlkit.schedulers import DynamicBatchAllocation, MultiTaskLoader

from . import evaluate, report
from .checkpoint import load_checkpoint, restore, save_best, save_latest
from .data import Collate, ExampleDataset, dataset_path
from .model import BertConfig, BertModel
from .multitask import POOLINGS, MultitaskBert
from .tasks import TASKS, Task, make_tasks
from .tokenizer import BertTokenizer
from .weights import load_pretrained


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
    train_limit: int | None = None  # examples per task (quick runs)
    dev_limit: int | None = None
    eval_train_limit: int = 500  # training examples per task scored each epoch
    eval_batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    threads: int | None = None
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
    resume: bool = False
    progress: bool = True
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.fine_tune not in ("full-model", "last-linear-layer"):
            raise ValueError("fine_tune must be 'full-model' or 'last-linear-layer'")
        if self.init not in ("pretrained", "tiny-random"):
            raise ValueError(f"init must be 'pretrained' or 'tiny-random', got {self.init!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("epochs", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if mtlkit.normalize_name(self.strategy) not in mtlkit.list_strategies():
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of {mtlkit.list_strategies()}"
            )
        if mtlkit.normalize_name(self.scheduler) not in mtlkit.list_schedulers():
            raise ValueError(
                f"unknown scheduler {self.scheduler!r}; choose one of {mtlkit.list_schedulers()}"
            )
        self.task_records()  # unknown tasks and refused task options fail here
        sizes = self.task_batch_sizes
        if len(sizes) != len(self.tasks) or min(sizes) < 1:
            raise ValueError(
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


@dataclass
class Run:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]  # one row per epoch (also in history.json)
    loss_log: list[list[float]]  # every step's loss of each task
    model: MultitaskBert
    rank: int = 0


# ------------------------------------------------------------------------------ set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_device(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """The device, and this process's rank and the world size (data-parallel runs are
    launched by torchrun: one process, and one GPU, per rank)."""
    device = resolve_device(cfg.device)
    if not cfg.distributed:
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
    tokenizer = BertTokenizer.from_folder(cfg.weights, max_length=cfg.max_length)
    if cfg.init == "tiny-random":
        config = BertConfig.tiny(
            vocab_size=tokenizer.vocab_size, max_position_embeddings=cfg.max_length
        )
        encoder = BertModel(config)
    else:
        encoder, _, _ = load_pretrained(cfg.weights)
    if cfg.fine_tune == "last-linear-layer":
        encoder.requires_grad_(False)
    return MultitaskBert(encoder, tasks, cfg.pooling), tokenizer


def load_split(
    cfg: TrainConfig, tasks: list[Task], split: str, limit: int | None
) -> list[ExampleDataset[Any]]:
    """Each task's ``split``: the file ``cfg.files["{task}-{split}"]``, else
    ``{task}-{split}.csv`` in the data folder (default: the shipped files)."""
    datasets = []
    for task in tasks:
        key = f"{task.name}-{split}"
        if key in cfg.files:
            path = Path(cfg.files[key])
        else:
            path = dataset_path(task.name, split, cfg.data_dir)  # type: ignore[arg-type]
        datasets.append(ExampleDataset(task.read(path, strict=cfg.strict_data, limit=limit)))
    return datasets


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


# ------------------------------------------------------------------------------ the run
def train(cfg: TrainConfig) -> Run:
    """Train (or, with ``cfg.resume``, continue) the run ``cfg`` describes."""
    # ---- device and process group
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device, rank, world = setup_device(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        if rank == 0:
            tqdm.write(message, file=sys.stderr)

    # ---- model: the encoder, then each task's head (in task order: the seeded RNG)
    tasks = cfg.task_records()
    names = [task.name for task in tasks]
    model, tokenizer = build_model(cfg, tasks)
    model.to(device)
    if cfg.distributed:
        from mtlkit.distributed import broadcast_parameters

        broadcast_parameters(model)
        torch.manual_seed(cfg.seed + 1000 * rank)  # other dropout masks on each rank

    # ---- data, task scheduler and loader
    train_sets = load_split(cfg, tasks, "train", cfg.train_limit)
    dev_sets = load_split(cfg, tasks, "dev", cfg.dev_limit)
    loader = build_loader(cfg, tasks, train_sets, tokenizer, rank)
    scheduler = loader.scheduler
    steps = len(loader)  # per epoch

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
    parts = {
        "model": model,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "strategy": strategy,
    }
    own = {"loader": loader}  # differs per rank
    history: list[dict[str, Any]] = []
    loss_log: list[list[float]] = []
    best = -math.inf
    config = json.dumps(asdict(cfg))
    latest = out / "latest.pt"
    if cfg.resume and latest.is_file():
        state = load_checkpoint(latest)
        restore(state, parts, own, rank=rank, world=world)
        history = json.loads(state["history"])
        loss_log = [list(x) for x in state["loss_log"]]
        best = float(state["best"])
        if engine is not None:  # step numbers in NonFiniteError messages go on
            engine.step_count = scheduler.step
        log(f"resumed from {latest} at step {scheduler.step}")

    def checkpoint() -> None:
        progress = {"history": json.dumps(history), "loss_log": loss_log, "best": best}
        save_latest(latest, parts, own, {**progress, "config": config}, rank=rank, world=world)

    # ---- the loop
    if rank == 0:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log(
        f"miniBERT multitask: strategy={strategy!r} scheduler={cfg.scheduler} device={device} "
        f"train sizes={[len(d) for d in train_sets]} steps/epoch={steps} epochs={cfg.epochs}"
    )
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

        # ---- evaluate: training examples and dev sets (eval mode: no randomness)
        on = {"device": device, "max_length": cfg.max_length, "batch_size": cfg.eval_batch_size}
        evaluate.calibrate(model, train_sets, tokenizer, **on)
        train_eval = [ExampleDataset(d.examples[: cfg.eval_train_limit]) for d in train_sets]
        train_results = evaluate.predict(model, train_eval, tokenizer, bf16=cfg.bf16, **on)
        dev_results = evaluate.predict(model, dev_sets, tokenizer, bf16=cfg.bf16, **on)
        dev = evaluate.scores(tasks, dev_results)
        row = {
            "epoch": epoch + 1,
            "step": scheduler.step,
            "seconds": round(seconds, 1),
            "loss": dict(zip(names, mean_losses, strict=True)),
            "train": evaluate.scores(tasks, train_results),
            "dev": dev,
        }
        if engine is not None and engine.stats is not None:
            row["gradients"] = engine.stats.as_dict()
        history.append(row)
        if isinstance(scheduler, DynamicBatchAllocation):  # more examples for lagging tasks
            scheduler.update(evaluate.task_scores(tasks, dev))
        if dev["overall"] > best and rank == 0:
            best = dev["overall"]
            save_best(out / "best.pt", model, config=config, epoch=epoch + 1, dev=json.dumps(dev))
            report.write_predictions(out / "dev-predictions", tasks, dev_sets, dev_results)
            report.save_confusions(out, tasks, dev_results)
        checkpoint()
        log(report.format_table(history, names))

    if rank == 0:
        report.write_history(out, history)
        report.plot_curves(out, history, loss_log, names)
    return Run(history, loss_log, model, rank)
