"""Sharded scale-out: FSDP2 (``fully_shard``) with 2 and 4 gloo processes on the CPU equals
one process on the concatenated batches.

Each rank keeps only its shard of the shared trunk's parameters, so its J is K x (local
shard size); the Gramian is the sum of the ranks' local Gramians (one all-reduce of
K² + K numbers, the losses packed in), every rank derives the same weights from it and
writes its shard of the update into its sharded ``.grad``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

import mtlkit
from mtlkit import TaskGradients
from tests.dist_utils import BATCH, Net, run_ranks, task_batch

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

STEPS = 6
K = 3
#: Strategy name -> constructor options. DWA weights the losses (one backward of the
#: weighted loss, FSDP's own reduce-scatter); the others combine the rows of J.
CASES: dict[str, dict[str, Any]] = {
    "pcgrad": {"seed": 3},
    "gradnorm": {"alpha": 1.0, "lr": 0.1},
    "mgda": {},
    "upgrad": {},
    "cagrad": {},
    "nash-mtl": {},
    "dwa": {},
}


def full(p: Tensor) -> Tensor:
    """The whole parameter (gathered from the shards when sharded)."""
    full_tensor = getattr(p, "full_tensor", None)
    return (full_tensor() if full_tensor is not None else p).detach().clone()


def train(name: str, rank: int = 0, world: int = 1, *, style: str = "per-task") -> dict[str, Any]:
    """6 steps on this rank's share of each batch; parameters, weights, state, counts."""
    torch.manual_seed(0)
    model = Net()
    if world > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        options = {"mp_policy": mp} if style == "bf16" else {}
        fully_shard(model.trunk, **options)
        for head in model.heads:  # each called on its own, outside the trunk's forward
            fully_shard(head, **options)
    strategy = mtlkit.get_strategy(name, context=mtlkit.Context(num_tasks=K), **CASES[name])
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    share = BATCH // world
    lo, hi = rank * share, (rank + 1) * share
    weights, reductions = [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        calls: list[int] = []
        real = dist.all_reduce, dist.all_gather
        dist.all_reduce = _counting(real[0], calls)  # type: ignore[assignment]
        dist.all_gather = _counting(real[1], calls, gathered=True)  # type: ignore[assignment]
        try:
            batches = [task_batch(step, t) for t in range(K)]
            if style in ("per-task", "bf16"):
                with torch.autocast("cpu", torch.bfloat16, enabled=style == "bf16" and world == 1):
                    for t, (x, y) in enumerate(batches):
                        engine.backward(t, model.task_loss(t, x[lo:hi], y[lo:hi]).float())
                ok = engine.write_grad()
            elif style == "accumulate":  # two micro-batches, one combine each, one step
                ok = True
                for m in range(2):
                    for t in range(K):
                        x, y = task_batch(100 + 2 * step + m, t)
                        engine.backward(t, model.task_loss(t, x[lo:hi], y[lo:hi]) / 2)
                    ok = engine.write_grad() and ok
            elif style == "one-graph":  # one forward of the trunk for all tasks
                x = torch.cat([b[0][lo:hi] for b in batches])
                z = model.trunk(x)
                n = hi - lo
                losses = [
                    model.features_loss(t, z[t * n : (t + 1) * n], batches[t][1][lo:hi])
                    for t in range(K)
                ]
                engine.backward_all(losses)
                ok = engine.write_grad()
            else:  # representation level: SharedFeatures with the global feature Gramian
                x = torch.cat([b[0][lo:hi] for b in batches])
                feats = mtlkit.SharedFeatures(model.trunk(x))
                n = hi - lo
                losses = [
                    model.features_loss(t, feats.value[t * n : (t + 1) * n], batches[t][1][lo:hi])
                    for t in range(K)
                ]
                ok = feats.backward(losses, strategy, process_group=True if world > 1 else None)
        finally:
            dist.all_reduce, dist.all_gather = real  # type: ignore[assignment]
        assert ok
        optimizer.step()
        reductions.append(calls)
        stats = strategy.last_stats
        weights.append(None if stats is None else stats.weights.clone())
    return {
        "params": {n: full(p) for n, p in model.named_parameters()},
        "weights": weights,
        "strategy": strategy.state_dict(),
        "reductions": reductions,
        "jacobian": None if engine.jacobian is None else tuple(engine.jacobian.shape),
        "local_numel": sum(_local_numel(p) for p in model.trunk.parameters()),
    }


def _local_numel(p: Tensor) -> int:
    to_local = getattr(p, "to_local", None)
    return int((to_local() if to_local is not None else p).numel())


def _counting(real: Any, calls: list[int], gathered: bool = False) -> Any:
    """A collective that records the numbers each rank sends (``all_gather``: its input,
    the second argument)."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1 if gathered else 0].numel())
        return real(*args, **kwargs)

    return counted


def _all_cases(rank: int, world: int) -> dict[str, Any]:
    results: dict[str, Any] = {name: train(name, rank, world) for name in CASES}
    for style in STYLES:
        for name in ("pcgrad", "nash-mtl"):
            results[f"{name}/{style}"] = train(name, rank, world, style=style)
    results["nonfinite"] = _nonfinite_on_one_rank(rank, world)
    results["scaler"] = _grad_scaler_steps()
    results["graddrop"] = _graddrop_refused(world)
    return results


def _nonfinite_on_one_rank(rank: int, world: int) -> bool:
    """A NaN loss on the last rank only: every rank skips the step."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Net()
    fully_shard(model.trunk)
    engine = TaskGradients(model.trunk.parameters(), mtlkit.PCGrad(), num_tasks=K, nonfinite="skip")
    for t in range(K):
        x, y = task_batch(0, t)
        loss = model.task_loss(t, x, y)
        if rank == world - 1 and t == 1:
            loss = loss * float("nan")
        engine.backward(t, loss)
    return engine.write_grad()


def _grad_scaler_steps() -> list[tuple[bool, float]]:
    """A GradScaler with sharded parameters: an overflow at step 2 is skipped on every rank
    and halves the scale; the other steps are taken."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Net()
    fully_shard(model.trunk)
    for head in model.heads:
        fully_shard(head)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    engine = TaskGradients(model.trunk.parameters(), mtlkit.PCGrad(), num_tasks=K, scaler=scaler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    out = []
    for step in range(4):
        optimizer.zero_grad()
        for t in range(K):
            x, y = task_batch(step, t)
            loss = model.task_loss(t, x, y) * (1e38 if (step, t) == (2, 1) else 1.0)
            engine.backward(t, scaler.scale(loss))
        ok = engine.write_grad()
        scaler.step(optimizer)
        scaler.update()
        out.append((ok, float(scaler.get_scale())))
    return out


def _graddrop_refused(world: int) -> str:
    from torch.distributed.fsdp import fully_shard

    model = Net()
    fully_shard(model.trunk)
    try:
        TaskGradients(model.trunk.parameters(), mtlkit.GradDrop(), num_tasks=K)
    except ValueError as err:
        return str(err)
    return ""


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world = int(request.param)
    return world, run_ranks(_all_cases, world, tmp_path_factory.mktemp(f"fsdp{world}"))


STYLES = ("one-graph", "features", "accumulate", "bf16")
KEYS = [*CASES, *(f"{n}/{s}" for s in STYLES for n in ("pcgrad", "nash-mtl"))]


@pytest.mark.parametrize("key", KEYS)
def test_fsdp_equals_one_process(ranks: Any, key: str) -> None:
    world, results = ranks
    name, _, style = key.partition("/")
    single = train(name, style=style or "per-task")
    diffs = []
    for r in results:
        for n, p in single["params"].items():
            diffs.append(float((r[key]["params"][n] - p).abs().max()))
    print(f"{key}, {world} ranks: max |FSDP - one process| = {max(diffs):.3g}")
    # bf16 (FSDP's MixedPrecisionPolicy against bf16 autocast in one process) rounds
    # differently; everything else is float32 and must agree to 1e-6
    assert max(diffs) <= (1e-2 if style == "bf16" else 1e-6)
    start = Net()
    torch.manual_seed(0)
    start = Net()
    moved = max(
        float((single["params"][n] - p.detach()).abs().max()) for n, p in start.named_parameters()
    )
    assert moved > 1e-2  # the comparison is not between two untrained models


@pytest.mark.parametrize("key", KEYS)
def test_ranks_choose_identical_weights_and_state(ranks: Any, key: str) -> None:
    _, results = ranks
    first = results[0][key]
    for other in results[1:]:
        for a, b in zip(first["weights"], other[key]["weights"], strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
        for k, v in first["strategy"].items():
            if isinstance(v, Tensor):
                assert torch.equal(other[key]["strategy"][k], v), k


@pytest.mark.parametrize("name", list(CASES))
def test_one_collective_of_k2_numbers_and_a_sharded_jacobian(ranks: Any, name: str) -> None:
    world, results = ranks
    for r in results:
        res = r[name]
        # beyond FSDP's own reduce-scatters: one collective per step, an all-gather of
        # this rank's Gramian and losses (K² + K numbers), or of its K losses for a loss
        # weighting
        expected = K if name == "dwa" else K * K + K  # all-gathered
        assert res["reductions"] == [[expected]] * STEPS
        if name != "dwa":
            assert res["jacobian"] == (K, res["local_numel"])
    total = sum(p.numel() for p in Net().trunk.parameters())
    assert sum(r["pcgrad"]["local_numel"] for r in results) == total
    assert max(r["pcgrad"]["local_numel"] for r in results) < total / world + 2 * 7


def test_nonfinite_on_one_rank_is_seen_by_all(ranks: Any) -> None:
    _, results = ranks
    assert [r["nonfinite"] for r in results] == [False] * len(results)


def test_grad_scaler_skips_an_overflow_on_every_rank(ranks: Any) -> None:
    _, results = ranks
    expected = [(True, 1024.0), (True, 1024.0), (False, 512.0), (True, 512.0)]
    assert all(r["scaler"] == expected for r in results)


def test_graddrop_refuses_sharded_parameters(ranks: Any) -> None:
    _, results = ranks
    assert all("not a function of the Gramian" in r["graddrop"] for r in results)
