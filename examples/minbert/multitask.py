"""The multitask model: one BERT encoder, three task heads, and each task's loss.

Tasks (index order is the order of the rows of J):

0. ``sst``   SST-5 sentiment, 5 classes, cross-entropy on the sentence embedding.
1. ``quora`` Quora paraphrase detection, binary. Structures:
   ``cross`` (the pair joined with [SEP], one encoder pass, a logit on its embedding),
   ``siamese`` (each question encoded alone; a logit on ``[u, v, |u-v|]``), or
   ``cosine`` (each question encoded alone; the logit is an affine map of ``cos(u, v)``).
   Losses: ``bce`` (any structure), or, for the Siamese structures, the pairwise losses
   ``cosine-embedding`` (margin schedule), ``contrastive``, ``mnrl`` (multiple negatives
   ranking on the duplicate pairs, in-batch negatives) and ``triplet`` (duplicate pairs
   as anchor/positive; the negative is another pair's question from the same batch).
2. ``sts``   STS similarity, a score in 0..5. Structures: ``cosine`` (Siamese; the
   prediction is ``5·cos(u, v)``) or ``cross`` (a regressor on the joined pair).
   Losses: ``mse`` (of ``5·cos`` or of the regressor's output against the score) or
   ``cosent`` (Siamese only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.losses import (
    ContrastiveLoss,
    CosineEmbeddingLoss,
    LinearMargin,
    TripletLoss,
    cosent_loss,
    multiple_negatives_ranking_loss,
)

from .data import Batch
from .model import BertModel, cls_pool, mean_pool

TASKS = ("sst", "quora", "sts")

Pooling = Literal["mean", "cls"]
QuoraStructure = Literal["cross", "siamese", "cosine"]
STSStructure = Literal["cosine", "cross"]

QUORA_LOSSES = ("bce", "cosine-embedding", "contrastive", "mnrl", "triplet")
STS_LOSSES = ("mse", "cosent")
SST_LOSSES = ("ce",)


@dataclass
class TaskOptions:
    """How each task is modelled and trained (see the module docstring)."""

    pooling: Pooling = "mean"
    quora_structure: QuoraStructure = "siamese"
    sts_structure: STSStructure = "cosine"
    sst_loss: str = "ce"
    quora_loss: str = "bce"
    sts_loss: str = "mse"
    margin: float = 0.5
    margin_end: float | None = None
    margin_steps: int = 1000
    dropout: float = 0.0  # on the heads' inputs (the encoder keeps its own)
    mnrl_scale: float = 20.0
    cosent_scale: float = 20.0

    def __post_init__(self) -> None:
        checks = [
            ("pooling", self.pooling, ("mean", "cls")),
            ("quora_structure", self.quora_structure, ("cross", "siamese", "cosine")),
            ("sts_structure", self.sts_structure, ("cosine", "cross")),
            ("sst_loss", self.sst_loss, SST_LOSSES),
            ("quora_loss", self.quora_loss, QUORA_LOSSES),
            ("sts_loss", self.sts_loss, STS_LOSSES),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.quora_loss != "bce" and self.quora_structure == "cross":
            raise ValueError(
                f"quora loss {self.quora_loss!r} compares two embeddings: use "
                "quora_structure 'siamese' or 'cosine'"
            )
        if self.sts_loss == "cosent" and self.sts_structure != "cosine":
            raise ValueError("sts loss 'cosent' needs sts_structure 'cosine'")

    def pair_mode(self, task: str) -> Literal["cross", "siamese"]:
        """How a pair task's batches are tokenized."""
        if task == "quora":
            return "cross" if self.quora_structure == "cross" else "siamese"
        if task == "sts":
            return "cross" if self.sts_structure == "cross" else "siamese"
        return "cross"


class MultitaskBert(nn.Module):
    """A shared BERT encoder with SST, Quora and STS heads.

    The encoder's parameters are the shared parameters handed to the gradient strategy;
    each head (and the margin-scheduled loss modules) belongs to one task.
    """

    def __init__(self, encoder: BertModel, options: TaskOptions | None = None) -> None:
        super().__init__()
        self.options = options or TaskOptions()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(self.options.dropout)
        self.sst_head = nn.Linear(hidden, 5)
        quora_in = {"cross": hidden, "siamese": 3 * hidden, "cosine": 1}
        self.quora_head = nn.Linear(quora_in[self.options.quora_structure], 1)
        if self.options.quora_structure == "cosine":
            with torch.no_grad():  # start as logit = 10 * (cos - 0.5)
                self.quora_head.weight.fill_(10.0)
                self.quora_head.bias.fill_(-5.0)
        self.sts_head = nn.Linear(hidden, 1) if self.options.sts_structure == "cross" else None
        margin = (
            LinearMargin(self.options.margin, self.options.margin_end, self.options.margin_steps)
            if self.options.margin_end is not None
            else self.options.margin
        )
        self.quora_margin_loss: nn.Module | None = None
        if self.options.quora_loss == "cosine-embedding":
            self.quora_margin_loss = CosineEmbeddingLoss(margin)
        elif self.options.quora_loss == "contrastive":
            self.quora_margin_loss = ContrastiveLoss(margin, distance="cosine")
        elif self.options.quora_loss == "triplet":
            self.quora_margin_loss = TripletLoss(margin, distance="cosine")
        # Decision threshold on cos(u, v) for Quora when trained with a pairwise loss;
        # fitted on training pairs by :func:`fit_quora_threshold`.
        self.register_buffer("quora_threshold", torch.tensor(0.5))

    # -------------------------------------------------------------- embeddings
    def embed(self, inputs: dict[str, Tensor]) -> Tensor:
        """Sentence (or joined pair) embedding, pooled as configured."""
        hidden, pooled = self.encoder(
            inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids")
        )
        del pooled
        if self.options.pooling == "cls":
            return cls_pool(hidden)
        return mean_pool(hidden, inputs["attention_mask"])

    def embed_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Embeddings (u, v) of a Siamese batch's two sentences, in one encoder pass."""
        if batch.inputs_b is None:
            raise ValueError("a Siamese structure needs batches collated with pair_mode='siamese'")
        a, b = batch.inputs, batch.inputs_b
        n, width = a["input_ids"].shape[0], max(a["input_ids"].shape[1], b["input_ids"].shape[1])
        joined = {
            key: torch.cat(
                [
                    F.pad(a[key], (0, width - a[key].shape[1])),
                    F.pad(b[key], (0, width - b[key].shape[1])),
                ]
            )
            for key in a
        }
        emb = self.embed(joined)
        return emb[:n], emb[n:]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable parameters (shared by every task)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    # -------------------------------------------------------------- outputs
    def sst_logits(self, batch: Batch) -> Tensor:
        return self.sst_head(self.dropout(self.embed(batch.inputs)))

    def quora_logits(self, batch: Batch) -> Tensor:
        s = self.options.quora_structure
        if s == "cross":
            return self.quora_head(self.dropout(self.embed(batch.inputs))).squeeze(-1)
        u, v = self.embed_pair(batch)
        if s == "siamese":
            feats = torch.cat([u, v, (u - v).abs()], dim=-1)
            return self.quora_head(self.dropout(feats)).squeeze(-1)
        cos = F.cosine_similarity(u, v, dim=-1)
        return self.quora_head(cos[:, None]).squeeze(-1)

    def sts_scores(self, batch: Batch) -> Tensor:
        """Predicted similarity in the label's units (0..5)."""
        if self.sts_head is not None:
            return self.sts_head(self.dropout(self.embed(batch.inputs))).squeeze(-1)
        u, v = self.embed_pair(batch)
        return 5.0 * F.cosine_similarity(u, v, dim=-1)

    # -------------------------------------------------------------- losses
    def task_loss(self, task: int, batch: Batch) -> Tensor:
        """Training loss of task ``task`` (index into :data:`TASKS`) on ``batch``."""
        opts = self.options
        if task == 0:
            return F.cross_entropy(self.sst_logits(batch), batch.labels)
        if task == 1:
            labels = batch.labels.float()
            if opts.quora_loss == "bce":
                return F.binary_cross_entropy_with_logits(self.quora_logits(batch), labels)
            u, v = self.embed_pair(batch)
            if opts.quora_loss == "mnrl":
                pos = batch.labels.bool()
                if not bool(pos.any()):
                    return (u.sum() + v.sum()) * 0.0
                return multiple_negatives_ranking_loss(u[pos], v[pos], scale=opts.mnrl_scale)
            assert self.quora_margin_loss is not None
            if opts.quora_loss == "cosine-embedding":
                return self.quora_margin_loss(u, v, labels * 2 - 1)
            if opts.quora_loss == "contrastive":
                return self.quora_margin_loss(u, v, labels)
            pos = batch.labels.bool()  # triplet
            if not bool(pos.any()) or u.shape[0] < 2:
                return (u.sum() + v.sum()) * 0.0
            negatives = torch.roll(v, shifts=1, dims=0)[pos]
            return self.quora_margin_loss(u[pos], v[pos], negatives)
        if task == 2:
            target = batch.labels.float()
            if opts.sts_loss == "cosent":
                u, v = self.embed_pair(batch)
                return cosent_loss(u, v, target, scale=opts.cosent_scale)
            # on the label's 0..5 scale: the loss (and gradient) is of the same order as
            # the other tasks' (on a 0..1 scale it is ~25x smaller and STS gets neglected)
            return F.mse_loss(self.sts_scores(batch), target)
        raise IndexError(f"task index {task} is outside 0..2")

    def step_schedules(self) -> None:
        """Advance the margin schedule of the pairwise loss (once per optimizer step)."""
        if self.quora_margin_loss is not None:
            self.quora_margin_loss.step()  # type: ignore[operator]

    # -------------------------------------------------------------- predictions
    @torch.no_grad()
    def predict(self, task: int, batch: Batch) -> Tensor:
        """Predictions: SST class, Quora 0/1, STS score."""
        if task == 0:
            return self.sst_logits(batch).argmax(-1)
        if task == 1:
            if self.options.quora_loss == "bce":
                return (self.quora_logits(batch) > 0).long()
            u, v = self.embed_pair(batch)
            return (F.cosine_similarity(u, v, dim=-1) > self.quora_threshold).long()
        return self.sts_scores(batch)

    @torch.no_grad()
    def quora_cosines(self, batch: Batch) -> Tensor:
        u, v = self.embed_pair(batch)
        return F.cosine_similarity(u, v, dim=-1)


def best_threshold(cosines: Tensor, labels: Tensor) -> float:
    """The cosine threshold that maximises accuracy on (cosines, labels)."""
    order = torch.argsort(cosines, descending=True)
    c, y = cosines[order], labels[order].float()
    # predicting 1 for the top i pairs: correct = positives among them + negatives after
    tp = torch.cumsum(y, 0)
    correct = tp + (len(y) - y.sum()) - (torch.arange(1, len(y) + 1) - tp)
    i = int(correct.argmax())
    below = c[i + 1] if i + 1 < len(c) else c[i] - 1e-3
    return float((c[i] + below) / 2)
