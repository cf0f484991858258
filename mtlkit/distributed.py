"""Data-parallel training with mtlkit (``torch.distributed``).

Gradient strategies must see the *global* per-task gradients: with data parallelism each
rank only holds the gradients of its shard of each task's batch. The supported recipe:

1. Do **not** wrap the model in ``DistributedDataParallel`` (its reducer would average
   the shared gradients after each task's backward, which is both K all-reduces and the
   wrong quantity to combine). Start every rank from the same parameters with
   :func:`broadcast_parameters`.
2. Build the engine with ``TaskGradients(shared, strategy, num_tasks=K,
   process_group=True)``: after the K per-task backward passes, J (K x P) is averaged
   over the ranks in **one** all-reduce, and every rank runs the strategy on the same
   global J. Strategies are deterministic functions of J, the losses (also averaged) and
   their own seeded generators, so with the same seed on every rank they make the same
   draws and produce bit-identical updates.
3. Average the task-specific parameters' gradients with :func:`all_reduce_gradients`
   (one flattened all-reduce), then ``optimizer.step()`` on every rank.

Averaging matches one process on the concatenated batch when every rank's per-task loss
is a mean over equally many examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_gradients",
    "broadcast_parameters",
    "is_active",
    "is_sharded",
    "mean_over_ranks",
    "sum_gramian_over_ranks",
    "sum_in_rank_order",
]

#: The engine's data-parallel hook: averages tensors in place over the ranks.
Reduction = Callable[..., None]


def is_active(group: Any = None) -> bool:
    """Whether ``group`` (default: the default group) is initialised with more than one
    rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


_active = is_active


def mean_over_ranks(process_group: Any | bool | None) -> Reduction | None:
    """The engine's data-parallel reduction for ``process_group``, or ``None``.

    ``process_group`` is ``None``/``False`` (no reduction), ``True`` (the default group)
    or a group. The returned hook averages each tensor it is given in place over the
    group's ranks (one all-reduce per tensor); it does nothing while no process group is
    initialised or the group has one rank, so an engine built before
    ``init_process_group`` works once it is called.
    """
    if process_group is None or process_group is False:
        return None
    group = None if process_group is True else process_group

    def reduce(*tensors: Tensor) -> None:
        if not _active(group):
            return
        world = dist.get_world_size(group)
        for t in tensors:
            dist.all_reduce(t, group=group)
            t.div_(world)

    return reduce


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a sharded parameter (a ``DTensor``, as FSDP2's ``fully_shard``
    makes them): each rank then holds only its shard (``t.to_local()``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(t, DTensor)


def sum_gramian_over_ranks(
    gram: Tensor, losses: Tensor, group: Any = None, *, gram_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The global Gramian and losses of a J whose columns are split over the ranks.

    Each rank passes the Gramian of its own columns of J (K x K, float64) and its losses
    (K,). One all-gather of the K² + K numbers of every rank, summed in rank order on each
    rank, returns ``gram_scale * Σ_ranks gram`` and the mean of the losses over the ranks,
    **bit-identical on every rank** (an all-reduce may round differently on different
    ranks, and the strategies' weights and states must not drift apart). A NaN or inf on
    any rank reaches every rank. Without an initialised group with more than one rank, the
    inputs come back (scaled).
    """
    k = gram.shape[0]
    if not _active(group):
        return gram * gram_scale, losses
    world = dist.get_world_size(group)
    total = sum_in_rank_order(torch.cat([gram.reshape(-1), losses.to(gram)]), group)
    return total[: k * k].view(k, k) * gram_scale, total[k * k :] / world


def sum_in_rank_order(t: Tensor, group: Any = None) -> Tensor:
    """The sum of ``t`` over the ranks, added in rank order on every rank (one all-gather).

    Unlike an all-reduce, the result is bit-identical on every rank: meant for the few
    numbers (K x K Gramians, K losses) from which every rank must derive the same
    weights and strategy state.
    """
    if not _active(group):
        return t.clone()
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, t.contiguous(), group=group)
    total = gathered[0].clone()
    for part in gathered[1:]:
        total += part
    return total


def broadcast_parameters(module: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy ``src``'s parameters and buffers to every rank (no-op without a process group)."""
    if not _active(group):
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src, group=group)


def all_reduce_gradients(params: Iterable[Tensor], group: Any = None) -> None:
    """Average ``.grad`` of ``params`` over the ranks in one flattened all-reduce.

    Parameters without a gradient on this rank count as zero (so a task head that saw no
    examples here still gets the other ranks' contribution).
    """
    if not _active(group):
        return
    plist = [p for p in params if p.requires_grad]
    if not plist:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in plist]
    )
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    offset = 0
    for p in plist:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
