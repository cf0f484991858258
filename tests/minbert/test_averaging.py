"""``--ema-decay``: the moving average of the weights follows its recurrence, is what each
epoch evaluates and ``best.pt`` keeps, and leaves training on the raw weights."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from examples.minbert.averaging import WeightAverage
from examples.minbert.checkpoint import ConfigError, load_checkpoint
from examples.minbert.train import TrainConfig, build_model, train


def _params(seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(3, 2, generator=gen)),
        nn.Parameter(torch.randn(4, generator=gen)),
    ]


def _move(params: list[nn.Parameter], gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen))


def test_average_follows_its_recurrence() -> None:
    params = _params()
    average = WeightAverage(params, decay=0.9)
    reference = [p.detach().double().clone() for p in params]
    gen = torch.Generator().manual_seed(1)
    rates = []
    for t in range(1, 101):  # the warm-up reaches 0.9 at t = 80
        _move(params, gen)
        rates.append(average.rate())
        average.update()
        d = min(0.9, (1 + t) / (10 + t))
        reference = [
            r + (1 - d) * (p.detach().double() - r) for r, p in zip(reference, params, strict=True)
        ]
    assert rates[:2] == pytest.approx([2 / 11, 3 / 12])  # warmed up: the start fades fast
    assert rates[-1] == 0.9  # then the decay asked for
    for got, want in zip(average.average, reference, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # the average is not the weights: it lags behind them
    assert not torch.allclose(average.average[0], params[0].detach())


def test_applied_swaps_the_average_in_and_the_weights_back() -> None:
    params = _params()
    average = WeightAverage(params, decay=0.5)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        _move(params, gen)
        average.update()
    raw = [p.detach().clone() for p in params]
    params[0].grad = torch.ones_like(params[0])
    with average.applied():
        for p, a in zip(params, average.average, strict=True):
            assert torch.equal(p.detach(), a)
    for p, r in zip(params, raw, strict=True):
        assert torch.equal(p.detach(), r)
    with pytest.raises(RuntimeError, match="boom"), average.applied():
        raise RuntimeError("boom")
    for p, r in zip(params, raw, strict=True):  # an error inside restores them too
        assert torch.equal(p.detach(), r)
    assert torch.equal(params[0].grad, torch.ones_like(params[0]))


def test_state_round_trip_continues_exactly() -> None:
    first, second = _params(), _params(seed=7)
    a = WeightAverage(first, decay=0.8)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        _move(first, gen)
        a.update()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    with torch.no_grad():
        for mine, theirs in zip(second, first, strict=True):
            mine.copy_(theirs)
    b = WeightAverage(second, decay=0.5)  # the saved decay and count win
    b.load_state_dict(torch.load(buffer))
    assert (b.decay, b.updates) == (0.8, 5)
    for _ in range(4):
        _move(first, gen)
        with torch.no_grad():
            for mine, theirs in zip(second, first, strict=True):
                mine.copy_(theirs)
        a.update()
        b.update()
    for x, y in zip(a.average, b.average, strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage([nn.Parameter(torch.zeros(5))], 0.9).load_state_dict(a.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_average_refuses_a_decay_outside_zero_one(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_params(), decay)


def test_ema_with_fsdp_is_refused_before_a_run() -> None:
    with pytest.raises(ConfigError, match="ema_decay with fsdp"):
        TrainConfig(init="tiny-random", ema_decay=0.99, fsdp=True)


def test_best_checkpoint_holds_the_average_and_training_the_weights(tmp_path: Path) -> None:
    cfg = TrainConfig(
        out_dir=str(tmp_path),
        init="tiny-random",
        train_limit=16,
        dev_limit=8,
        val_limit=8,
        eval_train_limit=8,
        batch_size=4,
        epochs=1,
        steps_per_epoch=3,
        max_length=32,
        lr=1e-2,
        ema_decay=0.5,
        progress=False,
    )
    run = train(cfg)
    assert run.best_epoch == 1
    latest, best = load_checkpoint(tmp_path / "latest.pt"), load_checkpoint(tmp_path / "best.pt")
    model, _ = build_model(cfg, cfg.task_records())
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    average = latest["average"]["average"]
    assert latest["average"]["updates"] == 3 and len(average) == len(names)
    differs = 0
    for name, averaged in zip(names, average, strict=True):
        assert torch.equal(best["model"][name], averaged), name  # best.pt: the average
        raw = latest["model"][name]
        assert torch.equal(run.model.state_dict()[name], raw), name  # training: the weights
        differs += not torch.equal(raw, averaged)
    assert differs > len(names) // 2
