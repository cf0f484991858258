"""Readers, datasets and collation of the CS224N-format data files."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from examples.minbert.data import (
    Batch,
    Collate,
    DataError,
    DataWarning,
    ParaphraseExample,
    QuoraDataset,
    SentimentExample,
    SimilarityExample,
    SSTDataset,
    STSDataset,
    collate,
    dataset_path,
    default_data_dir,
    read_quora,
    read_sst,
    read_sts,
)
from examples.minbert.tokenizer import BertTokenizer

SST_HEADER = "\tid\tsentence\tsentiment\n"
QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"

# Row counts of the README's table.
README_ROWS = {
    ("sst", "train"): 8000,
    ("sst", "dev"): 1101,
    ("quora", "train"): 16000,
    ("quora", "dev"): 2000,
    ("sts", "train"): 5500,
    ("sts", "dev"): 863,
}


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> BertTokenizer:
    return BertTokenizer.from_folder(minilm_dir)


def test_shipped_files_and_provenance() -> None:
    folder = default_data_dir()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "copied unchanged" in readme
    for (task, split), rows in README_ROWS.items():
        assert f"{task}-{split}.csv | {rows:,} |" in readme


@pytest.mark.parametrize(("task", "split"), sorted(README_ROWS))
def test_shipped_row_counts(task: str, split: str) -> None:
    readers: dict[str, Callable[[Path], Sequence[object]]] = {
        "sst": read_sst,
        "quora": read_quora,
        "sts": read_sts,
    }
    path = dataset_path(task, split)  # type: ignore[arg-type]
    bad_rows = 2 if (task, split) == ("quora", "train") else 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = readers[task](path)
    assert len(examples) == README_ROWS[(task, split)] - bad_rows
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == (bad_rows > 0)


def test_shipped_quora_bad_rows_warn_once() -> None:
    path = dataset_path("quora", "train")
    with pytest.warns(DataWarning) as record:
        examples = read_quora(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 bad rows" in message
    assert "quora-train.csv:2026" in message and "quora-train.csv:11224" in message
    assert "(16000 lines after the header: 15998 read, 2 skipped)" in message
    warning = record[0].message
    assert isinstance(warning, DataWarning)
    assert [line for line, _ in warning.skipped] == [2026, 11224]
    assert (warning.read, warning.lines) == (15998, 16000)
    assert len(examples) == 15998
    lines = {e.line for e in examples}
    assert 2026 not in lines and 11224 not in lines
    assert {2025, 2027, 11223, 11225} <= lines
    assert {e.label for e in examples} == {0, 1}


def test_shipped_quora_strict_raises_at_first_bad_row() -> None:
    with pytest.raises(DataError, match=r"quora-train\.csv:2026: empty is_duplicate"):
        read_quora(dataset_path("quora", "train"), strict=True)


def test_example_fields() -> None:
    sst = read_sst(dataset_path("sst", "dev"), limit=2)
    assert sst[0] == SentimentExample(
        uid="a7d575c9ed86ea9633660c67e",
        sentence="It 's a lovely film with lovely performances by Buy and Accorsi .",
        label=3,
        line=2,
    )
    sts = read_sts(dataset_path("sts", "dev"), limit=1)
    assert sts[0].score == 1.0 and sts[0].sentence2.startswith("UN chief condemns")
    assert len(read_quora(dataset_path("quora", "dev"), limit=7)) == 7
    assert len(read_quora(dataset_path("quora", "dev"), limit=0)) == 0


def test_out_of_range_labels(tmp_path: Path) -> None:
    sst = _write(tmp_path, SST_HEADER + "0\ta\tgood film\t3\n1\tb\tbad film\t5\n2\tc\tok\t2.5\n")
    with pytest.warns(DataWarning, match=r"skipped 2 bad rows: data\.csv:3 \(sentiment '5' out"):
        examples = read_sst(sst)
    assert [e.label for e in examples] == [3]
    with pytest.raises(DataError, match=r"data\.csv:3: sentiment '5' out of range"):
        read_sst(sst, strict=True)

    quora = _write(tmp_path, QUORA_HEADER + "0\ta\tx?\ty?\t2.0\n", "q.csv")
    with pytest.raises(DataError, match=r"q\.csv:2: is_duplicate '2.0' out of range"):
        read_quora(quora, strict=True)

    rows = "0\ta\tx\ty\t5.5\n1\tb\tx\ty\tnan\n2\tc\tx\ty\t4.2\n"
    sts = _write(tmp_path, STS_HEADER + rows, "s.csv")
    with pytest.warns(DataWarning, match=r"s\.csv:2 .*s\.csv:3 .*not a finite number"):
        assert [e.score for e in read_sts(sts)] == [4.2]


def test_malformed_rows(tmp_path: Path) -> None:
    text = (
        SST_HEADER
        + "0\ta\tfine\t1\n"
        + "1\tb\ttoo\tmany\t1\n"  # line 3: 5 fields
        + '2\tc\t"spans\ntwo lines"\t2\n'  # lines 4-5: a field never spans lines
        + "3\td\t  \t2\n"  # line 6: empty sentence
        + "4\te\tword\tfour\n"  # line 7: label not a number
        + '5\tf\t"quoted, with\ta tab"\t0\n'  # line 8: fine
    )
    path = _write(tmp_path, text)
    with pytest.warns(DataWarning) as record:
        examples = read_sst(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 5 bad rows" in message
    assert "data.csv:3 (expected 4 fields, found 5)" in message
    assert "data.csv:4 (unclosed quote in sentence: a quoted field must end on its line)" in message
    assert "data.csv:5 (expected 4 fields, found 2)" in message
    assert "data.csv:6 (empty sentence)" in message
    assert "data.csv:7 (sentiment 'four' is not a number)" in message
    assert "(7 lines after the header: 2 read, 5 skipped)" in message
    assert [(e.line, e.sentence) for e in examples] == [(2, "fine"), (8, "quoted, with\ta tab")]


def test_warning_truncates_long_lists(tmp_path: Path) -> None:
    rows = "".join(f"{i}\tid{i}\tsentence\t9\n" for i in range(25))
    with pytest.warns(DataWarning, match=r"skipped 25 bad rows: .*\.\.\. and 15 more") as record:
        read_sst(_write(tmp_path, SST_HEADER + rows))
    # The first ten are named: lines 2..11.
    assert "data.csv:11 " in str(record[0].message)
    assert "data.csv:12 " not in str(record[0].message)


def test_empty_file_and_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty\.csv:1: empty file"):
        read_sst(_write(tmp_path, "", "empty.csv"))
    # An STS file given to the SST reader.
    with pytest.raises(DataError, match=r"sts-dev\.csv:1: wrong or missing header"):
        read_sst(dataset_path("sts", "dev"))
    # A file without its header line.
    no_header = _write(tmp_path, "0\ta\tgood\t3\n", "noheader.csv")
    with pytest.raises(DataError, match=r"noheader\.csv:1: wrong or missing header"):
        read_sst(no_header)
    # Comma-separated instead of tab-separated.
    commas = _write(tmp_path, ",id,sentence,sentiment\n0,a,good,3\n", "commas.csv")
    with pytest.raises(DataError, match=r"commas\.csv:1"):
        read_sst(commas)
    bad_utf8 = tmp_path / "latin1.csv"
    bad_utf8.write_bytes(SST_HEADER.encode() + "0\ta\tcaf\xe9\t3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv:2: not valid UTF-8"):
        read_sst(bad_utf8)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_sts(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="sst-train.csv"):
        SSTDataset.load("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        dataset_path("sst", "test")  # type: ignore[arg-type]


def test_datasets() -> None:
    sst = SSTDataset.load("dev", limit=5)
    assert len(sst) == 5 and isinstance(sst[0], SentimentExample)
    quora = QuoraDataset.load("dev", limit=3)
    assert isinstance(quora[2], ParaphraseExample)
    sts = STSDataset.load("dev", limit=3)
    assert isinstance(sts[0], SimilarityExample)


def test_collate_single(tokenizer: BertTokenizer) -> None:
    examples = [SentimentExample("a", "a fine film", 4), SentimentExample("b", "bad", 0)]
    batch = collate(examples, tokenizer)
    assert batch.labels.tolist() == [4, 0] and batch.labels.dtype == torch.long
    assert batch.inputs["input_ids"].shape == (2, 5)
    assert batch.inputs["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0]
    assert batch.inputs_b is None
    assert len(batch) == 2


def test_collate_pairs(tokenizer: BertTokenizer) -> None:
    examples = [
        SimilarityExample("a", "a cat", "a dog sits", 3.5),
        SimilarityExample("b", "birds fly high", "no", 0.0),
    ]
    cross = collate(examples, tokenizer)
    assert cross.labels.dtype == torch.float32 and cross.labels.tolist() == [3.5, 0.0]
    assert cross.inputs["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert cross.inputs_b is None

    siamese = Collate(tokenizer, pair_mode="siamese")(examples)
    assert siamese.inputs_b is not None
    assert siamese.inputs["input_ids"].shape == (2, 5)  # [CLS] birds fly high [SEP]
    assert siamese.inputs_b["input_ids"].shape == (2, 5)  # [CLS] a dog sits [SEP]
    assert int(siamese.inputs["token_type_ids"].sum()) == 0
    assert int(siamese.inputs_b["token_type_ids"].sum()) == 0

    quora = collate([ParaphraseExample("q", "x?", "y?", 1)], tokenizer)
    assert quora.labels.dtype == torch.long and quora.labels.tolist() == [1]
    moved = quora.to("cpu")
    assert isinstance(moved, Batch) and moved.inputs["input_ids"].equal(quora.inputs["input_ids"])


def test_collate_errors(tokenizer: BertTokenizer) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([], tokenizer)
    mixed = [SentimentExample("a", "x", 1), SimilarityExample("b", "x", "y", 1.0)]
    with pytest.raises(TypeError, match="mixes"):
        collate(mixed, tokenizer)  # type: ignore[arg-type]


def test_dataloader(tokenizer: BertTokenizer) -> None:
    loader = torch.utils.data.DataLoader(
        QuoraDataset.load("dev", limit=10), batch_size=4, collate_fn=Collate(tokenizer)
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(b.inputs["input_ids"][:, 0].eq(101).all() for b in batches)


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + SST_HEADER + "0\ta\tgood\t3\n").encode("utf-8"))
    assert [e.label for e in read_sst(path, strict=True)] == [3]
