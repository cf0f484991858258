"""The WordPiece tokenizer wrapper on the embedded all-MiniLM vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.minbert.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> BertTokenizer:
    return BertTokenizer.from_folder(minilm_dir)


def test_special_ids(tokenizer: BertTokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id) == (
        0,
        100,
        101,
        102,
    )
    assert tokenizer.vocab_size == 30522
    assert tokenizer.lowercase


def test_single_sentence(tokenizer: BertTokenizer) -> None:
    batch = tokenizer.encode(["Hello World!"])
    hello, world, bang = (tokenizer._tokenizer.token_to_id(t) for t in ("hello", "world", "!"))
    assert batch["input_ids"].tolist() == [[101, hello, world, bang, 102]]
    assert batch["token_type_ids"].tolist() == [[0] * 5]
    assert batch["attention_mask"].tolist() == [[1] * 5]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pair_layout(tokenizer: BertTokenizer) -> None:
    batch = tokenizer.encode(["a cat sat", "dog"], ["on the mat", "ran"])
    a = tokenizer.tokenize("a cat sat")
    b = tokenizer.tokenize("on the mat")
    ids = [tokenizer._tokenizer.token_to_id(t) for t in ("[CLS]", *a, "[SEP]", *b, "[SEP]")]
    assert batch["input_ids"][0].tolist() == ids
    assert batch["token_type_ids"][0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # Second row: [CLS] dog [SEP] ran [SEP] then padding (segment 0, mask 0, id [PAD]).
    dog, ran = (tokenizer._tokenizer.token_to_id(t) for t in ("dog", "ran"))
    pad = len(ids) - 5
    assert batch["input_ids"][1].tolist() == [101, dog, 102, ran, 102] + [0] * pad
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1] + [0] * pad
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * pad


def test_dynamic_padding(tokenizer: BertTokenizer) -> None:
    short = tokenizer.encode(["one", "two words"])
    assert short["input_ids"].shape == (2, 4)
    longer = tokenizer.encode(["one", "a somewhat longer sentence here"])
    assert longer["input_ids"].shape[1] > 4
    assert longer["attention_mask"].sum(dim=1).tolist()[0] == 3


def test_truncation(tokenizer: BertTokenizer) -> None:
    long_text = " ".join(["word"] * 300)
    assert tokenizer.encode([long_text])["input_ids"].shape == (1, 128)
    batch = tokenizer.encode([long_text], max_length=10)
    assert batch["input_ids"][0, 0] == 101 and batch["input_ids"][0, -1] == 102
    assert batch["input_ids"].shape == (1, 10)
    # Pairs: the longer sentence is shortened first; both keep their [SEP].
    pair = tokenizer.encode([long_text], ["short one"], max_length=12)
    assert pair["input_ids"].shape == (1, 12)
    # [CLS] + 7 x "word" + [SEP] (segment 0), then "short one [SEP]" (segment 1).
    assert pair["token_type_ids"][0].tolist() == [0] * 9 + [1] * 3
    assert pair["input_ids"][0].tolist().count(102) == 2
    # The call's max_length does not stick.
    assert tokenizer.encode([long_text])["input_ids"].shape == (1, 128)


def test_matches_shipped_tokenizer_json(tokenizer: BertTokenizer, minilm_dir: Path) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = [
        "Café déjà vu, naïve résumé!",
        "Don't stop: 3.14 isn't π. 日本語 text",
        "  UPPER lower\tMiXeD  ",
        "supercalifragilisticexpialidocious",
    ]
    for text in texts:
        ours = tokenizer.encode([text])["input_ids"][0].tolist()
        assert ours == reference.encode(text).ids, text


def test_decode_and_errors(tokenizer: BertTokenizer) -> None:
    ids = tokenizer.encode(["Hello there"])["input_ids"][0]
    assert tokenizer.decode(ids) == "hello there"
    with pytest.raises(TypeError):
        tokenizer.encode("not a list")
    with pytest.raises(ValueError, match="empty batch"):
        tokenizer.encode([])
    with pytest.raises(ValueError, match="differ in length"):
        tokenizer.encode(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="at least 3"):
        tokenizer.encode(["a"], max_length=2)
    with pytest.raises(FileNotFoundError, match="vocab"):
        BertTokenizer("/nonexistent/vocab.txt")
