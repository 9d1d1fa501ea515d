"""The raw source suites: each export file's columns as written, before any parsing.

A reader declares its `RawRules` (not blank, unique, written as a number / date / boolean) and,
while it reads, the values they are about (`declare_raw_suite`, a `RawSuite`); it runs no check
itself. `run_raw_suites` checks every declared suite with Great Expectations, once per read of the
exports (`etl.ingest.exports.read_exports`), and returns one `data_quality_results` row per file
and check. The reader quarantines each failing row with the rule's reason code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl.schema import DQ_RESULT_COLUMNS, conform, empty_frame
from etl.threads import map_in_threads
from etl.validation.gx_session import GxSession, failing_rows, quiet_great_expectations
from etl.validation.outcome import ASSET_EXPORTS, CHECK_NAME_MAX, SEVERITY_ROW, check_result, count_text

# How a value must be written to parse (etl.ingest.csvfiles.parse_numbers / parse_timestamps /
# parse_booleans); blank values are not checked here (each reader says which columns need one).
NUMBER_FORM = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
DATE_FORM = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
BOOLEAN_FORM = r"^([01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"
RAW_CHECK_PREFIX = "raw"


@dataclass(frozen=True)
class RawForm:
    """A column whose non-blank values must match `pattern` (a regular expression)."""

    column: str
    kind: str  # number, date, boolean, ...: names the check
    pattern: str
    reason_code: str  # the code the reader quarantines a value that does not parse with
    digit_blind: bool = True  # the pattern treats every digit alike (checked on shapes, see below)


@dataclass(frozen=True)
class RawRules:
    """What a reader expects of the columns of one export format, checked with Great
    Expectations on the text as written. Column names are the reader's working-frame names;
    a column the file does not have is skipped."""

    not_blank: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    forms: tuple[RawForm, ...] = ()

    @classmethod
    def standard(
        cls,
        not_blank: tuple[str, ...] = (),
        unique: tuple[str, ...] = (),
        numbers: tuple[str, ...] = (),
        dates: tuple[str, ...] = (),
        booleans: tuple[str, ...] = (),
        number_code: str = "unparseable_number",
        date_code: str = "unparseable_date",
        boolean_code: str = "unparseable_boolean",
        amounts: tuple[str, ...] = (),
    ) -> "RawRules":
        """Rules for columns parsed with the standard parsers (plain numbers, ISO dates, 0/1/true/false)."""
        forms = [RawForm(c, "number", NUMBER_FORM, "unparseable_amount") for c in amounts]
        forms += [RawForm(c, "number", NUMBER_FORM, number_code) for c in numbers]
        forms += [RawForm(c, "date", DATE_FORM, date_code) for c in dates]
        forms += [RawForm(c, "boolean", BOOLEAN_FORM, boolean_code, digit_blind=False) for c in booleans]
        return cls(not_blank=not_blank, unique=unique, forms=tuple(forms))


def _raw_check_name(source_file: str, label: str, kind: str) -> str:
    name = f"{RAW_CHECK_PREFIX}[{Path(source_file).name}].{label}.{kind}"
    return name if len(name) <= CHECK_NAME_MAX else name[: CHECK_NAME_MAX - 3] + "..."


def _text_array(values: pd.Series) -> pa.LargeStringArray:
    text = pa.array(values, type=pa.large_string())
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def _shapes(text: pa.LargeStringArray) -> pa.LargeStringArray:
    """Each value with every digit written as 9 ("2024-01-31" and "1999-12-01" share a shape):
    one pass over the column's bytes (digits are single bytes in UTF-8)."""
    validity, offsets, data = text.buffers()
    if data is None or data.size == 0:
        return text
    raw = np.frombuffer(data, dtype=np.uint8)
    shaped = np.where((raw >= 48) & (raw <= 57), np.uint8(57), raw).astype(np.uint8)
    return pa.LargeStringArray.from_buffers(
        len(text), offsets, pa.py_buffer(shaped), validity, text.null_count, text.offset
    )


def _distinct(values: pd.Series, digit_blind: bool) -> tuple[np.ndarray, pa.Array]:
    """Each row's code into the column's distinct written values, or their shapes when
    `digit_blind` (-1 for blank), and those distinct values."""
    text = _text_array(values)
    if digit_blind:
        text = _shapes(text)
    encoded = pc.dictionary_encode(text)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = encoded.dictionary
    blank = pc.equal(pc.utf8_length(dictionary), 0).to_numpy(zero_copy_only=False)
    if blank.any():
        codes[np.append(blank, False)[codes]] = -1
    return codes, dictionary


def _rows_with(codes: np.ndarray, bad_values: np.ndarray, n_values: int) -> np.ndarray:
    """Positions of the rows whose code is one of `bad_values` (code -1, blank, never is)."""
    if len(bad_values) == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.zeros(n_values + 1, dtype=bool)
    bad[bad_values] = True
    return np.flatnonzero(bad[codes])


@dataclass(frozen=True)
class RawSuite:
    """The raw suite a reader declares for one export format: its `RawRules` and the values they
    are about, as written, ready for Great Expectations. A reader builds it with `declare_raw_suite`
    while it reads its files and hands it back untouched; `run_raw_suites` checks it.

    The values are kept dictionary-encoded, not as the reader's text columns: each checked column
    as a 4-byte code per row into its distinct written values, or into their shapes for a
    digit-blind form (a date column has a few dozen shapes; an id column's values are all
    distinct, and the largest part of what a suite holds)."""

    format_label: str
    rules: RawRules
    files: dict[int, str]  # file key -> path, for every file the working frame holds rows of
    file_keys: np.ndarray  # each row's file key
    # (column, digit_blind) -> (each row's code, -1 for blank; the distinct values or shapes)
    encoded: dict[tuple[str, bool], tuple[np.ndarray, pa.Array]]
    headers: dict[tuple[int, str], str]  # (file key, working column) -> the file's header for it


def _checked_columns(rules: RawRules, frame: pd.DataFrame) -> list[tuple[str, bool]]:
    """The (column, digit_blind) encodings the rules need, for the columns `frame` has."""
    wanted = [(c, True) for c in rules.not_blank] + [(c, False) for c in rules.unique]
    wanted += [(form.column, form.digit_blind) for form in rules.forms]
    return [w for w in dict.fromkeys(wanted) if w[0] in frame]


def declare_raw_suite(
    frame: pd.DataFrame,
    files: dict[int, str],
    rules: RawRules,
    label: Callable[[int, str], str],
    format_label: str,
) -> RawSuite:
    """The raw suite of one export format over a reader's working frame: text columns as written
    ("" for blank) plus `_file` (the file key of each row, a key of `files`). `label(file_key,
    column)` is the column's header in that file. Nothing is checked here (see `run_raw_suites`)."""
    columns = _checked_columns(rules, frame)
    distinct = map_in_threads(lambda wanted: _distinct(frame[wanted[0]], wanted[1]), columns)
    encoded = {wanted: (codes.astype(np.int32), values) for wanted, (codes, values) in zip(columns, distinct)}
    headers = {(key, column): label(key, column) for key in files for column in dict.fromkeys(c for c, _ in columns)}
    return RawSuite(
        format_label=format_label,
        rules=rules,
        files=dict(files),
        file_keys=frame["_file"].to_numpy(dtype=np.int32),
        encoded=encoded,
        headers=headers,
    )


def validate_raw_rows(
    frame: pd.DataFrame,
    files: dict[int, str],
    rules: RawRules,
    label: Callable[[int, str], str],
    format_label: str,
) -> pd.DataFrame:
    """`declare_raw_suite` and `run_raw_suites` for one working frame: the `data_quality_results`
    rows of its raw suite."""
    return run_raw_suites([declare_raw_suite(frame, files, rules, label, format_label)])


def run_raw_suites(suites: Sequence[RawSuite]) -> pd.DataFrame:
    """Run the declared raw suites with Great Expectations, in one session, in order. Returns one
    `data_quality_results` row per suite, file and check (asset crm_exports, severity "row": the
    reader quarantines each failing row with the check's reason code).

    Great Expectations sees each column as a categorical of its distinct written values (cheap to
    hash and scan). A form check runs on the distinct shapes of the values (every digit written
    as 9, when the form treats all digits alike), so five million timestamps cost a few dozen
    regular-expression matches; a failing shape fails every row written in it."""
    parts: list[pd.DataFrame] = []
    seen: dict[str, int] = {}
    with quiet_great_expectations():
        session = GxSession()
        for suite in suites:
            # Suite names are unique within a session: a format declared twice gets a number.
            seen[suite.format_label] = seen.get(suite.format_label, 0) + 1
            number = seen[suite.format_label]
            parts.append(_run_suite(session, suite, f"raw {suite.format_label}" + (f" #{number}" if number > 1 else "")))
    out = [part for part in parts if not part.empty]
    if not out:
        return empty_frame(DQ_RESULT_COLUMNS)
    return pd.concat(out, ignore_index=True)


def _run_suite(session: GxSession, suite: RawSuite, suite_name: str) -> pd.DataFrame:
    rules = suite.rules
    expectations: list[Any] = []
    described: dict[str, tuple[str, str, str]] = {}
    work = pd.DataFrame(index=pd.RangeIndex(len(suite.file_keys)))
    for column in rules.not_blank:
        if (column, True) in suite.encoded:
            name = f"{column}.not_blank"
            codes, values = suite.encoded[(column, True)]
            work[name] = pd.Categorical.from_codes(codes, categories=pd.Index(np.arange(len(values))))
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, meta={"check_name": name}))
            described[name] = (column, "not_blank", "a value in every row (blank rows are quarantined)")
    for column in rules.unique:
        if (column, False) in suite.encoded:
            name = f"{column}.unique"
            codes, values = suite.encoded[(column, False)]
            work[name] = pd.Categorical.from_codes(codes, categories=pd.Index(np.arange(len(values))))
            expectations.append(gxe.ExpectColumnValuesToBeUnique(column=name, meta={"check_name": name}))
            described[name] = (column, "unique", "each value once (later repeats are quarantined as duplicate_id)")
    failing: dict[str, np.ndarray] = {}
    if expectations:
        results = session.validate(suite_name, work, expectations)
        failing = {name: failing_rows(results[name], name) for name in results}
    for form in rules.forms:
        if (form.column, form.digit_blind) not in suite.encoded:
            continue
        name = f"{form.column}.{form.kind}"
        codes, values = suite.encoded[(form.column, form.digit_blind)]
        check = gxe.ExpectColumnValuesToMatchRegex(column="value", regex=form.pattern, meta={"check_name": name})
        checked = pd.DataFrame({"value": pd.Series(values.to_pylist(), dtype=object)})
        bad_values = failing_rows(session.validate(f"{suite_name} {name}", checked, [check])[name], name)
        failing[name] = _rows_with(codes, bad_values, len(values))
        described[name] = (
            form.column, form.kind,
            f"blank or written as a {form.kind} (others are quarantined as {form.reason_code})",
        )
    file_keys = suite.file_keys
    rows_per_file = pd.Series(file_keys).value_counts()
    out = []
    for name, (column, kind, expected) in described.items():
        failing_per_file = pd.Series(file_keys[failing[name]]).value_counts()
        for key, path in suite.files.items():
            total = int(rows_per_file.get(key, 0))
            count = int(failing_per_file.get(key, 0))
            header = suite.headers[(key, column)]
            out.append(
                check_result(
                    _raw_check_name(path, header, kind), ASSET_EXPORTS, count == 0, SEVERITY_ROW,
                    count_text(count, total), f"{header}: {expected}", count,
                )
            )
    if not out:
        return empty_frame(DQ_RESULT_COLUMNS)
    return conform(pd.DataFrame(out, columns=list(DQ_RESULT_COLUMNS)), DQ_RESULT_COLUMNS, "data_quality_results")
