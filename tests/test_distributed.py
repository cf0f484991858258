"""Data-parallel training (gloo on CPU, 2 processes) equals one process on the whole batch.

Follows the recipe of :mod:`mtlkit.distributed`: no DDP wrapper, parameters broadcast
from rank 0, ``TaskGradients(..., process_group=True)`` for the shared trunk,
:func:`~mtlkit.distributed.all_reduce_gradients` for the task heads, the same strategy
seed on every rank. Each rank sees half of every task's batch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

import mtlkit
from mtlkit import TaskGradients
from mtlkit.distributed import all_reduce_gradients, broadcast_parameters
from tests.dist_utils import BATCH, Net, run_ranks, task_batch

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

WORLD = 2
STEPS = 6
K = 3
DTYPE = torch.float32
#: Strategy name -> (constructor options, optimizer). DWA weights the losses (the engine
#: backpropagates one weighted loss), the others combine the rows of J.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "pcgrad": ({"seed": 3}, "adamw"),
    "gradnorm": ({"alpha": 1.0, "lr": 0.1}, "sgd"),
    "dwa": ({}, "sgd"),
}


def train(name: str, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train on this rank's share of each batch; return parameters and strategy state."""
    options, opt_name = CASES[name]
    torch.manual_seed(rank)  # ranks start apart on purpose: broadcast_parameters joins them
    model = Net().to(DTYPE)
    broadcast_parameters(model)
    strategy = mtlkit.get_strategy(name, **options)
    engine = TaskGradients(
        model.trunk.parameters(),
        strategy,
        num_tasks=K,
        process_group=True if world > 1 else None,
    )
    optimizer: torch.optim.Optimizer
    if opt_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    share = BATCH // world
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        for task in range(K):
            x, y = task_batch(step, task)
            lo, hi = rank * share, (rank + 1) * share
            engine.backward(task, model.task_loss(task, x[lo:hi], y[lo:hi]))
        ok = engine.write_grad()
        all_reduce_gradients(model.heads.parameters())
        if ok:
            optimizer.step()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "strategy": strategy.state_dict(),
    }


def _all_cases(rank: int, world: int) -> dict[str, Any]:
    return {name: train(name, rank, world) for name in CASES}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the data-parallel training once (2 spawned processes); each rank's results."""
    return run_ranks(_all_cases, WORLD, tmp_path_factory.mktemp("ddp"))


def initial_params() -> dict[str, Tensor]:
    """The common starting point (rank 0's initialisation)."""
    torch.manual_seed(0)
    return {n: p.detach().clone() for n, p in Net().to(DTYPE).named_parameters()}


def _max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("name", list(CASES))
def test_data_parallel_equals_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    single = train(name)
    ddp = ranks[0][name]
    diff = _max_abs_diff(ddp["params"], single["params"])
    print(f"{name}: max |DDP - single process| over the parameters = {diff:.3g}")
    for n, p in single["params"].items():
        torch.testing.assert_close(ddp["params"][n], p, rtol=1e-5, atol=1e-5, msg=n)
    moved = _max_abs_diff(single["params"], initial_params())
    assert moved > 1e-2  # the comparison is not between two untrained models
    if name == "gradnorm":
        torch.testing.assert_close(
            ddp["strategy"]["task_weights"], single["strategy"]["task_weights"]
        )


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_end_bit_identical(ranks: list[dict[str, Any]], name: str) -> None:
    first = ranks[0][name]
    for other in ranks[1:]:
        for n, p in first["params"].items():
            assert torch.equal(other[name]["params"][n], p), n
        for key, value in first["strategy"].items():
            theirs = other[name]["strategy"][key]
            if isinstance(value, Tensor):
                assert torch.equal(theirs, value), key
