"""BERT WordPiece tokenization producing padded PyTorch tensors.

A thin wrapper over the ``tokenizers`` library: a WordPiece model read from ``vocab.txt``,
BERT's normaliser (cleanup, Chinese-character splitting, optional lowercasing and accent
stripping) and pre-tokeniser (whitespace and punctuation), and the BERT templates
``[CLS] a [SEP]`` (segment ids 0) and ``[CLS] a [SEP] b [SEP]`` (segment ids 0 for
``[CLS] a [SEP]``, 1 for ``b [SEP]``). Inputs are truncated to ``max_length`` tokens
(special tokens included; for pairs the longer sentence is shortened first) and each batch is
padded to its own longest sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from torch import Tensor

__all__ = ["BertTokenizer", "Encoded"]

#: A tokenized batch: ``input_ids``, ``attention_mask`` and ``token_type_ids``, each (B, T) int64.
Encoded = dict[str, Tensor]

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
    """WordPiece tokenizer for BERT checkpoints.

    Args:
        vocab_file: the checkpoint's ``vocab.txt`` (one token per line).
        lowercase: lowercase (and strip accents from) the text; ``True`` for uncased
            checkpoints such as all-MiniLM-L6-v2. :meth:`from_folder` reads it from the
            checkpoint's ``tokenizer_config.json``.
        max_length: default truncation length, special tokens included.
    """

    def __init__(self, vocab_file: str | Path, *, lowercase: bool = True, max_length: int = 128):
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {vocab_file}")
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 ([CLS] x [SEP]), got {max_length}")
        tokenizer = Tokenizer(WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
        missing = [t for t in _SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"{vocab_file}: special tokens missing from the vocabulary: {missing}")
        # Mark them special (they keep their vocabulary ids): never split, skipped by decode.
        tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        self.cls_id = self._id(tokenizer, "[CLS]")
        self.sep_id = self._id(tokenizer, "[SEP]")
        self.pad_id = self._id(tokenizer, "[PAD]")
        self.unk_id = self._id(tokenizer, "[UNK]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        # No fixed length: each batch is padded to its longest sequence.
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", pad_type_id=0)
        self._tokenizer = tokenizer
        self.vocab_file = vocab_file
        self.lowercase = lowercase
        self.max_length = max_length
        self._set_truncation(max_length)

    @staticmethod
    def _id(tokenizer: Tokenizer, token: str) -> int:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None  # checked in __init__
        return token_id

    def _set_truncation(self, max_length: int) -> None:
        current = self._tokenizer.truncation
        if current is None or current.get("max_length") != max_length:
            self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")

    @classmethod
    def from_folder(
        cls, folder: str | Path | None = None, *, max_length: int = 128
    ) -> BertTokenizer:
        """The tokenizer of a checkpoint folder (default: the embedded all-MiniLM-L6-v2).

        Lowercasing follows ``do_lower_case`` in the folder's ``tokenizer_config.json``
        (``True`` when the file or the field is absent, as in uncased BERT).
        """
        from .weights import _resolve_folder, read_tokenizer_config

        path = _resolve_folder(folder)
        lowercase = bool(read_tokenizer_config(path).get("do_lower_case", True))
        return cls(path / "vocab.txt", lowercase=lowercase, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (no special tokens, no truncation)."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).tokens)

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids (WordPiece pieces joined)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def encode(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
    ) -> Encoded:
        """Tokenize a batch of sentences or sentence pairs.

        Args:
            texts: the (first) sentences.
            text_pairs: second sentences, same length as ``texts``, for
                ``[CLS] a [SEP] b [SEP]`` inputs; ``None`` for single sentences.
            max_length: truncation length for this call (default: the tokenizer's).

        Returns:
            ``input_ids``, ``attention_mask`` (1 for tokens, 0 for padding) and
            ``token_type_ids`` (0 / 1 segments, 0 on padding), each (B, T) int64, T the
            longest sequence of the batch.
        """
        if isinstance(texts, str) or (text_pairs is not None and isinstance(text_pairs, str)):
            raise TypeError("encode expects sequences of strings; wrap a single sentence in a list")
        if len(texts) == 0:
            raise ValueError("cannot encode an empty batch")
        length = self.max_length if max_length is None else max_length
        if length < 3:
            raise ValueError(f"max_length must be at least 3 ([CLS] x [SEP]), got {length}")
        self._set_truncation(length)
        encodings: list[Encoding]
        if text_pairs is None:
            encodings = self._tokenizer.encode_batch(list(texts))
        else:
            if len(text_pairs) != len(texts):
                raise ValueError(
                    f"texts and text_pairs differ in length ({len(texts)} vs {len(text_pairs)})"
                )
            encodings = self._tokenizer.encode_batch(list(zip(texts, text_pairs, strict=True)))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
        }

    __call__ = encode

    def __repr__(self) -> str:
        return (
            f"BertTokenizer({str(self.vocab_file)!r}, lowercase={self.lowercase}, "
            f"max_length={self.max_length})"
        )
