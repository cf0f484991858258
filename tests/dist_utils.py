"""Helpers for tests that spawn gloo process groups on the CPU (loopback only)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, out: str, work: Callable[[int, int], Any]) -> None:
    torch.set_num_threads(1)
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    try:
        torch.save(work(rank, world), Path(out) / f"rank{rank}.pt")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # The work is done and saved on every rank: leave without the interpreter's exit-time
    # C++ destructors, where gloo's threads now and then abort a finished process
    # ("terminate called without an active exception": twice in this machine's CI runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(work: Callable[[int, int], Any], world: int, out: Path) -> list[Any]:
    """Run ``work(rank, world)`` in ``world`` spawned gloo processes; their results (saved
    with ``torch.save``, loaded with ``weights_only=True``), in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, free_port(), str(out), work), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


# ----------------------------------------------------------------------------- a toy model
#: Examples per task and step, over all ranks.
BATCH = 8


class Net(nn.Module):
    """Shared trunk, one head per task (task 0: 3-class classification, others regression)."""

    def __init__(self, d: int = 5, h: int = 7) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(h, 3), nn.Linear(h, 1), nn.Linear(h, 1)])

    def task_loss(self, task: int, x: Tensor, y: Tensor) -> Tensor:
        return self.features_loss(task, self.trunk(x), y)

    def features_loss(self, task: int, z: Tensor, y: Tensor) -> Tensor:
        """Task ``task``'s loss on trunk features ``z``."""
        out = self.heads[task](z)
        if task == 0:
            return F.cross_entropy(out, y.long())
        return F.mse_loss(out.squeeze(-1), y)


def task_batch(step: int, task: int) -> tuple[Tensor, Tensor]:
    """The whole (all ranks) batch of ``task`` at ``step``, the same in every process."""
    g = torch.Generator().manual_seed(1000 * step + task)
    x = torch.randn(BATCH, 5, generator=g)
    if task == 0:
        y = torch.randint(0, 3, (BATCH,), generator=g).float()
    else:
        y = x[:, task] * (task + 1) - x[:, 0] + 0.1 * torch.randn(BATCH, generator=g)
    return x, y
