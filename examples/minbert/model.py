"""A BERT encoder in one file, readable top to bottom.

The architecture is the original BERT (Devlin et al., 2019): token + position + segment
embeddings, a stack of post-LayerNorm transformer layers (self-attention, then a GELU
feed-forward block, each wrapped in dropout + residual + LayerNorm), and a pooler
(dense + tanh on the ``[CLS]`` token).

Module and parameter names deliberately follow the Hugging Face ``BertModel`` state dict
(``embeddings.word_embeddings.weight``, ``encoder.layer.0.attention.self.query.weight``, ...,
``pooler.dense.weight``), so a Hugging Face checkpoint loads as is with
:func:`examples.minbert.weights.load_pretrained` (this module imports nothing else of the
example). That is why a few attributes have unusual names such as
``attention.self`` and ``LayerNorm``.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused
kernel (flash / memory-efficient) where the device supports one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "BertAttention",
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertIntermediate",
    "BertLayer",
    "BertModel",
    "BertPooler",
    "BertSelfAttention",
    "ResidualLayerNorm",
    "cls_pool",
    "mean_pool",
]


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


#: Feed-forward activations understood in ``BertConfig.hidden_act`` (Hugging Face names).
#: ``"gelu"`` is the exact (erf) GELU used by BERT and MiniLM.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder.

    Field names and defaults (BERT-base, uncased) are those of a Hugging Face ``config.json``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    #: Token id of ``[PAD]``; its embedding row receives no gradient (as in Hugging Face).
    pad_token_id: int = 0
    #: Standard deviation of the normal initialisation of weights (random init only).
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {p!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary")

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def tiny(cls, **overrides: Any) -> BertConfig:
        """A very small configuration for tests (hidden 32, 2 layers, 2 heads, vocab 128)."""
        values: dict[str, Any] = {
            "vocab_size": 128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "type_vocab_size": 2,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BertConfig:
        """Build a config from a Hugging Face style mapping; unknown keys are ignored.

        Raises:
            ValueError: a required field is missing, or the mapping describes a model this
                encoder does not implement (``model_type`` other than ``"bert"``, or a
                ``position_embedding_type`` other than ``"absolute"``).
        """
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type {model_type!r} is not supported (expected 'bert')")
        position_type = data.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type {position_type!r} is not supported (expected 'absolute')"
            )
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"config is missing required fields: {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a Hugging Face ``config.json``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not valid JSON or does not describe a supported BERT.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (Hugging Face key names)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """Sum of token, position and segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Embed ``input_ids`` (B, T) into (B, T, hidden)."""
        seq_len = input_ids.shape[1]
        x = self.word_embeddings(input_ids)
        # Positions are always 0..T-1: a slice of the table, no index tensor needed.
        x = x + self.position_embeddings.weight[:seq_len]
        if token_type_ids is None:
            # Every token is segment 0: broadcast that single row.
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        out: Tensor = self.dropout(self.LayerNorm(x))
        return out


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (the Q/K/V projections and the mixing)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.dropout_p = config.attention_probs_dropout_prob
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend over ``x`` (B, T, hidden).

        ``mask`` is boolean, broadcastable to (B, heads, T, T), True where a key may be
        attended to; typically (B, 1, 1, T) built from the padding mask.
        """
        B, T, C = x.shape
        # (B, T, C) -> (B, heads, T, head_size): a view, SDPA accepts the strides as they are.
        q = self.query(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        k = self.key(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        v = self.value(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        # Back to (B, T, C): the one copy of the block.
        return y.transpose(1, 2).reshape(B, T, C)


class ResidualLayerNorm(nn.Module):
    """Post-LN sub-layer output: ``LayerNorm(residual + dropout(dense(x)))``.

    Used twice per layer, as ``attention.output`` and as ``output`` (Hugging Face's
    ``BertSelfOutput`` and ``BertOutput``).
    """

    def __init__(self, in_features: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        """Project ``x``, add ``residual`` and normalise."""
        out: Tensor = self.LayerNorm(residual + self.dropout(self.dense(x)))
        return out


class BertAttention(nn.Module):
    """Self-attention followed by its output projection, residual and LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # ``self.self`` mirrors the Hugging Face key ``attention.self.query.weight``.
        self.self = BertSelfAttention(config)
        self.output = ResidualLayerNorm(config.hidden_size, config)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, hidden) -> (B, T, hidden)."""
        out: Tensor = self.output(self.self(x, mask), x)
        return out


class BertIntermediate(nn.Module):
    """First half of the feed-forward block: expand to ``intermediate_size`` and activate."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, hidden) -> (B, T, intermediate)."""
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One post-LN transformer layer: attention block, then feed-forward block."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = ResidualLayerNorm(config.intermediate_size, config)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, hidden) -> (B, T, hidden)."""
        x = self.attention(x, mask)
        out: Tensor = self.output(self.intermediate(x), x)
        return out


class BertEncoder(nn.Module):
    """The stack of transformer layers."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run every layer in turn."""
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """Dense + tanh on the first (``[CLS]``) token, as pre-trained by next-sentence prediction."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, hidden) -> (B, hidden)."""
        return torch.tanh(self.dense(hidden[:, 0]))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class BertModel(nn.Module):
    """BERT encoder: embeddings, transformer layers, pooler.

    ``state_dict()`` keys equal those of Hugging Face's ``BertModel`` (without the
    ``position_ids`` / ``token_type_ids`` buffers, which are recomputed here). The pooler
    is always built (checkpoints hold it, and its random initialisation is part of the
    seeded sequence); :meth:`hidden_states` runs the encoder without it.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode a batch: ``(last_hidden_state, pooled)`` of shapes (B, T, hidden) and
        (B, hidden). See :meth:`hidden_states` for the arguments."""
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return hidden, self.pooler(hidden)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """The last layer's hidden states (B, T, hidden), without the pooler.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1/True for real tokens and 0/False for padding; ``None``
                means no padding. Each row needs at least one real token.
            token_type_ids: (B, T) segment ids (0 for the first sentence, 1 for the second);
                ``None`` means all zeros.
        """
        if input_ids.dim() != 2:
            shape = tuple(input_ids.shape)
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {shape}")
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); truncate the inputs"
            )
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                    f"input_ids shape {tuple(input_ids.shape)}"
                )
            # (B, T) -> (B, 1, 1, T): broadcast over heads and query positions.
            mask = attention_mask.bool()[:, None, None, :]
        out: Tensor = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        return out


# --------------------------------------------------------------------------------------------
# Sentence embeddings
# --------------------------------------------------------------------------------------------


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the hidden states of real tokens.

    Args:
        hidden: (B, T, H) hidden states.
        mask: (B, T) attention mask, 1/True for real tokens.

    Returns:
        (B, H); a row whose mask is all zero gives zeros.
    """
    weights = mask.to(hidden.dtype)
    summed = torch.einsum("bt,bth->bh", weights, hidden)
    counts = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return summed / counts


def cls_pool(hidden: Tensor) -> Tensor:
    """Hidden state of the first (``[CLS]``) token: (B, T, H) -> (B, H)."""
    return hidden[:, 0]
