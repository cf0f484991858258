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
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import mtlkit
from mtlkit.diagnostics import ConflictLog
from mtlkit.schedulers import DynamicBatchAllocation, MultiTaskLoader

from . import evaluate, report
from .averaging import WeightAverage
from .checkpoint import (
    ConfigError,
    FullModelState,
    FullOptimizerState,
    ResumeError,
    Stateful,
    load_checkpoint,
    restore,
    save_best,
    save_latest,
    write_atomic,
)
from .config import (  # noqa: F401 (re-exported: callers import them from here)
    RESUMABLE,
    SELECT_ON,
    TINY_MAX_POSITIONS,
    TrainConfig,
    check_device,
    option_name,
    resumable_option_names,
    resume_differences,
    selection_score,
    user_errors,
)
from .data import Collate, ExampleDataset
from .model import BertConfig, BertModel
from .multitask import MultitaskBert
from .run_folder import RUN_FILES, _on_rank0, open_run_folder  # noqa: F401
from .splits import (  # noqa: F401
    SPLIT_RULE,
    TrainingData,
    load_split,
    load_training_data,
    split_path,
)
from .tasks import Task
from .tokenizer import BertTokenizer
from .weights import load_pretrained


@dataclass
class Run:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]  # one row per epoch (also in history.json)
    loss_log: list[list[float]]  # every step's loss of each task
    model: MultitaskBert
    rank: int = 0
    best_epoch: int | None = None  # the epoch of best.pt (chosen on `select_on`)
    conflicts: ConflictLog | None = None  # every step's gradient figures (gradients.json)


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
    """AdamW: the encoder at ``lr`` (layer by layer under ``layer_lr_decay``, see
    :func:`encoder_groups`); the heads (and learnable strategy weights) at ``head_lr``."""
    heads = model.head_parameters()
    if isinstance(strategy, mtlkit.UncertaintyWeighting):
        heads += list(strategy.parameters())
    groups = encoder_groups(model, cfg.lr, cfg.layer_lr_decay)
    groups.append({"params": heads, "lr": cfg.head_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def encoder_groups(model: MultitaskBert, lr: float, decay: float) -> list[dict[str, Any]]:
    """The encoder's parameter groups: one at ``lr`` when ``decay`` is 1; otherwise
    layer-wise decreasing rates (Sun et al., 2019, "How to Fine-Tune BERT for Text
    Classification?", section 5.3): layer ``l`` of ``L`` (1 at the bottom) at
    ``lr * decay**(L - l)``, the embeddings at ``lr * decay**L``, the pooler at ``lr``.
    Only trainable parameters; groups without one are left out."""
    params = model.shared_parameters()
    if not params:
        return []
    if decay == 1:
        return [{"params": params, "lr": lr}]
    shared = {id(p) for p in params}
    num_layers = model.encoder.config.num_hidden_layers
    by_depth: dict[int, list[torch.nn.Parameter]] = {}
    for name, param in model.encoder.named_parameters():
        if id(param) not in shared:
            continue
        if name.startswith("embeddings."):
            depth = 0
        elif name.startswith("encoder.layer."):
            depth = int(name.split(".")[2]) + 1
        else:  # the pooler sits on top of the last layer
            depth = num_layers
        by_depth.setdefault(depth, []).append(param)
    return [
        {"params": group, "lr": lr * decay ** (num_layers - depth)}
        for depth, group in sorted(by_depth.items())
    ]


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
            may = ", ".join(resumable_option_names())
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
    # the weights each epoch evaluates and best.pt keeps: their moving average, or themselves
    average = None
    if cfg.ema_decay:
        trainable = [p for p in model.parameters() if p.requires_grad]
        average = WeightAverage(trainable, cfg.ema_decay)
        parts["average"] = average
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
            f"{data.split_hash[:12] if data.split_hash else None}, split.json); "
            + (
                "best.pt keeps the last epoch"
                if cfg.select_on == "last"
                else f"the best epoch is chosen on {cfg.select_on}"
            )
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
            if average is not None:
                average.update()
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
        # (the test), in eval mode: no randomness;
        # with --ema-decay, of the averaged weights (best.pt keeps them too)
        with average.applied() if average is not None else contextlib.nullcontext():
            on = {"device": device, "max_length": cfg.max_length, "batch_size": cfg.eval_batch_size}
            calibration = train_sets
            if cfg.calibrate_limit is not None:
                calibration = [
                    ExampleDataset(d.examples[: cfg.calibrate_limit]) for d in train_sets
                ]
            evaluate.calibrate(model, calibration, tokenizer, **on)
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
            # dev steers nothing unless asked (--select-on dev): "val" always has a split,
            # and "last" without one refuses dynamic allocation and ignores `signal`
            signal = val if cfg.select_on != "dev" and val is not None else dev
            if isinstance(scheduler, DynamicBatchAllocation):  # more examples for lagging tasks
                scheduler.update(evaluate.task_scores(tasks, signal))
            score = float(epoch + 1) if cfg.select_on == "last" else selection_score(signal)
            if score > best:  # the same on every rank: each scored the same sets
                best, best_epoch = score, epoch + 1
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
