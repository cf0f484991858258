"""Gradient telemetry: :class:`GradientStats` and the run-long :class:`ConflictLog`."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest
import torch
from torch import Tensor

import mtlkit
from mtlkit.diagnostics import ConflictLog, GradientStats


def _stats(g: list[list[float]], w: list[float], device: str = "cpu") -> GradientStats:
    gram = torch.tensor(g, dtype=torch.float64, device=device)
    return GradientStats.from_gramian(gram, torch.tensor(w, dtype=torch.float64, device=device))


#: Three steps of three tasks: gradients (as a Gramian) with 0, 2 and 1 conflicting pairs.
GRAMS = [
    [[1.0, 0.5, 0.0], [0.5, 4.0, 1.0], [0.0, 1.0, 9.0]],  # no conflict
    [[1.0, -1.0, -0.6], [-1.0, 4.0, 1.2], [-0.6, 1.2, 9.0]],  # (0,1) and (0,2)
    [[4.0, 2.0, 0.0], [2.0, 4.0, -3.0], [0.0, -3.0, 9.0]],  # (1,2)
]
WEIGHTS = [[1.0, 1.0, 1.0], [0.5, 1.0, 1.5], [1.0, 2.0, 3.0]]


def _filled(**kwargs: Any) -> ConflictLog:
    log = ConflictLog(names=["a", "b", "c"], **kwargs)
    for g, w in zip(GRAMS, WEIGHTS, strict=True):
        log.record(_stats(g, w))
    return log


def test_per_step_values_by_hand() -> None:
    out = _filled().to_dict()
    assert out["tasks"] == ["a", "b", "c"]
    assert out["pairs"] == ["a/b", "a/c", "b/c"]
    assert out["steps"] == [0, 1, 2]
    assert out["norms"][0] == pytest.approx([1.0, 2.0, 3.0])
    assert out["cosines"][0] == pytest.approx([0.25, 0.0, 1 / 6])
    assert out["cosines"][1] == pytest.approx([-0.5, -0.2, 0.2])
    assert out["cosines"][2] == pytest.approx([0.5, 0.0, -0.5])
    assert out["conflicts"] == [0, 2, 1]
    assert out["weights"] == WEIGHTS
    json.dumps(out)  # plain values


def test_summary_by_hand() -> None:
    s = _filled().summary()
    assert s["steps"] == s["gradient_steps"] == 3
    assert s["conflict_fraction"] == pytest.approx(2 / 3)
    assert s["mean_conflicts"] == pytest.approx(1.0)
    assert s["cosine"]["a/b"] == pytest.approx({"mean": 0.25 / 3, "min": -0.5, "max": 0.5})
    assert s["cosine"]["b/c"]["min"] == pytest.approx(-0.5)
    assert s["norm_mean"] == pytest.approx({"a": 4 / 3, "b": 2.0, "c": 3.0})
    assert s["norm_ratio"] == pytest.approx(3.0 / (4 / 3))
    assert s["weight_mean"] == pytest.approx({"a": 2.5 / 3, "b": 4 / 3, "c": 5.5 / 3})


def test_summary_of_a_range_of_steps() -> None:
    log = ConflictLog(3)
    for step, (g, w) in zip([10, 11, 14], zip(GRAMS, WEIGHTS, strict=True), strict=True):
        log.record(_stats(g, w), step=step)
    assert log.steps == [10, 11, 14]
    first = log.summary(10, 12)  # steps 10 and 11
    assert first["steps"] == 2 and first["conflict_fraction"] == pytest.approx(0.5)
    last = log.summary(12, None)
    assert last["steps"] == 1 and last["conflict_fraction"] == 1.0
    assert log.summary(20, 30)["steps"] == 0
    assert log.summary(20, 30)["conflict_fraction"] is None
    assert log.to_dict(11, 14)["conflicts"] == [2]
    assert list(log.summary()["cosine"]) == ["0/1", "0/2", "1/2"]  # default names
    with pytest.raises(ValueError, match="does not follow"):
        log.record(_stats(GRAMS[0], WEIGHTS[0]), step=14)


def test_loss_weighting_steps_record_weights_only() -> None:
    log = ConflictLog(names=["a", "b"])
    log.record(GradientStats.from_weights(torch.tensor([0.25, 0.75])))
    log.record(_stats([[1.0, -1.0], [-1.0, 4.0]], [1.0, 1.0]))
    out = log.to_dict()
    assert out["norms"][0] is None and out["cosines"][0] is None and out["conflicts"][0] is None
    assert out["weights"][0] == [0.25, 0.75]
    assert out["conflicts"][1] == 1
    s = out["summary"]
    assert s["steps"] == 2 and s["gradient_steps"] == 1 and s["conflict_fraction"] == 1.0
    assert s["weight_mean"] == pytest.approx({"a": 0.625, "b": 0.875})
    only = ConflictLog(2)
    only.record(GradientStats.from_weights(torch.tensor([1.0, 2.0])))
    s = only.summary()
    assert s["conflict_fraction"] is None and s["cosine"] == {} and s["norm_ratio"] is None
    assert s["weight_mean"] == {"0": 1.0, "1": 2.0}


def test_zero_norm_ratio_is_none() -> None:
    log = ConflictLog(2)
    log.record(_stats([[0.0, 0.0], [0.0, 4.0]], [1.0, 1.0]))
    s = log.summary()
    assert s["norm_ratio"] is None and s["cosine"]["0/1"]["mean"] == 0.0


def test_buffer_grows_and_keeps_every_step() -> None:
    log = ConflictLog(3, capacity=1)
    for i in range(37):
        log.record(_stats(GRAMS[i % 3], WEIGHTS[i % 3]))
    out = log.to_dict()
    assert len(log) == 37 and out["steps"] == list(range(37))
    assert out["conflicts"] == [[0, 2, 1][i % 3] for i in range(37)]


def test_shapes_and_task_counts_are_checked() -> None:
    log = ConflictLog(names=["a", "b", "c"])
    with pytest.raises(ValueError, match="3 tasks"):
        log.record(_stats([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]))
    with pytest.raises(ValueError, match="names"):
        ConflictLog(2, names=["a", "b", "c"])
    bad = GradientStats(torch.ones(3), torch.ones(2, 2), torch.tensor(0), torch.ones(3))
    with pytest.raises(ValueError, match="cosines"):
        log.record(bad)


def test_values_stay_tensors_on_the_device_until_asked() -> None:
    """What record keeps is a tensor on the stats' device; only reading moves values."""
    log = _filled()
    values = log.values()
    for key in ("norms", "cosines", "conflicts", "weights", "steps"):
        assert isinstance(values[key], Tensor), key
        assert values[key].device == torch.device("cpu")
    assert values["norms"].shape == (3, 3) and values["cosines"].shape == (3, 3)
    assert log.device == torch.device("cpu")
    # copies, not views of the stats: changing the stats afterwards changes nothing
    stats = _stats(GRAMS[0], WEIGHTS[0])
    log.record(stats)
    stats.weights.fill_(9.0)
    assert log.to_dict()["weights"][-1] == WEIGHTS[0]


#: Tensor methods that move values to the host (a device sync on a GPU).
HOST_READS = {
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__repr__",
    "__format__",
    "equal",
    "allclose",
    "nonzero",
}


class Spy(Tensor):
    """A tensor that notes every torch call made on it (and on tensors made from it)."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def _spied(stats: GradientStats) -> GradientStats:
    def spy(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.as_subclass(Spy)

    return GradientStats(
        spy(stats.norms), spy(stats.cosines), spy(stats.conflicts), spy(stats.weights)
    )  # type: ignore[arg-type]


def test_record_never_reads_values_on_the_host() -> None:
    """Each step's record runs device-side operations only: no ``.item()``,
    ``.tolist()``, ``bool(...)`` or copy to the host on the stats (or on tensors made
    from them); the values move at ``to_dict()``."""
    log = ConflictLog(names=["a", "b", "c"], capacity=2)  # grows during the loop too
    Spy.calls = []
    for i in range(7):
        log.record(_spied(_stats(GRAMS[i % 3], WEIGHTS[i % 3])))
        log.record(_spied(GradientStats.from_weights(torch.tensor(WEIGHTS[i % 3]))))
    assert Spy.calls, "the spy saw nothing: the test would prove nothing"
    assert not HOST_READS & set(Spy.calls), sorted(HOST_READS & set(Spy.calls))
    assert all(type(v) is Tensor for v in log.values().values())  # not kept as Spy views
    assert log.to_dict()["conflicts"][:4] == [0, None, 2, None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_record_on_cuda_does_not_synchronize() -> None:
    """On a GPU, recording every step never waits for the device (the sync debug mode
    raises on any synchronizing call)."""
    device = "cuda"
    log = ConflictLog(names=["a", "b", "c"], capacity=2)
    stats = [_stats(g, w, device) for g, w in zip(GRAMS, WEIGHTS, strict=True)]
    loss_weighting = GradientStats.from_weights(torch.tensor(WEIGHTS[1], device=device))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(20):
            log.record(stats[i % 3])
            log.record(loss_weighting)
        values = log.values()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert values["norms"].device.type == "cuda" and log.device.type == "cuda"
    out = log.to_dict()
    assert out["conflicts"][:4] == [0, None, 2, None]
    assert out["summary"]["conflict_fraction"] == pytest.approx(13 / 20)


def test_state_dict_round_trip_is_exact() -> None:
    log = _filled()
    log.record(GradientStats.from_weights(torch.tensor([0.1, 0.2, 0.3])), step=7)
    buffer = io.BytesIO()
    torch.save(log.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    again = ConflictLog(names=["a", "b", "c"])
    again.load_state_dict(state)
    assert again.to_dict() == log.to_dict()
    assert again.steps == [0, 1, 2, 7]
    again.record(_stats(GRAMS[1], WEIGHTS[1]))  # goes on after a resume
    assert again.steps[-1] == 8 and again.to_dict()["conflicts"][-1] == 2
    with pytest.raises(ValueError, match="tasks"):
        ConflictLog(names=["x", "y", "z"]).load_state_dict(state)
    empty = ConflictLog()
    empty.load_state_dict(ConflictLog().state_dict())
    assert len(empty) == 0 and empty.summary()["steps"] == 0


def test_an_engine_run_records_every_step() -> None:
    """With a real engine: one row per step, and conflicts where the toy's tasks pull
    against each other."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 4)
    engine = mtlkit.TaskGradients(
        list(shared.parameters()), mtlkit.get_strategy("sum"), num_tasks=2
    )
    log = ConflictLog(names=["up", "down"])
    for step in range(5):
        x = torch.randn(8, 4)
        engine.backward(0, shared(x).sum())  # each task's loss from its own graph
        engine.backward(1, -shared(x).sum() + 0.1 * shared(x).pow(2).sum())
        engine.write_grad()
        assert engine.stats is not None
        log.record(engine.stats, step=step)
        shared.zero_grad()
    s = log.summary()
    assert s["steps"] == 5 and s["conflict_fraction"] is not None
    assert s["conflict_fraction"] > 0
    assert all(math.isfinite(v) for v in s["norm_mean"].values())


def test_stats_from_a_gramian_are_computed_when_first_read() -> None:
    """Nothing is computed from the Gramian until a figure is read; the figures are
    computed once, and ``with_weights`` shares them."""
    g = torch.tensor([[4.0, -1.0, 0.0], [-1.0, 1.0, 0.5], [0.0, 0.5, 0.0]], dtype=torch.float64)
    Spy.calls = []
    stats = GradientStats.from_gramian(g.as_subclass(Spy), torch.ones(3, dtype=torch.float64))
    assert Spy.calls == []  # a combine whose stats nobody reads pays nothing for them
    norms = stats.norms
    assert Spy.calls, "reading the norms computed nothing: the test would prove nothing"
    count = len(Spy.calls)
    assert stats.cosines is not None and stats.conflicts is not None
    assert stats.norms is norms and len(Spy.calls) == count  # computed once
    torch.testing.assert_close(norms, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.cosines[0, 1], torch.tensor(-0.5, dtype=torch.float64))
    assert stats.cosines[2].abs().sum() == 0  # a zero gradient has cosine 0
    assert int(stats.conflicts) == 1
    halved = stats.with_weights(stats.weights / 2)
    count = len(Spy.calls)
    assert halved.norms is norms and halved.cosines is stats.cosines
    assert len(Spy.calls) == count
    assert halved.as_dict()["weights"] == [0.5, 0.5, 0.5]
    assert stats.as_dict()["weights"] == [1.0, 1.0, 1.0]
