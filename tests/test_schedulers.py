"""Tests of mtlkit.schedulers: sampling shares, passes, resuming, dynamic allocation,
the registry and compatibility with checkpoints written before the package split."""

from __future__ import annotations

import inspect
import io
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typing_extensions import Unpack

from mtlkit import Context
from mtlkit.schedulers import (
    SCHEDULERS,
    Annealed,
    DynamicBatchAllocation,
    MultiTaskLoader,
    Proportional,
    RoundRobin,
    SamplingScheduler,
    ShuffledIndexStream,
    TaskScheduler,
    Temperature,
    get_scheduler,
    largest_remainder,
    list_schedulers,
    register,
)
from mtlkit.schedulers.sampling import SamplingOptions

FAST = settings(max_examples=40, deadline=None)


def within_5_sigma(count: int, trials: int, p: float) -> bool:
    """Binomial share check: ``|count/trials - p| <= 5 sqrt(p (1-p) / trials)``.

    Each share is a sum of ``trials`` independent Bernoulli(p) draws, so by the CLT its
    error is ~ N(0, p(1-p)/trials); a 5-sigma band is exceeded with probability < 6e-7 per
    check under the rule, while a wrong rule (e.g. p off by 0.02 at 20k trials, i.e. ~6
    sigma) is caught. The seeds are fixed, so the tests are deterministic anyway.
    """
    return abs(count / trials - p) <= 5 * math.sqrt(p * (1 - p) / trials)


def loader_of(sizes: list[int], scheduler: TaskScheduler, seed: int = 0) -> MultiTaskLoader:
    datasets = [list(range(n)) for n in sizes]
    return MultiTaskLoader(datasets, scheduler, seed=seed)


def as_lists(batches: dict[int, Any]) -> dict[int, list[int]]:
    return {t: b.tolist() for t, b in batches.items()}


# ----------------------------------------------------------------------------- allocation


@FAST
@given(
    total=st.integers(0, 500),
    floor=st.integers(0, 20),
    weights=st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=8),
)
def test_largest_remainder_sums_exactly_and_respects_floor(
    total: int, floor: int, weights: list[float]
) -> None:
    assume(sum(weights) > 0 and floor * len(weights) <= total)
    alloc = largest_remainder(total, weights, floor)
    assert sum(alloc) == total
    assert all(a >= floor for a in alloc)
    free = total - floor * len(weights)
    s = math.fsum(weights)
    for a, w in zip(alloc, weights, strict=True):
        assert abs(a - floor - free * w / s) < 1 + 1e-9


def test_largest_remainder_known_case_and_errors() -> None:
    # quotas 3.5, 2.5, 1.0 (free 7): integer parts 3, 2, 1, one unit left -> first tie.
    assert largest_remainder(7, [3.5, 2.5, 1.0]) == [4, 2, 1]
    assert largest_remainder(10, [1, 1, 1], floor=2) == [4, 3, 3]
    with pytest.raises(ValueError, match="exceeds"):
        largest_remainder(5, [1, 1, 1], floor=2)
    with pytest.raises(ValueError, match="zero"):
        largest_remainder(5, [0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        largest_remainder(5, [1, -1])
    with pytest.raises(ValueError, match="empty"):
        largest_remainder(5, [])


# ----------------------------------------------------------------------------- index streams


@FAST
@given(
    size=st.integers(1, 30),
    takes=st.lists(st.integers(0, 45), min_size=1, max_size=12),
    seed=st.integers(0, 2**31),
)
def test_stream_visits_every_example_once_per_pass(size: int, takes: list[int], seed: int) -> None:
    stream = ShuffledIndexStream(size, seed=seed)
    seen: list[int] = []
    for n in takes:
        got = stream.take(n)
        assert len(got) == n
        seen.extend(got)
    full = len(seen) // size
    for p in range(full):
        assert sorted(seen[p * size : (p + 1) * size]) == list(range(size))
    rest = seen[full * size :]
    assert len(set(rest)) == len(rest)  # the unfinished pass has no repeats either
    assert stream.passes * size + stream.position == len(seen)


def test_stream_reshuffles_each_pass_and_unshuffled_reads_in_order() -> None:
    stream = ShuffledIndexStream(50, seed=3)
    first, second = stream.take(50), stream.take(50)
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second
    plain = ShuffledIndexStream(4, shuffle=False)
    assert plain.take(10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_stream_state_roundtrip() -> None:
    a = ShuffledIndexStream(17, seed=5)
    a.take(30)
    b = ShuffledIndexStream(17, seed=99)
    b.load_state_dict(a.state_dict())
    assert a.take(60) == b.take(60)
    with pytest.raises(ValueError, match="size"):
        ShuffledIndexStream(16).load_state_dict(a.state_dict())


def test_loader_visits_every_example_once_per_pass() -> None:
    sizes = [23, 7, 40]
    loader = loader_of(sizes, Proportional(sizes, [5, 3, 8], seed=1), seed=2)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(4):
        for batches in loader:
            for t, b in batches.items():
                seen[t].extend(b.tolist())
    for t, n in enumerate(sizes):
        assert len(seen[t]) >= 2 * n  # several passes happened
        for p in range(len(seen[t]) // n):
            assert sorted(seen[t][p * n : (p + 1) * n]) == list(range(n))


# ----------------------------------------------------------------------------- round robin


def test_round_robin_one_task_per_step() -> None:
    sched = RoundRobin([10, 4, 7], batch_size=[2, 2, 3], mode="one", epoch="max")
    assert len(sched) == 3 * 5  # batches per pass: 5, 2, 3
    plans = list(sched)
    assert plans[:4] == [{0: 2}, {1: 2}, {2: 3}, {0: 2}]
    assert Counter(next(iter(p)) for p in plans) == {0: 5, 1: 5, 2: 5}
    assert list(sched) == plans  # deterministic; the next epoch repeats the cycle
    assert len(RoundRobin([10, 4, 7], [2, 2, 3], epoch="min")) == 3 * 2
    assert len(RoundRobin([10, 4, 7], 2, epoch=11)) == 11


def test_round_robin_all_tasks_per_step() -> None:
    sizes = [10, 4, 7]
    sched = RoundRobin(sizes, batch_size=[2, 1, 3], mode="all", epoch="max")
    assert len(sched) == 5
    loader = loader_of(sizes, sched)
    steps = list(loader)
    assert len(steps) == 5
    for batches in steps:
        assert list(batches) == [0, 1, 2]
        assert [len(b) for b in batches.values()] == [2, 1, 3]
    # "max": the longest task saw each example exactly once this epoch.
    assert sorted(sum((b[0].tolist() for b in steps), [])) == list(range(10))
    assert len(RoundRobin(sizes, [2, 1, 3], mode="all", epoch="min")) == 3


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("seed", [0, 1])
def test_proportional_long_run_shares(seed: int) -> None:
    sizes = [600, 300, 100]
    sched = Proportional(sizes, 4, seed=seed)
    trials = 20_000
    counts = Counter(next(iter(sched.next_step())) for _ in range(trials))
    for t, n in enumerate(sizes):
        assert within_5_sigma(counts[t], trials, n / sum(sizes))


def test_temperature_probabilities_and_shares() -> None:
    sizes = [10_000, 1_000, 100]
    sched = Temperature(sizes, 8, temperature=3.0, cap=5_000, seed=4)
    raw = [5_000 ** (1 / 3), 1_000 ** (1 / 3), 100 ** (1 / 3)]
    expected = [r / sum(raw) for r in raw]
    assert sched.probabilities() == pytest.approx(expected, rel=1e-12)
    trials = 20_000
    counts = Counter(next(iter(sched.next_step())) for _ in range(trials))
    for t, p in enumerate(expected):
        assert within_5_sigma(counts[t], trials, p)
    # T = 1 without a cap is proportional; a huge T is (nearly) uniform.
    assert Temperature(sizes, temperature=1.0).probabilities() == pytest.approx(
        Proportional(sizes).probabilities(), rel=1e-12
    )
    assert Temperature(sizes, temperature=1e9).probabilities() == pytest.approx([1 / 3] * 3)


def test_annealed_alpha_schedule_and_shares() -> None:
    sizes = [900, 100]
    sched = Annealed(sizes, 1, num_epochs=5, epoch=4_000, seed=7)
    assert [sched.alpha(e) for e in range(6)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    assert sched.probabilities(0) == pytest.approx([0.9, 0.1])
    last = [n**0.2 for n in sizes]
    assert sched.probabilities(4) == pytest.approx([x / sum(last) for x in last])
    for e in range(5):
        assert sched.epoch == e
        counts = Counter(next(iter(plan)) for plan in sched)
        assert within_5_sigma(counts[1], 4_000, sched.probabilities(e)[1])
    assert Annealed(sizes, num_epochs=1).alpha(3) == 1.0


@pytest.mark.parametrize("cls", [Proportional, Temperature])
def test_sampling_all_tasks_mode_splits_a_fixed_total(cls: type[SamplingScheduler]) -> None:
    sizes = [500, 200, 50]
    sched = cls(sizes, mode="all", total_batch_size=40, min_per_task=3, seed=2)
    p = sched.probabilities()
    steps = 3_000
    totals = Counter[int]()
    for _ in range(steps):
        plan = sched.next_step()
        assert sorted(plan) == [0, 1, 2]
        assert sum(plan.values()) == 40
        assert min(plan.values()) >= 3
        totals.update(plan)
    units = steps * (40 - 3 * 3)  # examples beyond the floors, each assigned from p
    for t in range(3):
        assert within_5_sigma(totals[t] - 3 * steps, units, p[t])
    assert len(sched) == math.ceil(750 / 40)


def test_sampling_is_seeded() -> None:
    def plans(seed: int) -> list[dict[int, int]]:
        s = Temperature([50, 40, 30], 4, seed=seed)
        return [s.next_step() for _ in range(200)]

    assert plans(3) == plans(3)
    assert plans(3) != plans(4)


# ----------------------------------------------------------------------------- dynamic


def test_dynamic_allocation_moves_share_to_lagging_task() -> None:
    sched = DynamicBatchAllocation([100, 100, 100], 30, min_per_task=4, temperature=0.1)
    assert sched.allocation == [10, 10, 10]
    assert sched.next_step() == {0: 10, 1: 10, 2: 10}
    sched.update([0.80, 0.60, 0.78])  # task 1 lags behind
    alloc = sched.allocation
    assert alloc[1] > 10 and alloc[1] == max(alloc)
    assert sum(alloc) == 30 and min(alloc) >= 4
    assert sched.next_step() == dict(enumerate(alloc))
    sched.update({1: 0.85})  # partial update: task 1 caught up; task 2 now lags most
    assert sched.allocation[2] == max(sched.allocation)
    # lower temperature -> more concentrated; floors still hold
    hot = DynamicBatchAllocation([10] * 3, 30, min_per_task=4, temperature=1e-3)
    hot.update([0.8, 0.6, 0.78])
    assert hot.allocation == [4, 22, 4]


def test_dynamic_allocation_from_loss_decrease() -> None:
    sched = DynamicBatchAllocation([50, 50], 20, signal="loss", temperature=0.05)
    sched.update([2.0, 1.0])  # first losses: only recorded
    assert sched.allocation == [10, 10]
    sched.update([1.0, 0.95])  # task 0 halved its loss, task 1 barely moved
    assert sched.allocation[1] > sched.allocation[0]
    assert sum(sched.allocation) == 20


@FAST
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=6),
    total=st.integers(1, 200),
    floor=st.integers(0, 10),
    temperature=st.floats(1e-3, 10),
)
def test_dynamic_allocation_invariants(
    scores: list[float], total: int, floor: int, temperature: float
) -> None:
    assume(floor * len(scores) <= total)
    sched = DynamicBatchAllocation(
        [5] * len(scores), total, min_per_task=floor, temperature=temperature
    )
    sched.update(scores)
    alloc = sched.allocation
    assert sum(alloc) == total
    assert all(a >= floor for a in alloc)
    # The most lagging task (lowest score) has the largest weight, hence the largest share.
    # (Scores that differ by less than float resolution in exp() tie, so test on weights.)
    w = sched.weights
    worst = min(range(len(scores)), key=scores.__getitem__)
    assert w[worst] == max(w)
    if sum(x == w[worst] for x in w) == 1:
        assert alloc[worst] == max(alloc)
    plan = sched.next_step()
    assert sum(plan.values()) == total and all(plan[t] == alloc[t] for t in plan)


def test_dynamic_loader_yields_all_tasks_with_allocated_sizes() -> None:
    sizes = [30, 20, 10]
    sched = DynamicBatchAllocation(sizes, 12, min_per_task=2, temperature=0.1)
    loader = loader_of(sizes, sched)
    sched.update([0.9, 0.9, 0.1])
    for batches in loader:
        assert [len(b) for b in batches.values()] == sched.allocation
    assert sched.allocation[2] == max(sched.allocation)


# ----------------------------------------------------------------------------- resuming

SIZES = [13, 29, 7]


def _dynamic() -> TaskScheduler:
    return DynamicBatchAllocation(SIZES, 10, min_per_task=1, temperature=0.2, signal="loss")


FACTORIES: dict[str, Callable[[], TaskScheduler]] = {
    "round_robin_one": lambda: RoundRobin(SIZES, [3, 4, 2]),
    "round_robin_all": lambda: RoundRobin(SIZES, [3, 4, 2], mode="all", epoch="min"),
    "proportional": lambda: Proportional(SIZES, [3, 4, 2], seed=11),
    "temperature_all": lambda: Temperature(
        SIZES, 3, temperature=2.0, mode="all", total_batch_size=9, seed=5
    ),
    "annealed": lambda: Annealed(SIZES, [3, 4, 2], num_epochs=3, epoch=7, seed=2),
    "dynamic": _dynamic,
}


def _run(loader: MultiTaskLoader, steps: int, out: list[dict[int, list[int]]]) -> None:
    """Advance ``steps`` steps epoch by epoch (breaking mid-epoch), feeding the dynamic
    scheduler a deterministic signal every 3 steps."""
    while steps > 0:
        for batches in loader:
            out.append(as_lists(batches))
            sched = loader.scheduler
            if isinstance(sched, DynamicBatchAllocation) and sched.step % 3 == 0:
                sched.update([1.0 / (1 + sched.step * (t + 1) % 5) for t in range(3)])
            steps -= 1
            if steps == 0:
                break


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("split", [1, 8, 17])
def test_resume_reproduces_the_uninterrupted_run(name: str, split: int) -> None:
    total = 40
    reference: list[dict[int, list[int]]] = []
    _run(loader_of(SIZES, FACTORIES[name](), seed=9), total, reference)

    first = loader_of(SIZES, FACTORIES[name](), seed=9)
    resumed: list[dict[int, list[int]]] = []
    _run(first, split, resumed)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    second = loader_of(SIZES, FACTORIES[name](), seed=9)
    second.load_state_dict(state)
    assert second.scheduler.step == split
    _run(second, total - split, resumed)
    assert resumed == reference


def test_scheduler_state_dict_roundtrip_and_mismatch() -> None:
    a = Proportional([5, 6], 2, seed=1)
    for _ in range(7):
        a.next_step()
    b = Proportional([5, 6], 2, seed=42)
    b.load_state_dict(a.state_dict())
    assert [a.next_step() for _ in range(50)] == [b.next_step() for _ in range(50)]
    with pytest.raises(ValueError, match="Proportional"):
        Temperature([5, 6]).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="tasks"):
        Proportional([5, 6, 7]).load_state_dict(a.state_dict())


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: RoundRobin([]), ValueError, "empty"),
        (lambda: Proportional([5, 0]), ValueError, "task 1 has an empty dataset"),
        (lambda: RoundRobin([5], batch_size=0), ValueError, "batch_size"),
        (lambda: RoundRobin([5, 6], batch_size=[1]), ValueError, "one per task"),
        (lambda: RoundRobin([5], mode="some"), ValueError, "mode"),  # type: ignore[arg-type]
        (lambda: RoundRobin([5], epoch="sum"), ValueError, "epoch"),
        (lambda: Proportional([5], epoch="max"), ValueError, "epoch"),
        (lambda: RoundRobin([5], epoch=0), ValueError, "epoch"),
        (lambda: Temperature([5], temperature=0.0), ValueError, "temperature"),
        (lambda: Temperature([5], temperature=-1.0), ValueError, "temperature"),
        (lambda: Temperature([5], cap=0), ValueError, "cap"),
        (lambda: Annealed([5], num_epochs=0), ValueError, "num_epochs"),
        (lambda: Annealed([5], num_epochs=2, final_alpha=1.5), ValueError, "final_alpha"),
        (
            lambda: Proportional([5, 5], mode="all", total_batch_size=3, min_per_task=2),
            ValueError,
            "min_per_task",
        ),
        (lambda: DynamicBatchAllocation([5, 5, 5], 5, min_per_task=2), ValueError, "exceeds"),
        (lambda: DynamicBatchAllocation([5], 5, temperature=0.0), ValueError, "temperature"),
        (lambda: DynamicBatchAllocation([5], 5, signal="dev"), ValueError, "signal"),  # type: ignore[arg-type]
        (lambda: Proportional([5.5]), TypeError, "task 0"),  # type: ignore[list-item]
    ],
)
def test_bad_input_raises(build: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_bad_updates_and_loader_inputs_raise() -> None:
    sched = DynamicBatchAllocation([5, 5], 4)
    with pytest.raises(ValueError, match="expected 2 values"):
        sched.update([1.0])
    with pytest.raises(ValueError, match="not finite"):
        sched.update([1.0, math.nan])
    with pytest.raises(ValueError, match="out of range"):
        sched.update({2: 1.0})
    with pytest.raises(ValueError, match="2 datasets"):
        MultiTaskLoader([list(range(5)), list(range(5))], Proportional([5, 5, 5]))
    with pytest.raises(ValueError, match="do not match"):
        MultiTaskLoader([list(range(5)), list(range(4))], Proportional([5, 5]))
    with pytest.raises(ValueError, match="empty dataset"):
        MultiTaskLoader([[], list(range(5))], Proportional([5, 5]))
    with pytest.raises(ValueError, match="collate"):
        MultiTaskLoader([list(range(5))] * 2, Proportional([5, 5]), [None])


def test_per_task_collate_functions_and_len() -> None:
    sched = RoundRobin([4, 6], 2, mode="all")
    loader = MultiTaskLoader(
        [list(range(4)), [(i, -i) for i in range(6)]],
        sched,
        collate_fn=[sorted, None],
        seed=1,
    )
    assert len(loader) == 3
    batches = loader.next_step()
    assert isinstance(batches[0], list) and batches[0] == sorted(batches[0])
    first, second = batches[1]
    assert torch.equal(first, -second)


# ----------------------------------------------------------------------------- registry

RUN = Context(
    sizes=[8000, 16000, 5500], batch_size=[32, 16, 8], mode="all", epoch=140, seed=0, num_epochs=3
)
BUILT_IN = ["annealed", "dynamic", "proportional", "round-robin", "temperature"]


def test_built_in_schedulers_are_registered() -> None:
    assert set(BUILT_IN) <= set(list_schedulers())
    assert SCHEDULERS.get_class("dynamic-batch-allocation") is DynamicBatchAllocation
    assert SCHEDULERS.get_class("Round_Robin") is RoundRobin
    assert "sampling-scheduler" not in SCHEDULERS and "task-scheduler" not in SCHEDULERS


@pytest.mark.parametrize("name", BUILT_IN)
def test_one_context_builds_every_scheduler(name: str) -> None:
    sched = get_scheduler(name, context=RUN)
    assert sched.name == name
    assert sched.sizes == [8000, 16000, 5500]
    assert sched.mode == "all" and len(sched) == 140
    plans = [sched.next_step() for _ in range(20)]
    for plan in plans:  # every task every step, 32 + 16 + 8 examples in all
        assert sorted(plan) == [0, 1, 2] and sum(plan.values()) == 56
    if name == "round-robin":
        assert plans[0] == {0: 32, 1: 16, 2: 8}
    if name == "dynamic":
        assert plans[0] == {0: 19, 1: 19, 2: 18}  # uniform until a signal arrives
    if name == "annealed":
        assert isinstance(sched, Annealed) and sched.num_epochs == 3
    if isinstance(sched, SamplingScheduler):
        assert sched.seed == 0 and sched.total_batch_size == 56


def test_registry_matches_direct_construction() -> None:
    by_name = get_scheduler("temperature", context=RUN, temperature=3.0, min_per_task=2)
    direct = Temperature(
        [8000, 16000, 5500],
        [32, 16, 8],
        temperature=3.0,
        mode="all",
        epoch=140,
        seed=0,
        min_per_task=2,
    )
    assert [by_name.next_step() for _ in range(30)] == [direct.next_step() for _ in range(30)]


def test_options_override_the_context() -> None:
    sched = get_scheduler("temperature", context=RUN, temperature=5.0, mode="one", epoch="sum")
    assert isinstance(sched, Temperature)
    assert sched.temperature == 5.0 and sched.mode == "one"
    assert len(sched) == math.ceil(8000 / 32) + 16000 // 16 + math.ceil(5500 / 8)
    dynamic = get_scheduler("dynamic", context=RUN, total_batch_size=30)
    assert sum(dynamic.next_step().values()) == 30  # an explicit total wins over batch_size


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="no option 'temprature'") as info:
        get_scheduler("temperature", context=RUN, temprature=5.0)
    for option in ["cap", "temperature", "mode", "min_per_task", "seed", "total_batch_size"]:
        assert option in str(info.value)
    with pytest.raises(TypeError, match="its options are: batch_size, epoch, mode, sizes"):
        get_scheduler("round-robin", context=RUN, seed=1)
    with pytest.raises(KeyError, match="unknown scheduler 'nope'"):
        get_scheduler("nope")


def test_dynamic_total_from_batch_size_and_mode() -> None:
    assert DynamicBatchAllocation([5, 5], batch_size=3).total_batch_size == 6
    assert DynamicBatchAllocation([5, 5], batch_size=[3, 4]).total_batch_size == 7
    assert DynamicBatchAllocation([5, 5], 10, batch_size=[3, 4]).total_batch_size == 10
    assert DynamicBatchAllocation([5, 5], 10, mode="all").mode == "all"
    with pytest.raises(TypeError, match="total_batch_size .* or batch_size"):
        DynamicBatchAllocation([5, 5])
    with pytest.raises(ValueError, match="mode must be 'all'"):
        DynamicBatchAllocation([5, 5], 10, mode="one")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one per task"):
        DynamicBatchAllocation([5, 5], batch_size=[3])
    with pytest.raises(ValueError, match="mode must be 'all'"):
        get_scheduler("dynamic", context=Context(sizes=[5, 5], batch_size=2, mode="one"))


class EveryOther(TaskScheduler):
    """A scheduler written outside the package: tasks 0, 2, 4, ... then 1, 3, ..."""

    def __init__(self, sizes: Sequence[int | Sized], batch_size: int | Sequence[int] = 4) -> None:
        super().__init__(sizes, mode="one")
        b = [batch_size] * self.num_tasks if isinstance(batch_size, int) else list(batch_size)
        self.batch_sizes = b
        self.order = list(range(0, self.num_tasks, 2)) + list(range(1, self.num_tasks, 2))
        self.steps_per_epoch = self.num_tasks

    def plan(self) -> dict[int, int]:
        task = self.order[self._step % self.num_tasks]
        return {task: self.batch_sizes[task]}


@pytest.fixture
def my_sched() -> Iterator[type[EveryOther]]:
    cls = register("my_sched")(EveryOther)
    yield cls
    del SCHEDULERS._classes["my-sched"]


def test_register_from_outside_the_package(my_sched: type[EveryOther]) -> None:
    assert "my-sched" in list_schedulers()
    for name in ("my-sched", "my_sched", "My Sched"):
        sched = get_scheduler(name, context=RUN)  # takes sizes and batch_size only
        assert type(sched) is my_sched
        assert [sched.next_step() for _ in range(3)] == [{0: 32}, {2: 8}, {1: 16}]
    with pytest.raises(ValueError, match="already registered"):
        register("my-sched")(RoundRobin)


class Tilted(SamplingScheduler):
    """A rule written outside the package that forwards the shared options."""

    def __init__(
        self,
        sizes: Sequence[int | Sized],
        batch_size: int | Sequence[int] = 32,
        *,
        tilt: float = 0.5,
        **options: Unpack[SamplingOptions],
    ) -> None:
        self.tilt = tilt
        super().__init__(sizes, batch_size, **options)

    def probabilities(self, epoch: int = 0) -> list[float]:
        w = [1.0 + self.tilt * i for i in range(self.num_tasks)]
        return [x / sum(w) for x in w]


def _signature(cls: type) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(cls).parameters.values()]


SHARED = [
    ("mode", "KEYWORD_ONLY", "one"),
    ("total_batch_size", "KEYWORD_ONLY", None),
    ("min_per_task", "KEYWORD_ONLY", 1),
    ("epoch", "KEYWORD_ONLY", "sum"),
    ("seed", "KEYWORD_ONLY", 0),
]
POSITIONAL = [
    ("sizes", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
    ("batch_size", "POSITIONAL_OR_KEYWORD", 32),
]


def test_sampling_rules_keep_their_constructor_signatures() -> None:
    # As written out before the options were shared (the pre-split signatures).
    assert _signature(Temperature) == [
        *POSITIONAL,
        ("temperature", "KEYWORD_ONLY", 2.0),
        ("cap", "KEYWORD_ONLY", None),
        *SHARED,
    ]
    assert _signature(Annealed) == [
        *POSITIONAL,
        ("num_epochs", "KEYWORD_ONLY", inspect.Parameter.empty),
        ("final_alpha", "KEYWORD_ONLY", 0.2),
        *SHARED,
    ]
    assert _signature(SamplingScheduler) == _signature(Proportional) == [*POSITIONAL, *SHARED]
    assert set(SamplingOptions.__annotations__) == {name for name, _, _ in SHARED}
    # A user's rule that forwards **options gets the merged signature too.
    assert _signature(Tilted) == [*POSITIONAL, ("tilt", "KEYWORD_ONLY", 0.5), *SHARED]
    assert _signature(EveryOther) == [
        ("sizes", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("batch_size", "POSITIONAL_OR_KEYWORD", 4),
    ]


def test_forwarded_options_reach_the_registry() -> None:
    SCHEDULERS.register("tilted-test")(Tilted)
    try:
        sched = get_scheduler("tilted-test", context=RUN, tilt=1.0)
        assert isinstance(sched, Tilted) and sched.tilt == 1.0
        assert sched.mode == "all" and len(sched) == 140 and sched.total_batch_size == 56
        with pytest.raises(TypeError, match="tilt"):
            get_scheduler("tilted-test", context=RUN, tlit=1.0)
    finally:
        del SCHEDULERS._classes["tilted-test"]


# ----------------------------------------------------------------------------- old checkpoints


def _generator_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def _old_checkpoint(name: str) -> dict[str, Any]:
    """A loader checkpoint in the format written before the package split."""
    scheduler: dict[str, Any] = {
        "type": type(FACTORIES[name]()).__name__,
        "num_tasks": 3,
        "step": 17,
        "generator": _generator_state(123),
    }
    if name == "dynamic":
        scheduler["values"] = [0.25, None, -0.5]
        scheduler["prev_losses"] = [1.5, 2.0, None]
    streams = [
        {"size": n, "shuffle": True, "passes": p, "position": i, "pass_state": _generator_state(s)}
        for n, p, i, s in [(13, 2, 4, 40), (29, 0, 11, 41), (7, 5, 6, 42)]
    ]
    return {"scheduler": scheduler, "streams": streams}


# The next four steps after loading _old_checkpoint(name), as the pre-split code drew them.
OLD_CODE_BATCHES: dict[str, list[dict[int, list[int]]]] = {
    "round_robin_one": [{2: [2, 5]}, {0: [7, 5, 8]}, {1: [18, 1, 21, 27]}, {2: [3, 2]}],
    "round_robin_all": [
        {0: [7, 5, 8], 1: [18, 1, 21, 27], 2: [2, 5]},
        {0: [0, 9, 1], 1: [3, 16, 0, 10], 2: [3, 2]},
        {0: [6, 4, 11], 1: [19, 12, 26, 17], 2: [4, 0]},
        {0: [1, 7, 11], 1: [28, 13, 25, 23], 2: [1, 6]},
    ],
    "proportional": [{1: [18, 1, 21, 27]}, {0: [7, 5, 8]}, {1: [3, 16, 0, 10]}, {0: [0, 9, 1]}],
    "temperature_all": [
        {0: [7, 5, 8], 1: [18, 1, 21, 27, 3], 2: [2]},
        {0: [0, 9, 1], 1: [16, 0, 10], 2: [5, 3, 2]},
        {0: [6, 4, 11, 1], 1: [19, 12, 26, 17], 2: [4]},
        {0: [7, 11, 6], 1: [28, 13, 25, 23, 15], 2: [0]},
    ],
    "annealed": [{1: [18, 1, 21, 27]}, {0: [7, 5, 8]}, {1: [3, 16, 0, 10]}, {0: [0, 9, 1]}],
    "dynamic": [
        {0: [7], 1: [18], 2: [2, 5, 3, 2, 4, 0, 1, 6]},
        {0: [5], 1: [1], 2: [6, 1, 3, 2, 0, 4, 5, 2]},
        {0: [8], 1: [21], 2: [5, 6, 3, 1, 0, 4, 3, 2]},
        {0: [0], 1: [27], 2: [0, 4, 5, 6, 1, 2, 1, 0]},
    ],
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_pre_split_checkpoint_loads_and_continues_identically(name: str) -> None:
    loader = loader_of(SIZES, FACTORIES[name](), seed=9)
    old = _old_checkpoint(name)
    # The format is unchanged: what the loader writes has the keys the old code wrote.
    state = loader.state_dict()
    assert state.keys() == old.keys()
    assert state["scheduler"].keys() == old["scheduler"].keys()
    assert [s.keys() for s in state["streams"]] == [s.keys() for s in old["streams"]]
    loader.load_state_dict(old)
    assert loader.scheduler.step == 17
    assert [as_lists(loader.next_step()) for _ in range(4)] == OLD_CODE_BATCHES[name]
