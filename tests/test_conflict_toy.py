"""The conflict toy (examples/conflict_toy.py) on a small budget: where the runs end.

The facts checked are the ones the full run shows with a margin (docs/figures/
conflict_toy.md): methods with non-conflicting updates end Pareto-stationary from every
start; the summed loss and CAGrad end at the minimum of L1 + L2; MGDA, from a start near
one task's optimum, ends on the Pareto set but on that task's side, far from the
minimum of the sum. No end coordinates are hard-coded: targets come from the problem.
"""

from __future__ import annotations

import json

import pytest
import torch

from examples import conflict_toy as toy

NON_CONFLICTING = ["mgda", "upgrad", "dualproj", "nash-mtl", "pcgrad"]  # pcgrad: for K = 2
BUDGET = dict(steps=600, lr=0.1)


@pytest.fixture(scope="module")
def result() -> toy.ToyResult:
    return toy.run([*NON_CONFLICTING, "sum"], **BUDGET)


def test_losses_follow_the_formula() -> None:
    # On the x1 axis both weights c1, c2 vanish.
    assert torch.equal(toy.losses(torch.tensor([3.0, 0.0])), torch.zeros(2))
    # Mirror symmetry of the bottom half: L1(x1, x2) = L2(-x1, x2) for x2 < 0.
    x = torch.tensor([[2.5, -3.0], [-6.0, -8.0], [0.3, -0.1]], dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(toy.losses(x)[:, 0], toy.losses(mirrored)[:, 1])
    # Far below, c2 -> 1 and the losses are the two bowls.
    far = torch.tensor([[1.0, -60.0]], dtype=torch.float64)
    bowl1 = ((-1.0 + 7) ** 2 + 0.1 * (60.0 - 8) ** 2) / 10 - 20
    assert toy.losses(far)[0, 0].item() == pytest.approx(bowl1, rel=1e-12)


def test_min_norm_hull() -> None:
    jac = torch.tensor(
        [
            [[1.0, 0.0], [-2.0, 0.0]],  # opposite: 0 is in the hull
            [[1.0, 0.0], [1.0, 0.0]],  # equal
            [[1.0, 0.0], [0.0, 1.0]],  # orthogonal unit vectors
            [[3.0, 4.0], [6.0, 8.0]],  # aligned: the shorter one
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor([0.0, 1.0, 0.5**0.5, 5.0], dtype=torch.float64)
    torch.testing.assert_close(toy.min_norm_hull(jac), expected, atol=1e-12, rtol=1e-12)


def test_reference_points() -> None:
    (x1, x2), best = toy.global_minimum()
    low1, low2 = toy.task_infima()
    assert low1 == pytest.approx(low2, abs=1e-9)  # the two bowls are mirror images
    assert best < min(low1, low2)  # at the minimum of the sum both losses are negative
    values = toy.losses(torch.tensor([x1, x2], dtype=torch.float64))
    assert float(values.sum()) == pytest.approx(best, abs=1e-9)
    assert abs(x1) < 1e-4  # symmetric problem: the minimiser of the sum is on x1 = 0
    _, jac = toy.value_and_jacobian(torch.tensor([[x1, x2]], dtype=torch.float64))
    assert float(jac.sum(dim=1).norm()) < 1e-5  # and it is stationary for L1 + L2


def test_non_conflicting_methods_end_pareto_stationary(result: toy.ToyResult) -> None:
    runs = result.by_strategy()
    for name in NON_CONFLICTING:
        for r in runs[name]:
            assert r.pareto_stationary, (name, r.start, r.end, r.min_norm)
            assert r.low_loss, (name, r.start, r.total)


def test_sum_and_cagrad_reach_the_minimum_of_the_sum(result: toy.ToyResult) -> None:
    _, best = toy.global_minimum()
    for r in result.by_strategy()["sum"]:
        assert r.total == pytest.approx(best, abs=1e-3), ("sum", r.start, r.end)
    # CAGrad's solver is the slowest per call: its two side starts, where MGDA does not
    # reach the minimum of the sum (next test).
    cagrad = toy.run(["cagrad"], starts=[(-8.5, -5.0), (10.0, -8.0)], **BUDGET)
    for r in cagrad.runs:
        assert r.pareto_stationary
        assert r.total == pytest.approx(best, abs=1e-3), ("cagrad", r.start, r.end)


def test_mgda_stays_on_the_side_of_the_nearer_task(result: toy.ToyResult) -> None:
    """From the bottom starts beside one task's optimum, MGDA stops on the Pareto set on
    that side: stationary, but several units above the minimum of the sum."""
    _, best = toy.global_minimum()
    by_start = {r.start: r for r in result.by_strategy()["mgda"]}
    left, right = by_start[(-8.5, -5.0)], by_start[(10.0, -8.0)]
    for r in (left, right):
        assert r.pareto_stationary
        assert r.total > best + 3.0, (r.start, r.total)
    assert left.losses[1] < left.losses[0]  # task 2's optimum is at x1 = -7
    assert right.losses[0] < right.losses[1]  # task 1's optimum is at x1 = +7


def test_same_seed_same_end_points() -> None:
    starts = toy.STARTS[1:3]
    a = toy.run(["rlw", "pcgrad"], starts=starts, steps=150, lr=0.1, seed=5)
    b = toy.run(["rlw", "pcgrad"], starts=starts, steps=150, lr=0.1, seed=5)
    c = toy.run(["rlw"], starts=starts, steps=150, lr=0.1, seed=6)
    assert [r.end for r in a.runs] == [r.end for r in b.runs]
    rlw_a = [r.end for r in a.runs if r.strategy == "rlw"]
    assert rlw_a != [r.end for r in c.runs]  # RLW's weights are random: the seed matters


def test_cli_writes_the_three_outputs(tmp_path) -> None:
    toy.main(["--out", str(tmp_path), "--strategies", "sum", "mgda", "--steps", "20"])
    payload = json.loads((tmp_path / "conflict_toy.json").read_text())
    assert len(payload["runs"]) == 2 * len(toy.STARTS)
    assert {"settings", "global_minimum", "runs"} <= set(payload)
    table = (tmp_path / "conflict_toy.md").read_text()
    assert "| `mgda` |" in table and "| `sum` |" in table
    png = (tmp_path / "conflict_toy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
