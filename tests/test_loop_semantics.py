"""Loop semantics that match PyTorch's, for the engine dropped into common training loops.

* ``.grad`` as autograd leaves it: a shared parameter frozen after the engine was built,
  or reached by no task, keeps ``.grad`` None (no weight decay or momentum moves it);
* parameters converted (``.double()``) are followed; replaced ones raise (or, given the
  module, are followed) instead of training silently on the plain sum;
* ``write_grad()`` inside a bfloat16 autocast region keeps float32 precision;
* shared parameters of mixed dtypes (bfloat16 weights, float32 norms);
* gradient accumulation: micro-batches that add into J before one combination;
* ``torch.compile``: a graph whose backward donated its buffers gets a clear error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit
from mtlkit import TaskGradients

K = 2
D, H = 6, 8


class Net(nn.Module):
    """An encoder, a pooler no task reaches (mean pooling), one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.ModuleDict(
            {"encoder": nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, H)),
             "pooler": nn.Linear(H, H)}
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K))

    @property
    def encoder(self) -> nn.Module:
        return self.trunk["encoder"]

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def loss(self, task: int, x: Tensor, y: Tensor) -> Tensor:
        z = self.encoder(x.to(self.heads[task].weight.dtype))
        return F.mse_loss(self.heads[task](z).squeeze(-1), y.to(z.dtype))


def batch(step: int, task: int, n: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 * step + task)
    x = torch.randn(n, D, generator=g)
    y = x[:, task] - 0.5 * x[:, 2 + task] + 0.1 * torch.randn(n, generator=g)
    return x, y


def twins() -> tuple[Net, Net]:
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    return a, b


def engine_step(engine: TaskGradients, model: Net, step: int, style: str = "per-task") -> bool:
    losses = [model.loss(t, *batch(step, t)) for t in range(K)]
    if style == "per-task":
        for t in range(K):
            engine.backward(t, model.loss(t, *batch(step, t)))
    else:
        engine.backward_all(losses, mode=style)  # type: ignore[arg-type]
    return engine.write_grad()


def summed_step(model: Net, step: int) -> None:
    sum(model.loss(t, *batch(step, t)) for t in range(K)).backward()  # type: ignore[union-attr]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).detach().abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


# ----------------------------------------------------------------------------- 1. .grad
@pytest.mark.parametrize("style", ["per-task", "loop", "batched", "loss-weighting"])
def test_frozen_and_unreached_shared_params_train_as_with_summed_backward(style: str) -> None:
    """AdamW with weight decay, 3 steps after freezing a shared parameter: the frozen one
    and the pooler no task reaches do not move and keep ``.grad`` None, exactly as with
    ``sum(losses).backward()``; with ``Sum`` every other parameter matches too."""
    model, ref = twins()
    if style == "loss-weighting":  # log-variances 0, not trained: Σ exp(0) L_k + 0
        strategy: mtlkit.Strategy = mtlkit.UncertaintyWeighting(num_tasks=K)
        run = "per-task"
    else:
        strategy, run = mtlkit.Sum(), style
    engine = TaskGradients(model.shared(), strategy, num_tasks=K)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (model, ref)]

    def step(i: int) -> None:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        assert engine_step(engine, model, i, run)
        summed_step(ref, i)
        for opt in opts:
            opt.step()

    step(0)  # AdamW now has momentum for every parameter but the pooler
    for m in (model, ref):
        m.encoder[0].weight.requires_grad_(False)
    frozen = model.encoder[0].weight.detach().clone()
    pooler = model.trunk["pooler"].weight.detach().clone()
    for i in range(1, 4):
        step(i)
        for m in (model, ref):
            assert m.encoder[0].weight.grad is None
            assert m.trunk["pooler"].weight.grad is None
            assert m.trunk["pooler"].bias.grad is None
    assert torch.equal(model.encoder[0].weight, frozen)
    assert torch.equal(model.trunk["pooler"].weight, pooler)
    assert max_diff(model, ref) <= 1e-6
    assert float((model.encoder[2].weight - ref.encoder[2].weight).detach().abs().max()) <= 1e-6


def test_frozen_and_unreached_do_not_drift_with_pcgrad() -> None:
    """The reported case: PCGrad, AdamW, a parameter frozen after the engine was built."""
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.PCGrad(seed=0), num_tasks=K)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(4):
        if i == 1:
            model.encoder[0].weight.requires_grad_(False)
            frozen = model.encoder[0].weight.detach().clone()
            pooler = model.trunk["pooler"].weight.detach().clone()
            moving = model.encoder[2].weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        assert engine_step(engine, model, i)
        opt.step()
    drift = float((model.encoder[0].weight - frozen).abs().max())
    print(f"frozen drift {drift:.3g}")
    assert drift == 0.0
    assert torch.equal(model.trunk["pooler"].weight, pooler)
    assert not torch.equal(model.encoder[2].weight, moving)


def test_unreached_parameter_keeps_an_existing_grad_untouched() -> None:
    model, _ = twins()
    pooler = model.trunk["pooler"].weight
    pooler.grad = torch.full_like(pooler, 3.0)
    engine = TaskGradients(model.shared(), mtlkit.MGDA(), num_tasks=K)
    assert engine_step(engine, model, 0)
    assert torch.equal(pooler.grad, torch.full_like(pooler, 3.0))
    assert engine.jacobian is not None
    assert not engine.jacobian[:, -H * H - H :].any()  # its columns of J stay zero


# ----------------------------------------------------------------------------- 2. stale
@pytest.mark.parametrize("swap", [False, True])
def test_converted_parameters_are_followed(swap: bool) -> None:
    """``model.double()`` after the engine was built (same objects; with the swapping
    conversion, same objects on new tensors): the engine follows at the next step and
    trains as one built after the conversion."""
    model, ref = twins()
    engine = TaskGradients(model.shared(), mtlkit.MGDA(), num_tasks=K)
    ref_engine = TaskGradients(ref.shared(), mtlkit.MGDA(), num_tasks=K)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref)]
    assert engine_step(engine, model, 0) and engine_step(ref_engine, ref, 0)
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    ids = [id(p) for p in model.shared()]
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        model.double()
        ref.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    assert [id(p) for p in model.shared()] == ids
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref)]
    ref_engine = TaskGradients(ref.shared(), mtlkit.MGDA(), num_tasks=K)  # built after
    for i in range(1, 4):
        assert engine_step(engine, model, i) and engine_step(ref_engine, ref, i)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert engine.jacobian is not None and engine.jacobian.dtype == torch.float64
    assert max_diff(model, ref) == 0.0
    assert model.encoder[0].weight.dtype == torch.float64


def _replace_parameters(model: Net) -> None:
    """``load_state_dict(..., assign=True)``: new parameter objects, same values."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)


def test_replaced_parameters_raise_instead_of_training_on_the_sum() -> None:
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.PCGrad(seed=0), num_tasks=K)
    assert engine_step(engine, model, 0)
    model.zero_grad(set_to_none=True)
    _replace_parameters(model)
    with pytest.raises(RuntimeError, match="replaced after TaskGradients was built"):
        engine_step(engine, model, 1)


def test_engine_given_the_module_follows_replaced_parameters() -> None:
    model, ref = twins()
    engine = TaskGradients(model.trunk, mtlkit.PCGrad(seed=0), num_tasks=K)
    ref_engine = TaskGradients(ref.trunk, mtlkit.PCGrad(seed=0), num_tasks=K)
    for i in range(3):
        if i == 1:
            _replace_parameters(model)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref)]
        assert engine_step(engine, model, i) and engine_step(ref_engine, ref, i)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert engine.params[0] is model.encoder[0].weight
    assert max_diff(model, ref) == 0.0
    # the module form leaves out frozen parameters, and follows freezing
    model.encoder[0].weight.requires_grad_(False)
    assert engine_step(engine, model, 3)
    assert all(p is not model.encoder[0].weight for p in engine.params)
    assert model.encoder[0].weight.grad is None


def test_conversion_in_the_middle_of_a_step_is_refused() -> None:
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.Sum(), num_tasks=K)
    engine.backward(0, model.loss(0, *batch(0, 0)))
    model.double()
    with pytest.raises(RuntimeError, match="middle of a step"):
        engine.backward(1, model.loss(1, *batch(0, 1)))
    assert engine_step(engine, model, 1)  # the next step starts afresh


@pytest.mark.parametrize("placeholder", ["leaf", "scaled-leaf"])
def test_empty_batch_placeholders_are_not_mistaken_for_stale_parameters(
    placeholder: str,
) -> None:
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.PCGrad(), num_tasks=K)
    for t in range(K):
        zero = torch.zeros((), requires_grad=True)
        engine.backward(t, zero if placeholder == "leaf" else zero * 2.0**16)
    assert engine.write_grad()
    assert all(p.grad is None for p in model.shared())


# ----------------------------------------------------------------------------- 3. autocast
@pytest.mark.parametrize("name", ["pcgrad", "mgda"])
def test_write_grad_in_a_bf16_autocast_region_keeps_float32_precision(name: str) -> None:
    """J's rows are known exactly (loss_k = <w, c_k>); the update inside
    ``torch.autocast("cpu", torch.bfloat16)`` is within 1e-6 of the float64 one."""
    torch.manual_seed(0)
    p = 200_000
    rows = torch.randn(K + 1, p)
    rows[1] -= 0.8 * rows[0]  # a conflict, so PCGrad projects
    ctx = mtlkit.Context(seed=0)
    exact = mtlkit.get_strategy(name, context=ctx).combine(rows.double())
    w = nn.Parameter(torch.zeros(p))
    engine = TaskGradients([w], mtlkit.get_strategy(name, context=ctx), num_tasks=K + 1)
    with torch.autocast("cpu", torch.bfloat16):
        for t in range(K + 1):
            engine.backward(t, (w * rows[t]).sum())
        assert engine.write_grad()
        direct = mtlkit.get_strategy(name, context=ctx).combine(rows)
    assert w.grad is not None
    for got in (w.grad, direct):
        err = float((got.double() - exact).norm() / exact.norm())
        print(f"{name}: relative error in bf16 autocast {err:.2g}")
        assert err <= 1e-6


# ----------------------------------------------------------------------------- 4. dtypes
class MixedNet(nn.Module):
    """bfloat16 weights, a float32 LayerNorm (``keep_in_fp32_modules``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, H).to(torch.bfloat16)
        self.norm = nn.LayerNorm(H)
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K))

    def loss(self, task: int, x: Tensor, y: Tensor) -> Tensor:
        z = self.norm(self.lin(x.to(torch.bfloat16)).float())
        return F.mse_loss(self.heads[task](z).squeeze(-1), y)


def test_shared_parameters_of_mixed_dtypes() -> None:
    torch.manual_seed(0)
    model = MixedNet()
    shared = [*model.lin.parameters(), *model.norm.parameters()]
    # reference: each task's gradients, cast to float32, combined by the same rule
    rows = []
    for t in range(K):
        grads = torch.autograd.grad(model.loss(t, *batch(0, t)), shared)
        rows.append(torch.cat([g.float().flatten() for g in grads]))
    expected = mtlkit.PCGrad(seed=0).combine(torch.stack(rows))
    engine = TaskGradients(shared, mtlkit.PCGrad(seed=0), num_tasks=K)
    assert engine.dtype == torch.float32
    for micro in range(2):  # the second write_grad adds into the existing .grad
        for t in range(K):
            engine.backward(t, model.loss(t, *batch(0, t)))
        assert engine.write_grad()
        assert engine.jacobian is not None
        torch.testing.assert_close(engine.jacobian, torch.stack(rows), rtol=0, atol=0)
        offset = 0
        for p in shared:
            assert p.grad is not None and p.grad.dtype == p.dtype
            n = p.numel()
            want = (expected[offset : offset + n].view_as(p).to(p.dtype) * (micro + 1)).float()
            torch.testing.assert_close(p.grad.float(), want, rtol=1e-2, atol=1e-6)
            offset += n
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()


def test_frozen_or_misplaced_shared_parameters_are_refused_clearly() -> None:
    lin = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    with pytest.raises(ValueError, match=r"shared_params\[2\].*requires_grad=False \(frozen\)"):
        TaskGradients([*lin.parameters(), frozen], mtlkit.Sum())
    meta = nn.Parameter(torch.empty(2, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        TaskGradients([*lin.parameters(), meta], mtlkit.Sum())
    with pytest.raises(ValueError, match="no trainable parameters"):
        TaskGradients(nn.Linear(2, 2).requires_grad_(False), mtlkit.Sum())


# ----------------------------------------------------------------------------- 5. accumulation
MICRO = 4


def _micro_batches(step: int, task: int) -> list[tuple[Tensor, Tensor]]:
    x, y = batch(step, task, n=8 * MICRO)
    return [(x[m * 8 : (m + 1) * 8], y[m * 8 : (m + 1) * 8]) for m in range(MICRO)]


def _strategy(name: str) -> mtlkit.Strategy:
    options: dict[str, Any] = {"alpha": 1.0, "lr": 0.1} if name == "gradnorm" else {}
    return mtlkit.get_strategy(name, context=mtlkit.Context(num_tasks=K, seed=0), **options)


def _train_full_and_accumulated(
    name: str, style: str, steps: int = 3
) -> tuple[Net, Net, mtlkit.Strategy, mtlkit.Strategy]:
    full, acc = twins()
    full_strategy, acc_strategy = _strategy(name), _strategy(name)
    full_engine = TaskGradients(full.shared(), full_strategy, num_tasks=K)
    acc_engine = TaskGradients(acc.shared(), acc_strategy, num_tasks=K, accumulate=True)
    for step in range(steps):
        for model in (full, acc):
            model.zero_grad(set_to_none=True)
        for t in range(K):
            full_engine.backward(t, full.loss(t, *batch(step, t, n=8 * MICRO)))
        assert full_engine.write_grad()
        for m in range(MICRO):
            parts = [_micro_batches(step, t)[m] for t in range(K)]
            losses = [acc.loss(t, *parts[t]) / MICRO for t in range(K)]
            if style == "per-task":
                for t in range(K):
                    acc_engine.backward(t, losses[t])
            else:  # one graph per micro-batch
                acc_engine.backward_all(losses)
        assert acc_engine.write_grad()
        if step < steps - 1:
            for model in (full, acc):
                with torch.no_grad():
                    for p in model.parameters():
                        if p.grad is not None:
                            p -= 0.1 * p.grad
    return full, acc, full_strategy, acc_strategy


@pytest.mark.parametrize("style", ["per-task", "one-graph"])
@pytest.mark.parametrize("name", ["pcgrad", "mgda", "gradnorm", "famo"])
def test_accumulated_micro_batches_equal_the_full_batch(name: str, style: str) -> None:
    """4 micro-batches of each task, losses scaled by 1/4, one write_grad(): the update
    (shared and heads), the weights and the strategy's state are the full batch's."""
    full, acc, fs, acs = _train_full_and_accumulated(name, style)
    diff = max(
        float((p.grad - q.grad).abs().max())  # type: ignore[operator]
        for p, q in zip(full.parameters(), acc.parameters(), strict=True)
        if p.grad is not None
    )
    scale = max(float(p.grad.abs().max()) for p in full.parameters() if p.grad is not None)
    print(f"{name}/{style}: max |accumulated - full batch| = {diff:.2g} (of {scale:.2g})")
    assert diff <= 1e-6
    for p, q in zip(full.parameters(), acc.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
    assert fs.last_stats is not None and acs.last_stats is not None
    torch.testing.assert_close(acs.last_stats.weights, fs.last_stats.weights, rtol=1e-5, atol=1e-7)


def test_per_micro_batch_mode_combines_each_micro_batch() -> None:
    """The default mode: write_grad() per micro-batch, the updates add up in .grad."""
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.PCGrad(seed=0), num_tasks=K)
    rule = mtlkit.PCGrad(seed=0)
    expected = torch.zeros(sum(p.numel() for p in model.shared()))
    full_rows = torch.zeros(K, expected.numel())
    for m in range(MICRO):
        rows = []
        for t in range(K):
            x, y = _micro_batches(0, t)[m]
            loss = model.loss(t, x, y) / MICRO
            grads = torch.autograd.grad(loss, model.shared(), allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).flatten()
                        for g, p in zip(grads, model.shared(), strict=True)
                    ]
                )
            )
            engine.backward(t, model.loss(t, x, y) / MICRO)
        assert engine.write_grad()
        expected += rule.combine(torch.stack(rows))
        full_rows += torch.stack(rows)
    got = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.shared()]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    full = mtlkit.PCGrad(seed=0).combine(full_rows)
    print(f"per-micro-batch PCGrad vs full batch: {float((got - full).norm() / full.norm()):.2g}")


def test_repeated_backward_without_accumulate_says_how() -> None:
    model, _ = twins()
    engine = TaskGradients(model.shared(), mtlkit.Sum(), num_tasks=K)
    engine.backward(0, model.loss(0, *batch(0, 0)))
    with pytest.raises(RuntimeError, match="accumulate=True"):
        engine.backward(0, model.loss(0, *batch(0, 0)))


# ----------------------------------------------------------------------------- ranks
def _reach_over_ranks(rank: int, world: int) -> dict[str, Tensor]:
    """DDP-style: only rank 0's task 0 reaches the pooler; every rank must write it."""
    torch.manual_seed(0)
    model = Net()
    engine = TaskGradients(model.shared(), mtlkit.PCGrad(seed=0), num_tasks=K, process_group=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        for t in range(K):
            x, y = batch(step * world + rank, t)
            loss = model.loss(t, x, y)
            if rank == 0 and t == 0:
                loss = loss + model.trunk["pooler"](model.encoder(x)).pow(2).mean()
            engine.backward(t, loss)
        assert engine.write_grad()
        mtlkit.distributed.all_reduce_gradients(model.heads.parameters())
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _accumulate_over_ranks(rank: int, world: int, layout: str) -> dict[str, Tensor]:
    """2 micro-batches per task added into J (this rank's half of each), 3 SGD steps;
    ``layout``: "ddp" (whole parameters, J averaged) or "fsdp" (sharded, FSDP2)."""
    torch.manual_seed(0)
    model = Net()
    if layout == "fsdp" and world > 1:
        from torch.distributed.fsdp import fully_shard

        for module in (model.encoder, model.trunk["pooler"], *model.heads):
            fully_shard(module)
    group = True if layout == "ddp" else None
    engine = TaskGradients(
        model.trunk.parameters(), mtlkit.MGDA(), num_tasks=K, process_group=group, accumulate=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    share = 8 // world
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        for m in range(2):
            for t in range(K):
                x, y = batch(step, t, n=16)
                x, y = x[8 * m : 8 * m + 8], y[8 * m : 8 * m + 8]
                lo, hi = rank * share, (rank + 1) * share
                engine.backward(t, model.loss(t, x[lo:hi], y[lo:hi]) / 2)
        assert engine.write_grad()
        if layout == "ddp":
            mtlkit.distributed.all_reduce_gradients(model.heads.parameters())
        opt.step()
    out = {}
    for n, p in model.named_parameters():
        full = getattr(p, "full_tensor", None)
        out[n] = (full() if full is not None else p).detach().clone()
    return out


def _fsdp_module_refused() -> str:
    from torch.distributed.fsdp import fully_shard

    model = Net()
    fully_shard(model.encoder)
    try:
        TaskGradients(model.trunk, mtlkit.MGDA(), num_tasks=K)
    except ValueError as err:
        return str(err)
    return ""


def _over_ranks(rank: int, world: int) -> dict[str, Any]:
    return {
        "reach": _reach_over_ranks(rank, world),
        "ddp": _accumulate_over_ranks(rank, world, "ddp"),
        "fsdp": _accumulate_over_ranks(rank, world, "fsdp"),
        "fsdp-module": _fsdp_module_refused(),
    }


def _full_batch_reference() -> dict[str, Tensor]:
    """One process, the whole batch of 16 per task at once, no accumulation."""
    torch.manual_seed(0)
    model = Net()
    engine = TaskGradients(model.trunk.parameters(), mtlkit.MGDA(), num_tasks=K)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        for t in range(K):
            engine.backward(t, model.loss(t, *batch(step, t, n=16)))
        assert engine.write_grad()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_over_ranks_reach_and_accumulation(tmp_path_factory: pytest.TempPathFactory) -> None:
    """2 gloo processes: the ranks agree on which parameters a step reached (the pooler,
    reached on rank 0 only, is written on both), and accumulated micro-batches (DDP-style
    and FSDP2) equal one process on the full batch; the pooler no task reaches keeps its
    start value."""
    from tests.dist_utils import run_ranks

    results = run_ranks(_over_ranks, 2, tmp_path_factory.mktemp("ranks"))
    torch.manual_seed(0)
    start = Net()
    for name, value in results[0]["reach"].items():
        assert torch.equal(results[1]["reach"][name], value), name
    assert not torch.equal(results[1]["reach"]["trunk.pooler.weight"], start.trunk["pooler"].weight)
    reference = _full_batch_reference()
    for layout in ("ddp", "fsdp"):
        for r in results:
            diff = max(float((r[layout][n] - p).abs().max()) for n, p in reference.items())
            print(f"{layout}: max |accumulated over 2 ranks - full batch| = {diff:.2g}")
            assert diff <= 1e-6, layout
        assert torch.equal(results[0][layout]["trunk.pooler.weight"], start.trunk["pooler"].weight)
    # the module form cannot follow FSDP2's swapped parameter objects: it says so
    assert all("module.parameters() after fully_shard" in r["fsdp-module"] for r in results)


# ----------------------------------------------------------------------------- 6. compile
class CompiledNet(nn.Module):
    """A trunk whose compiled backward donates its saved buffers (GELU, LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.LayerNorm(8))
        self.heads = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.trunk(x))


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled() -> tuple[CompiledNet, Callable[[Tensor], Tensor], Tensor]:
    torch.manual_seed(0)
    model = CompiledNet()
    compiled = torch.compile(model, backend="aot_eager")  # inductor behaves the same
    return model, compiled, torch.randn(16, 4)


def _eager_rows(model: CompiledNet, x: Tensor) -> Tensor:
    out = model(x)
    params = list(model.trunk.parameters())
    return torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(out[:, k].pow(2).mean(), params, retain_graph=True)
                ]
            )
            for k in range(3)
        ]
    )


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_compiled_graph_with_donated_buffers_gets_a_clear_error(mode: str) -> None:
    """A plain backward compiled the graph's backward to run once; one-graph per-task
    gradients need K passes: mtlkit says what to do instead of torch's internals."""
    model, compiled, x = _compiled()
    compiled(x).sum().backward()  # e.g. an earlier summed step
    out = compiled(x)
    engine = TaskGradients(model.trunk.parameters(), mtlkit.PCGrad())
    with pytest.raises(RuntimeError, match="SharedFeatures") as info:
        engine.backward_all([out[:, k].pow(2).mean() for k in range(3)], mode=mode)  # type: ignore[arg-type]
    assert "donated_buffer = False" in str(info.value)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_compiled_graph_first_backward_retained_works(mode: str) -> None:
    model, compiled, x = _compiled()
    expected = _eager_rows(model, x)
    out = compiled(x)
    engine = TaskGradients(model.trunk.parameters(), mtlkit.Sum())
    engine.backward_all([out[:, k].pow(2).mean() for k in range(3)], mode=mode)  # type: ignore[arg-type]
    assert engine.jacobian is not None
    torch.testing.assert_close(engine.jacobian, expected, rtol=1e-5, atol=1e-6)
    assert engine.write_grad()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_graph_remedies_work() -> None:
    # (a) donated buffers off before the compiled module's first forward
    with torch._functorch.config.patch(donated_buffer=False):
        model, compiled, x = _compiled()
        expected = _eager_rows(model, x)
        compiled(x).sum().backward()
        out = compiled(x)
        engine = TaskGradients(model.trunk.parameters(), mtlkit.Sum())
        engine.backward_all([out[:, k].pow(2).mean() for k in range(3)])
        assert engine.jacobian is not None
        torch.testing.assert_close(engine.jacobian, expected, rtol=1e-5, atol=1e-6)
    # (b) only the trunk compiled, combination at its output: one backward through it
    torch._dynamo.reset()
    model, _, x = _compiled()
    trunk = torch.compile(model.trunk, backend="aot_eager")
    trunk(x).sum().backward()  # the trunk's backward now donates its buffers
    model.zero_grad(set_to_none=True)
    feats = mtlkit.SharedFeatures(trunk(x))
    out = model.heads(feats.value)
    assert feats.backward([out[:, k].pow(2).mean() for k in range(3)], mtlkit.Sum())
    expected_grad = torch.autograd.grad(model(x).pow(2).mean(0).sum(), model.trunk[0].weight)[0]
    torch.testing.assert_close(model.trunk[0].weight.grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_model_with_one_forward_per_task_and_the_engine_built_first() -> None:
    """The usual loop, the engine (and its hooks) built before compiling."""
    model, _, x = _compiled()
    engine = TaskGradients(model.trunk.parameters(), mtlkit.Sum(), num_tasks=3)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()
    model.zero_grad(set_to_none=True)
    for k in range(3):
        engine.backward(k, compiled(x)[:, k].pow(2).mean())
    assert engine.write_grad()
    expected = _eager_rows(model, x).sum(0)
    got = torch.cat([p.grad.flatten() for p in model.trunk.parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
