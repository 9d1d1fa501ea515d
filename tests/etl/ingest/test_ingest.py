"""Ingest of an exports directory: format detection, skipped files, readers plugged in by format,
the row reconciliation, and the messages of files that cannot be read at all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import etl.ingest.exports
from etl.config import load_project_config
from etl.ingest.exports import ExportFormatError, detect_format, read_exports
from etl.ingest.readers import ExportReader, FileReport, SourceExport
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, QUARANTINE_COLUMNS, empty_frame
from etl.stages import PipelineStages

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "salesforce"
SMALL = FIXTURES / "small"
DEVORG = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "salesforce_devorg_sample"

REQUIRED = ["Id", "Name", "StageName", "StageSortOrder", "Amount", "CloseDate", "CreatedDate", "IsClosed", "IsWon"]
ROW = ["006A", "Deal A", "Prospecting", "1", "100", "2024-06-30", "2024-01-02 03:04:05", "0", "0"]


@pytest.fixture(scope="module")
def project():
    return load_project_config(FIXTURES / "dealcast.toml")


def _csv(rows: list[list[str]], delimiter: str = ",") -> str:
    return "".join(delimiter.join('"' + v + '"' for v in row) + "\n" for row in rows)


def test_detect_format_from_headers(tmp_path):
    assert detect_format(SMALL / "Opportunity.csv") == "salesforce_opportunity"
    assert detect_format(SMALL / "OpportunityHistory.csv") == "salesforce_history"
    assert detect_format(SMALL / "User.csv") == "salesforce_user"
    assert detect_format(SMALL / "Account.csv") == "salesforce_account"
    assert detect_format(SMALL / "quotas.csv") is None
    assert detect_format(DEVORG / "Account.csv") == "salesforce_account"
    # Recognised by header whatever the file name.
    renamed = tmp_path / "opps_2024.csv"
    renamed.write_text(_csv([REQUIRED, ROW]))
    assert detect_format(renamed) == "salesforce_opportunity"
    truth = tmp_path / "truth_win_probability.csv"
    truth.write_text("deal_id,changed_at,stage,true_win_probability\nA,2024-01-01,X,0.5\n")
    assert detect_format(truth) is None
    binary = tmp_path / "logo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert detect_format(binary) is None


def test_skipped_files_are_listed_and_every_row_reconciles(tmp_path, project):
    (tmp_path / "Opportunity.csv").write_text(_csv([REQUIRED, ROW, ["006B", *ROW[1:4], "lots", *ROW[5:]]]))
    (tmp_path / "quotas.csv").write_text("quarter,segment_type,segment,amount\n2024-Q2,all,all,1000\n")
    (tmp_path / "notes.txt").write_text("exported on Monday\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    result = read_exports(tmp_path, project)
    assert sorted(p.name for p in result.skipped_files) == ["notes.txt", "quotas.csv"]
    (report,) = result.files
    assert report.path == tmp_path / "Opportunity.csv"
    assert report.format == "salesforce_opportunity"
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (2, 1, 1)
    assert len(report.sha256) == 64
    assert result.deals["source_file"].tolist() == [str(tmp_path / "Opportunity.csv")]
    assert result.quarantine["reason_code"].tolist() == ["unparseable_amount"]
    assert list(result.deals.columns) == list(DEAL_COLUMNS)
    assert list(result.quarantine.columns) == list(QUARANTINE_COLUMNS)


def test_configured_pipelines_are_kept_and_inferred_ones_added(project):
    result = read_exports(SMALL, project)
    assert result.stages.names == ["New Business", "Default"]
    assert result.stages["New Business"] is project.stages["New Business"]


def test_readers_plug_in_by_format(tmp_path, project, monkeypatch):
    """A CRM reader is found through READERS: it gets the files it recognises, grouped by format."""
    seen: dict[str, list[str]] = {}

    def detect(header, path):
        return "toy_deals" if header is not None and header.columns[:2] == ("toy_id", "toy_stage") else None

    def read(files, config):
        seen.update({fmt: [p.name for p in paths] for fmt, paths in files.items()})
        (path,) = files["toy_deals"]
        deals = empty_frame(DEAL_COLUMNS)
        report = FileReport(path=path, format="toy_deals", rows_read=1, sha256="0" * 64, rows_accepted=0, rows_quarantined=1)
        quarantine = pd.DataFrame(
            {
                "source_file": [str(path)],
                "source_row": [2],
                "reason_code": ["toy"],
                "reason": ["toy reader rejects everything"],
                "column": ["toy_stage"],
                "raw_record": ['{"toy_id": "1"}'],
            }
        ).astype(QUARANTINE_COLUMNS)
        toy = PipelineStages("Toys", ("Shelf",))
        return SourceExport(deals, empty_frame(DEAL_HISTORY_COLUMNS), quarantine, [report], [toy])

    toy_reader = ExportReader(source_system="toy", formats=("toy_deals",), detect=detect, read=read)
    monkeypatch.setattr(etl.ingest.exports, "READERS", (*etl.ingest.exports.READERS, toy_reader))
    (tmp_path / "toys.csv").write_text("toy_id,toy_stage\n1,Shelf\n")
    (tmp_path / "Opportunity.csv").write_text(_csv([REQUIRED, ROW]))
    result = read_exports(tmp_path, project)
    assert seen == {"toy_deals": ["toys.csv"]}
    assert detect_format(tmp_path / "toys.csv") == "toy_deals"
    assert sorted(f.format for f in result.files) == ["salesforce_opportunity", "toy_deals"]
    # Two CRMs read together: deal ids are prefixed with their source system.
    assert result.deals["deal_id"].tolist() == ["salesforce:006A"]
    assert result.quarantine["reason_code"].tolist() == ["toy"]
    assert "Toys" in result.stages.names


def test_reconciliation_failure_is_loud(tmp_path, project, monkeypatch):
    def read(files, config):
        (path,) = files["lossy"]
        report = FileReport(path=path, format="lossy", rows_read=3, sha256="0" * 64, rows_accepted=1, rows_quarantined=0)
        return SourceExport(empty_frame(DEAL_COLUMNS), empty_frame(DEAL_HISTORY_COLUMNS), empty_frame(QUARANTINE_COLUMNS), [report])

    lossy = ExportReader("lossy", ("lossy",), lambda header, path: "lossy" if path.name == "lossy.csv" else None, read)
    monkeypatch.setattr(etl.ingest.exports, "READERS", (lossy,))
    (tmp_path / "lossy.csv").write_text("a\n1\n2\n3\n")
    with pytest.raises(RuntimeError, match=r"lossy\.csv: 3 rows read but 1 accepted \+ 0 quarantined"):
        read_exports(tmp_path, project)


# ---------------------------------------------------------------------------------------------
# Files that cannot be read at all


def _read_opportunity(tmp_path: Path, data: bytes, project) -> str:
    (tmp_path / "Opportunity.csv").write_bytes(data)
    with pytest.raises(ExportFormatError) as error:
        read_exports(tmp_path, project)
    message = str(error.value)
    assert str(tmp_path / "Opportunity.csv") in message
    return message


def test_empty_file(tmp_path, project):
    message = _read_opportunity(tmp_path, b"", project)
    assert "line 1" in message and "empty" in message and "expected a header line" in message


def test_header_only(tmp_path, project):
    message = _read_opportunity(tmp_path, _csv([REQUIRED]).encode(), project)
    assert "line 2" in message and "no data rows" in message


def test_missing_required_column_lists_expected_columns(tmp_path, project):
    header = [c for c in REQUIRED if c != "CloseDate"]
    row = [v for c, v in zip(REQUIRED, ROW) if c != "CloseDate"]
    message = _read_opportunity(tmp_path, _csv([header, row]).encode(), project)
    assert "line 1" in message and "missing required column(s) CloseDate" in message
    assert "Id, Name, StageName, Amount, CloseDate, CreatedDate, IsClosed, IsWon" in message


def test_file_without_header_row(tmp_path, project):
    message = _read_opportunity(tmp_path, _csv([ROW, ROW]).encode(), project)
    assert "line 1" in message and "is the header row missing?" in message


def test_wrong_delimiter(tmp_path, project):
    message = _read_opportunity(tmp_path, _csv([REQUIRED, ROW], delimiter=";").encode(), project)
    assert "line 1" in message and "semicolon-separated" in message and "expected a comma-separated" in message


def test_wrong_delimiter_detected_under_any_file_name(tmp_path, project):
    (tmp_path / "export.csv").write_text(_csv([REQUIRED, ROW], delimiter="\t"))
    assert detect_format(tmp_path / "export.csv") == "salesforce_opportunity"
    with pytest.raises(ExportFormatError, match=r"export\.csv: line 1: the header is tab-separated"):
        read_exports(tmp_path, project)


def test_binary_file(tmp_path, project):
    message = _read_opportunity(tmp_path, b'"Id","Name"\n\x00\x01\x02\x03 binary', project)
    assert "line 2" in message and "binary data" in message and "expected a CSV text file" in message


def test_spreadsheet_and_utf16_files(tmp_path, project):
    message = _read_opportunity(tmp_path, b"PK\x03\x04\x14\x00\x06\x00", project)
    assert "Excel workbook" in message and "line 1" in message
    message = _read_opportunity(tmp_path, "\ufeffId,Name\n".encode("utf-16"), project)
    assert "UTF-16" in message and "CSV UTF-8" in message


def test_truncated_files(tmp_path, project):
    text = _csv([REQUIRED, ROW, ROW])
    # Cut inside the last quoted value: the quote never closes.
    message = _read_opportunity(tmp_path, text[:-6].encode(), project)
    assert "line 3" in message and "ends inside a quoted value" in message
    # Cut at a field boundary of an unquoted export: the last record is short.
    plain = "\n".join(",".join(r) for r in [REQUIRED, ROW, ROW[:4]])
    message = _read_opportunity(tmp_path, plain.encode(), project)
    assert "row 3" in message and "4 of 9 fields" in message and "truncated" in message


def test_bytes_that_are_neither_utf8_nor_windows_1252(tmp_path, project):
    data = _csv([REQUIRED, ROW]).encode().replace(b"Deal A", b"Deal \x81 A")
    message = _read_opportunity(tmp_path, data, project)
    assert "line 2" in message and "0x81" in message and "UTF-8 or Windows-1252" in message


def test_directory_without_any_export(tmp_path, project):
    (tmp_path / "quotas.csv").write_text("quarter,segment_type,segment,amount\n")
    with pytest.raises(ExportFormatError, match="no CRM export recognised among 1 file"):
        read_exports(tmp_path, project)
    with pytest.raises(FileNotFoundError, match="exports directory not found"):
        read_exports(tmp_path / "missing", project)
