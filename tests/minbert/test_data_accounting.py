"""Every physical line of a data file is read into one example or reported as skipped.

A stray ``"`` used to open a quoted field that ran on over the following lines: rows merged
silently (default and strict mode) or vanished under a "skipped 1 bad row" warning. These
tests pin the line-by-line policy of :mod:`examples.minbert.data`.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.minbert.data import (
    DataError,
    DataWarning,
    SentimentExample,
    dataset_path,
    read_quora,
    read_sst,
    read_sts,
)

SST_HEADER = "\tid\tsentence\tsentiment\n"
STRAY_OPEN, STRAY_CLOSE = 4, 21  # a quote opens a sentence here and closes 17 lines later


def _read(
    reader: Callable[..., Sequence[object]], path: Path, **kwargs: object
) -> tuple[list, DataWarning | None]:
    """The examples and the one DataWarning (or None) of a read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = list(reader(path, **kwargs))
    found = [w.message for w in caught if issubclass(w.category, DataWarning)]
    assert len(found) <= 1, "one warning per file at most"
    return examples, (found[0] if found else None)  # type: ignore[return-value]


def _physical_lines(path: Path) -> int:
    """Lines of a file as text editors and the csv module count them (\\n, \\r\\n, \\r)."""
    data = path.read_bytes()
    ends = len(re.findall(rb"\r\n|\r|\n", data))
    return ends + (0 if data.endswith((b"\n", b"\r")) or not data else 1)


def _sst_rows(count: int = 30) -> list[str]:
    """The first ``count`` rows of the shipped SST dev file, each with its line end."""
    text = dataset_path("sst", "dev").read_text(encoding="utf-8")
    return text.splitlines(keepends=True)[1 : count + 1]


def _with_quote(row: str, *, end: bool) -> str:
    index, uid, sentence, label = row.rstrip("\n").split("\t")
    sentence = sentence + '"' if end else '"' + sentence
    return "\t".join([index, uid, sentence, label]) + "\n"


def _stray_file(tmp_path: Path, *, closed: bool) -> tuple[Path, list[str]]:
    """30 SST rows; line 4's sentence opens with ``"``, closed at the end of line 21's."""
    rows = _sst_rows()
    changed = list(rows)
    changed[STRAY_OPEN - 2] = _with_quote(rows[STRAY_OPEN - 2], end=False)
    if closed:
        changed[STRAY_CLOSE - 2] = _with_quote(rows[STRAY_CLOSE - 2], end=True)
    path = tmp_path / ("stray.csv" if closed else "unclosed.csv")
    path.write_text(SST_HEADER + "".join(changed), encoding="utf-8")
    return path, rows


def _expected(rows: list[str]) -> dict[int, tuple[str, int]]:
    """Line -> (sentence, label) of the original rows."""
    out = {}
    for line, row in enumerate(rows, start=2):
        _, _, sentence, label = row.rstrip("\n").split("\t")
        out[line] = (sentence.strip(), int(label))
    return out


@pytest.mark.parametrize("closed", [True, False], ids=["closed-17-lines-later", "never-closed"])
def test_stray_quote_costs_only_its_line(tmp_path: Path, closed: bool) -> None:
    path, rows = _stray_file(tmp_path, closed=closed)
    examples, warning = _read(read_sst, path)
    assert _physical_lines(path) == 31

    # Line 4 is reported by number and why; every other line is one example, in order.
    assert warning is not None
    message = str(warning)
    assert f"skipped 1 bad row: {path.name}:{STRAY_OPEN} (unclosed quote in sentence" in message
    assert "(30 lines after the header: 29 read, 1 skipped)" in message
    assert warning.skipped == ((STRAY_OPEN, warning.skipped[0][1]),)
    assert (warning.lines, warning.read) == (30, 29)
    assert len(examples) == 29
    assert [e.line for e in examples] == [n for n in range(2, 32) if n != STRAY_OPEN]

    expected = _expected(rows)
    longest = max(len(sentence) for sentence, _ in expected.values())
    for example in examples:
        sentence, label = expected[example.line]
        assert example.label == label
        if closed and example.line == STRAY_CLOSE:
            # A quote inside an unquoted field is an ordinary character.
            assert example.sentence == sentence + '"'
        else:
            assert example.sentence == sentence
        assert "\n" not in example.sentence and len(example.sentence) <= longest + 1


@pytest.mark.parametrize("closed", [True, False], ids=["closed-17-lines-later", "never-closed"])
def test_strict_refuses_stray_quote(tmp_path: Path, closed: bool) -> None:
    path, _ = _stray_file(tmp_path, closed=closed)
    pattern = rf"{re.escape(path.name)}:{STRAY_OPEN}: unclosed quote in sentence"
    with pytest.raises(DataError, match=pattern) as info:
        read_sst(path, strict=True)
    assert info.value.line == STRAY_OPEN and info.value.path == path
    assert info.value.reason.startswith("unclosed quote")


def test_doubled_quotes_and_tab_in_quoted_field(tmp_path: Path) -> None:
    text = (
        SST_HEADER
        + '0\ta\t"say ""hi""\tthere"\t3\n'  # line 2: a quoted field with "" and a tab
        + '1\tb\t"never closed\t2\n'  # line 3: unclosed quote
        + '2\tc\t"a ""quoted"" word, a\ttab"\t4\r\n'  # line 4: must not be swallowed by 3
        + '3\td\t""""\t1\n'  # line 5: the sentence is one quote character
    )
    path = tmp_path / "quotes.csv"
    path.write_text(text, encoding="utf-8", newline="")
    examples, warning = _read(read_sst, path)
    assert [(e.line, e.sentence, e.label) for e in examples] == [
        (2, 'say "hi"\tthere', 3),
        (4, 'a "quoted" word, a\ttab', 4),
        (5, '"', 1),
    ]
    assert warning is not None and [line for line, _ in warning.skipped] == [3]
    with pytest.raises(DataError, match=r"quotes\.csv:3: unclosed quote in sentence"):
        read_sst(path, strict=True)


def test_blank_lines_are_reported(tmp_path: Path) -> None:
    # Policy: a blank line (empty, or only spaces and tabs) is a skipped bad row, reported.
    text = SST_HEADER + "0\ta\tgood\t3\n\n \t \n1\tb\tbad\t0\n\n"
    path = tmp_path / "blank.csv"
    path.write_text(text, encoding="utf-8")
    examples, warning = _read(read_sst, path)
    assert [e.line for e in examples] == [2, 5]
    assert warning is not None
    assert warning.skipped == ((3, "blank line"), (4, "blank line"), (6, "blank line"))
    assert warning.lines == _physical_lines(path) - 1 == 5
    with pytest.raises(DataError, match=r"blank\.csv:3: blank line"):
        read_sst(path, strict=True)


def test_line_ends_and_numbers(tmp_path: Path) -> None:
    # \r\n, \n and a lone \r all end a line (as the csv module counts lines).
    raw = (
        SST_HEADER.replace("\n", "\r\n") + '0\ta\tone\t1\r\n1\tb\ttwo\t2\r2\tc\tthree\t3\n3\t"x\t4'
    )
    path = tmp_path / "ends.csv"
    path.write_bytes(raw.encode("utf-8"))
    examples, warning = _read(read_sst, path)
    assert [(e.line, e.sentence) for e in examples] == [(2, "one"), (3, "two"), (4, "three")]
    assert warning is not None and [line for line, _ in warning.skipped] == [5]
    assert warning.lines == _physical_lines(path) - 1 == 4


def test_undecodable_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        ("\ufeff" + SST_HEADER + "0\ta\tok\t3\n").encode("utf-8")
        + "1\tb\tcaf\xe9\t3\n".encode("latin-1")
    )
    with pytest.raises(DataError, match=r"latin1\.csv:3: not valid UTF-8") as info:
        read_sst(path)
    assert info.value.line == 3


def test_oversized_field_is_a_bad_row(tmp_path: Path) -> None:
    # The csv module refuses fields over its limit: that line is reported, the rest read.
    limit = csv.field_size_limit()
    text = SST_HEADER + "0\ta\tok\t3\n" + f"1\tb\t{'w' * (limit + 1)}\t2\n" + "2\tc\tfine\t1\n"
    path = tmp_path / "big.csv"
    path.write_text(text, encoding="utf-8")
    examples, warning = _read(read_sst, path)
    assert [e.line for e in examples] == [2, 4]
    assert warning is not None and warning.skipped[0][0] == 3
    assert "malformed CSV" in warning.skipped[0][1]


SHIPPED = {
    ("sst", "train"): (read_sst, 8000, ()),
    ("sst", "dev"): (read_sst, 1101, ()),
    ("quora", "train"): (read_quora, 15998, (2026, 11224)),
    ("quora", "dev"): (read_quora, 2000, ()),
    ("sts", "train"): (read_sts, 5500, ()),
    ("sts", "dev"): (read_sts, 863, ()),
}


@pytest.mark.parametrize(("task", "split"), sorted(SHIPPED))
def test_shipped_files_account_for_every_line(task: str, split: str) -> None:
    reader, count, bad = SHIPPED[(task, split)]
    path = dataset_path(task, split)  # type: ignore[arg-type]
    examples, warning = _read(reader, path)
    skipped = () if warning is None else tuple(line for line, _ in warning.skipped)
    assert (len(examples), skipped) == (count, bad)
    assert len(examples) + len(skipped) == _physical_lines(path) - 1
    assert [e.line for e in examples] == [
        n for n in range(2, _physical_lines(path) + 1) if n not in bad
    ]


# --------------------------------------------------------------------------------------------
# Property: random files of valid rows and junk lines
# --------------------------------------------------------------------------------------------

# Valid sentences may hold quotes and tabs (written quoted, with doubled quotes).
_SENTENCE = st.text(alphabet='abcxyz é"\t,', min_size=1, max_size=12).map(str.strip).filter(bool)
_PLAIN = st.text(alphabet="abcxyz é,", min_size=1, max_size=12).map(str.strip).filter(bool)
_JUNK_KINDS = ["stray-quote", "missing-tab", "empty-label", "blank", "text", "lone-quote"]


def _valid_line(index: int, sentence: str, label: int) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="").writerow(
        [index, f"u{index}", sentence, label]
    )
    return buffer.getvalue()


def _junk_line(kind: str, index: int, plain: str, label: int) -> str:
    return {
        "stray-quote": f'{index}\tu{index}\t"{plain}\t{label}',  # opens, never closes
        "missing-tab": f"{index}\tu{index} {plain}\t{label}",
        "empty-label": f"{index}\tu{index}\t{plain}\t",
        "blank": "",
        "text": plain,
        "lone-quote": '"',
    }[kind]


_ITEMS = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), _SENTENCE, st.integers(0, 4)),
        st.tuples(st.sampled_from(_JUNK_KINDS), _PLAIN, st.integers(0, 4)),
    ),
    max_size=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=_ITEMS,
    ends=st.lists(st.sampled_from(["\n", "\r\n"]), min_size=26, max_size=26),
    final_end=st.booleans(),
)
def test_random_files_account_for_every_line(
    tmp_path: Path, items: list[tuple[str, str, int]], ends: list[str], final_end: bool
) -> None:
    lines, valid, junk = [], [], []
    for index, (kind, text, label) in enumerate(items):
        line = index + 2
        if kind == "valid":
            lines.append(_valid_line(index, text, label))
            valid.append(SentimentExample(f"u{index}", text, label, line))
        else:
            lines.append(_junk_line(kind, index, text, label))
            junk.append(line)
    body = "".join(text + end for text, end in zip(lines, ends, strict=False))
    if lines and not final_end:
        body = body.rstrip("\r\n") if lines[-1] else body  # a last line without its end
    path = tmp_path / "random.csv"
    path.write_bytes((SST_HEADER + body).encode("utf-8"))
    physical = _physical_lines(path)
    assert physical == len(items) + 1

    examples, warning = _read(read_sst, path)
    assert examples == valid  # exact text, label, line and order
    count = 0
    if warning is not None:
        found = re.search(r"skipped (\d+) bad rows?:", str(warning))
        assert found is not None
        count = int(found.group(1))
    assert len(examples) + count == physical - 1
    assert count == len(junk)
    if warning is not None:
        assert [line for line, _ in warning.skipped] == junk
        assert (warning.read, warning.lines) == (len(valid), physical - 1)

    if junk:
        with pytest.raises(DataError, match=rf"random\.csv:{junk[0]}: ") as info:
            read_sst(path, strict=True)
        assert info.value.line == junk[0]
    else:
        assert read_sst(path, strict=True) == valid
