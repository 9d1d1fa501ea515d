"""The byte scan every export file gets before parsing: quotes that touch text on both sides
(`e "B`, which inside a quoted value should have been doubled) send the file to the
record-by-record reader, wherever the file's read chunks happen to end."""

import pytest

import etl.ingest.csvfiles as csvfiles
from etl.ingest.csvfiles import load_csv, scan_file
from etl.ingest.readers import ExportFormatError

# Hand count: in `Acme "Big" deal` (line 3) the quote of `e "B` has a space before it and B after it,
# both text: stray; the one of `g" d` likewise. Line 4's `x"y` is a third. Doubled quotes `""` and
# quotes next to commas or line breaks are well formed.
TEXT = (
    b'"Id","Name","Amount"\n'
    b'"1","Acme ""Big"" deal","100"\n'
    b'"2","Acme "Big" deal","200"\n'
    b'"3","x"y,"300"\r\n'
)
STRAY = 3  # e "B, g" d on line 3; x"y on line 4


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 24])
def test_stray_quotes_are_counted_once_whatever_the_chunk_size(tmp_path, monkeypatch, chunk):
    path = tmp_path / "Opportunity.csv"
    path.write_bytes(TEXT)
    monkeypatch.setattr(csvfiles, "_CHUNK_BYTES", chunk)
    scan = scan_file(path)
    assert scan.stray_quotes == STRAY
    assert scan.quote_count == TEXT.count(b'"')
    assert scan.line_breaks == 4


def test_a_well_formed_export_has_no_stray_quote(tmp_path):
    path = tmp_path / "Opportunity.csv"
    path.write_bytes(b'"Id","Name"\n"1","He said ""hi"""\n"2",""\n')
    assert scan_file(path).stray_quotes == 0


def test_a_stray_quote_sends_the_file_to_the_record_reader_though_pyarrow_parsed_it(tmp_path):
    """pyarrow parses line 3 without complaint (as `Acme Big" deal"`) while the scan runs beside it;
    the scan's stray quote must still discard that parse: row 3 is quarantined, row 2 kept as written."""
    path = tmp_path / "Opportunity.csv"
    path.write_bytes(b'"Id","Name","Amount"\n"1","Acme ""Big"" deal","100"\n"2","Acme "Big" deal","200"\n')
    table = load_csv(path, "Test export", ["Id"])
    assert table.rows_read == 2
    assert table.data.to_pylist() == [{"Id": "1", "Name": 'Acme "Big" deal', "Amount": "100"}]
    assert table.source_row.tolist() == [2]
    assert table.malformed[["source_row", "reason_code"]].to_dict("records") == [
        {"source_row": 3, "reason_code": "malformed_quoting"}
    ]


def test_a_binary_file_is_reported_as_binary_even_when_its_header_is_wrong_too(tmp_path):
    """The header check runs while the scan is still going: the scan's finding is the one raised.
    `Foo,Bar\\n` is bytes 0-7 and `1,` bytes 8-9, so the NUL is byte 10, on line 2."""
    path = tmp_path / "Opportunity.csv"
    path.write_bytes(b"Foo,Bar\n1,\x00\n")
    with pytest.raises(ExportFormatError, match=r"line 2: binary data \(a NUL byte at byte 10\)"):
        load_csv(path, "Test export", ["Id"])
