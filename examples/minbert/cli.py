"""Command line: ``python -m examples.minbert train|evaluate ...`` (from the repository root).

The defaults of ``train`` are the README's main job: multitask training of the embedded
all-MiniLM-L6-v2 on SST, Quora and STS with MGDA, sized for about 19 minutes on a
2-core CPU. Longer runs: raise ``--epochs`` / ``--steps-per-epoch``.

This module parses arguments into a :class:`~examples.minbert.train.TrainConfig` and calls
:func:`~examples.minbert.train.train`. A user error (a bad option value, a missing or empty
file, a damaged checkpoint, a run folder in use or holding another run, ``--resume`` with
other options) is printed as one ``error: ...`` line, exit status 2; anything else is a bug
and shows its traceback. The flags of the built-in tasks (``--quora-*``,
``--sts-*``, ``--dropout``) become the options of their records
(:mod:`examples.minbert.tasks`), ``--task-arg TASK.KEY=VALUE`` those of any task.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import mtlkit

from . import evaluate, report
from .checkpoint import CheckpointError, ConfigError, RunError, load_checkpoint, write_atomic
from .multitask import POOLINGS
from .tasks import (
    HEAD_DROPOUT,
    QUORA_PAIRWISE,
    QUORA_STRUCTURES,
    STS_STRUCTURES,
    TASKS,
    loss_name,
    quora_losses,
    sts_losses,
)
from .train import (
    SELECT_ON,
    TrainConfig,
    build_model,
    load_split,
    resolve_device,
    split_path,
    train,
    user_errors,
)


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def _task_kv(text: str) -> tuple[str, str, Any]:
    key, value = _kv(text)
    task, dot, option = key.partition(".")
    if not dot or not task or not option:
        raise argparse.ArgumentTypeError(f"expected TASK.KEY=VALUE, got {text!r}")
    return task, option, value


def _batch_sizes(text: str) -> int | list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a batch size or one per task (e.g. 32,32,16), got {text!r}"
        ) from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    return names


def _file(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected TASK-SPLIT=PATH, got {text!r}")
    key, value = text.split("=", 1)
    if key not in {f"{t}-{s}" for t in TASKS for s in ("train", "dev")}:
        raise argparse.ArgumentTypeError(f"unknown file key {key!r} (e.g. sst-train, sts-dev)")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.minbert",
        description="miniBERT multitask training (SST-5, Quora, STS) with mtlkit.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = TrainConfig()
    tr = sub.add_parser(
        "train", help="train; score a validation split (selection) and dev (test) every epoch"
    )
    tr.add_argument("--out-dir", default="runs/minbert", help="run folder (checkpoints, plots)")
    tr.add_argument("--weights", default=None, help="BERT checkpoint folder (default: embedded)")
    tr.add_argument("--init", choices=["pretrained", "tiny-random"], default=d.init)
    tr.add_argument("--data-dir", default=None, help="folder with {task}-{train,dev}.csv")
    tr.add_argument(
        "--file",
        type=_file,
        action="append",
        default=[],
        metavar="TASK-SPLIT=PATH",
        help="use this file for one task and split, e.g. sst-train=full.csv",
    )
    tr.add_argument("--strict-data", action="store_true", help="refuse malformed rows")
    tr.add_argument(
        "--tasks",
        type=_names,
        default=d.tasks,
        metavar="A,B,...",
        help=f"the tasks, in the order of the rows of J (default: {','.join(d.tasks)})",
    )
    tr.add_argument(
        "--task-arg",
        type=_task_kv,
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="an option of a task's record, e.g. --task-arg quora.dropout=0.1 (JSON values)",
    )
    tr.add_argument(
        "--strategy",
        default=d.strategy,
        type=mtlkit.normalize_name,  # my_method and my-method are one name
        choices=mtlkit.list_strategies(),
    )
    tr.add_argument(
        "--strategy-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option, e.g. --strategy-arg alpha=1.5 (JSON values)",
    )
    tr.add_argument(
        "--scheduler",
        default=d.scheduler,
        type=mtlkit.normalize_name,
        choices=mtlkit.list_schedulers(),
    )
    tr.add_argument(
        "--scheduler-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scheduler option, e.g. --scheduler-arg temperature=5 (JSON values)",
    )
    tr.add_argument("--pooling", default=d.pooling, choices=POOLINGS)
    tr.add_argument("--quora-structure", default="siamese", choices=QUORA_STRUCTURES)
    tr.add_argument(
        "--quora-loss",
        default="bce",
        type=loss_name,
        choices=quora_losses(),
        help="bce, or a pairwise loss of mtlkit.losses (names or aliases, e.g. mnrl)",
    )
    tr.add_argument(
        "--quora-loss-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='option of the pairwise Quora loss, e.g. distance="euclidean" (JSON values)',
    )
    tr.add_argument("--sts-structure", default="cosine", choices=STS_STRUCTURES)
    tr.add_argument("--sts-loss", default="mse", type=loss_name, choices=sts_losses())
    tr.add_argument(
        "--sts-loss-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the pairwise STS loss, e.g. scale=20 (JSON values)",
    )
    tr.add_argument(
        "--margin",
        type=float,
        default=None,
        help="margin of the Quora margin losses (cosine-embedding, contrastive, triplet; "
        "default 0.5)",
    )
    tr.add_argument(
        "--margin-end",
        type=float,
        default=None,
        help="move the margin linearly to this value over --margin-steps",
    )
    tr.add_argument("--margin-steps", type=int, default=1000)
    tr.add_argument(
        "--dropout",
        type=float,
        default=HEAD_DROPOUT,
        help=f"on the SST/Quora/STS heads (default {HEAD_DROPOUT}, chosen on validation)",
    )
    tr.add_argument("--fine-tune", default=d.fine_tune, choices=["full-model", "last-linear-layer"])
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument(
        "--steps-per-epoch",
        type=int,
        default=d.steps_per_epoch,
        help="steps per epoch (0: the scheduler's own epoch rule)",
    )
    tr.add_argument(
        "--batch-size",
        type=_batch_sizes,
        default=d.batch_size,
        help="examples per task and step: one number, or one per task (e.g. 32,32,16: the "
        "default for sst,quora,sts)",
    )
    tr.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    tr.add_argument("--lr", type=float, default=d.lr, help="encoder learning rate")
    tr.add_argument("--head-lr", type=float, default=d.head_lr)
    tr.add_argument(
        "--layer-lr-decay",
        type=float,
        default=d.layer_lr_decay,
        help="layer-wise rates: encoder layer l of L at lr x decay^(L-l), the embeddings at "
        "lr x decay^L (default 1: one rate)",
    )
    tr.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help="evaluate and keep (best.pt) an exponential moving average of the weights with "
        "this decay, e.g. 0.99 (default 0: the weights themselves)",
    )
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay)
    tr.add_argument("--max-length", type=int, default=d.max_length)
    tr.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="training examples per task (after the validation split is held out)",
    )
    tr.add_argument("--dev-limit", type=int, default=None)
    tr.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="fraction of each task's training file held out as the validation split, "
        "never trained on: the best epoch, best.pt and dynamic allocation are chosen on it "
        "and dev is the test (default %(default)s; 0: no split, needs --select-on dev)",
    )
    tr.add_argument(
        "--val-seed",
        type=int,
        default=d.val_seed,
        help="which examples are held out (not --seed: every run holds out the same; "
        "default %(default)s)",
    )
    tr.add_argument(
        "--val-limit",
        type=int,
        default=None,
        help="held-out examples per task scored each epoch (default: all of them)",
    )
    tr.add_argument(
        "--select-on",
        choices=list(SELECT_ON),
        default=d.select_on,
        help="what picks the epoch best.pt keeps, and dynamic allocation's signal (default "
        "%(default)s; last: no selection, best.pt is the last epoch, for a final run on all the "
        "training data with --val-fraction 0; dev: the dev scores are then no test)",
    )
    tr.add_argument("--eval-train-limit", type=int, default=d.eval_train_limit)
    tr.add_argument(
        "--calibrate-limit",
        type=int,
        default=None,
        help="training examples per task a calibration reads each epoch (Quora's cosine "
        "threshold under a pairwise loss; default: all)",
    )
    tr.add_argument("--seed", type=int, default=d.seed)
    tr.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda:0")
    tr.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="also checkpoint every N steps (latest.pt)",
    )
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT_DIR from its latest.pt (with the same options; "
        "--epochs, --threads, --device, --checkpoint-every, --no-progress may change)",
    )
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in OUT_DIR (its files are removed); without it or --resume, a "
        "folder that is not empty is refused",
    )
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument(
        "--distributed",
        action="store_true",
        help="torch.distributed data parallel (launch with torchrun)",
    )
    tr.add_argument(
        "--fsdp",
        action="store_true",
        help="FSDP2: shard the model over the processes (launch with torchrun)",
    )

    ev = sub.add_parser("evaluate", help="score a checkpoint on dev files (or any in the format)")
    ev.add_argument("checkpoint", help="best.pt or latest.pt of a run")
    ev.add_argument(
        "--file",
        type=_file,
        action="append",
        default=[],
        metavar="TASK-SPLIT=PATH",
        help="score this file for its task, e.g. sst-dev=my.csv or sst-train=full.csv (one "
        "file per task; default: the dev files of the run's data)",
    )
    ev.add_argument("--out-dir", default=None, help="where predictions go")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--limit", type=int, default=None)
    return parser


def task_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The options of the selected tasks: the built-in tasks' flags, then ``--task-arg``."""
    quora_loss = dict(args.quora_loss_arg)
    if args.margin is not None or args.margin_end is not None:
        margin = args.margin
        if margin is None:  # the loss's default margin in the Quora record
            margin = QUORA_PAIRWISE.get(args.quora_loss, ({}, None))[0].get("margin")
        if args.margin_end is not None:
            quora_loss["margin"] = {
                "start": margin,
                "end": args.margin_end,
                "steps": args.margin_steps,
            }
        else:
            quora_loss["margin"] = margin
    options: dict[str, dict[str, Any]] = {
        "sst": {"dropout": args.dropout},
        "quora": {
            "structure": args.quora_structure,
            "loss": args.quora_loss,
            "loss_options": quora_loss,
            "dropout": args.dropout,
        },
        "sts": {
            "structure": args.sts_structure,
            "loss": args.sts_loss,
            "loss_options": dict(args.sts_loss_arg),
            "dropout": args.dropout,
        },
    }
    for task, key, value in args.task_arg:
        if task not in args.tasks:
            raise ValueError(f"--task-arg {task}.{key}: {task!r} is not among --tasks")
        options.setdefault(task, {})[key] = value
    return {name: opts for name, opts in options.items() if name in args.tasks}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs["files"] = dict(args.file)
    kwargs["task_options"] = task_options(args)
    kwargs["strategy_options"] = dict(args.strategy_arg)
    kwargs["scheduler_options"] = dict(args.scheduler_arg)
    kwargs["progress"] = not args.no_progress
    return TrainConfig(**kwargs)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    files: dict[str, str] | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    limit: int | None = None,
) -> dict[str, float]:
    """Score a saved checkpoint (``best.pt`` or ``latest.pt``) on one file per task.

    Args:
        files: ``{"TASK-SPLIT": path}``: score this file for TASK, whichever split it is
            (``sst-train=full.csv`` scores that file); a task without one is scored on the
            dev file of the run's data. Keys must name the checkpoint's tasks, one per task.
        limit: score the first ``limit`` examples of each file.

    Raises:
        RunError: a bad checkpoint, file key, file, device or limit (one sentence).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    state = load_checkpoint(checkpoint)
    try:
        cfg = TrainConfig(**json.loads(state["config"]))
        model_state = state["model"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{checkpoint} does not hold a model and the options of its run that this version "
            f"reads ({type(exc).__name__}: {exc})"
        ) from None
    chosen: dict[str, str] = {}  # task -> the key given for it
    for key in files or {}:
        name, _, split = key.rpartition("-")
        if name not in cfg.tasks or split not in ("train", "dev"):
            keys = ", ".join(f"{t}-train, {t}-dev" for t in cfg.tasks)
            raise ConfigError(
                f"--file {key}: the tasks of {checkpoint} are {','.join(cfg.tasks)} (keys {keys})"
            )
        if name in chosen:
            raise ConfigError(
                f"--file {chosen[name]} and --file {key}: evaluate scores one file per task"
            )
        chosen[name] = key
    cfg.files = {f"{name}-dev": str((files or {})[key]) for name, key in chosen.items()}
    tasks = cfg.task_records()
    on = resolve_device(device)
    datasets = load_split(cfg, tasks, "dev", limit)
    for task, ds in zip(tasks, datasets, strict=True):
        path = split_path(cfg, task.name, "dev")
        print(f"scoring {task.name} on {path} ({len(ds)} examples)", file=sys.stderr)
    model, tokenizer = build_model(cfg, tasks)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"the weights in {checkpoint} do not fit the model its options describe ({first})"
        ) from None
    model.to(on)
    results = evaluate.predict(
        model,
        datasets,
        tokenizer,
        device=on,
        max_length=cfg.max_length,
        batch_size=cfg.eval_batch_size,
        bf16=cfg.bf16,
    )
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / "eval"
    with user_errors():
        out.mkdir(parents=True, exist_ok=True)
    report.write_predictions(out, tasks, datasets, results)
    report.save_confusions(out, tasks, results)
    s = evaluate.scores(tasks, results)
    write_atomic(out / "scores.json", json.dumps(s, indent=2).encode())
    return s


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: a user error, printed as one
    ``error: ...`` line; 130: interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "error: interrupted (files already written are whole; a run continues from its "
            "last checkpoint with --resume)",
            file=sys.stderr,
        )
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "evaluate":
        s = evaluate_checkpoint(
            args.checkpoint,
            files=dict(args.file),
            out_dir=args.out_dir,
            device=args.device,
            limit=args.limit,
        )
        print(json.dumps(s, indent=2))
        return 0
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as err:  # the tasks' option checks raise these too
        raise ConfigError(str(err)) from err
    run = train(cfg)
    if cfg.distributed or cfg.fsdp:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if run.rank != 0 or not run.history:  # one summary per run
        return 0
    print(summary_line(run.history, run.best_epoch, cfg.select_on, cfg.out_dir))
    return 0


def _scores(values: dict[str, float]) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in values.items())


def summary_line(
    history: list[dict[str, Any]], best_epoch: int | None, select_on: str, out_dir: str
) -> str:
    """``best val (epoch N): <val scores> | dev: <dev scores> -> OUT``: the epoch of
    best.pt, chosen on the validation split, and its dev scores (the test). Selected on
    dev, the line says that its scores are no test; with ``last`` it starts ``last epoch
    (N):`` (no selection)."""
    rows = [r for r in history if r["epoch"] == best_epoch]
    if not rows:
        return f"no epoch had a finite {select_on} score: no best.pt  -> {out_dir}"
    best = rows[0]
    if select_on == "last":
        held = f"val: {_scores(best['val'])}  | " if "val" in best else ""
        return f"last epoch ({best['epoch']}): {held}dev: {_scores(best['dev'])}  -> {out_dir}"
    if select_on == "dev":
        return (
            f"best dev (epoch {best['epoch']}; SELECTED ON DEV: these are not test scores): "
            f"{_scores(best['dev'])}  -> {out_dir}"
        )
    return (
        f"best val (epoch {best['epoch']}): {_scores(best['val'])}  | dev: "
        f"{_scores(best['dev'])}  -> {out_dir}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
