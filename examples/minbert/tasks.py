"""The tasks of the miniBERT example: one record per task.

A :class:`Task` holds everything the rest of the example needs to know about one task:
its name (data files ``{name}-{split}.csv``, ``--file`` keys, report columns), how its
files are read, how its batches are tokenized, how its head is built, its training loss,
its prediction, its metrics, and its *score*: the one number in [0, 1] that the overall
score averages and dynamic batch allocation reads. Data loading, the model, the loop,
evaluation and the reports iterate over a list of records; nothing else names a task.

:data:`TASKS` maps names to records, or to functions that build a record from options
(the built-in tasks have choices: Quora as a cross-encoder or a Siamese pair, trained with
binary cross-entropy or a pairwise loss of :mod:`mtlkit.losses`...). Adding a task is one
record (and a reader, if its file format is new)::

    TASKS["parity"] = Task(
        name="parity",  # reads parity-train.csv and parity-dev.csv
        read=read_sst,  # the SST file format: id, sentence, an integer label
        pair_mode="single",
        head=lambda hidden: Classifier(hidden, 2),
        loss=classification_loss,
        predict=classification_predict,
        metrics=accuracy_metrics,
        score=lambda m: m["acc"],
        num_classes=2,
    )

then train with ``--tasks sst,quora,sts,parity`` (``tests/minbert/test_tasks.py`` does so).
The order of the tasks is the order of the rows of the gradient matrix J.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.losses import LOSSES, get_loss

from . import metrics
from .data import Batch, PairMode, read_quora, read_sst, read_sts
from .tokenizer import Encoded

__all__ = [
    "TASKS",
    "Classifier",
    "Embedder",
    "PairClassifier",
    "SimilarityRegressor",
    "Task",
    "accuracy_metrics",
    "best_threshold",
    "classification_loss",
    "classification_predict",
    "loss_name",
    "make_tasks",
    "quora",
    "quora_losses",
    "sst",
    "sts",
    "sts_losses",
]


class Embedder(Protocol):
    """What a task's functions may ask of the model (:class:`~.multitask.MultitaskBert`)."""

    def embed(self, inputs: Encoded) -> Tensor:
        """(B, hidden) embeddings of a tokenized batch."""
        ...

    def embed_pair(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Embeddings (u, v) of a Siamese batch's two sentences."""
        ...


#: ``(model, head, batch) -> value``: a task's loss (a scalar) or predictions (B,)
TaskFn = Callable[[Embedder, Any, Batch], Tensor]


@dataclass(frozen=True)
class Task:
    """One task of the multitask model.

    Attributes:
        name: the task's name: data files ``{name}-{split}.csv``, report and history keys
            (``{name}_{metric}``), the ``--file {name}-train=PATH`` option.
        read: reads one data file: ``read(path, *, strict, limit) -> list of examples``
            (see :mod:`examples.minbert.data`).
        pair_mode: how batches are tokenized: ``"single"`` sentences, a sentence pair
            joined (``"cross"``) or its two sentences apart (``"siamese"``).
        head: ``head(hidden_size) -> nn.Module``: the task's own parameters (and any
            state of its loss, such as a margin schedule).
        loss: ``loss(model, head, batch) -> scalar``: the training loss.
        predict: ``predict(model, head, batch) -> (B,)``: predictions in the label's units.
        metrics: ``metrics(predictions, labels) -> {name: value}`` on numpy arrays.
        score: ``score(metrics) -> float`` in [0, 1], higher is better: what the overall
            score averages and dynamic batch allocation reads.
        batch_size: examples per step (``--batch-size`` overrides it).
        num_classes: for a classification task, its number of classes: the reports write
            its confusion matrix.
        calibrate: optional ``calibrate(model, head, batches)``, run on the training
            examples before each evaluation to fit a decision rule (Quora with a pairwise
            loss: the cosine threshold).
    """

    name: str
    read: Callable[..., list[Any]]
    pair_mode: PairMode
    head: Callable[[int], nn.Module]
    loss: TaskFn
    predict: TaskFn
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    score: Callable[[Mapping[str, float]], float]
    batch_size: int = 16
    num_classes: int | None = None
    calibrate: Callable[[Embedder, Any, Iterable[Batch]], None] | None = None


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Dropout, then a linear layer: logits of a sentence embedding."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.linear(self.dropout(x))
        return out


class PairClassifier(nn.Module):
    """A logit for a sentence pair (Quora), and the pairwise loss that may train it.

    Structures: ``"cross"`` (a linear layer on the joined pair's embedding), ``"siamese"``
    (on ``[u, v, |u - v|]`` of the two sentences' embeddings) or ``"cosine"`` (an affine
    map of ``cos(u, v)``, starting as ``10 (cos - 0.5)``). With a pairwise loss the pair
    is a duplicate when ``cos(u, v)`` exceeds :attr:`threshold` (fitted on training pairs).
    """

    def __init__(
        self, hidden: int, structure: str, dropout: float = 0.0, pairwise: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.structure = structure
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear({"cross": hidden, "siamese": 3 * hidden, "cosine": 1}[structure], 1)
        if structure == "cosine":
            with torch.no_grad():
                self.linear.weight.fill_(10.0)
                self.linear.bias.fill_(-5.0)
        self.pairwise = pairwise
        self.register_buffer("threshold", torch.tensor(0.5))

    def logits(self, model: Embedder, batch: Batch) -> Tensor:
        if self.structure == "cross":
            return self.linear(self.dropout(model.embed(batch.inputs))).squeeze(-1)
        u, v = model.embed_pair(batch)
        if self.structure == "siamese":
            features = torch.cat([u, v, (u - v).abs()], dim=-1)
            return self.linear(self.dropout(features)).squeeze(-1)
        return self.linear(F.cosine_similarity(u, v, dim=-1)[:, None]).squeeze(-1)


class SimilarityRegressor(nn.Module):
    """A similarity score in the label's units (STS: 0..5) for a sentence pair.

    Structures: ``"cosine"`` (``5 cos(u, v)`` of the two embeddings, no parameters) or
    ``"cross"`` (a linear layer on the joined pair's embedding).
    """

    def __init__(
        self,
        hidden: int,
        structure: str,
        dropout: float = 0.0,
        pairwise: nn.Module | None = None,
        max_score: float = 5.0,
    ) -> None:
        super().__init__()
        self.structure = structure
        self.max_score = max_score
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, 1) if structure == "cross" else None
        self.pairwise = pairwise

    def scores(self, model: Embedder, batch: Batch) -> Tensor:
        if self.linear is not None:
            return self.linear(self.dropout(model.embed(batch.inputs))).squeeze(-1)
        u, v = model.embed_pair(batch)
        return self.max_score * F.cosine_similarity(u, v, dim=-1)


# --------------------------------------------------------------------------------------------
# Losses, predictions, metrics
# --------------------------------------------------------------------------------------------


def classification_loss(model: Embedder, head: Classifier, batch: Batch) -> Tensor:
    """Cross-entropy of ``head(embedding)`` against the class labels."""
    return F.cross_entropy(head(model.embed(batch.inputs)), batch.labels)


def classification_predict(model: Embedder, head: Classifier, batch: Batch) -> Tensor:
    """The most likely class."""
    return head(model.embed(batch.inputs)).argmax(-1)


def accuracy_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"acc": metrics.accuracy(predictions, labels)}


def correlation_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "pearson": metrics.pearson(predictions, labels),
        "spearman": metrics.spearman(predictions, labels),
    }


def loss_name(name: str) -> str:
    """The canonical name of a loss: ``"mnrl"`` -> ``"multiple-negatives-ranking"``;
    names that are not in :data:`mtlkit.losses.LOSSES` (``"bce"``, ``"mse"``) as given."""
    return str(LOSSES.get_class(name).name) if name in LOSSES else name  # type: ignore[attr-defined]


def _pairwise(
    name: str,
    options: Mapping[str, Any] | None,
    adapters: Mapping[str, tuple[dict[str, Any], Any]],
    own: str,
    task: str,
) -> tuple[Callable[[], nn.Module] | None, Any]:
    """(a builder of the loss module, how the task feeds it) for loss ``name``; (None,
    None) for the task's own loss ``own``. Options are checked by building one now."""
    options = dict(options or {})
    if name == own:
        if options:
            raise ValueError(f"{task} loss {own!r} takes no options, got {sorted(options)}")
        return None, None
    if name not in adapters and not _user_loss(name):
        raise ValueError(
            f"{task} loss must be {own!r} or one of {sorted(adapters)} (mtlkit.losses), "
            f"got {name!r}"
        )
    defaults, adapter = adapters.get(name, ({}, _task_labels))
    kwargs = {**defaults, **options}
    get_loss(name, **kwargs)  # unknown or invalid options fail here, before any training
    return (lambda: get_loss(name, **kwargs)), adapter


def _user_loss(name: str) -> bool:
    """Whether ``name`` is a pairwise loss registered in :mod:`mtlkit.losses` from outside
    mtlkit (a user's own): the tasks feed it ``(u, v, labels)`` with their own labels."""
    return name in LOSSES and not LOSSES.get_class(name).__module__.startswith("mtlkit.")


def _task_labels(loss: nn.Module, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """A user's pairwise loss: the two embeddings and the task's labels as they are
    (Quora: 1 duplicate / 0 not; STS: the 0..5 score), as floats."""
    return loss(u, v, labels.float())


def _pairwise_choices(adapters: Mapping[str, Any]) -> list[str]:
    from mtlkit.losses import list_losses

    return [n for n in list_losses() if n in adapters or _user_loss(n)]


#: Dropout on the input of every head's trained layer (SST's classifier, Quora's logit layer,
#: STS's regressor in the cross structure), chosen on the validation split:
#: benchmarks/results/sweep-cpu-v4.md (0.1 against 0 over two seeds, validation 0.7636 vs 0.7613;
#: level over three, 0.7601 vs 0.7607: "no worse", not a measured gain).
HEAD_DROPOUT = 0.1


# --------------------------------------------------------------------------------------------
# SST-5 sentiment
# --------------------------------------------------------------------------------------------


def sst(dropout: float = HEAD_DROPOUT) -> Task:
    """SST-5 sentiment: 5 classes, cross-entropy on the sentence embedding; accuracy."""
    return Task(
        name="sst",
        read=read_sst,
        pair_mode="single",
        head=lambda hidden: Classifier(hidden, 5, dropout),
        loss=classification_loss,
        predict=classification_predict,
        metrics=accuracy_metrics,
        score=lambda m: m["acc"],
        batch_size=32,
        num_classes=5,
    )


# --------------------------------------------------------------------------------------------
# Quora paraphrase detection
# --------------------------------------------------------------------------------------------


def _quora_cosine_embedding(loss: nn.Module, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    return loss(u, v, labels.float() * 2 - 1)  # labels 1 / -1


def _quora_contrastive(loss: nn.Module, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    return loss(u, v, labels.float())  # labels 1 / 0


def _quora_ranking(loss: nn.Module, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """Duplicate pairs only, the batch's other questions as negatives."""
    pos = labels.bool()
    if not bool(pos.any()):
        return (u.sum() + v.sum()) * 0.0
    return loss(u[pos], v[pos])


def _quora_triplet(loss: nn.Module, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """Duplicate pairs as anchor/positive; the negative is another pair's question."""
    pos = labels.bool()
    if not bool(pos.any()) or u.shape[0] < 2:
        return (u.sum() + v.sum()) * 0.0
    negatives = torch.roll(v, shifts=1, dims=0)[pos]
    return loss(u[pos], v[pos], negatives)


#: The pairwise losses of :mod:`mtlkit.losses` Quora can train with: the example's default
#: options for each (``--quora-loss-arg`` overrides them) and how a batch's two
#: embeddings and 0/1 labels feed it.
QUORA_PAIRWISE: dict[str, tuple[dict[str, Any], Any]] = {
    "cosine-embedding": ({"margin": 0.5}, _quora_cosine_embedding),
    "contrastive": ({"margin": 0.5, "distance": "cosine"}, _quora_contrastive),
    "multiple-negatives-ranking": ({}, _quora_ranking),
    "triplet": ({"margin": 0.5, "distance": "cosine"}, _quora_triplet),
}
QUORA_STRUCTURES = ("cross", "siamese", "cosine")


def quora_losses() -> list[str]:
    """``"bce"`` and the names of :func:`mtlkit.list_losses` that Quora can train with:
    those of :data:`QUORA_PAIRWISE`, and any registered from outside mtlkit (fed
    ``(u, v, labels)`` with the 1/0 labels)."""
    return ["bce", *_pairwise_choices(QUORA_PAIRWISE)]


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


def _fit_threshold(model: Embedder, head: PairClassifier, batches: Iterable[Batch]) -> None:
    cos, labels = [], []
    for batch in batches:
        u, v = model.embed_pair(batch)
        cos.append(F.cosine_similarity(u, v, dim=-1).float().cpu())
        labels.append(batch.labels.cpu())
    head.threshold.fill_(best_threshold(torch.cat(cos), torch.cat(labels)))


def quora(
    structure: str = "siamese",
    loss: str = "bce",
    loss_options: Mapping[str, Any] | None = None,
    dropout: float = HEAD_DROPOUT,
) -> Task:
    """Quora paraphrase detection: 0/1 labels; accuracy.

    Args:
        structure: ``"cross"``, ``"siamese"`` or ``"cosine"`` (see :class:`PairClassifier`).
        loss: ``"bce"`` (binary cross-entropy of the logit, any structure) or a pairwise
            loss of :data:`QUORA_PAIRWISE` (Siamese structures), e.g. ``"contrastive"``.
        loss_options: options of the pairwise loss (``mtlkit.losses.get_loss``), over the
            defaults of :data:`QUORA_PAIRWISE`; e.g. ``{"margin": 0.3}`` or a moving margin
            ``{"margin": {"start": 0.2, "end": 0.6, "steps": 1000}}``.
        dropout: dropout on the logit layer's input.
    """
    if structure not in QUORA_STRUCTURES:
        raise ValueError(f"quora structure must be one of {QUORA_STRUCTURES}, got {structure!r}")
    loss = loss_name(loss)
    build_loss, adapter = _pairwise(loss, loss_options, QUORA_PAIRWISE, "bce", "quora")
    if build_loss is not None and structure == "cross":
        raise ValueError(
            f"quora loss {loss!r} compares two embeddings: use quora structure 'siamese' "
            "or 'cosine'"
        )

    def head(hidden: int) -> PairClassifier:
        return PairClassifier(hidden, structure, dropout, build_loss() if build_loss else None)

    def train_loss(model: Embedder, head: PairClassifier, batch: Batch) -> Tensor:
        if head.pairwise is None:
            labels = batch.labels.float()
            return F.binary_cross_entropy_with_logits(head.logits(model, batch), labels)
        u, v = model.embed_pair(batch)
        return adapter(head.pairwise, u, v, batch.labels)

    def predict(model: Embedder, head: PairClassifier, batch: Batch) -> Tensor:
        if head.pairwise is None:
            return (head.logits(model, batch) > 0).long()
        u, v = model.embed_pair(batch)
        return (F.cosine_similarity(u, v, dim=-1) > head.threshold).long()

    return Task(
        name="quora",
        read=read_quora,
        pair_mode="cross" if structure == "cross" else "siamese",
        head=head,
        loss=train_loss,
        predict=predict,
        metrics=accuracy_metrics,
        score=lambda m: m["acc"],
        batch_size=32,  # with STS 16, chosen on validation: benchmarks/results/sweep-cpu-v5.md
        num_classes=2,
        calibrate=_fit_threshold if build_loss is not None else None,
    )


# --------------------------------------------------------------------------------------------
# STS similarity
# --------------------------------------------------------------------------------------------


#: The pairwise losses of :mod:`mtlkit.losses` STS can train with (Siamese structure only).
STS_PAIRWISE: dict[str, tuple[dict[str, Any], Any]] = {
    "cosent": ({}, lambda loss, u, v, scores: loss(u, v, scores)),
}
STS_STRUCTURES = ("cosine", "cross")


def sts_losses() -> list[str]:
    """``"mse"`` and the names of :func:`mtlkit.list_losses` that STS can train with:
    those of :data:`STS_PAIRWISE`, and any registered from outside mtlkit (fed
    ``(u, v, scores)`` with the 0..5 scores)."""
    return ["mse", *_pairwise_choices(STS_PAIRWISE)]


def sts(
    structure: str = "cosine",
    loss: str = "mse",
    loss_options: Mapping[str, Any] | None = None,
    dropout: float = HEAD_DROPOUT,
) -> Task:
    """STS similarity: a score in 0..5; Pearson (its score: (r + 1) / 2) and Spearman.

    Args:
        structure: ``"cosine"`` or ``"cross"`` (see :class:`SimilarityRegressor`).
        loss: ``"mse"`` of the predicted score, on the label's 0..5 scale (on a 0..1 scale
            the loss and its gradient are ~25x smaller and STS gets neglected), or a pairwise
            loss of :data:`STS_PAIRWISE` (``"cosent"``, cosine structure only).
        loss_options: options of the pairwise loss, e.g. ``{"scale": 20.0}``.
        dropout: dropout on the regressor's input (cross structure).
    """
    if structure not in STS_STRUCTURES:
        raise ValueError(f"sts structure must be one of {STS_STRUCTURES}, got {structure!r}")
    loss = loss_name(loss)
    build_loss, adapter = _pairwise(loss, loss_options, STS_PAIRWISE, "mse", "sts")
    if build_loss is not None and structure != "cosine":
        raise ValueError(f"sts loss {loss!r} needs sts structure 'cosine'")

    def head(hidden: int) -> SimilarityRegressor:
        pairwise = build_loss() if build_loss else None
        return SimilarityRegressor(hidden, structure, dropout, pairwise)

    def train_loss(model: Embedder, head: SimilarityRegressor, batch: Batch) -> Tensor:
        target = batch.labels.float()
        if head.pairwise is None:
            return F.mse_loss(head.scores(model, batch), target)
        u, v = model.embed_pair(batch)
        return adapter(head.pairwise, u, v, target)

    return Task(
        name="sts",
        read=read_sts,
        pair_mode="cross" if structure == "cross" else "siamese",
        head=head,
        loss=train_loss,
        predict=lambda model, head, batch: head.scores(model, batch),
        metrics=correlation_metrics,
        score=lambda m: (m["pearson"] + 1.0) / 2.0,
        batch_size=16,  # with Quora 32, chosen on validation: benchmarks/results/sweep-cpu-v5.md
    )


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

#: Task name -> its record, or a function of the task's options that returns the record.
TASKS: dict[str, Task | Callable[..., Task]] = {"sst": sst, "quora": quora, "sts": sts}


def make_tasks(
    names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Task]:
    """The records of ``names``, in that order; ``options[name]`` go to that task's function.

    Raises:
        ValueError: an unknown or repeated name, options for a task given as a plain
            record, or options a task refuses.
    """
    options = options or {}
    if len(set(names)) != len(names):
        raise ValueError(f"a task is listed twice: {list(names)}")
    tasks = []
    for name in names:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
        entry, opts = TASKS[name], dict(options.get(name, {}))
        if isinstance(entry, Task):
            if opts:
                raise ValueError(f"task {name!r} takes no options, got {sorted(opts)}")
            task = entry
        else:
            task = entry(**opts)
        if task.name != name:
            raise ValueError(f"TASKS[{name!r}] builds a task named {task.name!r}")
        tasks.append(task)
    return tasks
