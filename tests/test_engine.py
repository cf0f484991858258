"""The per-task gradient engine: J rows, both loop styles, .grad bookkeeping, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlkit
from mtlkit import NonFiniteError, PCGrad, Sum, TaskGradients


class TwoHeads(nn.Module):
    """A shared trunk and one linear head per task."""

    def __init__(self, k: int = 3, d: int = 6, h: int = 5) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h))
        self.unused = nn.Linear(2, 2)  # shared but reached by no task
        self.heads = nn.ModuleList(nn.Linear(h, 1) for _ in range(k))

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters()) + list(self.unused.parameters())

    def task_loss(self, task: int, x: torch.Tensor) -> torch.Tensor:
        return (self.heads[task](self.trunk(x)) ** 2).mean() * (task + 1)


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )


def _per_task_reference(model: TwoHeads, xs: list[torch.Tensor]) -> torch.Tensor:
    rows = []
    for t, x in enumerate(xs):
        grads = torch.autograd.grad(model.task_loss(t, x), model.shared(), allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).flatten()
                    for g, p in zip(grads, model.shared(), strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_one_graph_rows_equal_autograd_grad(mode: str) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(8, 6)
    ref = _per_task_reference(model, [x, x, x])
    engine = TaskGradients(model.shared(), Sum())
    engine.backward_all([model.task_loss(t, x) for t in range(3)], mode=mode)  # type: ignore[arg-type]
    assert engine.jacobian is not None
    torch.testing.assert_close(engine.jacobian, ref)
    assert engine.write_grad()
    torch.testing.assert_close(_flat_grads(model.shared()), ref.sum(0))
    # the unused shared parameter is a zero gradient for every task
    assert torch.count_nonzero(engine.jacobian[:, -6:]) == 0


def test_per_task_batches_equal_one_graph_path() -> None:
    torch.manual_seed(1)
    xs = [torch.randn(4, 6) for _ in range(3)]
    model_a, model_b = TwoHeads(), TwoHeads()
    model_b.load_state_dict(model_a.state_dict())

    engine = TaskGradients(model_a.shared(), PCGrad(seed=5), num_tasks=3)
    for t, x in enumerate(xs):
        engine.backward(t, model_a.task_loss(t, x))
    engine.write_grad()

    losses = [model_b.task_loss(t, x) for t, x in enumerate(xs)]
    mtlkit.backward(losses, model_b.shared(), PCGrad(seed=5))

    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        if pa.grad is None:
            assert pb.grad is None
        else:
            torch.testing.assert_close(pa.grad, pb.grad)
    ref = PCGrad(seed=5).combine(_per_task_reference(model_a, xs))
    torch.testing.assert_close(_flat_grads(model_a.shared()), ref)


def test_task_heads_get_only_their_own_gradient() -> None:
    torch.manual_seed(2)
    model = TwoHeads()
    xs = [torch.randn(4, 6) for _ in range(3)]
    expected = [
        torch.autograd.grad(model.task_loss(t, x), list(model.heads[t].parameters()))
        for t, x in enumerate(xs)
    ]
    engine = TaskGradients(model.shared(), PCGrad(), num_tasks=3)
    for t, x in enumerate(xs):
        engine.backward(t, model.task_loss(t, x))
    engine.write_grad()
    for t in range(3):
        for p, g in zip(model.heads[t].parameters(), expected[t], strict=True):
            torch.testing.assert_close(p.grad, g)


def test_grad_accumulates_over_micro_batches() -> None:
    torch.manual_seed(3)
    model = TwoHeads()
    x1, x2 = torch.randn(4, 6), torch.randn(4, 6)
    engine = TaskGradients(model.shared(), Sum(), num_tasks=3)
    for x in (x1, x2):
        for t in range(3):
            engine.backward(t, model.task_loss(t, x))
        engine.write_grad()
    ref = _per_task_reference(model, [x1] * 3).sum(0) + _per_task_reference(model, [x2] * 3).sum(0)
    torch.testing.assert_close(_flat_grads(model.shared()), ref)


def test_nonfinite_loss_raises_naming_task_and_step() -> None:
    model = TwoHeads()
    x = torch.randn(4, 6)
    engine = TaskGradients(model.shared(), PCGrad(), num_tasks=3)
    for t in range(3):
        loss = model.task_loss(t, x)
        engine.backward(t, loss * float("nan") if t == 1 else loss)
    with pytest.raises(NonFiniteError, match=r"step 0.*task 1"):
        engine.write_grad()


def test_nonfinite_skip_leaves_grads_untouched() -> None:
    model = TwoHeads()
    x = torch.randn(4, 6)
    for p in model.shared():
        p.grad = torch.ones_like(p)
    engine = TaskGradients(model.shared(), PCGrad(), num_tasks=3, nonfinite="skip")
    for t in range(3):
        loss = model.task_loss(t, x)
        engine.backward(t, loss * float("inf") if t == 2 else loss)
    assert engine.write_grad() is False
    for p in model.shared():
        assert torch.equal(p.grad, torch.ones_like(p))
    # the next step works normally
    for t in range(3):
        engine.backward(t, model.task_loss(t, x))
    assert engine.write_grad() is True


def test_missing_task_and_bad_input_errors() -> None:
    model = TwoHeads()
    x = torch.randn(4, 6)
    engine = TaskGradients(model.shared(), Sum(), num_tasks=3)
    engine.backward(0, model.task_loss(0, x))
    with pytest.raises(RuntimeError, match=r"tasks \[1, 2\]"):
        engine.write_grad()
    with pytest.raises(IndexError):
        engine.backward(3, model.task_loss(0, x))
    with pytest.raises(ValueError, match="scalar"):
        TaskGradients(model.shared(), Sum(), num_tasks=3).backward(0, torch.ones(2))
    with pytest.raises(ValueError, match="empty"):
        TaskGradients([], Sum())
    with pytest.raises(ValueError, match="1-D"):
        mtlkit.backward(torch.ones(2, 2), model.shared(), Sum())
    with pytest.raises(ValueError, match="losses must have shape"):
        Sum().combine(torch.ones(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(K, P\)"):
        Sum().combine(torch.ones(3))


def test_k1_engine_equals_plain_backward() -> None:
    torch.manual_seed(4)
    model = TwoHeads(k=1)
    x = torch.randn(4, 6)
    ref = torch.autograd.grad(model.task_loss(0, x), model.shared(), allow_unused=True)
    mtlkit.backward([model.task_loss(0, x)], model.shared(), PCGrad())
    for p, g in zip(model.shared(), ref, strict=True):
        if g is None:  # reached by no task: left as autograd leaves it
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g)


def test_registry() -> None:
    assert {"sum", "mean", "pcgrad", "gradnorm", "weighted"} <= set(mtlkit.list_strategies())
    s = mtlkit.get_strategy("pcgrad", reduction="mean", seed=1)
    assert isinstance(s, PCGrad) and s.reduction == "mean"
    with pytest.raises(KeyError, match="unknown strategy"):
        mtlkit.get_strategy("nope")


def test_shared_features_gramian_strategy_gives_weighted_parameter_gradient() -> None:
    """Weights chosen on feature gradients; the encoder receives Σ w_k ∇θ L_k."""
    torch.manual_seed(5)
    model = TwoHeads()
    x = torch.randn(8, 6)
    z = model.trunk(x)
    feats = mtlkit.SharedFeatures(z)
    losses = [(model.heads[t](feats.value) ** 2).mean() * (t + 1) for t in range(3)]
    strategy = PCGrad(seed=2)
    assert feats.backward(losses, strategy)
    assert strategy.last_stats is not None
    w = strategy.last_stats.weights
    # reference: per-task parameter gradients weighted by the same w
    ref_losses = [(model.heads[t](model.trunk(x)) ** 2).mean() * (t + 1) for t in range(3)]
    params = list(model.trunk.parameters())
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in ref_losses
    ]
    expected = (w.float()[:, None] * torch.stack(rows)).sum(0)
    torch.testing.assert_close(_flat_grads(params), expected, rtol=1e-5, atol=1e-6)
    # heads got their own task's gradient
    g0 = torch.autograd.grad(ref_losses[0], list(model.heads[0].parameters()))
    torch.testing.assert_close(model.heads[0].weight.grad, g0[0])


def test_shared_features_needs_graph() -> None:
    with pytest.raises(ValueError, match="requires_grad"):
        mtlkit.SharedFeatures(torch.ones(3))


def test_combine_is_a_deprecated_alias_of_write_grad() -> None:
    torch.manual_seed(2)
    model = TwoHeads()
    x = torch.randn(4, 6)
    engine = TaskGradients(model.shared(), Sum(), num_tasks=3)
    for t in range(3):
        engine.backward(t, model.task_loss(t, x))
    with pytest.warns(DeprecationWarning, match="write_grad"):
        assert engine.combine() is True
    expected = _per_task_reference(model, [x, x, x]).sum(0)
    torch.testing.assert_close(_flat_grads(model.shared()), expected)


@pytest.mark.parametrize("name", ["rlw", "dwa", "famo", "uncertainty"])
def test_loss_weightings_report_their_weights(name: str) -> None:
    model = TwoHeads()
    x = torch.randn(4, 6)
    strategy = mtlkit.get_strategy(name, context=mtlkit.Context(num_tasks=3, seed=0))
    engine = TaskGradients(model.shared(), strategy, num_tasks=3)
    for t in range(3):
        engine.backward(t, model.task_loss(t, x))
    assert engine.stats is None
    assert engine.write_grad()
    stats = engine.stats
    assert stats is not None and stats.norms is None and stats.conflicts is None
    assert stats.weights.shape == (3,) and bool(torch.isfinite(stats.weights).all())
    assert stats.as_dict()["norms"] is None


def test_shared_params_must_be_an_iterable_of_trainable_leaves() -> None:
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="iterable of parameters"):
        TaskGradients(lin.weight, Sum())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a leaf"):
        TaskGradients([lin.weight[0]], Sum())
    with pytest.raises(ValueError, match="not a leaf"):
        TaskGradients([lin.weight * 2], Sum())
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        TaskGradients(frozen.parameters(), Sum())
    with pytest.raises(TypeError, match="Strategy"):
        TaskGradients(lin.parameters(), "pcgrad")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_overflowing_combination_is_caught(policy: str) -> None:
    """Finite float16 rows whose sum overflows: the combined update is checked too."""
    w = nn.Parameter(torch.zeros(4, dtype=torch.float16))
    engine = TaskGradients([w], Sum(), num_tasks=2, nonfinite=policy)  # type: ignore[arg-type]
    for t in range(2):
        engine.backward(t, (w.float() * 40000.0).sum())
    if policy == "raise":
        with pytest.raises(NonFiniteError, match="combined update"):
            engine.write_grad()
    else:
        assert engine.write_grad() is False
    assert w.grad is None


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gradnorm", {"lr": float("inf")}, "lr must be a finite number in \\(0, inf\\)"),
        ("gradnorm", {"alpha": float("nan")}, "alpha"),
        ("gradnorm", {"min_weight": 0.0}, "min_weight"),
        ("nash-mtl", {"max_norm": float("inf")}, "max_norm"),
        ("nash-mtl", {"tol": -1.0}, "tol"),
        ("gradvac", {"beta": float("nan")}, "beta must be a finite number in \\[0, 1\\]"),
        ("famo", {"lr": float("inf")}, "lr"),
        ("famo", {"min_losses": float("nan")}, "min_losses"),
        ("dwa", {"temperature": float("inf")}, "temperature"),
        ("uncertainty", {"num_tasks": 2, "init": float("inf")}, "init must be finite"),
        ("graddrop", {"leak": float("nan")}, "leak"),
    ],
)
def test_strategy_options_are_validated_at_construction(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mtlkit.get_strategy(name, **options)
