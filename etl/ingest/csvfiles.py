"""Robust CSV loading shared by every CRM reader.

What a data engineer can rely on:
- encoding: UTF-8 with or without a byte-order mark, else Windows-1252 (strict UTF-8 is tried
  first over the whole file); UTF-16 files, binary files and spreadsheets saved as .xlsx are
  refused with a message saying what to do;
- every column is read as text (pyarrow's multi-threaded parser; Python's csv module takes over
  only for files pyarrow cannot number exactly: ragged rows or unbalanced quotes);
- each record keeps its spreadsheet row number (the header is row 1, the first record row 2, a
  line break inside a quoted value does not start a new row, a blank line is a row);
- a record with the wrong number of fields is quarantined (`malformed_row`), never dropped;
- a record whose quoting is malformed (`"Acme "Big" Co"`: a quote inside a quoted value that is
  not doubled) is quarantined (`malformed_quoting`) with its line as written, never repaired the
  way a lenient parser (or Excel) would guess it (`Acme Big" Co"`);
- line breaks may be LF, CRLF or CR alone (old Mac Excel);
- files that cannot be read at all raise `ExportFormatError` naming the file, the line and what
  was expected.

Values are then parsed by the `parse_*` helpers, which return the parsed values plus a mask of
the non-blank values that did not parse, and `Quarantine` collects row problems with their
reasons and the raw record.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl.deal_ids import arrow_values
from etl.ingest.readers import ExportFormatError
from etl.schema import QUARANTINE_COLUMNS, TIMESTAMP, conform, empty_frame
from etl.threads import map_in_threads
from etl.validation.raw import RawRules, RawSuite, declare_raw_suite
from etl.validation.reason_codes import (
    BLANK_ROW,
    DUPLICATE_ID,
    MALFORMED_QUOTING,
    MALFORMED_ROW,
    MISSING_ID,
    MISSING_REQUIRED_VALUE,
)

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 24
_PYARROW_BLOCK_BYTES = 1 << 24
_SNIFF_BYTES = 1 << 16
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_ZIP_MAGIC = b"PK\x03\x04"
_OTHER_DELIMITERS = (";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


# --------------------------------------------------------------------------------------------
# Encoding, hashing and file-level checks


@dataclass(frozen=True)
class FileScan:
    """One pass over a file's bytes: checksum, size, and what the fast reader needs to trust itself."""

    sha256: str
    size: int
    quote_count: int
    line_breaks: int
    ends_with_newline: bool
    has_bom: bool
    # Line breaks written as CR alone (old Mac Excel), and quotes that touch text on both sides
    # (`e "B`): inside a quoted value such a quote should have been doubled.
    lone_carriage_returns: int = 0
    stray_quotes: int = 0

    @property
    def physical_lines(self) -> int:
        return self.line_breaks + self.lone_carriage_returns + (0 if self.ends_with_newline else 1)


def _line_of(path: Path, offset: int) -> int:
    """The 1-based physical line holding byte `offset`."""
    line = 1
    done = 0
    with open(path, "rb") as handle:
        while done < offset:
            chunk = handle.read(min(_CHUNK_BYTES, offset - done))
            if not chunk:
                break
            line += chunk.count(b"\n")
            done += len(chunk)
    return line


# A quote with text on both sides: a byte that is not a quote, delimiter (, ; tab |) or line break
# before and after it.
_STRAY_QUOTE = '[^",;\\t|\\r\\n]"[^",;\\t|\\r\\n]'


def _stray_quotes(window: bytes) -> int:
    """Quotes of `window` with text (not a delimiter, line break or another quote) on both sides,
    counted as a regular expression finds them (`a"b"c` is one). Arrow's RE2 searches the bytes
    as bytes (no decoding), without holding the GIL: an export that quotes every value has a
    quote every few bytes."""
    return pc.count_substring_regex(pa.array([window], pa.large_binary()), _STRAY_QUOTE)[0].as_py()


def unreadable(path: Path, exc: OSError) -> ExportFormatError:
    """The error for a file the operating system will not let Dealcast read."""
    reason = exc.strerror or type(exc).__name__
    return ExportFormatError(
        f"{path}: the file cannot be read ({reason}); expected a file this user may read "
        "(check its permissions, or whether another program holds it locked)"
    )


def scan_file(path: Path) -> FileScan:
    """Checksum the file and count its quotes and line breaks.

    Raises `ExportFormatError` for an unreadable file (permissions), an empty file, a binary file
    (NUL bytes, ZIP/.xlsx) or UTF-16 text.
    """
    try:
        return _scan(path)
    except OSError as exc:
        raise unreadable(path, exc) from None


def _scan(path: Path) -> FileScan:
    digest = hashlib.sha256()
    size = 0
    quotes = 0
    breaks = 0
    carriage_returns = 0
    crlf = 0
    stray = 0
    last = b""
    tail = b""
    has_bom = False
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            if size == 0:
                if chunk.startswith(_ZIP_MAGIC):
                    raise ExportFormatError(
                        f"{path}: line 1: this is a ZIP archive or an Excel workbook (.xlsx), not CSV "
                        "text; expected a CSV file (unzip the export, or save the sheet as CSV UTF-8)"
                    )
                if chunk.startswith(_UTF16_BOMS):
                    raise ExportFormatError(
                        f"{path}: line 1: the file is UTF-16 text; expected UTF-8 or Windows-1252 "
                        "(save it again as 'CSV UTF-8')"
                    )
                has_bom = chunk.startswith(_UTF8_BOM)
            nul = chunk.find(b"\0")
            if nul >= 0:
                at = size + nul
                raise ExportFormatError(
                    f"{path}: line {_line_of(path, at)}: binary data (a NUL byte at byte {at}); "
                    "expected a CSV text file"
                )
            digest.update(chunk)
            quotes += chunk.count(b'"')
            breaks += chunk.count(b"\n")
            returns = chunk.count(b"\r")
            carriage_returns += returns
            if returns or last == b"\r":
                crlf += chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
            if quotes:
                # The window starts with the previous chunk's last two bytes: a quote at a chunk's
                # end is judged with the next chunk's first byte, and no quote is judged twice.
                stray += _stray_quotes(tail + chunk)
            tail = (tail + chunk[:2])[-2:] if len(chunk) < 2 else chunk[-2:]
            size += len(chunk)
            last = chunk[-1:]
    if size == 0:
        raise ExportFormatError(f"{path}: line 1: the file is empty; expected a header line and data rows")
    return FileScan(
        sha256=digest.hexdigest(),
        size=size,
        quote_count=quotes,
        line_breaks=breaks,
        ends_with_newline=last in (b"\n", b"\r"),
        has_bom=has_bom,
        lone_carriage_returns=carriage_returns - crlf,
        stray_quotes=stray,
    )


def _starts_with_bom(path: Path) -> bool:
    """Whether the file begins with the UTF-8 byte order mark (`FileScan.has_bom`, read without the scan)."""
    with open(path, "rb") as handle:
        return handle.read(len(_UTF8_BOM)) == _UTF8_BOM


def detect_encoding(path: Path, scan: FileScan) -> str:
    """"utf-8-sig" / "utf-8" when the whole file is valid UTF-8, else "cp1252" when it is valid
    Windows-1252; `ExportFormatError` naming the first offending line otherwise."""
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    done = 0
    utf8_error: int | None = None
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            try:
                utf8.decode(chunk, final=False)
            except UnicodeDecodeError as exc:
                utf8_error = done + exc.start
                break
            done += len(chunk)
        else:
            try:
                utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8_error = max(scan.size - 1, 0)
    if utf8_error is None:
        return "utf-8-sig" if scan.has_bom else "utf-8"
    decoder = codecs.getincrementaldecoder("cp1252")("strict")
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            try:
                decoder.decode(chunk, final=False)
            except UnicodeDecodeError as exc:
                at = done + exc.start
                raise ExportFormatError(
                    f"{path}: line {_line_of(path, at)}: byte 0x{chunk[exc.start]:02x} at byte {at} is "
                    f"neither UTF-8 nor Windows-1252 (the first non-UTF-8 byte is at byte {utf8_error}); "
                    "expected a text file in UTF-8 or Windows-1252"
                ) from None
            done += len(chunk)
    utf8_text = _first_utf8_sequence(path)
    if utf8_text is not None:
        raise ExportFormatError(
            f"{path}: line {_line_of(path, utf8_error)}: byte 0x{_byte_at(path, utf8_error):02x} is Windows-1252 but "
            f"line {_line_of(path, utf8_text)} is UTF-8 (bytes {_bytes_at(path, utf8_text)}): the file mixes two "
            "encodings, so either reading would change some names; expected one encoding (re-save it as CSV UTF-8)"
        )
    logger.info(
        "%s: not valid UTF-8 (first bad byte on line %d); read as Windows-1252", path, _line_of(path, utf8_error)
    )
    return "cp1252"


# A well-formed UTF-8 encoding of a non-ASCII character. Text really written in Windows-1252
# practically never contains one (it would read as "Ã©" or "â€™").
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _first_utf8_sequence(path: Path) -> int | None:
    """Byte offset of the first well-formed multi-byte UTF-8 character in the file, if any."""
    done = 0
    carry = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            data = carry + chunk
            match = _UTF8_SEQUENCE.search(data)
            if match:
                return done - len(carry) + match.start()
            carry = data[-3:]
            done += len(chunk)
    return None


def _byte_at(path: Path, offset: int) -> int:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(1)[0]


def _bytes_at(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(4)
    match = _UTF8_SEQUENCE.match(data)
    return " ".join(f"0x{b:02x}" for b in (match.group(0) if match else data[:1]))


# --------------------------------------------------------------------------------------------
# Header


@dataclass(frozen=True)
class CsvHeader:
    """A file's header line, split on commas, plus the delimiter that splits it best."""

    path: Path
    columns: tuple[str, ...]
    line: str
    likely_delimiter: str

    def split_on(self, delimiter: str) -> tuple[str, ...]:
        return _split_header(self.line, delimiter)


def _split_header(line: str, delimiter: str) -> tuple[str, ...]:
    try:
        fields = next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        fields = line.split(delimiter)
    return tuple(f.strip() for f in fields)


def _header_from_text(path: Path, text: str) -> CsvHeader | None:
    # A byte-order mark, decoded (UTF-8) or read as Windows-1252 text (a file mixing encodings).
    text = text.removeprefix("\ufeff").removeprefix("\u00ef\u00bb\u00bf")
    line = re.split(r"\r\n|\n|\r", text, maxsplit=1)[0]
    if not line.strip():
        return None
    try:
        first = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error:
        first = line.split(",")
    columns = tuple(c.strip() for c in first)
    counts = {d: len(_split_header(line, d)) for d in (",", *_OTHER_DELIMITERS)}
    likely = max(counts, key=lambda d: (counts[d], d == ","))
    return CsvHeader(path=path, columns=columns, line=line, likely_delimiter=likely)


def sniff_header(path: Path) -> CsvHeader | None:
    """The header of `path`, or None when the file is empty, binary or has no header line.

    Cheap (reads the first 64 KiB) and never raises for a damaged file: format detection uses it.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        logger.warning("%s: cannot be opened (%s)", path, exc)
        return None
    if not head or b"\0" in head or head.startswith(_ZIP_MAGIC):
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")("strict").decode(head, final=False)
    except UnicodeDecodeError:
        text = head.decode("cp1252", errors="replace")
    return _header_from_text(path, text)


def read_header(path: Path, encoding: str) -> CsvHeader:
    """The header line of `path` read as `encoding`; `ExportFormatError` when line 1 is empty."""
    with open(path, encoding=encoding, newline="") as handle:
        text = handle.read(_SNIFF_BYTES)
    header = _header_from_text(path, text)
    if header is None:
        raise ExportFormatError(f"{path}: line 1 is empty; expected the header line (column names)")
    return header


def squashed(name: str) -> str:
    """A field name without case and underscores: Salesforce's `StageName` and `Loss_Reason__c` and
    a warehouse loader's `stage_name` and `loss_reason_c` become `stagename` and `lossreasonc`."""
    return name.casefold().replace("_", "")


def header_for(columns: Sequence[str], column: str | None, snake_case: bool = False) -> str | None:
    """The header among `columns` for `column`: that very name, else the only one equal to it when
    case is ignored, else (with `snake_case`) the only one equal to it when underscores are ignored
    too (a warehouse loader's `stage_name` for `StageName`); None when there is none (or several
    that differ only so)."""
    if not column:
        return None
    if column in columns:
        return column
    folded = column.casefold()
    matches = [c for c in columns if c.casefold() == folded]
    if not matches and snake_case:
        matches = [c for c in columns if squashed(c) == squashed(column)]
    return matches[0] if len(matches) == 1 else None


# --------------------------------------------------------------------------------------------
# The table


@dataclass
class CsvTable:
    """A CSV file read as text: one string column per header column, every value as written."""

    path: Path
    format: str
    columns: tuple[str, ...]
    scan: FileScan
    encoding: str
    data: pa.Table
    source_row: np.ndarray
    malformed: pd.DataFrame
    # Headers may be a warehouse loader's snake_case spelling of the names asked for (`header_for`).
    snake_case: bool = False

    @property
    def rows_read(self) -> int:
        return self.data.num_rows + len(self.malformed)

    def __len__(self) -> int:
        return self.data.num_rows

    def column_for(self, column: str | None) -> str | None:
        """The file's header for `column`: that very name, else the one header that differs from it
        only in case (Salesforce Data Loader writes `STAGENAME` for `StageName`), or for a
        `snake_case` table only in case and underscores (`stage_name`); None otherwise."""
        return header_for(self.columns, column, self.snake_case)

    def has(self, column: str | None) -> bool:
        return self.column_for(column) is not None

    def text(self, column: str | None) -> pd.Series:
        """The column's values with surrounding blanks removed ("" where blank); all "" when the
        file has no such column (an optional column left out of the export). Header names are
        matched as `column_for` says."""
        header = self.column_for(column)
        if header is None:
            return pd.Series("", index=pd.RangeIndex(len(self)), dtype="str")
        values = self.data.column(header)
        trimmed = pc.utf8_trim_whitespace(values)
        # Use the trimmed copy only when something was trimmed; else keep the file's own buffers.
        if pc.sum(pc.binary_length(trimmed)) != pc.sum(pc.binary_length(values)):
            values = trimmed
        return pd.Series(values.to_pandas(), dtype="str")

    def blank_rows(self) -> np.ndarray:
        """Records whose every value is blank (a blank line in the file is such a record)."""

        def blank(column: pa.ChunkedArray) -> np.ndarray:
            length = pc.utf8_length(pc.utf8_trim_whitespace(column))
            return pc.equal(length, 0).to_numpy(zero_copy_only=False)

        candidates = np.flatnonzero(blank(self.data.column(0)))
        if len(candidates):
            rest = self.data.take(pa.array(candidates))
            keep = np.ones(len(candidates), dtype=bool)
            for column in rest.columns[1:]:
                keep &= blank(column)
            candidates = candidates[keep]
        mask = np.zeros(len(self), dtype=bool)
        mask[candidates] = True
        return mask

    def raw_records(self, positions: np.ndarray) -> list[str]:
        """The records at `positions` as JSON objects of the original strings."""
        if len(positions) == 0:
            return []
        rows = self.data.take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()
        return [json.dumps(row, ensure_ascii=False) for row in rows]


def load_csv(
    path: Path,
    format_label: str,
    required: Sequence[str],
    delimiter: str = ",",
    snake_case: bool = False,
) -> CsvTable:
    """Read `path` with every column as text, checking the header against `required` (a required
    column may differ in case, and with `snake_case` in underscores, as `header_for` says).

    `format_label` names the format in messages (e.g. "Salesforce Opportunity"). Raises
    `ExportFormatError` for an empty, binary, truncated or header-only file, a wrong delimiter,
    a repeated column name, or a missing required column.
    """
    # The byte scan (checksum, quote and line counts) runs on a thread while the header is checked
    # and pyarrow parses the file: the parser and hashlib work without the GIL, so the two overlap.
    # Whatever goes wrong, a scan error (unreadable, empty, binary or UTF-16 file) is the one raised,
    # as when the scan came first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv-scan") as pool:
        pending = pool.submit(scan_file, path)
        try:
            return _load_scanned(path, pending, format_label, required, delimiter, snake_case)
        except Exception:
            failed = pending.exception()
            if failed is not None:
                raise failed from None
            raise


def _load_scanned(
    path: Path,
    pending: Future[FileScan],
    format_label: str,
    required: Sequence[str],
    delimiter: str,
    snake_case: bool,
) -> CsvTable:
    """`load_csv` once the scan of `path` is under way in `pending`."""
    encoding = "utf-8-sig" if _starts_with_bom(path) else "utf-8"
    try:
        header = read_header(path, encoding)
    except UnicodeDecodeError:
        encoding = detect_encoding(path, pending.result())
        header = read_header(path, encoding)
    columns = header.split_on(delimiter)
    expected = ", ".join(required)
    if len(columns) == 1 and header.likely_delimiter != delimiter:
        found = _DELIMITER_NAMES.get(header.likely_delimiter, repr(header.likely_delimiter))
        wanted = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
        with_columns = f" with the columns {expected}" if required else ""
        regional = (
            "; a semicolon-separated file is usually one saved by Excel with European settings: export it "
            f"again, or {MAPPING_HINT}"
            if header.likely_delimiter == ";" else ""
        )
        raise ExportFormatError(
            f"{path}: line 1: the header is {found}-separated; expected a {wanted}-separated "
            f"{format_label} export{with_columns} (header found: {header.line[:200]!r}){regional}"
        )
    if any(c == "" for c in columns):
        columns = tuple(c or f"column_{i + 1}" for i, c in enumerate(columns))
    missing = [c for c in required if header_for(columns, c, snake_case) is None]
    if missing:
        known = [c for c in required if header_for(columns, c, snake_case) is not None]
        hint = (
            " None of the expected columns is there: is the header row missing?"
            if not known
            else ""
        )
        raise ExportFormatError(
            f"{path}: line 1: missing required column(s) {', '.join(missing)}; expected a "
            f"{format_label} export with the columns {expected}.{hint}"
        )

    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ExportFormatError(
            f"{path}: line 1: column name(s) {repeated} appear more than once in the header; "
            f"expected each column once"
        )

    data = _read_fast(path, pending.result, encoding, columns, delimiter)
    scan = pending.result()
    if data is _NOT_UTF8:
        encoding = detect_encoding(path, scan)
        data = _read_fast(path, pending.result, encoding, columns, delimiter)
    if isinstance(data, pa.Table):
        source_row = np.arange(2, data.num_rows + 2, dtype=np.int64)
        malformed = empty_frame(QUARANTINE_COLUMNS)
    else:
        if encoding.startswith("utf-8"):
            encoding = detect_encoding(path, scan)
        data, source_row, malformed = _read_exact(path, scan, encoding, columns, delimiter)
    table = CsvTable(
        path=path,
        format=format_label,
        columns=columns,
        scan=scan,
        encoding=encoding,
        data=data,
        source_row=source_row,
        malformed=malformed,
        snake_case=snake_case,
    )
    if table.rows_read == 0:
        raise ExportFormatError(
            f"{path}: line 2: the file has a header but no data rows; expected at least one "
            f"{format_label} record after the header"
        )
    logger.info("%s: %d rows read (%s, %s)", path, table.rows_read, format_label, encoding)
    return table


def _arrow_encoding(encoding: str) -> str:
    return "utf8" if encoding.startswith("utf-8") else encoding


_NOT_UTF8 = "not utf-8"


def _read_fast(
    path: Path, scan_of: Callable[[], FileScan], encoding: str, columns: tuple[str, ...], delimiter: str
) -> pa.Table | str | None:
    """pyarrow's parser. Returns the table when every record is numbered exactly (record i is
    spreadsheet row i + 2), `_NOT_UTF8` when the file is not UTF-8, None when the record-by-record
    reader must take over (ragged rows, an unbalanced quote, a parse error).

    Files whose values hold no line break are parsed with the faster splitter (one record per
    line, checked by counting lines); others with the quote-aware one. `scan_of` gives the file's
    scan, waiting for it when it runs on another thread: the first parse runs meanwhile, and what it
    found counts only once the scan says the quotes are balanced and none is stray.
    """
    for newlines_in_values in (False, True):
        invalid: list[int] = []

        def on_invalid_row(row: pacsv.InvalidRow) -> str:
            invalid.append(row.actual_columns)
            return "skip"

        failure: pa.ArrowInvalid | None = None
        try:
            data = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(
                    encoding=_arrow_encoding(encoding),
                    column_names=list(columns),
                    skip_rows=1,
                    use_threads=True,
                    block_size=_PYARROW_BLOCK_BYTES,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter,
                    newlines_in_values=newlines_in_values,
                    ignore_empty_lines=False,
                    invalid_row_handler=on_invalid_row,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            failure = exc
        scan = scan_of()
        if scan.quote_count % 2 or scan.stray_quotes:
            return None
        if failure is not None:
            if "utf8" in str(failure).lower() and encoding.startswith("utf-8"):
                return _NOT_UTF8
            if not newlines_in_values:
                continue
            logger.info("%s: pyarrow could not parse the file (%s); reading it record by record", path, failure)
            return None
        if invalid:
            if not newlines_in_values:
                continue
            logger.info(
                "%s: %d record(s) with the wrong number of fields; reading record by record", path, len(invalid)
            )
            return None
        if newlines_in_values or data.num_rows == scan.physical_lines - 1:
            return data
    return None


def _read_exact(
    path: Path, scan: FileScan, encoding: str, columns: tuple[str, ...], delimiter: str
) -> tuple[pa.Table, np.ndarray, pd.DataFrame]:
    """Python's csv module, record by record: exact row numbers, ragged rows quarantined."""
    width = len(columns)
    values: list[list[str]] = [[] for _ in columns]
    rows: list[int] = []
    bad: list[dict[str, object]] = []
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    records: list[list[str] | None] = []
    broken: dict[int, tuple[str, str]] = {}  # record index -> (its lines as written, the parser's complaint)
    with open(path, encoding=encoding, newline="") as handle:
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for physical in handle:
                consumed.append(physical)
                yield physical

        reader = csv.reader(lines(), delimiter=delimiter, strict=True)
        row_number = 1
        while True:
            consumed.clear()
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if "end of data" in str(exc):
                    raise ExportFormatError(
                        f"{path}: line {reader.line_num}: the file ends inside a quoted value (truncated, or a "
                        "quote is never closed); expected every quoted value to be closed with '\"'"
                    ) from None
                if row_number == 1:
                    raise ExportFormatError(
                        f"{path}: line 1: malformed quoting in the header ({exc}); expected column names "
                        "separated by the delimiter, quoted values closed with '\"'"
                    ) from None
                broken[len(records)] = ("".join(consumed), str(exc))
                records.append(None)
                continue
            if row_number == 1:
                row_number = 2  # the header
                continue
            records.append(record)
    row_number = 1
    last_index = len(records) - 1
    for index, record in enumerate(records):
        row_number += 1
        if record is None:
            # An unbalanced quote can pull the next lines into the record: each physical line is
            # quarantined as its own row, so no record hidden in it goes uncounted.
            text, complaint = broken[index]
            physical = text.splitlines() or [text]
            span = f" (a quoted value runs over rows {row_number}-{row_number + len(physical) - 1})" if len(physical) > 1 else ""
            for offset, line in enumerate(physical):
                bad.append(
                    {
                        "source_file": str(path),
                        "source_row": row_number + offset,
                        "reason_code": MALFORMED_QUOTING,
                        "reason": (
                            f"malformed quoting ({complaint}){span}: a quote inside a quoted value must be doubled, "
                            'as in "Acme ""Big"" Co"; the row is quarantined rather than guessed'
                        ),
                        "column": pd.NA,
                        "raw_record": json.dumps({"_line_as_written": line}, ensure_ascii=False),
                    }
                )
            row_number += len(physical) - 1
            continue
        if not record:
            record = [""] * width
        if len(record) == width:
            for column_values, value in zip(values, record):
                column_values.append(value)
            rows.append(row_number)
            continue
        if index == last_index and len(record) < width and not scan.ends_with_newline:
            raise ExportFormatError(
                f"{path}: row {row_number}: the last record has {len(record)} of {width} fields and "
                "the file does not end with a line break: the file looks truncated; expected "
                "complete records"
            )
        raw = dict(zip(columns, record))
        if len(record) > width:
            raw["_extra_values"] = record[width:]
        bad.append(
            {
                "source_file": str(path),
                "source_row": row_number,
                "reason_code": MALFORMED_ROW,
                "reason": f"the row has {len(record)} fields; the header has {width}",
                "column": pd.NA,
                "raw_record": json.dumps(raw, ensure_ascii=False),
            }
        )
    data = pa.table({c: pa.array(v, type=pa.string()) for c, v in zip(columns, values)})
    malformed = (
        conform(pd.DataFrame(bad), QUARANTINE_COLUMNS, "quarantine") if bad else empty_frame(QUARANTINE_COLUMNS)
    )
    return data, np.asarray(rows, dtype=np.int64), malformed


# --------------------------------------------------------------------------------------------
# Value parsing: every helper takes stripped text ("" = blank) and returns values plus the mask
# of non-blank values that did not parse.


def _arrow_text(values: pd.Series) -> pa.Array:
    return pa.array(values, type=pa.large_string())


def is_blank(values: pd.Series) -> np.ndarray:
    return values.eq("").to_numpy(dtype=bool)


def parse_numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Decimal numbers ("15000", "1234.5", "-3e2"); blank is NaN; not finite counts as bad."""
    blank = is_blank(values)
    arrow = _arrow_text(values)
    arrow = pc.if_else(pa.array(blank), pa.scalar(None, pa.large_string()), arrow)
    try:
        numbers = pc.cast(arrow, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        numbers = pd.to_numeric(values.where(~blank), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    numbers = np.asarray(numbers, dtype="float64")
    bad = ~blank & ~np.isfinite(numbers)
    numbers = np.where(np.isfinite(numbers), numbers, np.nan)
    return pd.Series(numbers, index=values.index, dtype="float64"), bad


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """"YYYY-MM-DD HH:MM:SS", ISO 8601 (with T, fractions, Z or an offset, also after a blank as
    in "+0000") or a bare date, also ending in " UTC" as warehouse loaders write it, as
    timezone-naive UTC; blank is NaT."""
    blank = is_blank(values)
    arrow = _arrow_text(values)
    parsed = _impossible_days_to_null(arrow, pc.strptime(arrow, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True))
    result = pd.Series(parsed.to_numpy(zero_copy_only=False), index=values.index).astype(TIMESTAMP)
    retry = result.isna().to_numpy() & ~blank
    if retry.any():
        # A warehouse loader's text form ends in " UTC" (Fivetran, BigQuery) where ISO 8601 has "Z".
        written = values[retry].str.replace(r"\s*UTC$", "", regex=True)
        others = pd.to_datetime(written, format="ISO8601", utc=True, errors="coerce")
        result.loc[retry] = others.dt.tz_localize(None).astype(TIMESTAMP)
    bad = result.isna().to_numpy() & ~blank
    return result, bad


def _impossible_days_to_null(text: pa.Array, parsed: pa.Array) -> pa.Array:
    """`parsed` with NULL where the written day of month is not the parsed one. Arrow's strptime
    rolls an impossible day over ("2026-09-31" becomes 1 October, "2027-02-29" 1 March, the way
    Salesforce's own timestamp format reaches it), so such a value would silently move a date;
    as NULL it counts as unparseable and its row is quarantined with its reason."""
    # Only parsed values are compared: each has a "Y-M-D" date part, whose third number is the day.
    day_text = pc.struct_field(pc.extract_regex(text, r"^\s*\d+-\d+-(?P<day>\d+)"), [0])
    day_text = pc.if_else(pc.is_valid(parsed), day_text, pa.scalar(None, day_text.type))
    written_day = pc.cast(day_text, pa.int64())
    rolled_over = pc.fill_null(pc.not_equal(written_day, pc.day(parsed)), False)
    return pc.if_else(rolled_over, pa.scalar(None, parsed.type), parsed)


_TRUE = ("1", "true", "t")
_FALSE = ("0", "false", "f")


def parse_booleans(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """0/1/true/false and t/f (PostgreSQL's text form, as warehouse loaders unload it), any case;
    blank is NA."""
    lowered = values.str.lower()
    true = lowered.isin(_TRUE).to_numpy(dtype=bool)
    false = lowered.isin(_FALSE).to_numpy(dtype=bool)
    blank = is_blank(values)
    result = pd.array(np.where(true, True, False), dtype="boolean")
    result[~(true | false)] = pd.NA
    return pd.Series(result, index=values.index), ~(true | false | blank)


# --------------------------------------------------------------------------------------------
# Quarantine


class Quarantine:
    """Row problems of several files, gathered check by check.

    Each problem names a file (by its key from `register`), record positions, a reason code, the
    column and a readable reason. A row with several problems is quarantined once, under the
    reason code and column of its first problem, with every reason in its text.
    """

    def __init__(self) -> None:
        self._tables: list[CsvTable] = []
        self._parts: list[pd.DataFrame] = []
        self._raw_suites: list[RawSuite] = []

    def register(self, table: CsvTable) -> int:
        self._tables.append(table)
        return len(self._tables) - 1

    def declare(
        self,
        frame: pd.DataFrame,
        rules: RawRules,
        format_label: str,
        label: Callable[[int, str], str] | None = None,
    ) -> None:
        """Declare the raw suite `rules` over a working frame of registered files (text columns
        plus `_file`), for `raw_suites`; nothing is checked here. `label(file, column)` is the
        column's header in that file (default: the working name)."""
        keys = pd.unique(frame["_file"].to_numpy(dtype=np.int64))
        files = {int(k): str(self._tables[int(k)].path) for k in sorted(keys)}
        self._raw_suites.append(declare_raw_suite(frame, files, rules, label or (lambda key, column: column), format_label))

    def raw_suites(self) -> list[RawSuite]:
        """The raw suites declared through `declare`, in order."""
        return list(self._raw_suites)

    def add(
        self,
        file_key: np.ndarray | int,
        position: np.ndarray,
        reason_code: str,
        column: str | None,
        reason: pd.Series | np.ndarray | str,
    ) -> None:
        position = np.asarray(position, dtype=np.int64)
        if len(position) == 0:
            return
        file_key = np.broadcast_to(np.asarray(file_key, dtype=np.int64), position.shape)
        reason_values = (
            np.full(position.shape, reason, dtype=object)
            if isinstance(reason, str)
            else np.asarray(reason, dtype=object)
        )
        self._parts.append(
            pd.DataFrame(
                {
                    "_file": file_key,
                    "_pos": position,
                    "_order": len(self._parts),
                    "reason_code": reason_code,
                    "column": column,
                    "reason": reason_values,
                }
            )
        )

    def _problems(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame(
                {"_file": pd.Series(dtype="int64"), "_pos": pd.Series(dtype="int64")}
            )
        return pd.concat(self._parts, ignore_index=True)

    def first_reason_codes(self, file_key: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The reason code of the first problem of each (file, position); None where it has none."""
        problems = self._problems()
        codes = np.full(len(position), None, dtype=object)
        if problems.empty:
            return codes
        first = problems.sort_values("_order", kind="stable").drop_duplicates(["_file", "_pos"])
        known = pd.MultiIndex.from_arrays([first["_file"], first["_pos"]])
        wanted = pd.MultiIndex.from_arrays([np.asarray(file_key, np.int64), np.asarray(position, np.int64)])
        hit = known.get_indexer(wanted)
        found = hit >= 0
        codes[found] = first["reason_code"].to_numpy(dtype=object)[hit[found]]
        return codes

    def frame(self) -> pd.DataFrame:
        """The quarantine rows (`etl.schema.QUARANTINE_COLUMNS`), one per quarantined record."""
        parts: list[pd.DataFrame] = [t.malformed for t in self._tables if not t.malformed.empty]
        problems = self._problems()
        if not problems.empty:
            problems = problems.sort_values(["_file", "_pos", "_order"], kind="stable")
            first = problems.drop_duplicates(["_file", "_pos"]).set_index(["_file", "_pos"])
            several = problems.loc[problems.duplicated(["_file", "_pos"], keep=False)]
            if not several.empty:
                joined = several.groupby(["_file", "_pos"], sort=False)["reason"].agg(
                    lambda r: "; ".join(dict.fromkeys(r))
                )
                first.loc[joined.index, "reason"] = joined
            first = first.reset_index()
            for key, rows in first.groupby("_file", sort=True):
                table = self._tables[int(key)]
                positions = rows["_pos"].to_numpy(dtype=np.int64)
                parts.append(
                    pd.DataFrame(
                        {
                            "source_file": str(table.path),
                            "source_row": table.source_row[positions],
                            "reason_code": rows["reason_code"].to_numpy(),
                            "reason": rows["reason"].to_numpy(),
                            "column": rows["column"].to_numpy(),
                            "raw_record": table.raw_records(positions),
                        }
                    )
                )
        if not parts:
            return empty_frame(QUARANTINE_COLUMNS)
        out = conform(pd.concat(parts, ignore_index=True), QUARANTINE_COLUMNS, "quarantine")
        return out.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Locale-aware value parsing (spreadsheets saved from Excel in other languages). Same contract as
# the `parse_*` helpers above: stripped text in ("" = blank), values plus the mask of non-blank
# values that did not parse.

# Spaces used as a thousands separator: plain, non-breaking (U+00A0) and narrow non-breaking (U+202F).
_SPACES = (" ", "\u00a0", "\u202f")
DEFAULT_CURRENCY_SYMBOLS = ("€", "$", "£")


def _regex_class(characters: Sequence[str]) -> str:
    return "[" + "".join("\\" + c if c in "\\]^-" else c for c in characters) + "]"


def _thousands_separators(decimal: str, thousands: str | Sequence[str] | None) -> list[str]:
    if decimal not in (".", ","):
        raise ValueError(f"decimal separator must be '.' or ',', got {decimal!r}")
    if thousands is None or thousands == "":
        separators: list[str] = []
    else:
        separators = [thousands] if isinstance(thousands, str) else list(thousands)
    if any(s == " " for s in separators):
        separators = [*separators, *_SPACES[1:]]
    if decimal in separators:
        raise ValueError(f"the thousands separator cannot be the decimal separator {decimal!r}")
    return separators


def _locale_number_core(decimal: str, separators: Sequence[str]) -> str:
    """The number itself (no currency symbol): plain, or grouped by threes with `separators`."""
    dec = "\\" + decimal
    plain = f"[+-]?\\d+(?:{dec}\\d+)?|[+-]?{dec}\\d+"
    if not separators:
        return plain
    sep = _regex_class(separators)
    return f"{plain}|[+-]?\\d{{1,3}}(?:{sep}\\d{{3}})+(?:{dec}\\d+)?"


def locale_number_form(
    decimal: str = ".",
    thousands: str | Sequence[str] | None = None,
    currency_symbols: Sequence[str] = DEFAULT_CURRENCY_SYMBOLS,
) -> str:
    """A regular expression for a whole value `parse_locale_numbers` reads with these settings
    (a currency symbol before or after the number, or between its sign and digits)."""
    core = _locale_number_core(decimal, _thousands_separators(decimal, thousands))
    if not currency_symbols:
        return f"^(?:{core})$"
    symbol = _regex_class(list(currency_symbols))
    return f"^(?:{symbol}[ \u00a0\u202f]*)?(?:[+-]{symbol})?(?:{core})(?:[ \u00a0\u202f]*{symbol})?$"


def parse_locale_numbers(
    values: pd.Series,
    decimal: str = ".",
    thousands: str | Sequence[str] | None = None,
    currency_symbols: Sequence[str] = DEFAULT_CURRENCY_SYMBOLS,
) -> tuple[pd.Series, np.ndarray]:
    """Numbers written the way a locale writes them: "1 234,56", "1.234,56 €", "$1,234.50", "-12,5".

    `decimal` is "." or ","; `thousands` is None (no grouping allowed) or one separator or several
    (" " also accepts the non-breaking spaces Excel writes). A grouped number must group by threes
    ("1.2345,6" with thousands "." does not parse). Currency symbols before or after the number are
    removed. Blank is NaN; anything else that does not parse is flagged.
    """
    separators = _thousands_separators(decimal, thousands)
    blank = is_blank(values)
    text = values.astype("str")
    if currency_symbols:
        symbols = _regex_class(list(currency_symbols))
        text = text.str.replace(f"^{symbols}[ \u00a0\u202f]*|[ \u00a0\u202f]*{symbols}$", "", regex=True)
        text = text.str.replace(f"^([+-]){symbols}", r"\1", regex=True)
    pattern = _locale_number_core(decimal, separators)
    matches = text.str.fullmatch(pattern).fillna(False).to_numpy(dtype=bool)
    if separators:
        text = text.str.replace(_regex_class(separators), "", regex=True)
    if decimal == ",":
        text = text.str.replace(",", ".", regex=False)
    numbers = pd.to_numeric(text.where(matches & ~blank), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = ~blank & ~np.isfinite(numbers)
    numbers = np.where(np.isfinite(numbers), numbers, np.nan)
    return pd.Series(numbers, index=values.index, dtype="float64"), bad


# Day-first and month-first date layouts tried when no explicit format is given (after ISO 8601).
_DAY_FIRST_FORMATS = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%y")
_MONTH_FIRST_FORMATS = ("%m/%d/%Y", "%m-%d-%Y", "%m/%d/%y")
_TIME_SUFFIXES = ("", " %H:%M", " %H:%M:%S")


def infer_dayfirst(values: pd.Series) -> bool | None:
    """Whether the slash/dot/dash dates of a column are day-first: True when some value's first
    field is above 12 and none's second is, False for the reverse, None when the column cannot
    tell (every such value has both fields at most 12, or it has none)."""
    parts = values.str.extract(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}(?:\s|$)")
    first = pd.to_numeric(parts[0], errors="coerce")
    second = pd.to_numeric(parts[1], errors="coerce")
    day_first = bool((first > 12).any())
    month_first = bool((second > 12).any())
    if day_first and not month_first:
        return True
    if month_first and not day_first:
        return False
    return None


def parse_dates(
    values: pd.Series, date_format: str | None = None, dayfirst: bool | None = None
) -> tuple[pd.Series, np.ndarray]:
    """Dates (and date-times) as timezone-naive timestamps; blank is NaT.

    With `date_format` (strftime codes, e.g. "%d/%m/%Y") only that layout is accepted. Otherwise
    ISO 8601 first, then day-first layouts (31/05/2024, 31.05.2024, with an optional time) when
    `dayfirst` is True, month-first ones (05/31/2024) when it is False; with `dayfirst` None only
    ISO 8601 is accepted (use `infer_dayfirst` to decide from the column).
    """
    blank = is_blank(values)
    if date_format:
        result = pd.to_datetime(values.where(~blank), format=date_format, errors="coerce")
        result = pd.Series(result, index=values.index).astype(TIMESTAMP)
        return result, result.isna().to_numpy() & ~blank
    result, bad = parse_timestamps(values)
    if dayfirst is None or not bad.any():
        return result, bad
    layouts = _DAY_FIRST_FORMATS if dayfirst else _MONTH_FIRST_FORMATS
    for layout in layouts:
        for suffix in _TIME_SUFFIXES:
            retry = result.isna().to_numpy() & ~blank
            if not retry.any():
                return result, retry
            parsed = pd.to_datetime(values[retry], format=layout + suffix, errors="coerce")
            result.loc[retry] = parsed.astype(TIMESTAMP)
    return result, result.isna().to_numpy() & ~blank


# Values as a spreadsheet saved with European (or other non-ISO) regional settings writes them:
# decimal commas, optionally grouped (1.234,56 / 1 234,56 / 12,5), and dates with the day or month
# first (31.05.2024, 05/31/2024, with or without a time).
_REGIONAL_NUMBER = r"[+-]?(?:\d{1,3}(?:[.\s\u00a0\u202f']\d{3})+|\d+),\d+"
_REGIONAL_DATE = r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?"
MAPPING_HINT = (
    "read it through a mapping file, which sets the delimiter, decimal and thousands separators, date "
    "layout and encoding (see docs/mapping.md and examples/pipedrive_eu/mapping.toml)"
)


def refuse_regional_formats(
    frame: pd.DataFrame,
    paths: Mapping[int, Path],
    numbers: Sequence[str],
    dates: Sequence[str],
    header: Callable[[int, str], str],
    format_label: str,
) -> None:
    """Stop a CRM reader before it quarantines a whole file whose numbers or dates a spreadsheet
    rewrote in its regional format. For each file (`_file` key in `frame`, path in `paths`) and
    each of the `numbers` and `dates` columns (working names; `header(key, column)` is the file's
    own name): when at least half of the filled values do not parse as the CRM writes them and
    most of those are written like 1.234,56 or 31.05.2024, raise `ExportFormatError` naming the
    file, the column and a value, and suggesting a mapping file. A few bad values are left to
    the row checks (quarantined one by one)."""
    for key, rows in frame.groupby("_file", sort=True):
        for column, parse, form, written in [
            *((c, parse_numbers, _REGIONAL_NUMBER, "with a decimal comma") for c in numbers),
            *((c, parse_timestamps, _REGIONAL_DATE, "with the day or month first") for c in dates),
        ]:
            values = rows[column]
            filled = values.loc[values.ne("")]
            if filled.empty:
                continue
            _, bad = parse(filled)
            failing = filled.loc[bad]
            if len(failing) * 2 < len(filled):
                continue
            regional = failing.str.fullmatch(form).fillna(False).to_numpy(dtype=bool)
            if regional.sum() * 2 <= len(failing):
                continue
            example = failing.loc[regional].iloc[0]
            raise ExportFormatError(
                f"{paths[int(key)]}: column {header(int(key), column)}: {len(failing):,} of {len(filled):,} values are "
                f"written in a spreadsheet's regional format, {written} (e.g. {example!r}), not as a {format_label} "
                f"export writes them; the file was probably opened and saved again by Excel with European settings. "
                f"Export it again, or {MAPPING_HINT}"
            )


# Boolean spellings, compared without case: English, French, German, Spanish/Italian, checkboxes.
BOOLEAN_TRUE = ("1", "true", "t", "yes", "y", "oui", "o", "vrai", "ja", "si", "sí", "x", "on", "-1")
BOOLEAN_FALSE = ("0", "false", "f", "no", "n", "non", "faux", "nein", "off")


def parse_any_booleans(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Booleans in any common spelling: true/false, yes/no, oui/non, vrai/faux, 1/0, x (a ticked
    box; -1 is Excel/Access's true). Blank is NA."""
    lowered = values.str.lower()
    true = lowered.isin(BOOLEAN_TRUE).to_numpy(dtype=bool)
    false = lowered.isin(BOOLEAN_FALSE).to_numpy(dtype=bool)
    blank = is_blank(values)
    result = pd.array(np.where(true, True, False), dtype="boolean")
    result[~(true | false)] = pd.NA
    return pd.Series(result, index=values.index), ~(true | false | blank)


def repeated_ids(ids: pd.Series, live: np.ndarray) -> np.ndarray:
    """The duplicate-id test every reader makes of its source ids: the rows among `live` (those not
    quarantined yet) whose id repeats the id of an earlier live row; the earliest is the one kept.
    Each reader flags them `duplicate_id` (after flagging blank ids `missing_id`), in its own words."""
    live = np.asarray(live, dtype=bool)
    rows = np.flatnonzero(live)
    try:
        values = arrow_values(ids.iloc[rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # ids of mixed types: pandas compares them
        return ids.where(live).duplicated(keep="first").to_numpy() & live
    # Arrow numbers distinct values in the order they first appear: a row repeats an earlier id
    # exactly when its number is not above every number before it. (A hash of the values once,
    # in C: pandas' `duplicated` on Arrow text takes twice as long at millions of ids.)
    codes = pc.dictionary_encode(values, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    seen = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]])) if len(codes) else codes
    repeated = np.zeros(len(live), dtype=bool)
    repeated[rows] = codes <= seen
    return repeated


def first_occurrences(frame: pd.DataFrame, column: str, live: np.ndarray) -> pd.Series:
    """Indexed by id, where the live row `repeated_ids` keeps for it is: "<source_file> row <source_row>"."""
    first = frame.loc[np.asarray(live, dtype=bool), [column, "source_file", "source_row"]].drop_duplicates(column)
    return pd.Series(
        (first["source_file"].astype("str") + " row " + first["source_row"].astype("str")).to_numpy(),
        index=first[column].to_numpy(),
    )


class RowChecks:
    """Quarantine bookkeeping for a reader's working frame (columns `_file`, `_pos`, `_blank` plus the
    export's columns): each check flags rows, the first reason a row is flagged for is what the
    quarantine records, and `bad` marks every flagged row. Blank rows are flagged at once.

    `column_label` names a column as the person fixing the export knows it (a reader whose working
    columns are canonical names overrides it with the export's header)."""

    def __init__(self, frame: pd.DataFrame, quarantine: "Quarantine") -> None:
        self.frame = frame
        self.quarantine = quarantine
        self.bad = np.zeros(len(frame), dtype=bool)
        self.flag(frame["_blank"].to_numpy(), BLANK_ROW, None, "the row is empty")

    def column_label(self, column: str) -> str:
        return column

    def flag(
        self,
        mask: np.ndarray | pd.Series,
        reason_code: str,
        column: str | None,
        reason: str | Callable[[pd.DataFrame], Sequence[str]],
        only_clean: bool = False,
    ) -> None:
        """Quarantine the rows of `mask` (only those not flagged yet with `only_clean`); `reason` is
        one text, or a function giving each flagged row's text."""
        mask = np.asarray(mask, dtype=bool)
        if only_clean:
            mask = mask & ~self.bad
        if not mask.any():
            return
        rows = self.frame.loc[mask]
        text = reason if isinstance(reason, str) else np.asarray(list(reason(rows)), dtype=object)
        self.quarantine.add(rows["_file"].to_numpy(), rows["_pos"].to_numpy(), reason_code, column, text)
        self.bad |= mask

    def ids(self, column: str, label: str, what: str = "deal") -> None:
        """Flag blank ids in `column` (`missing_id`), then ids repeating an earlier live row's
        (`duplicate_id`, naming where the kept first occurrence is); `label` is the export's header."""
        frame = self.frame
        self.flag(is_blank(frame[column]), MISSING_ID, label, f"{label} is blank; expected the {what}'s id")
        live = ~self.bad
        self.flag(
            repeated_ids(frame[column], live),
            DUPLICATE_ID,
            label,
            lambda rows: [
                f"{label} {i!r} appears more than once; the first occurrence ({first[i]}) is kept"
                for first in [first_occurrences(frame, column, live)]
                for i in rows[column]
            ],
        )

    def blank_required(self, columns: Sequence[str]) -> None:
        for column in columns:
            label = self.column_label(column)
            self.flag(is_blank(self.frame[column]), MISSING_REQUIRED_VALUE, label, f"{label} is blank; expected a value")

    def parsed(
        self,
        column: str,
        parser: Callable[[pd.Series], tuple[pd.Series, np.ndarray]],
        reason_code: str,
        expected: str,
    ) -> pd.Series:
        """`column` parsed; rows whose value does not parse are flagged with `reason_code`."""
        return self.parsed_all([(column, parser, reason_code, expected)])[0]

    def parsed_all(
        self, specs: Sequence[tuple[str, Callable[[pd.Series], tuple[pd.Series, np.ndarray]], str, str]]
    ) -> list[pd.Series]:
        """`parsed` for each (column, parser, reason_code, expected) of `specs`, in that order: the
        columns are parsed at the same time (Arrow's parsers release the GIL), and their rows are
        flagged in the order of `specs`, so a row's first reason is what it is with `parsed`."""
        results = map_in_threads(lambda spec: spec[1](self.frame[spec[0]]), specs)
        for (column, _, reason_code, expected), (_, bad) in zip(specs, results):
            label = self.column_label(column)
            self.flag(
                bad, reason_code, label,
                lambda rows, label=label, column=column, expected=expected: [
                    f"{label}: expected {expected}, got {v!r}" for v in rows[column]
                ],
            )
        return [values for values, _ in results]
