"""The miniBERT encoder against Hugging Face ``transformers.BertModel``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.minbert.model import BertConfig, BertModel, cls_pool, mean_pool

ATOL = 1e-5


def _hf_model(config: BertConfig, attn: str = "sdpa") -> Any:
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(**config.to_dict(), attn_implementation=attn)
    return transformers.BertModel(hf_config, add_pooling_layer=True)


def _copy_into_hf(ours: BertModel, hf: Any) -> None:
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == []
    # Hugging Face keeps position / token-type ids as non-persistent buffers only.
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing)


def _random_batch(vocab: int, batch: int = 4, seq: int = 12, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    lengths = torch.tensor([seq, seq - 3, 5, 1][:batch])
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    types = (torch.arange(seq)[None, :] >= (lengths[:, None] // 2)).long() * mask
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def _assert_match(ours: BertModel, hf: Any, batch: dict[str, Any], atol: float = ATOL) -> None:
    with torch.no_grad():
        hidden, pooled = ours(**batch)
        out = hf(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], out.last_hidden_state[real], atol=atol, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=atol, rtol=0)
    # Padded positions carry no information; both models still compute them alike, up to
    # the rounding of different attention kernels.
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-4, rtol=0)


def test_state_dict_keys_are_huggingface_keys() -> None:
    config = BertConfig.tiny()
    hf = _hf_model(config)
    ours = BertModel(config)
    hf_keys = {k for k in hf.state_dict() if not k.endswith(("position_ids", "token_type_ids"))}
    assert set(ours.state_dict()) == hf_keys
    assert "encoder.layer.0.attention.self.query.weight" in hf_keys


def test_tiny_random_matches_huggingface() -> None:
    torch.manual_seed(0)
    config = BertConfig.tiny()
    ours = BertModel(config).eval()
    hf = _hf_model(config).eval()
    _copy_into_hf(ours, hf)
    batch = _random_batch(config.vocab_size)
    _assert_match(ours, hf, batch)
    # Without token types / mask too.
    with torch.no_grad():
        hidden, pooled = ours(batch["input_ids"][:1])
        out = hf(input_ids=batch["input_ids"][:1])
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=ATOL, rtol=0)


def test_tiny_gradients_match_huggingface() -> None:
    torch.manual_seed(1)
    config = BertConfig.tiny()
    ours = BertModel(config).eval()  # eval: no dropout, so both are deterministic
    hf = _hf_model(config).eval()
    _copy_into_hf(ours, hf)
    batch = _random_batch(config.vocab_size, seed=3)
    real = batch["attention_mask"].bool()
    hidden, pooled = ours(**batch)
    (hidden[real].square().mean() + pooled.sum()).backward()
    out = hf(**batch)
    (out.last_hidden_state[real].square().mean() + out.pooler_output.sum()).backward()
    theirs = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4)


def test_all_minilm_matches_huggingface(minilm: tuple[BertModel, BertConfig, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    model, _, vocab_path = minilm
    hf = transformers.BertModel.from_pretrained(
        str(vocab_path.parent), attn_implementation="sdpa"
    ).eval()
    from examples.minbert.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_folder(vocab_path.parent)
    batch = tokenizer.encode(
        ["A man is playing a guitar.", "Short one.", "The quick brown fox jumps over the dog"],
        ["Someone plays an instrument on the stage tonight.", "Yes", "Lazy dogs sleep."],
    )
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    _assert_match(model.eval(), hf, batch)


def test_padding_does_not_change_real_tokens() -> None:
    torch.manual_seed(2)
    config = BertConfig.tiny()
    model = BertModel(config).eval()
    ids = torch.randint(1, config.vocab_size, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        h1, p1 = model(ids)
        h2, p2 = model(padded, mask)
    torch.testing.assert_close(h2[:, :7], h1, atol=1e-6, rtol=0)
    torch.testing.assert_close(p2, p1, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean_pool(h2, mask), h1.mean(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(cls_pool(h2), h1[:, 0])


def test_dropout_only_in_training() -> None:
    config = BertConfig.tiny(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    model = BertModel(config)
    ids = torch.randint(1, config.vocab_size, (2, 9))
    model.train()
    torch.manual_seed(0)
    a, _ = model(ids)
    torch.manual_seed(1)
    b, _ = model(ids)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, _ = model(ids)
        d, _ = model(ids)
    torch.testing.assert_close(c, d, atol=0, rtol=0)


def test_forward_rejects_bad_shapes() -> None:
    config = BertConfig.tiny()
    model = BertModel(config)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, config.max_position_embeddings + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 5))


def test_mean_pool_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(mean_pool(hidden, torch.zeros(1, 3)), torch.zeros(1, 2))


def test_config_from_json(tmp_path: Path) -> None:
    data = {**BertConfig.tiny().to_dict(), "model_type": "bert", "architectures": ["BertModel"]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert BertConfig.from_json(path) == BertConfig.tiny()

    del data["hidden_size"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hidden_size"):
        BertConfig.from_json(path)
    path.write_text(json.dumps({**BertConfig.tiny().to_dict(), "model_type": "roberta"}))
    with pytest.raises(ValueError, match="roberta"):
        BertConfig.from_json(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        BertConfig.from_json(tmp_path / "nope.json")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        BertConfig.tiny(num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.tiny(hidden_act="swish2")
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        BertConfig.tiny(hidden_dropout_prob=1.5)
