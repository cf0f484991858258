"""Readers, datasets and batch collation for the miniBERT tasks.

Which reader a task uses is part of its record (:mod:`examples.minbert.tasks`); this module
knows file formats, not tasks. The files use the format of the Stanford CS224N
multitask-BERT project (see ``data/README.md``): tab-separated, a header line whose first
column (a row index) has an empty name, quoted fields with doubled quotes. Columns:

==========  =====================================================  ==========================
task        columns after the row index                            label
==========  =====================================================  ==========================
SST         ``id, sentence, sentiment``                            int 0..4
Quora       ``id, sentence1, sentence2, is_duplicate``             0 / 1 (written 0.0 / 1.0)
STS         ``id, sentence1, sentence2, similarity``               float 0.0..5.0
==========  =====================================================  ==========================

Lines, not records. Every physical line after the header is one example or one *bad row*;
nothing else. A line ends at ``\n``, ``\r\n`` or ``\r`` (Python's universal newlines, as the
``csv`` module counts them), the header is line 1, and each line is split into fields on its
own: a field never spans lines. A quoted field (``"..."``, with ``""`` for a quote inside)
may hold tabs, but a quote that opens a field and is not closed on the same line makes that
line a bad row ("unclosed quote"), and the next line is read on its own. So one stray ``"``
costs at most its own line, never the rows after it; a ``"`` inside an unquoted field is an
ordinary character.

Bad rows. A line is bad if it is blank (empty or only spaces and tabs), has an unclosed
quote, has the wrong number of fields, an empty sentence, or a label that is empty, not a
number or out of range. By default bad rows are skipped and **one** :class:`DataWarning`
per file names them with file and line and says why (the first ten in the message, all of
them in its ``skipped`` attribute) and gives the account: lines after the header = examples
read + lines skipped. With ``strict=True`` (the CLI's ``--strict-data``) the first bad row
raises :class:`DataError` naming ``file:line`` and the reason, so a strict read loses nothing.
The shipped ``quora-train.csv`` has two bad rows (lines 2026 and 11224), inherited from the
source. A file that is empty, lacks the header, has other columns (e.g. an STS file given to
the SST reader) or is not UTF-8 text always raises :class:`DataError`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .tokenizer import BertTokenizer, Encoded

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Batch",
    "Collate",
    "DataError",
    "DataWarning",
    "ExampleDataset",
    "PairExample",
    "ParaphraseExample",
    "QuoraDataset",
    "SSTDataset",
    "STSDataset",
    "SentenceExample",
    "SentimentExample",
    "SimilarityExample",
    "collate",
    "dataset_path",
    "default_data_dir",
    "holdout_indices",
    "read_quora",
    "read_sst",
    "read_sts",
]

SST_NUM_CLASSES = 5
STS_MAX_SCORE = 5.0
_MAX_LISTED = 10

Split = Literal["train", "dev"]
#: How a batch is tokenized: ``"single"`` (one sentence per example), ``"cross"`` (a pair
#: joined as ``[CLS] a [SEP] b [SEP]``) or ``"siamese"`` (a pair's sentences apart).
PairMode = Literal["single", "cross", "siamese"]


class DataError(ValueError):
    """A data file cannot be used; the message names the file and line.

    Attributes:
        path: the file (``None`` when not given).
        line: the line at fault (the header is line 1), or ``None``.
        reason: what is wrong with it, without the ``file:line:`` prefix.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.line = line
        self.reason = reason or message


class DataWarning(UserWarning):
    """Bad rows were skipped while reading a data file; the message names them.

    Attributes:
        path: the file (``None`` when not given).
        skipped: every skipped line as ``(line, reason)``, in file order.
        read: the number of examples read.
        lines: the number of lines read after the header; ``lines == read + len(skipped)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        skipped: Sequence[tuple[int, str]] = (),
        read: int = 0,
        lines: int = 0,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.skipped: tuple[tuple[int, str], ...] = tuple(skipped)
        self.read = read
        self.lines = lines


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentimentExample:
    """One SST sentence with its sentiment class (0 very negative .. 4 very positive)."""

    uid: str
    sentence: str
    label: int
    line: int = 0


@dataclass(frozen=True)
class ParaphraseExample:
    """One Quora question pair; ``label`` is 1 for duplicates, 0 otherwise."""

    uid: str
    sentence1: str
    sentence2: str
    label: int
    line: int = 0


@dataclass(frozen=True)
class SimilarityExample:
    """One STS sentence pair with its similarity score in [0, 5]."""

    uid: str
    sentence1: str
    sentence2: str
    score: float
    line: int = 0

    @property
    def label(self) -> float:
        """The score: every example's target is its ``label``."""
        return self.score


Example = SentimentExample | ParaphraseExample | SimilarityExample
E = TypeVar("E", SentimentExample, ParaphraseExample, SimilarityExample)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """The folder of data files shipped with the example."""
    return Path(__file__).parent / "data"


def dataset_path(task: str, split: Split, data_dir: str | Path | None = None) -> Path:
    """Path of ``{task}-{split}.csv`` in ``data_dir`` (default: :func:`default_data_dir`)."""
    if not task or "/" in task or "\\" in task:
        raise ValueError(f"a task name must be a non-empty file name part, got {task!r}")
    if split not in ("train", "dev"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'dev'")
    folder = default_data_dir() if data_dir is None else Path(data_dir)
    return folder / f"{task}-{split}.csv"


class _BadRow(Exception):
    """Internal: a row that breaks the format (message says how)."""


def _sentence(value: str, column: str) -> str:
    text = value.strip()
    if not text:
        raise _BadRow(f"empty {column}")
    return text


def _number(value: str, column: str) -> float:
    text = value.strip()
    if not text:
        raise _BadRow(f"empty {column}")
    try:
        number = float(text)
    except ValueError:
        raise _BadRow(f"{column} {text!r} is not a number") from None
    if not math.isfinite(number):
        raise _BadRow(f"{column} {text!r} is not a finite number")
    return number


def _class_label(value: str, column: str, num_classes: int) -> int:
    number = _number(value, column)
    if not number.is_integer() or not 0 <= number < num_classes:
        allowed = "0 or 1" if num_classes == 2 else f"an integer in 0..{num_classes - 1}"
        raise _BadRow(f"{column} {value.strip()!r} out of range (expected {allowed})")
    return int(number)


def _parse_sst(row: list[str], line: int) -> SentimentExample:
    _, uid, sentence, label = row
    return SentimentExample(
        uid=uid,
        sentence=_sentence(sentence, "sentence"),
        label=_class_label(label, "sentiment", SST_NUM_CLASSES),
        line=line,
    )


def _parse_quora(row: list[str], line: int) -> ParaphraseExample:
    _, uid, s1, s2, label = row
    return ParaphraseExample(
        uid=uid,
        sentence1=_sentence(s1, "sentence1"),
        sentence2=_sentence(s2, "sentence2"),
        label=_class_label(label, "is_duplicate", 2),
        line=line,
    )


def _parse_sts(row: list[str], line: int) -> SimilarityExample:
    _, uid, s1, s2, score = row
    value = _number(score, "similarity")
    if not 0.0 <= value <= STS_MAX_SCORE:
        raise _BadRow(f"similarity {score.strip()!r} out of range (expected 0.0..{STS_MAX_SCORE})")
    return SimilarityExample(
        uid=uid,
        sentence1=_sentence(s1, "sentence1"),
        sentence2=_sentence(s2, "sentence2"),
        score=value,
        line=line,
    )


def _fields(text: str, columns: Sequence[str]) -> list[str]:
    """Split one physical line (without its line end) into fields, or raise :class:`_BadRow`.

    The line is parsed by ``csv`` on its own, followed by an empty line: when the reader
    takes that second line, a quoted field was still open at the end of this one.
    """
    if not text.strip(" \t"):
        raise _BadRow("blank line")
    reader = csv.reader((text, ""), delimiter="\t")
    try:
        row = next(reader, [])
    except csv.Error as exc:
        raise _BadRow(f"malformed CSV ({exc})") from None
    if reader.line_num > 1:
        index = len(row) - 1
        name = (columns[index] or "row index") if index < len(columns) else f"field {index + 1}"
        raise _BadRow(f"unclosed quote in {name}: a quoted field must end on its line")
    return row


def _error_line(path: Path) -> int:
    """The line (header = 1) of the first byte of ``path`` that is not UTF-8."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(re.findall(rb"\r\n|\r|\n", raw[: exc.start])) + 1
    return 1  # not reached: called after a decoding error


def _read(
    path: str | Path,
    columns: tuple[str, ...],
    parse: Callable[[list[str], int], E],
    *,
    strict: bool,
    limit: int | None,
) -> list[E]:
    """Read a CS224N-format file line by line: check the header, parse each line, account.

    Each physical line after the header becomes one example or one entry of ``skipped``
    (see the module's docstring); strict mode raises at the first skipped line instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    header = ["", *columns]
    examples: list[E] = []
    skipped: list[tuple[int, str]] = []
    lines = 0  # physical lines read after the header
    try:
        # newline="": lines end at \n, \r\n or \r, kept at the end of each line read (and
        # removed below); utf-8-sig: a byte-order mark is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(handle, None)
            if first is None:
                raise DataError(
                    f"{path}:1: empty file (expected the header {_tabbed(header)})",
                    path=path,
                    line=1,
                    reason="empty file",
                )
            found = next(csv.reader([first.rstrip("\r\n")], delimiter="\t"), [])
            if [c.strip() for c in found] != header:
                reason = (
                    f"wrong or missing header: expected columns {_tabbed(header)}, "
                    f"found {_tabbed(found)}"
                )
                raise DataError(f"{path}:1: {reason}", path=path, line=1, reason=reason)
            for line, text in enumerate(handle, start=2):
                if limit is not None and len(examples) >= limit:
                    break
                lines += 1
                try:
                    row = _fields(text.rstrip("\r\n"), header)
                    if len(row) != len(header):
                        raise _BadRow(f"expected {len(header)} fields, found {len(row)}")
                    examples.append(parse(row, line))
                except _BadRow as exc:
                    if strict:
                        raise DataError(
                            f"{path}:{line}: {exc}", path=path, line=line, reason=str(exc)
                        ) from None
                    skipped.append((line, str(exc)))
    except UnicodeDecodeError as exc:
        line = _error_line(path)
        raise DataError(
            f"{path}:{line}: not valid UTF-8 text ({exc})",
            path=path,
            line=line,
            reason="not valid UTF-8 text",
        ) from exc
    if len(examples) + len(skipped) != lines:  # every line is one or the other, by design
        raise AssertionError(f"{path}: {lines} lines, {len(examples)} read, {len(skipped)} skipped")
    if skipped:
        shown = ", ".join(
            f"{path.name}:{line} ({reason})" for line, reason in skipped[:_MAX_LISTED]
        )
        if len(skipped) > _MAX_LISTED:
            shown += f", ... and {len(skipped) - _MAX_LISTED} more"
        count = f"{len(skipped)} bad row{'s' if len(skipped) > 1 else ''}"
        account = f"{lines} lines after the header: {len(examples)} read, {len(skipped)} skipped"
        warnings.warn(
            DataWarning(
                f"{path}: skipped {count}: {shown} ({account})",
                path=path,
                skipped=skipped,
                read=len(examples),
                lines=lines,
            ),
            stacklevel=3,
        )
    return examples


def _tabbed(columns: Sequence[str]) -> str:
    return "[" + ", ".join(repr(c) for c in columns) + "]"


def read_sst(
    path: str | Path, *, strict: bool = False, limit: int | None = None
) -> list[SentimentExample]:
    """Read an SST file (``id, sentence, sentiment``).

    One example per physical line; a line that is not a valid example (blank, an unclosed
    quote, a wrong number of fields, an empty sentence, a bad label) is a bad row: skipped
    and reported with ``file:line`` and the reason in one :class:`DataWarning` per file, or,
    with ``strict``, refused. No line is lost silently: examples read + lines skipped = the
    lines after the header (the warning states the account).

    Args:
        path: the file.
        strict: raise :class:`DataError` (naming ``file:line`` and the reason) on the first
            bad row instead of skipping it.
        limit: stop after this many good examples (quick runs); the rest is not read.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: empty file, wrong header, undecodable text, or (strict) a bad row.
    """
    return _read(path, ("id", "sentence", "sentiment"), _parse_sst, strict=strict, limit=limit)


def read_quora(
    path: str | Path, *, strict: bool = False, limit: int | None = None
) -> list[ParaphraseExample]:
    """Read a Quora file (``id, sentence1, sentence2, is_duplicate``); see :func:`read_sst`."""
    columns = ("id", "sentence1", "sentence2", "is_duplicate")
    return _read(path, columns, _parse_quora, strict=strict, limit=limit)


def read_sts(
    path: str | Path, *, strict: bool = False, limit: int | None = None
) -> list[SimilarityExample]:
    """Read an STS file (``id, sentence1, sentence2, similarity``); see :func:`read_sst`."""
    columns = ("id", "sentence1", "sentence2", "similarity")
    return _read(path, columns, _parse_sts, strict=strict, limit=limit)


# --------------------------------------------------------------------------------------------
# The validation split
# --------------------------------------------------------------------------------------------


def holdout_indices(count: int, fraction: float, seed: int, key: str) -> list[int]:
    """Which of ``count`` examples a validation split holds out: their indices, ascending.

    The ``ceil(fraction * count)`` indices ``i`` (0-based, in file order) with the smallest
    ``sha256(f"{seed}:{key}:{i}")``: a fixed pseudo-random choice that depends on nothing
    but the seed, the key (the task's name) and the number of examples; not on the torch
    or numpy version, nor on a run's own seed, strategy or other tasks.

    Raises:
        ValueError: ``fraction`` is not in [0, 1), or ``count`` is negative.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    size = math.ceil(round(fraction * count, 9))  # (no float noise: 0.1 * 5500 is 550)

    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{key}:{i}".encode()).digest()

    return sorted(sorted(range(count), key=rank)[:size])


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class ExampleDataset(Dataset[E], Generic[E]):
    """A map-style dataset over a list of examples."""

    #: the task whose files :meth:`load` reads, and their reader (set by each subclass)
    task: ClassVar[str]
    read: ClassVar[Callable[..., list]]

    def __init__(self, examples: Sequence[E]) -> None:
        self.examples: list[E] = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> E:
        return self.examples[index]

    @classmethod
    def load(
        cls,
        split: Split,
        data_dir: str | Path | None = None,
        *,
        strict: bool = False,
        limit: int | None = None,
    ) -> Self:
        """Read ``{task}-{split}.csv`` from ``data_dir`` (default: the shipped files)."""
        path = dataset_path(cls.task, split, data_dir)
        return cls(cls.read(path, strict=strict, limit=limit))


class SSTDataset(ExampleDataset[SentimentExample]):
    """SST-5 sentiment classification."""

    task = "sst"
    read = staticmethod(read_sst)


class QuoraDataset(ExampleDataset[ParaphraseExample]):
    """Quora Question Pairs paraphrase detection."""

    task = "quora"
    read = staticmethod(read_quora)


class STSDataset(ExampleDataset[SimilarityExample]):
    """STS Benchmark semantic textual similarity."""

    task = "sts"
    read = staticmethod(read_sts)


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


def _move(encoded: Encoded, fn: Callable[[Tensor], Tensor]) -> Encoded:
    return {k: fn(v) for k, v in encoded.items()}


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        inputs: the tokenized input: the sentence (SST), the pair joined as
            ``[CLS] a [SEP] b [SEP]`` (cross-encoder mode), or the first sentence (Siamese).
        labels: (B,) int64 class labels (SST, Quora) or float32 scores (STS).
        inputs_b: the second sentence, encoded separately (Siamese mode only).
    """

    inputs: Encoded
    labels: Tensor
    inputs_b: Encoded | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            inputs=_move(self.inputs, move),
            labels=move(self.labels),
            inputs_b=None if self.inputs_b is None else _move(self.inputs_b, move),
        )

    def pin_memory(self) -> Batch:
        """The batch in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return Batch(
            inputs=_move(self.inputs, Tensor.pin_memory),
            labels=self.labels.pin_memory(),
            inputs_b=None if self.inputs_b is None else _move(self.inputs_b, Tensor.pin_memory),
        )


@runtime_checkable
class SentenceExample(Protocol):
    """What :func:`collate` reads from a one-sentence example (e.g. :class:`SentimentExample`)."""

    @property
    def sentence(self) -> str: ...
    @property
    def label(self) -> int | float: ...


@runtime_checkable
class PairExample(Protocol):
    """What :func:`collate` reads from a sentence-pair example (Quora, STS)."""

    @property
    def sentence1(self) -> str: ...
    @property
    def sentence2(self) -> str: ...
    @property
    def label(self) -> int | float: ...


def collate(
    examples: Sequence[Any],
    tokenizer: BertTokenizer,
    *,
    pair_mode: PairMode = "cross",
    max_length: int | None = None,
) -> Batch:
    """Tokenize a list of examples of one kind into a padded :class:`Batch`.

    Args:
        examples: examples of one type, each with a ``sentence`` (:class:`SentenceExample`)
            or a ``sentence1`` and a ``sentence2`` (:class:`PairExample`), and a ``label``:
            integer labels give int64 ``labels`` (classes), float labels float32 (scores).
        tokenizer: the tokenizer (padding is dynamic: to the longest sequence of the batch).
        pair_mode: for pairs, ``"cross"`` encodes ``[CLS] a [SEP] b [SEP]`` with segment ids
            0/1 into ``inputs``; ``"siamese"`` encodes the two sentences separately into
            ``inputs`` and ``inputs_b``. One-sentence examples ignore it.
        max_length: truncation length (default: the tokenizer's); in cross mode it bounds the
            joined pair.
    """
    if len(examples) == 0:
        raise ValueError("cannot collate an empty batch")
    kind = type(examples[0])
    if any(type(e) is not kind for e in examples):
        names = sorted({type(e).__name__ for e in examples})
        raise TypeError(f"a batch mixes example types: {names}")
    if pair_mode not in ("single", "cross", "siamese"):
        raise ValueError(f"pair_mode must be 'single', 'cross' or 'siamese', got {pair_mode!r}")
    values = [e.label for e in examples]
    integer = all(isinstance(v, int) for v in values)
    labels = torch.tensor(values, dtype=torch.long if integer else torch.float32)
    if isinstance(examples[0], SentenceExample):
        return Batch(
            tokenizer.encode([e.sentence for e in examples], max_length=max_length), labels
        )
    if not isinstance(examples[0], PairExample):
        raise TypeError(f"cannot collate {kind.__name__}: it has no sentence (or sentence1/2)")
    first = [e.sentence1 for e in examples]
    second = [e.sentence2 for e in examples]
    if pair_mode == "cross":
        return Batch(tokenizer.encode(first, second, max_length=max_length), labels)
    if pair_mode == "single":
        raise ValueError("pairs need pair_mode 'cross' or 'siamese', got 'single'")
    return Batch(
        tokenizer.encode(first, max_length=max_length),
        labels,
        tokenizer.encode(second, max_length=max_length),
    )


class Collate:
    """``collate_fn`` for a ``DataLoader``: :func:`collate` with fixed options (picklable)."""

    def __init__(
        self,
        tokenizer: BertTokenizer,
        *,
        pair_mode: PairMode = "cross",
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.pair_mode: PairMode = pair_mode
        self.max_length = max_length

    def __call__(self, examples: Sequence[Any]) -> Batch:
        return collate(
            examples, self.tokenizer, pair_mode=self.pair_mode, max_length=self.max_length
        )
