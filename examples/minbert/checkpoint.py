"""Checkpoints of a run: atomic writes, loading without code execution, exact resume.

``latest.pt`` holds the state of every stateful part of a run (model, optimizer, LR
schedule, strategy, data loader with its scheduler), the RNG states and the run's progress,
so a resumed run continues bit for bit. Under data parallelism the data loader and the RNG
differ per process: rank 0 gathers them into ``ranks``. ``best.pt`` holds the model of the
best epoch, the run's config and its dev scores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Stateful", "load_checkpoint", "restore", "save_atomic", "save_best", "save_latest"]


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any, /) -> Any: ...


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


def _own_state(own: Mapping[str, Stateful]) -> dict[str, Any]:
    """This process's part: its data loader(s) and RNG states."""
    return {
        **{name: part.state_dict() for name, part in own.items()},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_latest(
    path: Path,
    shared: Mapping[str, Stateful],
    own: Mapping[str, Stateful],
    progress: Mapping[str, Any],
    *,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Write the state of a run to ``path`` (by rank 0; every rank must call it).

    Args:
        shared: parts equal on every process (model, optimizer, schedule, strategy).
        own: parts that differ per process (the data loader); saved with the RNG states.
        progress: plain values (history, losses so far, best score, config).
    """
    mine = _own_state(own)
    ranks: list[Any] = []
    if world > 1:
        import torch.distributed as dist

        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    if rank == 0:
        state = {name: part.state_dict() for name, part in shared.items()}
        state.update(mine)
        state.update(progress)
        if ranks:
            state["ranks"] = ranks
        save_atomic(state, path)


def restore(
    state: Mapping[str, Any],
    shared: Mapping[str, Stateful],
    own: Mapping[str, Stateful],
    *,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Load what :func:`save_latest` wrote into the parts of a run, RNG states included.

    Raises:
        ValueError: the checkpoint was written by another number of processes.
    """
    for name, part in shared.items():
        part.load_state_dict(state[name])
    ranks = state.get("ranks", [state])  # data-parallel: each rank's data and RNG
    if len(ranks) != world:
        raise ValueError(
            f"the checkpoint was written by {len(ranks)} process(es), this run has "
            f"{world}: resume with the same number of processes"
        )
    mine = ranks[rank]
    for name, part in own.items():
        part.load_state_dict(mine[name])
    torch.set_rng_state(mine["rng_cpu"])
    if mine["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["rng_cuda"])


def save_best(path: Path, model: nn.Module, **info: Any) -> None:
    """The model's weights and ``info`` (config, epoch, dev scores) to ``path``."""
    save_atomic({"model": model.state_dict(), **info}, path)
