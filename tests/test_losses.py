"""Tests of mtlkit.losses against torch.nn, loop references, gradcheck and invariances."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from mtlkit import Context
from mtlkit.losses import LOSSES as REGISTRY
from mtlkit.losses import (
    CallbackMargin,
    ConstantMargin,
    ContrastiveLoss,
    CoSENTLoss,
    CosineEmbeddingLoss,
    LinearMargin,
    MultipleNegativesRankingLoss,
    TripletLoss,
    as_margin_schedule,
    contrastive_loss,
    cosent_loss,
    cosine_embedding_loss,
    get_loss,
    list_losses,
    multiple_negatives_ranking_loss,
    register,
    triplet_loss,
)

REDUCTIONS = ["mean", "sum", "none"]


def emb(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- plain references


def cos_ref(x: list[float], y: list[float]) -> float:
    dot = sum(a * b for a, b in zip(x, y, strict=True))
    return dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def euclid_ref(x: list[float], y: list[float], eps: float = 1e-6) -> float:
    return math.sqrt(sum((a - b + eps) ** 2 for a, b in zip(x, y, strict=True)))


def mnrl_ref(
    a: list[list[float]],
    p: list[list[float]],
    neg: list[list[float]],
    scale: float,
    symmetric: bool,
) -> list[float]:
    def nll(query: list[float], cands: list[list[float]], target: int) -> float:
        logits = [scale * cos_ref(query, c) for c in cands]
        top = max(logits)
        lse = top + math.log(sum(math.exp(z - top) for z in logits))
        return lse - logits[target]

    out = []
    for i in range(len(a)):
        loss = nll(a[i], p + neg, i)
        if symmetric:
            loss = 0.5 * (loss + nll(p[i], a, i))
        out.append(loss)
    return out


def cosent_ref(u: list[list[float]], v: list[list[float]], s: list[float], scale: float) -> float:
    c = [cos_ref(x, y) for x, y in zip(u, v, strict=True)]
    total = 0.0
    for i in range(len(c)):
        for j in range(len(c)):
            if s[i] > s[j]:
                total += math.exp(scale * (c[j] - c[i]))
    return math.log1p(total)


def contrastive_ref(
    u: list[list[float]], v: list[list[float]], y: list[float], margin: float, distance: str
) -> list[float]:
    out = []
    for x, z, label in zip(u, v, y, strict=True):
        d = euclid_ref(x, z) if distance == "euclidean" else 1.0 - cos_ref(x, z)
        out.append(label * d * d + (1 - label) * max(0.0, margin - d) ** 2)
    return out


def reduce_ref(values: list[float], reduction: str) -> Tensor:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": t.mean(), "sum": t.sum(), "none": t}[reduction]


# ----------------------------------------------------------------------------- vs torch.nn


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_cosine_embedding_matches_torch(reduction: str, margin: float) -> None:
    u, v = emb(12, 5, seed=1), emb(12, 5, seed=2)
    target = torch.tensor([1, -1] * 6)
    ours = cosine_embedding_loss(u, v, target, margin, reduction)  # type: ignore[arg-type]
    ref = torch.nn.CosineEmbeddingLoss(margin=margin, reduction=reduction)(u, v, target)
    torch.testing.assert_close(ours, ref)
    module = CosineEmbeddingLoss(margin, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(module(u, v, target.float()), ref)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_matches_torch(reduction: str, swap: bool) -> None:
    a, p, n = emb(10, 4, seed=3), emb(10, 4, seed=4), emb(10, 4, seed=5)
    ours = triplet_loss(a, p, n, 0.8, "euclidean", swap, reduction)  # type: ignore[arg-type]
    ref = torch.nn.TripletMarginLoss(margin=0.8, swap=swap, reduction=reduction)(a, p, n)
    torch.testing.assert_close(ours, ref)

    def cosine_distance(x: Tensor, y: Tensor) -> Tensor:
        return 1.0 - F.cosine_similarity(x, y)

    ours_cos = TripletLoss(0.3, "cosine", swap, reduction)(a, p, n)  # type: ignore[arg-type]
    ref_cos = torch.nn.TripletMarginWithDistanceLoss(
        distance_function=cosine_distance, margin=0.3, swap=swap, reduction=reduction
    )(a, p, n)
    torch.testing.assert_close(ours_cos, ref_cos)


def test_triplet_squared_euclidean_is_facenet_form() -> None:
    a, p, n = emb(6, 3, seed=6), emb(6, 3, seed=7), emb(6, 3, seed=8)
    expected = ((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + 0.5).clamp(
        min=0
    )  # Schroff et al. Eq. 1
    got = triplet_loss(a, p, n, 0.5, "squared_euclidean", reduction="none")
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- vs loops


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [None, "flat", "per_pair"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mnrl_matches_loop_reference(
    symmetric: bool, negatives: str | None, reduction: str
) -> None:
    a, p = emb(6, 4, seed=10), emb(6, 4, seed=11)
    neg: Tensor | None = None
    neg_rows: list[list[float]] = []
    if negatives == "flat":
        neg = emb(3, 4, seed=12)
        neg_rows = neg.tolist()
    elif negatives == "per_pair":
        neg = emb(6, 2, 4, seed=13)
        neg_rows = neg.reshape(-1, 4).tolist()
    ours = multiple_negatives_ranking_loss(a, p, neg, 7.5, symmetric, reduction)  # type: ignore[arg-type]
    ref = reduce_ref(mnrl_ref(a.tolist(), p.tolist(), neg_rows, 7.5, symmetric), reduction)
    torch.testing.assert_close(ours, ref)
    module = MultipleNegativesRankingLoss(7.5, symmetric, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(module(a, p, neg), ref)


@pytest.mark.parametrize("scale", [1.0, 20.0, 50.0])
def test_cosent_matches_loop_reference(scale: float) -> None:
    u, v = emb(9, 5, seed=20), emb(9, 5, seed=21)
    scores = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.0, 0.3, 0.3, 0.7, 1.0])
    ref = cosent_ref(u.tolist(), v.tolist(), scores.tolist(), scale)
    got = cosent_loss(u, v, scores, scale)
    assert got.dim() == 0
    assert got.item() == pytest.approx(ref, rel=1e-10)
    assert CoSENTLoss(scale)(u, v, scores).item() == pytest.approx(ref, rel=1e-10)


def test_cosent_is_stable_for_large_scale_and_zero_with_all_ties() -> None:
    u, v = emb(5, 3, seed=22), emb(5, 3, seed=23)
    scores = torch.arange(5.0)
    big = cosent_loss(u, v, scores, scale=1e4)
    assert torch.isfinite(big)
    assert cosent_loss(u, v, torch.ones(5)).item() == 0.0  # no ordered pair: log(1 + 0)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_contrastive_matches_loop_reference(distance: str, reduction: str) -> None:
    u, v = emb(8, 4, seed=30), 0.4 * emb(8, 4, seed=31)
    label = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1])
    margin = 2.0 if distance == "euclidean" else 0.8
    ref = reduce_ref(
        contrastive_ref(u.tolist(), v.tolist(), label.tolist(), margin, distance), reduction
    )
    got = contrastive_loss(u, v, label, margin, distance, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(got, ref)
    module = ContrastiveLoss(margin, distance, reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(module(u, v, label), ref)


# ----------------------------------------------------------------------------- gradcheck

LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "cosine_embedding": lambda u, v, w: cosine_embedding_loss(
        u, v, torch.tensor([1, -1, 1, -1, -1]), margin=-0.5
    ),
    "mnrl": lambda u, v, w: multiple_negatives_ranking_loss(u, v, w, scale=5.0),
    "mnrl_symmetric": lambda u, v, w: multiple_negatives_ranking_loss(
        u, v, w, scale=5.0, symmetric=True
    ),
    "triplet_euclidean": lambda u, v, w: triplet_loss(u, v, w, margin=10.0),
    "triplet_cosine": lambda u, v, w: triplet_loss(u, v, w, margin=2.5, distance="cosine"),
    "triplet_sq": lambda u, v, w: triplet_loss(u, v, w, 50.0, "squared_euclidean", swap=True),
    "cosent": lambda u, v, w: cosent_loss(u, v, torch.tensor([0.3, 0.1, 0.9, 0.5, 0.2]), 4.0),
    "contrastive_euclidean": lambda u, v, w: contrastive_loss(
        u, v, torch.tensor([1, 0, 1, 0, 0]), margin=10.0
    ),
    "contrastive_cosine": lambda u, v, w: contrastive_loss(
        u, v, torch.tensor([1, 0, 1, 0, 0]), margin=2.5, distance="cosine"
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck_float64(name: str) -> None:
    # Margins are chosen so every hinge is active (away from its kink), where the loss is
    # smooth and finite differences are valid.
    inputs = tuple(emb(5, 4, seed=40 + i).requires_grad_() for i in range(3))
    assert torch.autograd.gradcheck(LOSSES[name], inputs)


# ----------------------------------------------------------------------------- invariances


@settings(max_examples=25, deadline=None)
@given(perm_seed=st.integers(0, 2**31), symmetric=st.booleans())
def test_mnrl_invariant_under_permuting_pairs(perm_seed: int, symmetric: bool) -> None:
    a, p, neg = emb(7, 3, seed=50), emb(7, 3, seed=51), emb(4, 3, seed=52)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(perm_seed))
    base = multiple_negatives_ranking_loss(a, p, neg, 10.0, symmetric, "none")
    moved = multiple_negatives_ranking_loss(a[perm], p[perm], neg, 10.0, symmetric, "none")
    torch.testing.assert_close(moved, base[perm])
    torch.testing.assert_close(
        multiple_negatives_ranking_loss(a[perm], p[perm], neg, 10.0, symmetric),
        multiple_negatives_ranking_loss(a, p, neg, 10.0, symmetric),
    )


MONOTONE: list[Callable[[Tensor], Tensor]] = [
    torch.exp,
    torch.sigmoid,
    lambda s: s.pow(3),
    lambda s: 3.0 * s - 7.0,
    lambda s: torch.floor(s * 1000.0),  # weakly increasing but keeps these distinct scores
]


@settings(max_examples=25, deadline=None)
@given(
    scores=st.lists(
        st.floats(-3, 3, allow_nan=False).map(lambda x: round(x, 2)), min_size=6, max_size=6
    ),
    which=st.integers(0, len(MONOTONE) - 1),
)
def test_cosent_invariant_to_monotone_score_transforms(scores: list[float], which: int) -> None:
    u, v = emb(6, 4, seed=60), emb(6, 4, seed=61)
    s = torch.tensor(scores, dtype=torch.float64)
    torch.testing.assert_close(cosent_loss(u, v, MONOTONE[which](s)), cosent_loss(u, v, s))


# ----------------------------------------------------------------------------- margin schedules


def test_linear_margin_reaches_end_and_holds() -> None:
    sched = LinearMargin(0.0, 0.5, steps=10)
    assert [sched(t) for t in (0, 5, 10, 11, 1000)] == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5])
    loss = CosineEmbeddingLoss(sched)
    for _ in range(10):
        loss.step()
    assert loss.margin == pytest.approx(0.5)
    loss.step(100)
    assert loss.margin == pytest.approx(0.5)


def test_margin_schedule_is_used_in_forward() -> None:
    u, v = emb(4, 3, seed=70), emb(4, 3, seed=71)
    target = -torch.ones(4)
    loss = CosineEmbeddingLoss(LinearMargin(-1.0, 1.0, steps=4), reduction="sum")
    values = []
    for _ in range(5):
        values.append(loss(u, v, target))
        loss.step()
    for t, got in enumerate(values):
        margin = -1.0 + 0.5 * t
        torch.testing.assert_close(got, cosine_embedding_loss(u, v, target, margin, "sum"))
    assert values[0] > values[-1]  # a rising margin relaxes the dissimilar-pair hinge


def test_callback_and_constant_margins() -> None:
    loss = TripletLoss(lambda step: 1.0 / (1 + step))
    assert isinstance(loss.schedule, CallbackMargin)
    loss.set_step(3)
    assert loss.margin == pytest.approx(0.25)
    assert isinstance(as_margin_schedule(0.2), ConstantMargin)
    assert ContrastiveLoss(0.7).margin == 0.7
    bad = TripletLoss(lambda step: -1.0)
    with pytest.raises(ValueError, match="margin"):
        bad(emb(2, 2), emb(2, 2), emb(2, 2))


def test_margin_state_dict_roundtrip() -> None:
    loss = ContrastiveLoss(LinearMargin(0.2, 1.0, steps=8), distance="cosine")
    loss.step(5)
    state = loss.state_dict()
    fresh = ContrastiveLoss(LinearMargin(0.2, 1.0, steps=8), distance="cosine")
    assert fresh.margin == pytest.approx(0.2)
    fresh.load_state_dict(state)
    assert fresh.step_count == 5
    assert fresh.margin == pytest.approx(loss.margin) == pytest.approx(0.7)
    # also through a container module
    outer = torch.nn.ModuleDict({"loss": loss})
    other = torch.nn.ModuleDict({"loss": ContrastiveLoss(LinearMargin(0.2, 1.0, steps=8))})
    other.load_state_dict(outer.state_dict())
    assert other["loss"].step_count == 5


# ----------------------------------------------------------------------------- errors


def test_shape_and_argument_errors() -> None:
    u, v = emb(4, 3), emb(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        cosine_embedding_loss(u, emb(4, 2), torch.ones(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cosine_embedding_loss(u, v, torch.ones(3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        triplet_loss(emb(3), emb(3), emb(3))
    with pytest.raises(ValueError, match="empty batch"):
        contrastive_loss(emb(0, 3), emb(0, 3), torch.ones(0))
    with pytest.raises(TypeError, match="floating point"):
        cosent_loss(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="negatives"):
        multiple_negatives_ranking_loss(u, v, emb(2, 5))
    with pytest.raises(ValueError, match="N = 4"):
        multiple_negatives_ranking_loss(u, v, emb(3, 2, 3))
    with pytest.raises(ValueError, match="scale"):
        multiple_negatives_ranking_loss(u, v, scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        CoSENTLoss(scale=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        contrastive_loss(u, v, torch.ones(4), reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distance"):
        contrastive_loss(u, v, torch.ones(4), distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distance"):
        TripletLoss(distance="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(u, v, v, margin=-0.1)
    with pytest.raises(ValueError, match="steps"):
        LinearMargin(0.0, 1.0, steps=0)
    with pytest.raises(TypeError, match="margin"):
        as_margin_schedule("wide")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        CosineEmbeddingLoss().set_step(-1)


# ----------------------------------------------------------------------------- registry

Inputs = Callable[[], tuple[Tensor, ...]]

#: Registered name -> (module class, its functional form, inputs for both).
BUILTIN: dict[str, tuple[type[nn.Module], Callable[..., Tensor], Inputs]] = {
    "cosine-embedding": (
        CosineEmbeddingLoss,
        cosine_embedding_loss,
        lambda: (emb(8, 5, seed=80), emb(8, 5, seed=81), torch.tensor([1, -1] * 4)),
    ),
    "multiple-negatives-ranking": (
        MultipleNegativesRankingLoss,
        multiple_negatives_ranking_loss,
        lambda: (emb(8, 5, seed=82), emb(8, 5, seed=83), emb(3, 5, seed=84)),
    ),
    "triplet": (
        TripletLoss,
        triplet_loss,
        lambda: (emb(8, 5, seed=85), emb(8, 5, seed=86), emb(8, 5, seed=87)),
    ),
    "cosent": (
        CoSENTLoss,
        cosent_loss,
        lambda: (emb(8, 5, seed=88), emb(8, 5, seed=89), torch.rand(8) * 5),
    ),
    "contrastive": (
        ContrastiveLoss,
        contrastive_loss,
        lambda: (emb(8, 5, seed=90), 0.3 * emb(8, 5, seed=91), torch.tensor([1, 0] * 4)),
    ),
}


def test_builtin_losses_are_registered() -> None:
    assert set(BUILTIN) <= set(list_losses())
    assert list_losses() == sorted(list_losses())
    for name, (cls, _, _) in BUILTIN.items():
        assert REGISTRY.get_class(name) is cls
        assert cls.name == name  # type: ignore[attr-defined]
    assert REGISTRY.get_class("mnrl") is MultipleNegativesRankingLoss
    assert "mnrl" not in list_losses()  # aliases are not listed


@pytest.mark.parametrize("name", list(BUILTIN))
def test_every_registered_loss_builds_with_defaults_and_matches_its_function(name: str) -> None:
    cls, fn, make_inputs = BUILTIN[name]
    for spelling in (name, name.replace("-", "_"), name.upper()):
        module = get_loss(spelling)
        assert type(module) is cls
        inputs = make_inputs()
        assert torch.equal(module(*inputs), fn(*inputs))
    # a context does not disturb losses, whose constructors take none of its fields
    assert type(get_loss(name, context=Context(num_tasks=3, seed=0))) is cls


def test_get_loss_passes_options() -> None:
    u, v = emb(6, 4, seed=92), emb(6, 4, seed=93)
    label = torch.tensor([1, 0, 0, 1, 0, 1])
    loss = get_loss("contrastive", margin=0.5, distance="cosine", reduction="sum")
    assert torch.equal(loss(u, v, label), contrastive_loss(u, v, label, 0.5, "cosine", "sum"))
    mnrl = get_loss("mnrl", scale=7.5, symmetric=True)
    assert torch.equal(mnrl(u, v), multiple_negatives_ranking_loss(u, v, None, 7.5, True))
    with pytest.raises(TypeError, match="its options are"):
        get_loss("cosent", margin=0.5)
    with pytest.raises(KeyError, match="unknown loss 'hinge'.*contrastive"):
        get_loss("hinge")


class _MyLoss(nn.Module):
    """A loss defined outside the package."""

    def __init__(self, power: float = 2.0) -> None:
        super().__init__()
        self.power = power

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return (u - v).abs().pow(self.power).mean()


@pytest.fixture
def my_loss_registered() -> Iterator[type[nn.Module]]:
    cls = register("my_loss")(_MyLoss)
    try:
        yield cls
    finally:
        REGISTRY._classes.pop("my-loss", None)


def test_a_loss_registered_from_outside_is_found(my_loss_registered: type[nn.Module]) -> None:
    assert my_loss_registered.name == "my-loss"  # type: ignore[attr-defined]
    assert "my-loss" in list_losses()
    for spelling in ("my-loss", "my_loss", "My Loss"):
        assert isinstance(get_loss(spelling), _MyLoss)
    cubed = get_loss("my_loss", power=3.0)
    assert isinstance(cubed, _MyLoss) and cubed.power == 3.0
    u, v = emb(4, 3, seed=94), emb(4, 3, seed=95)
    torch.testing.assert_close(cubed(u, v), (u - v).abs().pow(3).mean())
    with pytest.raises(ValueError, match="already registered"):
        register("my-loss")(CoSENTLoss)


# ----------------------------------------------------------------------------- margin as data


def test_mapping_margin_is_a_linear_margin() -> None:
    sched = as_margin_schedule({"start": 0.2, "end": 0.6, "steps": 100})
    assert isinstance(sched, LinearMargin)
    assert (sched.start, sched.end, sched.steps) == (0.2, 0.6, 100)
    # from a command line: JSON, through get_loss, stepped and saved like any schedule
    option = json.loads('{"start": 0.2, "end": 1.0, "steps": 8}')
    loss = get_loss("contrastive", margin=option, distance="cosine")
    assert isinstance(loss, ContrastiveLoss) and isinstance(loss.schedule, LinearMargin)
    assert (loss.schedule.start, loss.schedule.end, loss.schedule.steps) == (0.2, 1.0, 8)
    loss.step(4)
    assert loss.margin == pytest.approx(0.6)
    fresh = TripletLoss(margin={"start": 0.2, "end": 1.0, "steps": 8})
    fresh.load_state_dict(loss.state_dict())
    assert fresh.margin == pytest.approx(0.6)
    assert CosineEmbeddingLoss({"start": -0.5, "end": 0.5, "steps": 2}).margin == -0.5


@pytest.mark.parametrize(
    "bad",
    [{"start": 0.2, "end": 0.6}, {"start": 0.2, "end": 0.6, "steps": 10, "warmup": 3}, {}],
)
def test_mapping_margin_needs_exactly_start_end_steps(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="'start', 'end' and 'steps'"):
        as_margin_schedule(bad)
    with pytest.raises(ValueError, match="'start', 'end' and 'steps'"):
        get_loss("triplet", margin=bad)


def test_mapping_margin_values_are_checked_like_linear_margin() -> None:
    with pytest.raises(ValueError, match="steps"):
        as_margin_schedule({"start": 0.2, "end": 0.6, "steps": 0})
    with pytest.raises(ValueError, match="steps"):
        as_margin_schedule({"start": 0.2, "end": 0.6, "steps": 10.0})
    with pytest.raises(ValueError, match="margin"):
        as_margin_schedule({"start": 0.2, "end": math.inf, "steps": 10})


# ----------------------------------------------------------------------------- distances

DISTANCE_MESSAGE = r"^distance must be 'euclidean'(, '\w+')* or 'cosine', got 'manhattan'$"


def _takes_distance() -> list[str]:
    return sorted(
        name
        for name in BUILTIN
        if "distance" in inspect.signature(REGISTRY.get_class(name)).parameters
    )


def test_losses_taking_a_distance() -> None:
    assert _takes_distance() == ["contrastive", "triplet"]


@pytest.mark.parametrize("name", _takes_distance())
def test_unknown_distance_is_one_clear_error_from_every_loss(name: str) -> None:
    cls, fn, make_inputs = BUILTIN[name]
    attempts: list[Callable[[], object]] = [
        lambda: get_loss(name, distance="manhattan"),
        lambda: cls(distance="manhattan"),  # when the module is built, not at its first batch
        lambda: fn(*make_inputs(), distance="manhattan"),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match=DISTANCE_MESSAGE) as info:
            attempt()
        assert info.traceback[-1].name == "check_distance"  # the one place that checks
