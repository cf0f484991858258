"""On a GPU: a training step that never waits for the device, CUDA graphs, compiled models.

Every test needs CUDA and is skipped without it (the CPU side of the same claims, no host
read and no graph break, is ``tests/test_capture.py``).

* A whole training step (forward, one backward per task, ``write_grad``, the optimizer
  step) with each device-rule strategy and each loss weighting runs under
  ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing CUDA
  call, with ``nonfinite="defer"`` (the engine counts non-finite steps on the device;
  ``check_nonfinite()`` reads the count afterwards). ``"raise"`` and ``"skip"`` decide
  each step on the host: one read per step (the control test).
* ``combine`` of each device-rule strategy, captured in a CUDA graph on static J and
  output buffers, replays on new J values to what eager mode gives.
* A model whose shared trunk runs under ``torch.compile(mode="reduce-overhead")`` (CUDA
  graphs) trains three steps through the engine to the parameters of eager mode.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlkit
from mtlkit import TaskGradients
from mtlkit.strategies.base import Strategy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

K, D, H = 3, 16, 32
DEVICE_RULE = ["sum", "mean", "weighted", "pcgrad", "gradnorm", "imtl-g"]
LOSS_WEIGHTINGS = ["uncertainty", "dwa", "famo", "rlw"]


def make(name: str, device: torch.device) -> Strategy:
    """A strategy whose constant state is on ``device`` (its learned state gets there at
    the first step)."""
    if name == "weighted":
        # a list of floats: copied to J's device once, at the first (warm-up) step
        return mtlkit.get_strategy("weighted", weights=[1.0, 0.5, 2.0])
    if name == "uncertainty":
        return mtlkit.UncertaintyWeighting(num_tasks=K).to(device)  # s on the device
    return mtlkit.get_strategy(name)


def extra_parameters(strategy: Strategy) -> list[Tensor]:
    """What the optimizer also trains (uncertainty weighting's log-variances)."""
    if isinstance(strategy, mtlkit.UncertaintyWeighting):
        return list(strategy.parameters())
    return []


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(H, 1) for _ in range(K)])

    def task_loss(
        self, task: int, x: Tensor, y: Tensor, trunk: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        feats = (self.trunk if trunk is None else trunk)(x)
        return F.mse_loss(self.heads[task](feats).squeeze(-1), y)


def make_data(device: torch.device, n: int = 32) -> list[tuple[Tensor, Tensor]]:
    """One batch per task, on the device before any step."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(K):
        x = torch.randn(n, D, generator=g)
        y = x[:, t] - 0.5 * x[:, t + 1] + 0.1 * torch.randn(n, generator=g)
        out.append((x.to(device), y.to(device)))
    return out


def train_step(
    model: Net,
    engine: TaskGradients,
    optimizer: torch.optim.Optimizer,
    data: list[tuple[Tensor, Tensor]],
    trunk: Callable[[Tensor], Tensor] | None = None,
) -> bool:
    """The one-batch-per-task loop: a forward and a backward per task, then the update."""
    optimizer.zero_grad(set_to_none=True)
    for t, (x, y) in enumerate(data):
        engine.backward(t, model.task_loss(t, x, y, trunk))
    taken = engine.write_grad()
    if taken:  # a Python bool: the engine's one decision of the step
        optimizer.step()
    return taken


@contextlib.contextmanager
def no_sync() -> Iterator[None]:
    """Raise on any synchronizing CUDA call inside the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- (a) no sync
@pytest.mark.parametrize("name", DEVICE_RULE + LOSS_WEIGHTINGS)
def test_training_step_never_waits_for_the_device(name: str) -> None:
    """``nonfinite="defer"``: forward, the task backwards, ``write_grad`` and the optimizer
    step, with no synchronizing call; the deferred check afterwards finds nothing."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = Net().to(device)
    strategy = make(name, device)
    engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K, nonfinite="defer")
    optimizer = torch.optim.SGD([*model.parameters(), *extra_parameters(strategy)], lr=0.05)
    data = make_data(device)
    for _ in range(2):  # warm-up: J, the strategy's state on the device, cuBLAS handles
        assert train_step(model, engine, optimizer, data)
    before = [p.detach().clone() for p in model.parameters()]
    with no_sync():
        for _ in range(2):
            train_step(model, engine, optimizer, data)
    engine.check_nonfinite()  # the one read, where the loop chooses
    torch.cuda.synchronize()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert strategy.last_stats is not None
    assert strategy.last_stats.weights.device.type == "cuda"


def test_the_checking_policies_read_one_flag_per_step() -> None:
    """The control: ``"raise"`` decides on the host, so the strict block raises."""
    device = torch.device("cuda")
    model = Net().to(device)
    engine = TaskGradients(model.trunk.parameters(), make("sum", device), num_tasks=K)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = make_data(device)
    train_step(model, engine, optimizer, data)
    with pytest.raises(RuntimeError), no_sync():
        train_step(model, engine, optimizer, data)


# ----------------------------------------------------------------------------- (b) CUDA graphs
@pytest.mark.parametrize("name", DEVICE_RULE)
def test_combine_replays_in_a_cuda_graph(name: str) -> None:
    """Capture ``combine(J, losses, out=...)`` once, replay it on new values of J and the
    losses: the update and the weights are eager mode's from the same state.

    A replay reruns the captured kernels only: the state the graph reads is the one at
    capture (GradNorm's weights; each replay is compared with eager mode from that
    state), and host work is not replayed. PCGrad draws its orders on the CPU at each
    call, so its graph reads them from a static device tensor, filled before each replay
    with the draw eager mode makes from the same generator state."""
    device = torch.device("cuda")
    strategy = make(name, device)
    gen = torch.Generator().manual_seed(0)

    def new_values() -> tuple[Tensor, Tensor]:
        jac = torch.randn(K, 4096, generator=gen)
        jac[1] -= 1.5 * jac[0]  # a conflicting pair, so PCGrad projects
        losses = torch.rand(K, generator=gen, dtype=torch.float64) + 0.5
        return jac.to(device), losses.to(device)

    static_jac, static_losses = new_values()
    static_out = torch.empty(static_jac.shape[1], device=device)
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            strategy.combine(static_jac, static_losses, out=static_out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    reference = copy.deepcopy(strategy)  # the state the graph reads
    captured_inputs = dict(vars(strategy))  # keeps the state tensors it reads alive
    orders: Tensor | None = None
    if isinstance(strategy, mtlkit.PCGrad):
        orders = torch.zeros((K, K - 1), dtype=torch.long, device=device)
        static_orders = orders
        setattr(strategy, "_orders", lambda k: static_orders)  # noqa: B010

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        strategy.combine(static_jac, static_losses, out=static_out)
    assert strategy.last_stats is not None
    captured_weights = strategy.last_stats.weights

    for _ in range(3):
        jac, losses = new_values()
        eager = copy.deepcopy(reference)
        if orders is not None:
            assert isinstance(reference, mtlkit.PCGrad)
            orders.copy_(copy.deepcopy(reference).draw_orders(K))  # what eager draws
        expected = eager.combine(jac, losses)
        static_jac.copy_(jac)
        static_losses.copy_(losses)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, expected, rtol=1e-6, atol=1e-6)
        assert eager.last_stats is not None
        torch.testing.assert_close(captured_weights, eager.last_stats.weights, rtol=1e-6, atol=1e-6)
    assert captured_inputs  # alive until here


# ----------------------------------------------------------------------------- (c) compile
@pytest.mark.parametrize("name", ["pcgrad", "famo"])
def test_reduce_overhead_compiled_trunk_trains_like_eager(name: str) -> None:
    """The shared trunk under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs),
    one forward and one backward per task (no retained graph), three steps through the
    engine: the parameters end where eager mode's do."""
    torch._dynamo.reset()
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager_model = Net().to(device)
    compiled_model = copy.deepcopy(eager_model)
    compiled_trunk = torch.compile(compiled_model.trunk, mode="reduce-overhead")
    data = make_data(device)
    for model, trunk in [(eager_model, None), (compiled_model, compiled_trunk)]:
        strategy = make(name, device)
        engine = TaskGradients(model.trunk.parameters(), strategy, num_tasks=K)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(3):
            torch.compiler.cudagraph_mark_step_begin()
            assert train_step(model, engine, optimizer, data, trunk)
    torch.cuda.synchronize()
    for (n, want), got in zip(
        eager_model.named_parameters(), compiled_model.parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=n)
    torch._dynamo.reset()
