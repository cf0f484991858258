"""Every ```python block in docs/*.md runs; the README's loop runs on a toy model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


DOC_BLOCKS = [
    pytest.param(code, id=f"{path.name}:{i}")
    for path in sorted((ROOT / "docs").rglob("*.md"))
    for i, code in enumerate(blocks(path))
]


@pytest.fixture
def restored_registries() -> Iterator[None]:
    """Parts a doc example registers are gone after it (other tests list the registries)."""
    from mtlkit.losses import LOSSES
    from mtlkit.schedulers import SCHEDULERS
    from mtlkit.strategies import STRATEGIES

    saved = [(r, dict(r._classes), dict(r._aliases)) for r in (STRATEGIES, SCHEDULERS, LOSSES)]
    yield
    for registry, classes, aliases in saved:
        registry._classes.clear()
        registry._classes.update(classes)
        registry._aliases.clear()
        registry._aliases.update(aliases)


@pytest.mark.usefixtures("restored_registries")
@pytest.mark.parametrize("code", DOC_BLOCKS)
def test_doc_example_runs(code: str) -> None:
    torch.manual_seed(0)
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})


def test_docs_have_examples() -> None:
    assert len(DOC_BLOCKS) >= 5


def test_readme_loop_runs_on_a_toy_model() -> None:
    """The README's drop-in loop, given the objects it assumes (a model with an encoder)."""
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    model = Model()
    tasks = ["a", "b"]
    loader = [[(torch.randn(5, 4), torch.randn(5, 1)) for _ in tasks] for _ in range(3)]
    loss_fn = [
        lambda m, b, k=k: nn.functional.mse_loss(m.heads[k](m.encoder(b[0])), b[1])
        for k in range(2)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder.weight.detach().clone()
    (code,) = [c for c in blocks(ROOT / "README.md") if "TaskGradients" in c]
    namespace = dict(model=model, tasks=tasks, loader=loader, loss_fn=loss_fn, optimizer=optimizer)
    exec(compile(code, "<README>", "exec"), namespace)
    assert not torch.equal(model.encoder.weight, before)
