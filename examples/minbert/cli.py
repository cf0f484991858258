"""Command line: ``python -m examples.minbert train|evaluate ...`` (or the ``minbert`` script).

The defaults of ``train`` are the README's main job: multitask training of the embedded
all-MiniLM-L6-v2 on SST, Quora and STS with PCGrad, sized for about 20 minutes on a
2-core CPU. Longer runs: raise ``--epochs`` / ``--steps-per-epoch``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

import mtlkit

from .multitask import QUORA_LOSSES, STS_LOSSES, TaskOptions
from .train import SCHEDULERS, TrainConfig, Trainer, evaluate_checkpoint


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def _batch_sizes(text: str) -> int | list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a batch size or sst,quora,sts sizes, got {text!r}"
        ) from None
    if len(sizes) not in (1, 3) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 sizes >= 1, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _file(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected TASK-SPLIT=PATH, got {text!r}")
    key, value = text.split("=", 1)
    if key not in {f"{t}-{s}" for t in ("sst", "quora", "sts") for s in ("train", "dev")}:
        raise argparse.ArgumentTypeError(f"unknown file key {key!r} (e.g. sst-train, sts-dev)")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.minbert",
        description="miniBERT multitask training (SST-5, Quora, STS) with mtlkit.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = TrainConfig()
    t = TaskOptions()
    tr = sub.add_parser("train", help="train and evaluate on dev every epoch")
    tr.add_argument("--out-dir", default="runs/minbert", help="run folder (checkpoints, plots)")
    tr.add_argument("--weights", default=None, help="BERT checkpoint folder (default: embedded)")
    tr.add_argument("--init", choices=["pretrained", "tiny-random"], default=d.init)
    tr.add_argument("--data-dir", default=None, help="folder with {sst,quora,sts}-{train,dev}.csv")
    tr.add_argument(
        "--file",
        type=_file,
        action="append",
        default=[],
        metavar="TASK-SPLIT=PATH",
        help="use this file for one task and split, e.g. sst-train=full.csv",
    )
    tr.add_argument("--strict-data", action="store_true", help="refuse malformed rows")
    tr.add_argument("--strategy", default=d.strategy, choices=mtlkit.list_strategies())
    tr.add_argument(
        "--strategy-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option, e.g. --strategy-arg alpha=1.5 (JSON values)",
    )
    tr.add_argument("--scheduler", default=d.scheduler, choices=SCHEDULERS)
    tr.add_argument("--pooling", default=t.pooling, choices=["mean", "cls"])
    tr.add_argument(
        "--quora-structure", default=t.quora_structure, choices=["cross", "siamese", "cosine"]
    )
    tr.add_argument("--sts-structure", default=t.sts_structure, choices=["cosine", "cross"])
    tr.add_argument("--quora-loss", default=t.quora_loss, choices=QUORA_LOSSES)
    tr.add_argument("--sts-loss", default=t.sts_loss, choices=STS_LOSSES)
    tr.add_argument("--margin", type=float, default=t.margin, help="pairwise loss margin")
    tr.add_argument(
        "--margin-end",
        type=float,
        default=None,
        help="move the margin linearly to this value over --margin-steps",
    )
    tr.add_argument("--margin-steps", type=int, default=t.margin_steps)
    tr.add_argument("--dropout", type=float, default=t.dropout)
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
        help="examples per task and step: one number, or sst,quora,sts (e.g. 16,24,8)",
    )
    tr.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    tr.add_argument("--lr", type=float, default=d.lr, help="encoder learning rate")
    tr.add_argument("--head-lr", type=float, default=d.head_lr)
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay)
    tr.add_argument("--max-length", type=int, default=d.max_length)
    tr.add_argument("--train-limit", type=int, default=None, help="examples per task")
    tr.add_argument("--dev-limit", type=int, default=None)
    tr.add_argument("--eval-train-limit", type=int, default=d.eval_train_limit)
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
    tr.add_argument("--resume", action="store_true", help="continue from OUT_DIR/latest.pt")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument(
        "--distributed",
        action="store_true",
        help="torch.distributed data parallel (launch with torchrun)",
    )

    ev = sub.add_parser("evaluate", help="score a checkpoint on dev files (or any in the format)")
    ev.add_argument("checkpoint", help="best.pt or latest.pt of a run")
    ev.add_argument(
        "--file",
        type=_file,
        action="append",
        default=[],
        metavar="TASK-SPLIT=PATH",
        help="score this file, e.g. sst-dev=my.csv (default: the shipped dev files)",
    )
    ev.add_argument("--out-dir", default=None, help="where predictions go")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--limit", type=int, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    task_names = {f.name for f in fields(TaskOptions)}
    tasks = TaskOptions(**{k: v for k, v in vars(args).items() if k in task_names})
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and k != "tasks"}
    kwargs["files"] = dict(args.file)
    kwargs["strategy_options"] = dict(args.strategy_arg)
    kwargs["progress"] = not args.no_progress
    return TrainConfig(tasks=tasks, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        try:
            cfg = config_from_args(args)
        except (ValueError, TypeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        trainer = Trainer(cfg)
        history = trainer.fit()
        if cfg.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        if trainer.rank != 0:  # one summary per run
            return 0
        best = max(history, key=lambda r: r["dev"]["overall"]) if history else None
        if best is not None:
            dv = best["dev"]
            print(
                f"best dev (epoch {best['epoch']}): SST acc {dv['sst_acc']:.3f}  Quora acc "
                f"{dv['quora_acc']:.3f}  STS Pearson {dv['sts_pearson']:.3f} (Spearman "
                f"{dv['sts_spearman']:.3f})  overall {dv['overall']:.3f}  -> {cfg.out_dir}"
            )
        return 0
    s = evaluate_checkpoint(
        args.checkpoint,
        files=dict(args.file),
        out_dir=args.out_dir,
        device=args.device,
        limit=args.limit,
    )
    print(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
