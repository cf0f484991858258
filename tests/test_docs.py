"""Every ```python block in docs/*.md runs; the README's loop runs on a toy model.

A block that needs a framework of the ``integrations`` extra that is not installed is
skipped (with the missing name as the reason); any other failure fails.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FENCE = re.compile(r"^```(\w*)\n.*?^```$", re.DOTALL | re.MULTILINE)
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.MULTILINE)

#: The optional frameworks (the ``integrations`` extra) a doc block may need, by what it
#: imports (a framework, or its ``mtlkit.integrations`` submodule). The Hugging Face
#: ``Trainer`` refuses to run without ``accelerate`` (an ``ImportError``, not a missing
#: module), so it is checked before the block runs.
NEEDS = {
    "transformers": ("transformers", "accelerate"),
    "sentence_transformers": ("sentence_transformers", "transformers", "accelerate"),
    "lightning": ("lightning",),
    "datasets": ("datasets",),
    "accelerate": ("accelerate",),
}
OPTIONAL = frozenset(name for names in NEEDS.values() for name in names)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def missing_frameworks(code: str) -> list[str]:
    """The optional frameworks that ``code`` needs and that are not installed."""
    needed: set[str] = set()
    for module in IMPORT.findall(code):
        parts = module.split(".")
        top = parts[2] if parts[:2] == ["mtlkit", "integrations"] and len(parts) > 2 else parts[0]
        needed.update(NEEDS.get(top, ()))
    return sorted(name for name in needed if importlib.util.find_spec(name) is None)


def run_block(code: str) -> None:
    """Exec one doc block; skip it if it needs an optional framework that is missing."""
    missing = missing_frameworks(code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed: mtlkit[integrations])")
    try:
        exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})
    except ModuleNotFoundError as error:  # one the import scan above did not see
        name = (error.name or "").split(".")[0]
        if name not in OPTIONAL:
            raise
        pytest.skip(f"needs {name} (not installed: mtlkit[integrations])")


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
    run_block(code)


def test_docs_have_examples() -> None:
    assert len(DOC_BLOCKS) >= 5


def test_every_code_block_of_the_integrations_doc_runs() -> None:
    """No snippet of docs/integrations.md escapes the test (shell commands excepted)."""
    languages = FENCE.findall((ROOT / "docs" / "integrations.md").read_text())
    assert set(languages) == {"python", "bash"}, languages
    assert languages.count("python") >= 4


@pytest.mark.parametrize(
    "code",
    ["import lightning as L\n", "from mtlkit.integrations.transformers import X\n"],
)
def test_a_block_without_its_framework_is_skipped(
    code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("lightning", "accelerate"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(pytest.skip.Exception, match="lightning|accelerate"):
        run_block(code)


def test_a_missing_framework_seen_only_at_run_time_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(pytest.skip.Exception, match="datasets"):
        run_block("import importlib\nimportlib.import_module('datasets')\n")
    with pytest.raises(ModuleNotFoundError):  # not an optional framework: a failure
        run_block("import mtlkit_no_such_module\n")


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
