"""Multitask training and evaluation of miniBERT on SST, Quora and STS with mtlkit.

The loop is the usual one-batch-per-task loop: each step draws one batch of every task
(the scheduler decides how many examples each gets), backpropagates each task's loss from
its own graph into mtlkit's :class:`~mtlkit.TaskGradients`, which combines the encoder's
per-task gradients with the chosen strategy, then steps the optimizer.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import mtlkit
from mtlkit import schedulers as sch
from mtlkit.strategies.base import strategy_class

from . import metrics
from .data import READERS, Collate, QuoraDataset, SSTDataset, STSDataset
from .model import BertConfig, BertModel
from .multitask import TASKS, MultitaskBert, TaskOptions, best_threshold
from .tokenizer import BertTokenizer
from .weights import load_pretrained

SCHEDULERS = ("round-robin", "proportional", "temperature", "annealed", "dynamic")


@dataclass
class TrainConfig:
    """Every option of a training run (saved as ``config.json`` in the run folder)."""

    out_dir: str = "runs/minbert"
    weights: str | None = None  # checkpoint folder; None: embedded all-MiniLM-L6-v2
    init: str = "pretrained"  # or "tiny-random" (tests, smoke runs)
    data_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # e.g. {"sst-train": "path.csv"}
    strict_data: bool = False
    strategy: str = "pcgrad"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "round-robin"
    tasks: TaskOptions = field(default_factory=TaskOptions)
    fine_tune: str = "full-model"  # or "last-linear-layer" (encoder frozen)
    epochs: int = 3
    steps_per_epoch: int | None = 140  # None: the scheduler's own epoch rule
    # examples per task and step: one size for all, or (sst, quora, sts)
    batch_size: int | list[int] = field(default_factory=lambda: [32, 16, 8])
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
        if isinstance(self.tasks, dict):
            self.tasks = TaskOptions(**self.tasks)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.fine_tune not in ("full-model", "last-linear-layer"):
            raise ValueError("fine_tune must be 'full-model' or 'last-linear-layer'")
        if self.init not in ("pretrained", "tiny-random"):
            raise ValueError(f"init must be 'pretrained' or 'tiny-random', got {self.init!r}")
        for name in ("epochs", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        sizes = self.task_batch_sizes
        if len(sizes) != len(TASKS) or min(sizes) < 1:
            raise ValueError(
                f"batch_size must be one size >= 1 or {len(TASKS)} of them (sst, quora, sts), "
                f"got {self.batch_size!r}"
            )
        if self.strategy.lower() not in mtlkit.list_strategies():
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of {mtlkit.list_strategies()}"
            )

    @property
    def task_batch_sizes(self) -> list[int]:
        """Examples per step of each task (sst, quora, sts)."""
        if isinstance(self.batch_size, int):
            return [self.batch_size] * len(TASKS)
        return [int(b) for b in self.batch_size]


# ------------------------------------------------------------------------------ set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _file(cfg: TrainConfig, task: str, split: str) -> Path | None:
    key = f"{task}-{split}"
    return Path(cfg.files[key]) if key in cfg.files else None


def load_datasets(cfg: TrainConfig, split: str, limit: int | None) -> list[Any]:
    """The three datasets of ``split`` (files from ``cfg.files`` override the data dir)."""
    out: list[Any] = []
    for task, kind in zip(TASKS, (SSTDataset, QuoraDataset, STSDataset), strict=True):
        path = _file(cfg, task, split)
        data_dir = path.parent if path else cfg.data_dir
        if path is not None:
            out.append(kind(READERS[task](path, strict=cfg.strict_data, limit=limit)))
        else:
            out.append(kind.load(split, data_dir, strict=cfg.strict_data, limit=limit))
    return out


def build_model(cfg: TrainConfig) -> tuple[MultitaskBert, BertTokenizer]:
    tokenizer = BertTokenizer.from_folder(cfg.weights, max_length=cfg.max_length)
    if cfg.init == "tiny-random":
        encoder = BertModel(
            BertConfig.tiny(vocab_size=tokenizer.vocab_size, max_position_embeddings=cfg.max_length)
        )
    else:
        encoder, _, _ = load_pretrained(cfg.weights)
    if cfg.fine_tune == "last-linear-layer":
        encoder.requires_grad_(False)
    return MultitaskBert(encoder, cfg.tasks), tokenizer


def build_scheduler(cfg: TrainConfig, sizes: Sequence[int]) -> sch.TaskScheduler:
    b = cfg.task_batch_sizes
    epoch: sch.EpochSpec = cfg.steps_per_epoch if cfg.steps_per_epoch else "max"
    if cfg.scheduler == "round-robin":
        return sch.RoundRobin(sizes, b, mode="all", epoch=epoch)
    sampled: sch.EpochSpec = cfg.steps_per_epoch if cfg.steps_per_epoch else "sum"
    floor = max(2, min(b) // 4)
    common: dict[str, Any] = {
        "mode": "all",
        "total_batch_size": sum(b),
        "min_per_task": floor,
        "epoch": sampled,
        "seed": cfg.seed,
    }
    if cfg.scheduler == "proportional":
        return sch.Proportional(sizes, b, **common)
    if cfg.scheduler == "temperature":
        return sch.Temperature(sizes, b, temperature=2.0, **common)
    if cfg.scheduler == "annealed":
        return sch.Annealed(sizes, b, num_epochs=cfg.epochs, **common)
    return sch.DynamicBatchAllocation(
        sizes,
        sum(b),
        min_per_task=floor,
        temperature=0.05,
        signal="score",
        epoch=sampled,
    )


def build_strategy(cfg: TrainConfig, device: torch.device) -> mtlkit.Strategy:
    """The configured strategy; ``num_tasks`` is filled in for those that take it."""
    options = dict(cfg.strategy_options)
    cls = strategy_class(cfg.strategy)
    if "num_tasks" in inspect.signature(cls).parameters and "num_tasks" not in options:
        options["num_tasks"] = len(TASKS)
    strategy = mtlkit.get_strategy(cfg.strategy, **options)
    to = getattr(strategy, "to", None)
    if callable(to):
        to(device)
    return strategy


def build_optimizer(
    model: MultitaskBert, cfg: TrainConfig, strategy: mtlkit.Strategy | None = None
) -> torch.optim.Optimizer:
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    # learnable strategy parameters (uncertainty weighting's log-variances)
    params = getattr(strategy, "parameters", None)
    if callable(params):
        heads += list(params())
    groups = [{"params": heads, "lr": cfg.head_lr}]
    if enc:
        groups.insert(0, {"params": enc, "lr": cfg.lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def warmup_linear(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# ------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(
    model: MultitaskBert,
    datasets: Sequence[Any],
    tokenizer: BertTokenizer,
    cfg: TrainConfig,
    device: torch.device,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predictions, labels) of each task on ``datasets``, in file order."""
    was_training = model.training
    model.eval()
    out = []
    for task, ds in enumerate(datasets):
        mode = cfg.tasks.pair_mode(TASKS[task])
        # batches of similar length waste little on padding; results go back to file order
        order = sorted(range(len(ds)), key=lambda i: _text_length(ds[i]))
        loader = DataLoader(
            Subset(ds, order),
            batch_size=cfg.eval_batch_size,
            collate_fn=Collate(tokenizer, pair_mode=mode, max_length=cfg.max_length),
        )
        preds, labels = [], []
        for batch in loader:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                p = model.predict(task, batch)
            preds.append(p.float().cpu())
            labels.append(batch.labels.cpu())
        inverse = np.argsort(np.asarray(order, dtype=np.int64))
        out.append((torch.cat(preds).numpy()[inverse], torch.cat(labels).numpy()[inverse]))
    model.train(was_training)
    return out


def _text_length(example: Any) -> int:
    """Characters of an example's text(s): a cheap proxy of its length in tokens."""
    if hasattr(example, "sentence"):
        return len(example.sentence)
    return max(len(example.sentence1), len(example.sentence2))


def scores(results: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    (sp, sl), (qp, ql), (tp, tl) = results
    s = {
        "sst_acc": metrics.accuracy(sp, sl),
        "quora_acc": metrics.accuracy(qp, ql),
        "sts_pearson": metrics.pearson(tp, tl),
        "sts_spearman": metrics.spearman(tp, tl),
    }
    s["overall"] = metrics.overall_score(s["sst_acc"], s["quora_acc"], s["sts_pearson"])
    return s


@torch.no_grad()
def fit_quora_threshold(
    model: MultitaskBert, data: Any, tokenizer: BertTokenizer, cfg: TrainConfig, device: Any
) -> None:
    """For pairwise Quora losses: choose the cosine threshold on training pairs."""
    if cfg.tasks.quora_loss == "bce":
        return
    was_training = model.training
    model.eval()
    loader = DataLoader(
        data,
        batch_size=cfg.eval_batch_size,
        collate_fn=Collate(tokenizer, pair_mode="siamese", max_length=cfg.max_length),
    )
    cos, labels = [], []
    for batch in loader:
        batch = batch.to(device)
        cos.append(model.quora_cosines(batch).float().cpu())
        labels.append(batch.labels.cpu())
    model.quora_threshold.fill_(best_threshold(torch.cat(cos), torch.cat(labels)))
    model.train(was_training)


# ------------------------------------------------------------------------------ checkpoints
def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


class Trainer:
    """Holds everything a run needs, so a checkpoint can capture and restore all of it."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = 0, 1
        if cfg.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda" and self.device.index is None:  # one GPU per process
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.model, self.tokenizer = build_model(cfg)
        self.model.to(self.device)
        if cfg.distributed:
            from mtlkit.distributed import broadcast_parameters

            broadcast_parameters(self.model)
            torch.manual_seed(cfg.seed + 1000 * self.rank)  # other dropout masks on each rank
        self.train_sets = load_datasets(cfg, "train", cfg.train_limit)
        self.dev_sets = load_datasets(cfg, "dev", cfg.dev_limit)
        sizes = [len(d) for d in self.train_sets]
        self.scheduler = build_scheduler(cfg, sizes)
        collates = [
            Collate(self.tokenizer, pair_mode=cfg.tasks.pair_mode(t), max_length=cfg.max_length)
            for t in TASKS
        ]
        self.loader = sch.MultiTaskLoader(
            self.train_sets, self.scheduler, collates, seed=cfg.seed + 1000 * self.rank
        )
        self.strategy = build_strategy(cfg, self.device)
        shared = self.model.shared_parameters()
        self.engine = (
            mtlkit.TaskGradients(
                shared,
                self.strategy,
                num_tasks=len(TASKS),
                process_group=True if cfg.distributed else None,
            )
            if shared
            else None
        )
        self.optimizer = build_optimizer(self.model, cfg, self.strategy)
        total = cfg.epochs * len(self.loader)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear(total, int(cfg.warmup_ratio * total))
        )
        self.history: list[dict[str, Any]] = []
        self.loss_log: list[list[float]] = []
        self.best = -math.inf
        if cfg.resume and (self.out / "latest.pt").is_file():
            self.restore(load_checkpoint(self.out / "latest.pt"))

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "strategy": self.strategy.state_dict(),
            "loader": self.loader.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": json.dumps(self.history),
            "loss_log": self.loss_log,
            "best": self.best,
            "config": json.dumps(asdict(self.cfg)),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.strategy.load_state_dict(state["strategy"])
        ranks = state.get("ranks", [state])  # data-parallel: each rank's data and RNG
        if len(ranks) != self.world:
            raise ValueError(
                f"the checkpoint was written by {len(ranks)} process(es), this run has "
                f"{self.world}: resume with the same number of processes"
            )
        own = ranks[self.rank]
        self.loader.load_state_dict(own["loader"])
        torch.set_rng_state(own["rng_cpu"])
        if own["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["rng_cuda"])
        if self.engine is not None:  # step numbers in NonFiniteError messages go on
            self.engine.step_count = self.scheduler.step
        self.history = json.loads(state["history"])
        self.loss_log = [list(x) for x in state["loss_log"]]
        self.best = float(state["best"])
        self.log(f"resumed from {self.out / 'latest.pt'} at step {self.scheduler.step}")

    def checkpoint(self) -> None:
        ranks: list[Any] = []
        if self.world > 1:  # every rank's loader and RNG states, saved by rank 0
            import torch.distributed as dist

            ranks = [None] * self.world
            own = {
                "loader": self.loader.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            dist.all_gather_object(ranks, own)
        if self.rank == 0:
            save_atomic(
                {**self.state(), **({"ranks": ranks} if ranks else {})}, self.out / "latest.pt"
            )

    def log(self, msg: str) -> None:
        if self.rank == 0:
            tqdm.write(msg, file=sys.stderr)

    # ---------------------------------------------------------------- training
    def train_step(self, batches: dict[int, Any]) -> list[float]:
        cfg, model = self.cfg, self.model
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[Tensor] = []
        for task in range(len(TASKS)):
            if task in batches:
                batch = batches[task].to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss = model.task_loss(task, batch).float()
            else:  # the scheduler gave this task no examples this step
                loss = torch.zeros((), device=self.device, requires_grad=True)
            losses.append(loss)
            if self.engine is not None:
                self.engine.backward(task, loss)
        if self.engine is not None:
            ok = self.engine.combine()
        else:
            torch.autograd.backward(torch.stack(losses).sum())
            ok = True
        if cfg.distributed:
            from mtlkit.distributed import all_reduce_gradients

            shared = {id(p) for p in model.shared_parameters()}
            all_reduce_gradients(p for p in model.parameters() if id(p) not in shared)
        if ok:
            self.optimizer.step()
        self.lr_schedule.step()
        model.step_schedules()
        return [float(x.detach()) for x in losses]

    def evaluate_epoch(self, epoch: int, seconds: float, losses: list[float]) -> dict[str, Any]:
        cfg = self.cfg
        fit_quora_threshold(
            self.model, self.train_sets[1], self.tokenizer, cfg, self.device
        ) if cfg.tasks.quora_loss != "bce" else None
        train_eval = [type(d)(d.examples[: cfg.eval_train_limit]) for d in self.train_sets]
        tr = scores(predict(self.model, train_eval, self.tokenizer, cfg, self.device))
        dev_results = predict(self.model, self.dev_sets, self.tokenizer, cfg, self.device)
        dv = scores(dev_results)
        row = {
            "epoch": epoch + 1,
            "step": self.scheduler.step,
            "seconds": round(seconds, 1),
            "loss": dict(zip(TASKS, losses, strict=True)),
            "train": tr,
            "dev": dv,
        }
        if self.engine is not None and self.engine.stats is not None:
            row["gradients"] = self.engine.stats.as_dict()
        self.history.append(row)
        if isinstance(self.scheduler, sch.DynamicBatchAllocation):
            self.scheduler.update([dv["sst_acc"], dv["quora_acc"], (dv["sts_pearson"] + 1) / 2])
        if dv["overall"] > self.best and self.rank == 0:
            self.best = dv["overall"]
            save_atomic(
                {
                    "model": self.model.state_dict(),
                    "config": json.dumps(asdict(cfg)),
                    "epoch": epoch + 1,
                    "dev": json.dumps(dv),
                },
                self.out / "best.pt",
            )
            write_predictions(self.out / "dev-predictions", self.dev_sets, dev_results)
            save_confusion(self.out, dev_results[0])
        return row

    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.rank == 0:
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        self.log(
            f"miniBERT multitask: strategy={self.strategy!r} scheduler={cfg.scheduler} "
            f"device={self.device} train sizes={[len(d) for d in self.train_sets]} "
            f"steps/epoch={len(self.loader)} epochs={cfg.epochs}"
        )
        start_epoch = self.scheduler.epoch
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            # steps of this epoch run before a resume count in its mean loss
            done = self.loss_log[epoch * len(self.loader) :]
            sums = [sum(c, 0.0) for c in zip(*done, strict=True)] if done else [0.0] * len(TASKS)
            count = len(done)
            bar = tqdm(
                total=len(self.loader),
                initial=self.scheduler.step - epoch * len(self.loader),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or self.rank != 0,
                dynamic_ncols=True,
            )
            for batches in self.loader:
                step_losses = self.train_step(batches)
                self.loss_log.append(step_losses)
                sums = [a + b for a, b in zip(sums, step_losses, strict=True)]
                count += 1
                bar.update(1)
                bar.set_postfix({t: f"{s / count:.3f}" for t, s in zip(TASKS, sums, strict=True)})
                if (
                    cfg.checkpoint_every
                    and self.scheduler.step % cfg.checkpoint_every == 0
                    and self.scheduler.step % len(self.loader) != 0  # checkpointed after eval
                ):
                    self.checkpoint()
            bar.close()
            mean = [s / max(count, 1) for s in sums]
            row = self.evaluate_epoch(epoch, time.perf_counter() - t0, mean)
            self.checkpoint()
            self.log(format_table(self.history))
            del row
        if self.rank == 0:
            (self.out / "history.json").write_text(json.dumps(self.history, indent=2))
            plot_curves(self.out, self.history, self.loss_log)
        return self.history


# ------------------------------------------------------------------------------ reports
def format_table(history: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'epoch':>5} {'time s':>7} | {'loss sst':>8} {'quora':>6} {'sts':>6} | "
        f"{'train sst':>9} {'quora':>6} {'sts r':>6} | {'dev sst':>7} {'quora':>6} "
        f"{'sts r':>6} {'sts ρ':>6} {'overall':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in history:
        lo, tr, dv = r["loss"], r["train"], r["dev"]
        lines.append(
            f"{r['epoch']:>5} {r['seconds']:>7.0f} | {lo['sst']:>8.3f} {lo['quora']:>6.3f} "
            f"{lo['sts']:>6.3f} | {tr['sst_acc']:>9.3f} {tr['quora_acc']:>6.3f} "
            f"{tr['sts_pearson']:>6.3f} | {dv['sst_acc']:>7.3f} {dv['quora_acc']:>6.3f} "
            f"{dv['sts_pearson']:>6.3f} {dv['sts_spearman']:>6.3f} {dv['overall']:>7.3f}"
        )
    return "\n".join(lines)


def write_predictions(
    folder: Path, datasets: Sequence[Any], results: Sequence[tuple[np.ndarray, np.ndarray]]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for task, ds, (pred, label) in zip(TASKS, datasets, results, strict=True):
        with open(folder / f"{task}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "prediction", "label"])
            for ex, p, y in zip(ds.examples, pred.tolist(), label.tolist(), strict=True):
                w.writerow([ex.uid, p, y])


def save_confusion(folder: Path, sst: tuple[np.ndarray, np.ndarray]) -> None:
    cm = metrics.confusion_matrix(sst[0].astype(int), sst[1].astype(int), num_classes=5)
    f1 = metrics.f1_per_class(cm)
    text = "SST dev confusion matrix (rows: true class, columns: predicted)\n"
    text += "\n".join(" ".join(f"{int(v):5d}" for v in row) for row in cm)
    text += "\nper-class F1: " + " ".join(f"{v:.3f}" for v in f1) + "\n"
    (folder / "sst-confusion.txt").write_text(text)


def plot_curves(folder: Path, history: Sequence[dict[str, Any]], loss_log: Sequence[Any]) -> None:
    try:
        import matplotlib
    except ImportError:
        tqdm.write("matplotlib is not installed: no training-curve plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if loss_log:
        arr = np.asarray(loss_log, dtype=float)
        win = max(1, len(arr) // 50)
        kernel = np.ones(win) / win
        for i, t in enumerate(TASKS):
            ax1.plot(np.convolve(arr[:, i], kernel, mode="valid"), label=t)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (moving average)")
    ax1.legend()
    epochs = [r["epoch"] for r in history]
    for key, label in [
        ("sst_acc", "SST acc"),
        ("quora_acc", "Quora acc"),
        ("sts_pearson", "STS Pearson"),
        ("overall", "overall"),
    ]:
        ax2.plot(epochs, [r["dev"][key] for r in history], marker="o", label=f"dev {label}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("dev score")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    files: dict[str, str] | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    limit: int | None = None,
) -> dict[str, float]:
    """Score a saved checkpoint on dev files (or any files in the format)."""
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig(**json.loads(state["config"]))
    cfg.files = dict(files or {})
    cfg.device = device
    model, tokenizer = build_model(cfg)
    model.load_state_dict(state["model"])
    dev = resolve_device(device)
    model.to(dev)
    datasets = load_datasets(cfg, "dev", limit)
    results = predict(model, datasets, tokenizer, cfg, dev)
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out, datasets, results)
    save_confusion(out, results[0])
    s = scores(results)
    (out / "scores.json").write_text(json.dumps(s, indent=2))
    return s
