"""The multitask model: one BERT encoder shared by every task, one head per task.

What each head is, and how its task's loss and predictions are computed, is in the task's
record (:mod:`examples.minbert.tasks`); this module only joins an encoder to the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.losses import MarginLoss

from .data import Batch
from .model import BertModel, cls_pool, mean_pool
from .tasks import Task
from .tokenizer import Encoded

__all__ = ["POOLINGS", "MultitaskBert", "Pooling"]

Pooling = Literal["mean", "cls", "pooler"]
#: ``mean`` of the last hidden states over real tokens, the ``cls`` token's hidden state,
#: or the BERT ``pooler``'s output (dense + tanh on ``[CLS]``).
POOLINGS: tuple[str, ...] = ("mean", "cls", "pooler")


class MultitaskBert(nn.Module):
    """A shared BERT encoder and the heads of ``tasks`` (``heads[task.name]``).

    The encoder's trainable parameters are the shared parameters handed to the gradient
    strategy (the columns of J). The BERT pooler is shared only when the embeddings read
    it (``pooling="pooler"``); otherwise it is frozen, so it is neither in J nor in the
    optimizer. It stays in the state dict: checkpoints with pooler weights load as they are.

    Args:
        encoder: the BERT encoder.
        tasks: the task records, in the order of the rows of J.
        pooling: how a sentence embedding is read off the encoder (:data:`POOLINGS`).
    """

    def __init__(self, encoder: BertModel, tasks: Sequence[Task], pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.tasks = list(tasks)
        hidden = encoder.config.hidden_size
        # built in task order: with a seeded global RNG, a head's initial values depend
        # on the heads before it
        self.heads = nn.ModuleDict({task.name: task.head(hidden) for task in self.tasks})
        if pooling != "pooler":
            encoder.pooler.requires_grad_(False)

    # -------------------------------------------------------------- embeddings
    def embed(self, inputs: Encoded) -> Tensor:
        """Sentence (or joined pair) embeddings (B, hidden), pooled as configured."""
        args = (inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        if self.pooling == "pooler":
            return self.encoder(*args)[1]
        hidden = self.encoder.hidden_states(*args)
        if self.pooling == "cls":
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

    def head_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (each belongs to one task)."""
        return list(self.heads.parameters())

    # -------------------------------------------------------------- per task
    def task_loss(self, index: int, batch: Batch) -> Tensor:
        """Training loss of ``tasks[index]`` on ``batch``."""
        task = self.tasks[index]
        return task.loss(self, self.heads[task.name], batch)

    @torch.no_grad()
    def predict(self, index: int, batch: Batch) -> Tensor:
        """Predictions of ``tasks[index]`` on ``batch``, in the label's units."""
        task = self.tasks[index]
        return task.predict(self, self.heads[task.name], batch)

    def step_schedules(self) -> None:
        """Advance the heads' margin schedules (once per optimizer step)."""
        for module in self.heads.modules():
            if isinstance(module, MarginLoss):
                module.step()
