"""Shared fixtures of the miniBERT example tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.minbert.model import BertConfig, BertModel


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint folder (skips when the package is absent)."""
    from examples.minbert.weights import default_weights_dir

    try:
        return default_weights_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def minilm(minilm_dir: Path) -> tuple[BertModel, BertConfig, Path]:
    """The embedded checkpoint, loaded once per session."""
    from examples.minbert.weights import load_pretrained

    return load_pretrained(minilm_dir)
